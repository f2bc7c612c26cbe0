"""The Prometheus families of running services, in prometheus_client's default registry.

``collector`` reads the ``ServiceMetrics`` of every tracked service (``reading.read_figures``,
the source every exporter shares) when the exporter is scraped and yields standard counter,
gauge and histogram families. It lives in the default
registry because a runservice process is one service: that registry already carries the
process's CPU, memory and garbage-collector metrics, django-prometheus's database metrics and
any metric the service's own code defines with prometheus_client, so one scrape of the
process shows all of it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from prometheus_client import REGISTRY
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

# The call policies' families are exported beside the services' (docs/resilience.md).
from cliffracer_core.contrib.metrics import calls  # noqa: F401
from cliffracer_core.contrib.metrics.reading import read_figures
from cliffracer_core.core.figures import DURATION_BUCKETS, ServiceMetrics

# Family names (counters without their ``_total``) and help texts.
RPC_REQUESTS = "cliffracer_rpc_requests"
RPC_DURATION = "cliffracer_rpc_duration_seconds"
RPC_IN_FLIGHT = "cliffracer_rpc_in_flight"
RPC_DROPPED = "cliffracer_rpc_dropped"
EVENTS_HANDLED = "cliffracer_events_handled"
TIMER_RUNS = "cliffracer_timer_runs"
NATS_RECONNECTS = "cliffracer_nats_reconnects"
SERVICE_INFO = "cliffracer_service_info"

HELP = {
    RPC_REQUESTS: "RPC requests answered, by endpoint and reply code (200 = success).",
    RPC_DURATION: "Seconds from receiving an RPC request to its reply being ready.",
    RPC_IN_FLIGHT: "RPC requests being handled now.",
    RPC_DROPPED: (
        "RPC requests dropped unanswered, by reason: expired (their callers had stopped "
        "waiting) or overflowed (they came faster than the service could refuse them)."
    ),
    EVENTS_HANDLED: (
        "Events handled, by subscribed subject and outcome (ok, rejected, error, refused, "
        "duplicate)."
    ),
    TIMER_RUNS: "Timer runs, by timer and outcome (ok, error).",
    NATS_RECONNECTS: "Times the service's NATS connection was re-established.",
    SERVICE_INFO: "1 for each running service instance, with its version and instance id.",
}

_BUCKET_LABELS: tuple[str, ...] = (*map(floatToGoString, DURATION_BUCKETS), "+Inf")

Labels = tuple[str, ...]


class ServiceCollector(Collector):
    """Exports the ``ServiceMetrics`` of every service tracked in this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._services: list[ServiceMetrics] = []

    def track(self, metrics: ServiceMetrics) -> None:
        with self._lock:
            self._services.append(metrics)

    def untrack(self, metrics: ServiceMetrics) -> None:
        with self._lock:
            if metrics in self._services:
                self._services.remove(metrics)

    def describe(self) -> Iterable[Metric]:
        # Lets the registry check for clashing names without calling collect().
        return list(families().values())

    def services(self) -> list[ServiceMetrics]:
        """The figures of the services tracked now (the push exporters read them too)."""
        with self._lock:
            return list(self._services)

    def collect(self) -> Iterable[Metric]:
        figures = read_figures(self.services())
        exported = families()
        for family_name, values in (
            (RPC_REQUESTS, figures.requests),
            (RPC_IN_FLIGHT, figures.in_flight),
            (RPC_DROPPED, figures.dropped),
            (EVENTS_HANDLED, figures.events),
            (TIMER_RUNS, figures.timers),
            (NATS_RECONNECTS, figures.reconnects),
            (SERVICE_INFO, figures.info),
        ):
            for labels, value in sorted(values.items()):
                exported[family_name].add_metric(list(labels), value)
        for labels, histogram in sorted(figures.durations.items()):
            cumulative = 0
            points: list[tuple[str, float]] = []
            for bound, count in zip(_BUCKET_LABELS, histogram.buckets, strict=True):
                cumulative += count
                points.append((bound, cumulative))
            exported[RPC_DURATION].add_metric(list(labels), points, histogram.total_seconds)
        return list(exported.values())


def families() -> dict[str, Metric]:
    """Empty families of every metric the collector exports, by family name."""
    return {
        RPC_REQUESTS: CounterMetricFamily(
            RPC_REQUESTS, HELP[RPC_REQUESTS], labels=["service", "endpoint", "code"]
        ),
        RPC_DURATION: HistogramMetricFamily(
            RPC_DURATION, HELP[RPC_DURATION], labels=["service", "endpoint"]
        ),
        RPC_IN_FLIGHT: GaugeMetricFamily(RPC_IN_FLIGHT, HELP[RPC_IN_FLIGHT], labels=["service"]),
        RPC_DROPPED: CounterMetricFamily(
            RPC_DROPPED, HELP[RPC_DROPPED], labels=["service", "endpoint", "reason"]
        ),
        EVENTS_HANDLED: CounterMetricFamily(
            EVENTS_HANDLED, HELP[EVENTS_HANDLED], labels=["service", "subject", "outcome"]
        ),
        TIMER_RUNS: CounterMetricFamily(
            TIMER_RUNS, HELP[TIMER_RUNS], labels=["service", "timer", "outcome"]
        ),
        NATS_RECONNECTS: CounterMetricFamily(
            NATS_RECONNECTS, HELP[NATS_RECONNECTS], labels=["service"]
        ),
        # "instance_id", not "instance": Prometheus sets "instance" on every scraped series.
        SERVICE_INFO: GaugeMetricFamily(
            SERVICE_INFO, HELP[SERVICE_INFO], labels=["service", "version", "instance_id"]
        ),
    }


collector = ServiceCollector()
REGISTRY.register(collector)
