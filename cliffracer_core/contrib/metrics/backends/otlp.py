"""Push the figures as OpenTelemetry metrics over OTLP/HTTP (protobuf), to a Collector or any
OTLP intake.

The figures are cumulative counts since the service started, which is OTLP's cumulative
temporality: each push is the whole state, so a push lost costs nothing but its moment.
Names follow OpenTelemetry's style (``cliffracer.rpc.requests``, ``cliffracer.rpc.duration``
in seconds with the same bucket bounds as Prometheus; the call policies' ``cliffracer.calls``,
``cliffracer.call.retries``, ``.rejections``, ``.fallbacks`` and the gauge
``cliffracer.circuit_breaker.state``, by calling service and target; the web process's
``cliffracer.websocket.*``).
"""

from __future__ import annotations

import os
import time
import urllib.request
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2

from cliffracer_core.contrib.metrics.backends.base import MetricsExporter
from cliffracer_core.contrib.metrics.reading import Figures, Labels
from cliffracer_core.core.figures import DURATION_BUCKETS

CUMULATIVE = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE


def _attributes(names: tuple[str, ...], labels: Labels) -> list[KeyValue]:
    return [
        KeyValue(key=name, value=AnyValue(string_value=value))
        for name, value in zip(names, labels, strict=True)
    ]


class OtlpMetricsExporter(MetricsExporter):
    """Options: ``ENDPOINT`` (default ``OTEL_EXPORTER_OTLP_METRICS_ENDPOINT``, or
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` + ``/v1/metrics``), ``HEADERS`` (a dict, e.g. an API key),
    ``TIMEOUT`` (seconds, 10), ``INTERVAL`` (seconds, 60)."""

    name = "OTLP metrics exporter"

    def __init__(
        self,
        *,
        endpoint: str | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 10.0,
        interval: float = 60.0,
    ) -> None:
        super().__init__(interval=interval)
        base = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4318")
        self.endpoint = (
            endpoint
            or os.environ.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
            or base.rstrip("/") + "/v1/metrics"
        )
        self.headers = dict(headers or {})
        self.timeout = float(timeout)
        # The counts start when the service does; near enough, when its exporter is made.
        self.started_ns = time.time_ns()

    def push(self, figures: Figures) -> None:
        request = urllib.request.Request(
            self.endpoint,
            data=self.request(figures).SerializeToString(),
            headers={**self.headers, "Content-Type": "application/x-protobuf"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            response.read()

    def request(self, figures: Figures) -> ExportMetricsServiceRequest:
        """The OTLP request of ``figures``: one resource per service."""
        now = int(figures.clock * 1e9)
        exported = ExportMetricsServiceRequest()
        for service in figures.services():
            resource = exported.resource_metrics.add()
            resource.resource.attributes.extend(
                [KeyValue(key="service.name", value=AnyValue(string_value=service))]
            )
            scope = resource.scope_metrics.add()
            scope.scope.name = "cliffracer"
            mine = figures.only(service)
            self._sum(
                scope,
                "cliffracer.rpc.requests",
                "{request}",
                mine.requests,
                now,
                ("service", "endpoint", "code"),
            )
            self._sum(
                scope,
                "cliffracer.rpc.dropped",
                "{request}",
                mine.dropped,
                now,
                ("service", "endpoint", "reason"),
            )
            self._sum(
                scope,
                "cliffracer.events.handled",
                "{event}",
                mine.events,
                now,
                ("service", "subject", "outcome"),
            )
            self._sum(
                scope,
                "cliffracer.timer.runs",
                "{run}",
                mine.timers,
                now,
                ("service", "timer", "outcome"),
            )
            self._sum(
                scope,
                "cliffracer.nats.reconnects",
                "{reconnect}",
                mine.reconnects,
                now,
                ("service",),
            )
            calling = ("service", "target")
            self._sum(scope, "cliffracer.calls", "{call}", mine.calls, now, calling)
            self._sum(scope, "cliffracer.call.retries", "{retry}", mine.retries, now, calling)
            self._sum(
                scope,
                "cliffracer.call.rejections",
                "{call}",
                mine.rejections,
                now,
                (*calling, "reason"),
            )
            self._sum(scope, "cliffracer.call.fallbacks", "{call}", mine.fallbacks, now, calling)
            self._gauge(scope, "cliffracer.circuit_breaker.state", "1", mine.breakers, now, calling)
            self._gauge(
                scope, "cliffracer.rpc.in_flight", "{request}", mine.in_flight, now, ("service",)
            )
            if mine.sockets:  # only a web process that serves sockets has them
                self._gauge(
                    scope,
                    "cliffracer.websocket.connections",
                    "{connection}",
                    mine.sockets,
                    now,
                    ("service",),
                )
                self._gauge(
                    scope,
                    "cliffracer.websocket.subscriptions",
                    "{subscription}",
                    mine.socket_subscriptions,
                    now,
                    ("service",),
                )
                for name, values, names in (
                    ("cliffracer.websocket.frames_in", mine.frames_in, ("service", "type")),
                    ("cliffracer.websocket.frames_out", mine.frames_out, ("service", "kind")),
                ):
                    self._sum(scope, name, "{frame}", values, now, names)
                self._sum(
                    scope,
                    "cliffracer.websocket.closes",
                    "{close}",
                    mine.socket_closes,
                    now,
                    ("service", "code"),
                )
                self._sum(
                    scope,
                    "cliffracer.websocket.dropped_events",
                    "{event}",
                    mine.socket_dropped_events,
                    now,
                    ("service",),
                )
            duration = scope.metrics.add(name="cliffracer.rpc.duration", unit="s")
            duration.histogram.aggregation_temporality = CUMULATIVE
            for labels, histogram in sorted(mine.durations.items()):
                point = duration.histogram.data_points.add(
                    start_time_unix_nano=self.started_ns,
                    time_unix_nano=now,
                    count=histogram.count,
                    sum=histogram.total_seconds,
                )
                point.explicit_bounds.extend(DURATION_BUCKETS)
                point.bucket_counts.extend(histogram.buckets)
                point.attributes.extend(_attributes(("service", "endpoint"), labels))
        return exported

    def _sum(
        self,
        scope: Any,
        name: str,
        unit: str,
        values: dict[Labels, float],
        now: int,
        names: tuple[str, ...],
    ) -> None:
        metric = scope.metrics.add(name=name, unit=unit)
        metric.sum.aggregation_temporality = CUMULATIVE
        metric.sum.is_monotonic = True
        for labels, value in sorted(values.items()):
            point = metric.sum.data_points.add(
                start_time_unix_nano=self.started_ns, time_unix_nano=now, as_int=int(value)
            )
            point.attributes.extend(_attributes(names, labels))

    def _gauge(
        self,
        scope: Any,
        name: str,
        unit: str,
        values: dict[Labels, float],
        now: int,
        names: tuple[str, ...],
    ) -> None:
        metric = scope.metrics.add(name=name, unit=unit)
        for labels, value in sorted(values.items()):
            point = metric.gauge.data_points.add(time_unix_nano=now, as_int=int(value))
            point.attributes.extend(_attributes(names, labels))
