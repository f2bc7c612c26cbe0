"""The push exporters of the web process (daphne, or a WSGI server's workers).

``settings/asgi.py`` and ``settings/wsgi.py`` call ``start_web_exporters`` when they load, so
each process that serves the application pushes its own figures: its info, the call policies'
figures of the calls its views and sockets make, and (in the daphne process, once the
WebSocket consumer is loaded) the WebSocket series. It is started once per process:

- Django's autoreloader runs the application in a child process only; its watching parent
  never loads ``asgi.py``/``wsgi.py``, so it pushes nothing.
- A server that loads the application before forking its workers (``gunicorn --preload``)
  would leave the exporters' threads behind in the parent: each forked child starts its own
  (``os.register_at_fork``), under an instance id of its own.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading

from cliffracer_core.contrib.metrics.backends.base import MetricsExporter, start_exporters
from cliffracer_core.contrib.metrics.reading import Figures, read_process
from cliffracer_core.core import VERSION
from cliffracer_core.core.discovery import new_instance_id

WEB = "web"
# The channels metrics module is read only where it is loaded (daphne, when the consumer is):
# a WSGI worker has no sockets and pushes no WebSocket series.
CHANNELS_METRICS = "cliffracer_core.contrib.channels.metrics"

_lock = threading.Lock()
# The exporters of this process, and the process id that started them.
_exporters: list[MetricsExporter] = []
_started_in: int | None = None
_instance_id = new_instance_id()


def read_web_figures() -> Figures:
    """The web process's figures now."""
    figures = read_process(WEB, version=VERSION, instance_id=_instance_id)
    channels_metrics = sys.modules.get(CHANNELS_METRICS)
    if channels_metrics is not None:
        channels_metrics.read_into(figures, WEB)
    return figures


def start_web_exporters() -> list[MetricsExporter]:
    """Start the ``METRICS_EXPORTERS`` of this web process, once per process."""
    global _exporters, _started_in
    with _lock:
        if _started_in == os.getpid():
            return _exporters
        _started_in = os.getpid()
        _exporters = start_exporters(read_web_figures, process=WEB)
    if _exporters:
        # A stopping server's last figures are pushed, as a stopping service's are.
        atexit.register(stop_web_exporters)
    return _exporters


def stop_web_exporters() -> None:
    """Stop this process's exporters, pushing their last figures (at interpreter exit)."""
    global _exporters
    with _lock:
        stopping, _exporters = _exporters, []
    for exporter in stopping:
        exporter.stop()


def _after_fork_in_child() -> None:
    """A forked worker: the parent's threads did not survive the fork; start afresh."""
    global _exporters, _started_in, _instance_id, _lock
    if _started_in is None:
        return
    # The parent's lock may have been held by one of its threads at the fork.
    _lock = threading.Lock()
    _exporters, _started_in, _instance_id = [], None, new_instance_id()
    start_web_exporters()


os.register_at_fork(after_in_child=_after_fork_in_child)
