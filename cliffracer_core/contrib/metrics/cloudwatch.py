"""CloudWatch: the metric data the exporter sends and the dashboard of the installed services
(docs/metrics.md#cloudwatch).

Each push sends the interval's figures under one namespace (``Cliffracer`` by default):
``Requests``, ``ClientErrors`` and ``ServerErrors`` by ``Service`` and ``Endpoint``;
``Responses`` by ``Service``, ``Endpoint`` and ``Code``; ``Latency`` (seconds) by ``Service``
and ``Endpoint`` as value/count arrays (each bucket's upper bound and its count), so CloudWatch
computes percentiles (``p95``) from them; ``InFlight`` and ``NatsReconnects`` by ``Service``;
``Events`` by ``Service``, ``Subject`` and ``Outcome``; ``TimerRuns`` by ``Service``, ``Timer``
and ``Outcome``; the call policies' ``Calls``, ``CallRetries``, ``CallFallbacks`` and
``CircuitBreakerState`` (0 closed, 1 half-open, 2 open) by ``Service`` (the caller) and
``Target``, and ``CallRejections`` by ``Service``, ``Target`` and ``Reason``. Several instances
of a service send to the same series, and CloudWatch adds their data points up (``Sum``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from cliffracer_core.contrib.metrics.reading import Figures
from cliffracer_core.core.errors import CLIENT_ERROR, error_class
from cliffracer_core.core.figures import DURATION_BUCKETS

NAMESPACE = "Cliffracer"
# Latency beyond the last bound (10 s) is sent as this value.
OVERFLOW_SECONDS = 30.0


def _datum(name: str, dimensions: dict[str, str], clock: float, unit: str, **value: Any):
    return {
        "MetricName": name,
        "Dimensions": [{"Name": key, "Value": value[:255]} for key, value in dimensions.items()],
        "Timestamp": clock,
        "Unit": unit,
        **value,
    }


def metric_data(increase: Figures) -> list[dict[str, Any]]:
    """The ``MetricData`` entries of one interval (``increase``: its counters' increase)."""
    clock = increase.clock
    data: list[dict[str, Any]] = []
    totals: dict[tuple[str, str], list[float]] = {}
    for (service, endpoint, code), count in sorted(increase.requests.items()):
        where = {"Service": service, "Endpoint": endpoint}
        data.append(
            _datum("Responses", {**where, "Code": code}, clock, "Count", Value=float(count))
        )
        # [requests, client errors, server errors]
        counts = totals.setdefault((service, endpoint), [0.0, 0.0, 0.0])
        counts[0] += count
        if code != "200":
            counts[1 if _client(code) else 2] += count
    for (service, endpoint), (requests, client, server) in sorted(totals.items()):
        where = {"Service": service, "Endpoint": endpoint}
        data.append(_datum("Requests", where, clock, "Count", Value=requests))
        data.append(_datum("ClientErrors", where, clock, "Count", Value=client))
        data.append(_datum("ServerErrors", where, clock, "Count", Value=server))
    for (service, endpoint), histogram in sorted(increase.durations.items()):
        bounds = (*DURATION_BUCKETS, OVERFLOW_SECONDS)
        pairs = [(b, float(c)) for b, c in zip(bounds, histogram.buckets, strict=True) if c]
        if pairs:
            data.append(
                _datum(
                    "Latency",
                    {"Service": service, "Endpoint": endpoint},
                    clock,
                    "Seconds",
                    Values=[bound for bound, _ in pairs],
                    Counts=[count for _, count in pairs],
                )
            )
    for (service,), value in sorted(increase.in_flight.items()):
        data.append(_datum("InFlight", {"Service": service}, clock, "Count", Value=value))
    for (service,), value in sorted(increase.reconnects.items()):
        data.append(_datum("NatsReconnects", {"Service": service}, clock, "Count", Value=value))
    for (service, subject, outcome), count in sorted(increase.events.items()):
        where = {"Service": service, "Subject": subject, "Outcome": outcome}
        data.append(_datum("Events", where, clock, "Count", Value=float(count)))
    for (service, timer, outcome), count in sorted(increase.timers.items()):
        where = {"Service": service, "Timer": timer, "Outcome": outcome}
        data.append(_datum("TimerRuns", where, clock, "Count", Value=float(count)))
    for name, series in (
        ("Calls", increase.calls),
        ("CallRetries", increase.retries),
        ("CallFallbacks", increase.fallbacks),
        ("CircuitBreakerState", increase.breakers),
    ):
        unit = "None" if name == "CircuitBreakerState" else "Count"
        for (service, target), value in sorted(series.items()):
            where = {"Service": service, "Target": target}
            data.append(_datum(name, where, clock, unit, Value=float(value)))
    for (service, target, reason), count in sorted(increase.rejections.items()):
        where = {"Service": service, "Target": target, "Reason": reason}
        data.append(_datum("CallRejections", where, clock, "Count", Value=float(count)))
    # The web process's sockets (docs/metrics.md#push-exporters).
    for name, series, dimension in (
        ("WebSocketConnections", increase.sockets, None),
        ("WebSocketSubscriptions", increase.socket_subscriptions, None),
        ("WebSocketFramesIn", increase.frames_in, "Type"),
        ("WebSocketFramesOut", increase.frames_out, "Kind"),
        ("WebSocketCloses", increase.socket_closes, "Code"),
        ("WebSocketDroppedEvents", increase.socket_dropped_events, None),
    ):
        for labels, value in sorted(series.items()):
            where = {"Service": labels[0]}
            if dimension is not None:
                where[dimension] = labels[1]
            data.append(_datum(name, where, clock, "Count", Value=float(value)))
    return data


def _client(code: str) -> bool:
    return code.isdigit() and error_class(int(code)) == CLIENT_ERROR


def dashboard(
    services: Iterable[tuple[str, list[str]]], *, namespace: str = NAMESPACE, region: str
) -> dict[str, Any]:
    """The ``DashboardBody`` of a dashboard with a row per service: requests, errors (server
    and client apart) and p95 latency by endpoint, and requests in flight."""
    widgets: list[dict[str, Any]] = []
    y = 0
    for service, endpoints in services:

        def metrics(name: str, *, stat: str = "Sum", service: str = service, endpoints=endpoints):
            return [
                [namespace, name, "Service", service, "Endpoint", endpoint, {"stat": stat}]
                for endpoint in endpoints
            ]

        row = [
            ("Requests", metrics("Requests")),
            ("Server errors (5xx)", metrics("ServerErrors")),
            ("Client errors (4xx)", metrics("ClientErrors")),
            ("Latency p95 (s)", metrics("Latency", stat="p95")),
        ]
        for column, (title, series) in enumerate(row):
            widgets.append(
                {
                    "type": "metric",
                    "x": column * 6,
                    "y": y,
                    "width": 6,
                    "height": 6,
                    "properties": {
                        "title": f"{service}: {title}",
                        "metrics": series
                        or [[namespace, "InFlight", "Service", service, {"stat": "Maximum"}]],
                        "view": "timeSeries",
                        "region": region,
                        "period": 60,
                    },
                }
            )
        y += 6
    return {"widgets": widgets}


def render(body: dict[str, Any]) -> str:
    return json.dumps(body, indent=2) + "\n"
