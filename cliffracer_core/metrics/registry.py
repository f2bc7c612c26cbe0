"""The Prometheus families of running services, in prometheus_client's default registry.

``collector`` reads the ``ServiceMetrics`` of every tracked service when the exporter is
scraped and yields standard counter, gauge and histogram families. It lives in the default
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

from cliffracer_core.metrics.recorder import DURATION_BUCKETS, ServiceMetrics

# Requests for an endpoint the service does not have share one label value, so that callers
# sending arbitrary subjects cannot create unbounded series.
UNKNOWN_ENDPOINT = "(unknown)"

# Family names (counters without their ``_total``) and help texts.
RPC_REQUESTS = "cliffracer_rpc_requests"
RPC_DURATION = "cliffracer_rpc_duration_seconds"
RPC_IN_FLIGHT = "cliffracer_rpc_in_flight"
EVENTS_HANDLED = "cliffracer_events_handled"
TIMER_RUNS = "cliffracer_timer_runs"
NATS_RECONNECTS = "cliffracer_nats_reconnects"
SERVICE_INFO = "cliffracer_service_info"

HELP = {
    RPC_REQUESTS: "RPC requests answered, by endpoint and reply code (200 = success).",
    RPC_DURATION: "Seconds from receiving an RPC request to its reply being ready.",
    RPC_IN_FLIGHT: "RPC requests being handled now.",
    EVENTS_HANDLED: "Events handled, by subscribed subject and outcome (ok, rejected, error).",
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

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            services = list(self._services)
        requests: dict[Labels, float] = {}
        histograms: dict[Labels, tuple[list[int], int]] = {}
        in_flight: dict[Labels, float] = {}
        events: dict[Labels, float] = {}
        timers: dict[Labels, float] = {}
        reconnects: dict[Labels, float] = {}
        info: dict[Labels, float] = {}
        # Several runners of one service share a process only in tests; their series add up.
        for metrics in services:
            name = metrics.service
            for endpoint, recorded in metrics.endpoints.items():
                # Copying a list or dict is one C-level step under the GIL, so the loop
                # thread never changes one halfway; the sum may trail the buckets by a request.
                buckets = list(recorded.buckets)
                for code, count in recorded.codes.copy().items():
                    _add(requests, (name, endpoint, str(code)), count)
                previous, total_ns = histograms.get((name, endpoint), ([0] * len(buckets), 0))
                histograms[(name, endpoint)] = (
                    [a + b for a, b in zip(previous, buckets, strict=True)],
                    total_ns + recorded.duration_ns,
                )
            if metrics.unknown_endpoint:
                _add(requests, (name, UNKNOWN_ENDPOINT, "404"), metrics.unknown_endpoint)
            for handler, outcomes in metrics.events.items():
                subject = metrics.event_subjects[handler]
                for outcome, count in outcomes.copy().items():
                    _add(events, (name, subject, outcome), count)
            for timer, outcomes in metrics.timers.items():
                for outcome, count in outcomes.copy().items():
                    _add(timers, (name, timer, outcome), count)
            _add(in_flight, (name,), metrics.in_flight())
            _add(reconnects, (name,), metrics.reconnects())
            info[(name, metrics.version, metrics.instance_id)] = 1
        exported = families()
        for family_name, values in (
            (RPC_REQUESTS, requests),
            (RPC_IN_FLIGHT, in_flight),
            (EVENTS_HANDLED, events),
            (TIMER_RUNS, timers),
            (NATS_RECONNECTS, reconnects),
            (SERVICE_INFO, info),
        ):
            for labels, value in sorted(values.items()):
                exported[family_name].add_metric(list(labels), value)
        for labels, (buckets, total_ns) in sorted(histograms.items()):
            cumulative = 0
            points: list[tuple[str, float]] = []
            for bound, count in zip(_BUCKET_LABELS, buckets, strict=True):
                cumulative += count
                points.append((bound, cumulative))
            exported[RPC_DURATION].add_metric(list(labels), points, total_ns / 1e9)
        return list(exported.values())


def _add(values: dict[Labels, float], key: Labels, count: float) -> None:
    values[key] = values.get(key, 0) + count


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
