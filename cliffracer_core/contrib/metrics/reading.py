"""One reading of every figure a process records: the source each exporter turns into its own form.

The Prometheus collector, the push exporters (OpenTelemetry, Zabbix, CloudWatch) and their
generated templates and dashboards all read ``read_figures``, so they can never disagree on what
was counted. A reading copies the counts (each copy is one C-level step under the GIL, so the
event-loop thread that records them is never stopped or locked) and adds up the runners of one
service, which share a process only in tests.

The call policies' figures (``core.resilience``) belong to the process, not to a runner: they
are read under the process's service, the caller (when several services share a process, as in
tests, under the first by name). The Prometheus collector exports them on their own
(``metrics.calls``), labelled by target only, since a scrape already names the process.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from typing import Any

from cliffracer_core.core.breaker import STATE_VALUES
from cliffracer_core.core.figures import DURATION_BUCKETS, ServiceMetrics
from cliffracer_core.core.resilience import call_figures

# Requests for an endpoint the service does not have share one label value, so that callers
# sending arbitrary subjects cannot create unbounded series.
UNKNOWN_ENDPOINT = "(unknown)"

Labels = tuple[str, ...]


@dataclass
class Histogram:
    """Latency of one endpoint: counts per bucket (not cumulative; the last is +Inf) and sum."""

    buckets: list[int]
    total_seconds: float

    @property
    def count(self) -> int:
        return sum(self.buckets)

    def quantile(self, share: float) -> float | None:
        """The upper bound of the bucket holding the ``share`` quantile (None when empty); the
        +Inf bucket reads as the largest finite bound."""
        count = self.count
        if not count:
            return None
        wanted = share * count
        seen = 0
        bounds = (*DURATION_BUCKETS, DURATION_BUCKETS[-1])
        for bound, bucket in zip(bounds, self.buckets, strict=True):
            seen += bucket
            if seen >= wanted:
                return bound
        return DURATION_BUCKETS[-1]


@dataclass
class Figures:
    """Every figure of the process at ``clock`` (seconds since the epoch), by label tuple.

    Counters are cumulative since each service started; gauges are values at ``clock``.
    """

    clock: float
    # (service, endpoint, code) -> requests answered
    requests: dict[Labels, float] = field(default_factory=dict)
    # (service, endpoint) -> latency histogram
    durations: dict[Labels, Histogram] = field(default_factory=dict)
    # (service,) -> requests being handled
    in_flight: dict[Labels, float] = field(default_factory=dict)
    # (service, endpoint, reason) -> requests dropped unanswered
    dropped: dict[Labels, float] = field(default_factory=dict)
    # (service, subscribed subject, outcome) -> events handled
    events: dict[Labels, float] = field(default_factory=dict)
    # (service, timer, outcome) -> timer runs
    timers: dict[Labels, float] = field(default_factory=dict)
    # (service,) -> NATS reconnects
    reconnects: dict[Labels, float] = field(default_factory=dict)
    # (service, version, instance id) -> 1
    info: dict[Labels, float] = field(default_factory=dict)
    # (calling service, target) -> calls made under a call policy
    calls: dict[Labels, float] = field(default_factory=dict)
    # (calling service, target) -> retries sent
    retries: dict[Labels, float] = field(default_factory=dict)
    # (calling service, target, reason) -> calls refused without being sent
    rejections: dict[Labels, float] = field(default_factory=dict)
    # (calling service, target) -> failed calls a fallback answered
    fallbacks: dict[Labels, float] = field(default_factory=dict)
    # (calling service, target) -> the target's circuit breaker: 0 closed, 1 half-open, 2 open
    breakers: dict[Labels, float] = field(default_factory=dict)
    # The web process's WebSocket figures (``contrib.channels.metrics``), by process name:
    # (process,) -> open sockets
    sockets: dict[Labels, float] = field(default_factory=dict)
    # (process,) -> NATS subscriptions held for the sockets
    socket_subscriptions: dict[Labels, float] = field(default_factory=dict)
    # (process, frame type) -> frames received
    frames_in: dict[Labels, float] = field(default_factory=dict)
    # (process, kind) -> frames handed to sockets
    frames_out: dict[Labels, float] = field(default_factory=dict)
    # (process, close code) -> sockets the server closed
    socket_closes: dict[Labels, float] = field(default_factory=dict)
    # (process,) -> events a slow socket did not get
    socket_dropped_events: dict[Labels, float] = field(default_factory=dict)

    def services(self) -> list[str]:
        """The names of the services read, sorted."""
        return sorted({labels[0] for labels in self.info})

    def endpoints(self, service: str) -> list[str]:
        """The endpoints of ``service`` with a latency series, sorted."""
        return sorted(endpoint for name, endpoint in self.durations if name == service)

    def targets(self, service: str) -> list[str]:
        """The targets ``service`` calls under a call policy, sorted."""
        return sorted(target for name, target in self.calls if name == service)

    def only(self, service: str) -> Figures:
        """The figures of one service."""

        def mine(values: dict[Labels, Any]) -> dict[Labels, Any]:
            return {labels: value for labels, value in values.items() if labels[0] == service}

        return Figures(
            clock=self.clock,
            **{name: mine(getattr(self, name)) for name in SERIES},
        )


# The label-keyed series of ``Figures``; the gauges among them are values at the clock, the
# rest (but the histograms) counters.
SERIES = tuple(found.name for found in fields(Figures) if found.name != "clock")
GAUGES = ("in_flight", "info", "breakers", "sockets", "socket_subscriptions")


def increase(current: Figures, previous: Figures | None) -> Figures:
    """The counters' increase from ``previous`` to ``current`` (gauges as in ``current``): what
    the push exporters that send per-interval values (Zabbix, CloudWatch) send. A series that
    went down (its process restarted) counts from zero."""
    if previous is None:
        return current

    def minus(now: dict[Labels, float], before: dict[Labels, float]) -> dict[Labels, float]:
        return {
            labels: value - before.get(labels, 0) if value >= before.get(labels, 0) else value
            for labels, value in now.items()
        }

    durations: dict[Labels, Histogram] = {}
    for labels, histogram in current.durations.items():
        earlier = previous.durations.get(labels)
        if earlier is None or earlier.count > histogram.count:
            durations[labels] = histogram
            continue
        durations[labels] = Histogram(
            [a - b for a, b in zip(histogram.buckets, earlier.buckets, strict=True)],
            histogram.total_seconds - earlier.total_seconds,
        )
    counters = {
        name: minus(getattr(current, name), getattr(previous, name))
        for name in SERIES
        if name not in (*GAUGES, "durations")
    }
    gauges = {name: getattr(current, name) for name in GAUGES}
    return Figures(clock=current.clock, durations=durations, **counters, **gauges)


def read_figures(services: Iterable[ServiceMetrics]) -> Figures:
    """Read the figures of ``services`` now."""
    figures = Figures(clock=time.time())
    for metrics in services:
        name = metrics.service
        for endpoint, recorded in metrics.endpoints.items():
            # The sum may trail the buckets by a request: the loop thread records meanwhile.
            buckets = list(recorded.buckets)
            for code, count in recorded.codes.copy().items():
                _add(figures.requests, (name, endpoint, str(code)), count)
            _add(figures.dropped, (name, endpoint, "expired"), recorded.expired)
            _add(figures.dropped, (name, endpoint, "overflowed"), recorded.overflowed)
            previous = figures.durations.get((name, endpoint))
            if previous is None:
                figures.durations[(name, endpoint)] = Histogram(buckets, recorded.duration_ns / 1e9)
            else:
                previous.buckets = [a + b for a, b in zip(previous.buckets, buckets, strict=True)]
                previous.total_seconds += recorded.duration_ns / 1e9
        if metrics.unknown_endpoint:
            _add(figures.requests, (name, UNKNOWN_ENDPOINT, "404"), metrics.unknown_endpoint)
        for handler, outcomes in metrics.events.items():
            subject = metrics.event_subjects[handler]
            for outcome, count in outcomes.copy().items():
                _add(figures.events, (name, subject, outcome), count)
        for timer, outcomes in metrics.timers.items():
            for outcome, count in outcomes.copy().items():
                _add(figures.timers, (name, timer, outcome), count)
        _add(figures.in_flight, (name,), metrics.in_flight())
        _add(figures.reconnects, (name,), metrics.reconnects())
        figures.info[(name, metrics.version, metrics.instance_id)] = 1
    services = figures.services()
    if services:
        read_calls(figures, services[0])
    return figures


def read_process(name: str, *, version: str, instance_id: str) -> Figures:
    """The figures of a process that runs no service (the web process, the Celery worker),
    under ``name``: its info and the call policies' figures of the calls it makes. Its own
    series (WebSocket, tasks) are added by whoever records them."""
    figures = Figures(clock=time.time())
    figures.info[(name, version, instance_id)] = 1
    read_calls(figures, name)
    return figures


def read_calls(figures: Figures, caller: str) -> None:
    """Add this process's call-policy figures to ``figures``, as made by ``caller``."""
    for target, counts in call_figures().items():
        figures.calls[(caller, target)] = counts["calls"]
        figures.retries[(caller, target)] = counts["retries"]
        for reason, count in counts["rejected"].items():
            figures.rejections[(caller, target, reason)] = count
        figures.fallbacks[(caller, target)] = counts["fallbacks"]
        figures.breakers[(caller, target)] = STATE_VALUES[counts["state"]]


def _add(values: dict[Labels, float], key: Labels, count: float) -> None:
    values[key] = values.get(key, 0) + count
