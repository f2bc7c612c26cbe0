"""The Prometheus families of the call policies this process applies (docs/resilience.md).

``CallCollector`` reads the scopes of ``core.resilience`` when scraped: calls, retries,
rejections by the breaker or the bulkhead, fallbacks, and each breaker's state. It is in the
default registry of every process that exports metrics (runservice and the web process), since
any of them calls other services.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cliffracer_core.core.breaker import STATE_VALUES
from cliffracer_core.core.resilience import call_figures

CALLS = "cliffracer_calls"
RETRIES = "cliffracer_call_retries"
REJECTIONS = "cliffracer_call_rejections"
FALLBACKS = "cliffracer_call_fallbacks"
BREAKER_STATE = "cliffracer_circuit_breaker_state"

HELP = {
    CALLS: "Calls made under a call policy, by target (a service, or a service.method).",
    RETRIES: "Retries sent, by target.",
    REJECTIONS: (
        "Calls refused in this process without being sent, by target and reason "
        "(circuit_open, bulkhead_full)."
    ),
    FALLBACKS: "Failed calls a fallback answered, by target.",
    BREAKER_STATE: "The target's circuit breaker: 0 closed, 1 half-open, 2 open.",
}


class CallCollector(Collector):
    """Exports the figures of every call-policy scope of this process."""

    def describe(self) -> Iterable[Metric]:
        return list(families().values())

    def collect(self) -> Iterable[Metric]:
        exported = families()
        for target, figures in sorted(call_figures().items()):
            exported[CALLS].add_metric([target], figures["calls"])
            exported[RETRIES].add_metric([target], figures["retries"])
            for reason, count in sorted(figures["rejected"].items()):
                exported[REJECTIONS].add_metric([target, reason], count)
            exported[FALLBACKS].add_metric([target], figures["fallbacks"])
            exported[BREAKER_STATE].add_metric([target], STATE_VALUES[figures["state"]])
        return list(exported.values())


def families() -> dict[str, Metric]:
    """Empty families of every metric the collector exports, by family name."""
    return {
        CALLS: CounterMetricFamily(CALLS, HELP[CALLS], labels=["target"]),
        RETRIES: CounterMetricFamily(RETRIES, HELP[RETRIES], labels=["target"]),
        REJECTIONS: CounterMetricFamily(REJECTIONS, HELP[REJECTIONS], labels=["target", "reason"]),
        FALLBACKS: CounterMetricFamily(FALLBACKS, HELP[FALLBACKS], labels=["target"]),
        BREAKER_STATE: GaugeMetricFamily(BREAKER_STATE, HELP[BREAKER_STATE], labels=["target"]),
    }


collector = CallCollector()
REGISTRY.register(collector)
