"""Celery in a Cliffracer system (docs/celery.md).

``context``: a task carries the correlation id of the code that enqueued it, and runs as the
system identity; ``metrics``: task outcomes and durations for Prometheus; ``components``: the
worker and beat answer ADR-32 discovery (``$SRV.PING``, ``INFO``, ``STATS``) as
``celery-worker`` and ``celery-beat``, and the worker serves its metrics. ``connect_signals``
hooks all of it to Celery's signals; ``CliffracerCoreConfig.ready()`` calls it.

Named ``jobs`` rather than ``celery`` so that nothing here shadows the library.
"""

from __future__ import annotations

from importlib.util import find_spec


def connect_signals() -> None:
    """Connect the receivers of Celery's signals; safe to call twice (each has a dispatch uid)."""
    if find_spec("celery") is None:
        return
    from cliffracer_core.contrib.jobs import components, context, metrics

    context.connect()
    metrics.connect()
    components.connect()
