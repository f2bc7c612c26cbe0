"""What a running service records for its metrics: plain counts, no Prometheus objects.

Each ``ServiceRunner`` owns a ``ServiceMetrics`` with one recorder per endpoint, event handler
and timer, made once when the runner is built. The runner's event-loop thread is their only
writer, so recording needs no lock and no label lookup: an RPC costs a ``bisect`` and a few
integer additions (about 0.2 µs), where prometheus_client's ``Counter.inc`` plus
``Histogram.observe`` on pre-bound children take four locks (about 1.4 µs on the benchmark
machine). ``metrics.registry`` turns these counts into Prometheus families when scraped.

This module imports nothing but the standard library and the core's errors, so the runner
depends on no exporter.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable

from cliffracer_core.core.errors import CLIENT_ERROR, error_class

# Upper bounds of the RPC latency histogram, in seconds: 100 µs (a handler that does no I/O)
# to 10 s (beyond RPC_TIMEOUT's default of 5 s, so timeouts land in a bucket of their own).
DURATION_BUCKETS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
# The same bounds in nanoseconds: the runner measures in ns, and integers compare fastest.
BOUNDS_NS: tuple[int, ...] = tuple(round(bound * 1e9) for bound in DURATION_BUCKETS)

# The ``code`` of a successful reply; errors carry their ADR-32 code (400, 404, 500 …).
SUCCESS_CODE = 200

# "refused": its publisher may not publish to the handler (docs/security.md); "duplicate": a
# durable event the handler had processed already, skipped.
EVENT_OUTCOMES = ("ok", "rejected", "error", "refused", "duplicate")
TIMER_OUTCOMES = ("ok", "error")


class EndpointMetrics:
    """Reply codes and latency histogram of one RPC endpoint."""

    __slots__ = ("buckets", "duration_ns", "codes", "expired", "overflowed")

    def __init__(self) -> None:
        # One slot per bound plus +Inf, not cumulative: the exporter adds them up.
        self.buckets = [0] * (len(BOUNDS_NS) + 1)
        self.duration_ns = 0
        self.codes: dict[int, int] = {SUCCESS_CODE: 0}
        # Requests dropped unanswered: their callers had stopped waiting when their turn came,
        # or they came faster than the service could even refuse them.
        self.expired = 0
        self.overflowed = 0

    def record(self, elapsed_ns: int, code: int = SUCCESS_CODE) -> None:
        """Count one answered request that took ``elapsed_ns``."""
        # bisect_left finds the first bound >= elapsed: Prometheus buckets are "less or equal".
        self.buckets[bisect_left(BOUNDS_NS, elapsed_ns)] += 1
        self.duration_ns += elapsed_ns
        self.codes[code] = self.codes.get(code, 0) + 1

    def error_counts(self) -> tuple[int, int]:
        """Error replies so far: (client errors, 4xx; server errors, every other code)."""
        client = server = 0
        # A copy: the exporter's thread calls this while the loop thread records.
        for code, count in self.codes.copy().items():
            if code == SUCCESS_CODE:
                continue
            if error_class(code) == CLIENT_ERROR:
                client += count
            else:
                server += count
        return client, server


class ServiceMetrics:
    """Everything one running service instance records; written by its event loop only."""

    def __init__(
        self,
        *,
        service: str,
        version: str,
        instance_id: str,
        endpoints: Iterable[str],
        events: Iterable[tuple[str, str]],
        timers: Iterable[str],
        in_flight: Callable[[], int],
        reconnects: Callable[[], int],
    ) -> None:
        """``events`` holds (handler, subscribed subject) pairs. ``in_flight`` and
        ``reconnects`` are called when the metrics are scraped, from the exporter's thread."""
        self.service = service
        self.version = version
        self.instance_id = instance_id
        self.endpoints = {name: EndpointMetrics() for name in endpoints}
        # Requests for endpoints the service does not have: one count, whatever the name.
        self.unknown_endpoint = 0
        self.event_subjects = dict(events)
        self.events = {handler: dict.fromkeys(EVENT_OUTCOMES, 0) for handler in self.event_subjects}
        self.timers = {name: dict.fromkeys(TIMER_OUTCOMES, 0) for name in timers}
        self.in_flight = in_flight
        self.reconnects = reconnects
