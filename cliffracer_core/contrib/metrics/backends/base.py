"""The base of every push exporter: a thread of its own that reads the figures and pushes them.

A handler never waits for an exporter: the event loop only adds to counts
(``core.figures``), and the exporter's thread reads them (``reading.read_figures``) every
``interval`` seconds and sends one batch. A server that cannot be reached costs the exporter,
never the service: the failure is logged with its reason (once per outage, then again when it
recovers), and the next attempt comes after a backoff that doubles up to the interval. Each
attempt reads the figures afresh, so a retry never resends an old batch with its old clock
(Zabbix would count it twice; CloudWatch would show a stale point), and cumulative counters
lose nothing while the server is away.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from cliffracer_core.contrib.metrics.reading import Figures

logger = logging.getLogger("cliffracer.metrics")

# The first retry after a failed push, in seconds; each further failure doubles it, up to the
# exporter's interval.
FIRST_RETRY = 1.0


class MetricsExporter:
    """Reads the figures every ``interval`` seconds and pushes them with ``push``.

    Subclasses implement ``push(figures)`` (raise on failure, with a message saying why) and
    may implement ``close_connection``. Options come from the exporter's ``OPTIONS`` in
    settings, as keyword arguments; an unknown option is a configuration error.
    """

    name = "metrics exporter"

    def __init__(self, *, interval: float = 60.0) -> None:
        if not interval > 0:
            raise ImproperlyConfigured(f"{self.name}: INTERVAL must be positive, not {interval}")
        self.interval = float(interval)
        self._read: Callable[[], Figures] | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.failures = 0
        self.pushes = 0

    def push(self, figures: Figures) -> None:
        """Send ``figures`` to the server; raise when that failed."""
        raise NotImplementedError("subclasses of MetricsExporter must provide a push() method")

    def close_connection(self) -> None:
        """Let go of the connection to the server, if the exporter keeps one."""

    def start(self, read: Callable[[], Figures]) -> None:
        """Push the figures ``read()`` returns from a daemon thread until ``stop``."""
        self._read = read
        self._thread = threading.Thread(
            target=self._run, name=f"cliffracer-{type(self).__name__}", daemon=True
        )
        self._thread.start()

    def stop(self, *, flush: bool = True, timeout: float = 5.0) -> None:
        """Stop the thread; with ``flush``, push the last figures once (bounded by
        ``timeout``), so that a stopping service's last requests are not lost."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if flush:
            flusher = threading.Thread(target=self.push_once, daemon=True)
            flusher.start()
            flusher.join(timeout)
        self.close_connection()

    def push_once(self) -> bool:
        """Read the figures and push them; log a failure. True when the push succeeded."""
        if self._read is None:
            return False
        try:
            self.push(self._read())
        except Exception as error:  # any failure of the server, the network or the library
            self.failures += 1
            if self.failures == 1:
                logger.warning(
                    "%s cannot push metrics: %s; retrying with backoff.", self.name, error
                )
            else:
                logger.debug("%s still cannot push metrics: %s.", self.name, error)
            return False
        if self.failures:
            logger.warning(
                "%s pushes metrics again after %d failed attempts.", self.name, self.failures
            )
        self.failures = 0
        self.pushes += 1
        return True

    def _run(self) -> None:
        delay = self.interval
        while not self._stopping.wait(delay):
            started = time.monotonic()
            if self.push_once():
                # The next push one interval after this one started, not after it ended.
                delay = max(self.interval - (time.monotonic() - started), 0.0)
            else:
                delay = min(FIRST_RETRY * 2 ** (self.failures - 1), self.interval)


def make_exporters(entries: Iterable[dict[str, Any]]) -> list[MetricsExporter]:
    """The exporters ``METRICS_EXPORTERS`` names, made but not started.

    Each entry is ``{"BACKEND": "dotted.path.Class", "OPTIONS": {"INTERVAL": 60, ...}}``;
    option names are given in capitals, as Django's ``OPTIONS`` are, and passed lowercased.
    Raises ``ImproperlyConfigured`` for a path that does not import or options the class does
    not take.
    """
    made: list[MetricsExporter] = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("BACKEND"), str):
            raise ImproperlyConfigured(
                f"METRICS_EXPORTERS: {entry!r} is not a dict with a BACKEND import string"
            )
        try:
            backend = import_string(entry["BACKEND"])
        except ImportError as error:
            raise ImproperlyConfigured(
                f"METRICS_EXPORTERS: cannot import {entry['BACKEND']!r}: {error}"
            ) from error
        if not (isinstance(backend, type) and issubclass(backend, MetricsExporter)):
            raise ImproperlyConfigured(
                f"METRICS_EXPORTERS: {entry['BACKEND']!r} is not a MetricsExporter subclass"
            )
        options = {str(key).lower(): value for key, value in entry.get("OPTIONS", {}).items()}
        try:
            made.append(backend(**options))
        except TypeError as error:
            raise ImproperlyConfigured(
                f"METRICS_EXPORTERS: {entry['BACKEND']!r}: {error}"
            ) from error
    return made


def start_exporters(read: Callable[[], Figures], *, process: str) -> list[MetricsExporter]:
    """Make the exporters ``METRICS_EXPORTERS`` names and start them reading ``read``.

    For processes that run no service (the web process, the Celery worker): a configuration
    error costs them their push exporters, not their work; it is logged here and reported by
    the system check ``cliffracer.E045``.
    """
    from cliffracer_core.core.settings import cliffracer_settings

    try:
        exporters = make_exporters(cliffracer_settings.METRICS_EXPORTERS)
    except ImproperlyConfigured as error:
        logger.error("The %s process pushes no metrics: %s.", process, error)
        return []
    for exporter in exporters:
        exporter.start(read)
        logger.info("The %s process pushes metrics with %s.", process, exporter.name)
    return exporters
