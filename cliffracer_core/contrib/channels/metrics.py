"""Prometheus metrics of the WebSocket endpoint, exported by the web process's /metrics.

Counted where it is cheap: an event fanned out to a thousand sockets is one ``inc(1000)`` in
the hub, not a thousand calls in the sockets. ``read_into`` gives the same figures to the web
process's push exporters (``contrib.metrics.web``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge

if TYPE_CHECKING:
    from cliffracer_core.contrib.metrics.reading import Figures

connections = Gauge(
    "cliffracer_websocket_connections", "Open WebSocket connections of this process."
)
subscriptions = Gauge(
    "cliffracer_websocket_subscriptions",
    "NATS subscriptions this process holds for its sockets (one per distinct pattern).",
)
frames_in = Counter(
    "cliffracer_websocket_frames_in_total",
    "Frames received from clients, by frame type ('bad' for unreadable ones).",
    ["type"],
)
frames_out = Counter(
    "cliffracer_websocket_frames_out_total",
    "Frames handed to sockets, by kind (event, reply, error, other).",
    ["kind"],
)
closes = Counter(
    "cliffracer_websocket_closes_total",
    "Sockets the server closed, by close code (4401, 4400, 4429).",
    ["code"],
)
dropped_events = Counter(
    "cliffracer_websocket_dropped_events_total",
    "Events not delivered to a slow socket (policy 'drop') or to one being closed as slow.",
)

FRAME_TYPES = ("auth", "subscribe", "unsubscribe", "call", "publish", "ping", "bad")
# Bound children, made once: labels() costs a dict lookup and a lock on every call.
frames_in_by_type = {name: frames_in.labels(name) for name in FRAME_TYPES}
events_out = frames_out.labels("event")
replies_out = frames_out.labels("reply")
errors_out = frames_out.labels("error")
other_out = frames_out.labels("other")


def _samples(metric: Counter | Gauge) -> dict[tuple[str, ...], float]:
    """The values of ``metric`` by label values (a counter's ``_total`` samples only)."""
    values: dict[tuple[str, ...], float] = {}
    for family in metric.collect():
        wanted = family.name + "_total" if family.type == "counter" else family.name
        for sample in family.samples:
            if sample.name == wanted:
                values[tuple(sample.labels.values())] = sample.value
    return values


def read_into(figures: Figures, process: str) -> None:
    """Add this process's WebSocket figures to ``figures`` under ``process`` (what the push
    exporters of the web process send; read in their threads, off the sockets' path)."""
    for series, metric in (
        (figures.sockets, connections),
        (figures.socket_subscriptions, subscriptions),
        (figures.frames_in, frames_in),
        (figures.frames_out, frames_out),
        (figures.socket_closes, closes),
        (figures.socket_dropped_events, dropped_events),
    ):
        for labels, value in _samples(metric).items():
            series[(process, *labels)] = value
