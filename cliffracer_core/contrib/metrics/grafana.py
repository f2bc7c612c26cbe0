"""A Grafana dashboard for the installed services, over the metrics runservice exports.

The dashboard picks its Prometheus data source through a ``datasource`` template variable
rather than a fixed uid, so the same JSON imports through Grafana's UI, its HTTP API and file
provisioning alike, whatever the data source is called there.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cliffracer_core.contrib.metrics.registry import (
    EVENTS_HANDLED,
    NATS_RECONNECTS,
    RPC_DURATION,
    RPC_IN_FLIGHT,
    RPC_REQUESTS,
    SERVICE_INFO,
    TIMER_RUNS,
)

# The dashboard JSON model this builder writes (Grafana 10 and later read it as it is).
SCHEMA_VERSION = 39
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Grafana lays panels out on a grid 24 columns wide.
GRID_WIDTH = 24
PANEL_HEIGHT = 8
QUANTILES = (0.5, 0.95, 0.99)
RATE = "[$__rate_interval]"
# The two classes of error replies by their code label (cliffracer_core.core.errors): 4xx are
# refusals the service's contract provides for, every other error code a failure. Success is 200.
CLIENT_ERRORS = 'code=~"4.."'
SERVER_ERRORS = 'code!~"2..|4.."'


@dataclass
class ServiceSpec:
    """What the dashboard shows of one service: its name and which kinds of handler it has."""

    name: str
    has_rpcs: bool = True
    has_events: bool = False
    has_timers: bool = False


def services_from_classes(service_classes: Iterable[Any]) -> list[ServiceSpec]:
    """Specs of ``Service`` subclasses, e.g. of ``service_app_configs()``."""
    return [
        ServiceSpec(
            name=service_class.service_name(),
            has_rpcs=bool(service_class.rpcs()),
            has_events=bool(service_class.events()),
            has_timers=bool(service_class.timers()),
        )
        for service_class in service_classes
    ]


def dashboard(
    services: list[ServiceSpec],
    *,
    title: str = "Cliffracer services",
    uid: str = "cliffracer-services",
) -> dict[str, Any]:
    """The dashboard: an overview row, then a row per service."""
    layout = _Layout()
    layout.row("Overview")
    layout.panel(
        "Instances by service",
        [(f"count by (service) ({SERVICE_INFO})", "{{service}}")],
        unit="short",
    )
    layout.panel(
        "Requests/s by service",
        [(f"sum by (service) (rate({RPC_REQUESTS}_total{RATE}))", "{{service}}")],
        unit="reqps",
    )
    layout.panel(
        "NATS reconnects",
        [(f"sum by (service) (increase({NATS_RECONNECTS}_total{RATE}))", "{{service}}")],
        unit="short",
    )
    layout.panel(
        "Server errors/s (5xx) by service",
        [
            (
                f"sum by (service) (rate({RPC_REQUESTS}_total{{{SERVER_ERRORS}}}{RATE}))",
                "{{service}}",
            )
        ],
        unit="reqps",
        width=12,
    )
    layout.panel(
        "Client errors/s (4xx) by service",
        [
            (
                f"sum by (service) (rate({RPC_REQUESTS}_total{{{CLIENT_ERRORS}}}{RATE}))",
                "{{service}}",
            )
        ],
        unit="reqps",
        width=12,
    )
    for service in sorted(services, key=lambda spec: spec.name):
        selector = f'service="{_escape(service.name)}"'
        layout.row(service.name)
        if service.has_rpcs:
            layout.panel(
                "Requests/s",
                [
                    (
                        f"sum by (endpoint) (rate({RPC_REQUESTS}_total{{{selector}}}{RATE}))",
                        "{{endpoint}}",
                    )
                ],
                unit="reqps",
            )
            for panel_title, errors in (
                ("Server errors/s (5xx)", SERVER_ERRORS),
                ("Client errors/s (4xx)", CLIENT_ERRORS),
            ):
                layout.panel(
                    panel_title,
                    [
                        (
                            f"sum by (endpoint, code) "
                            f"(rate({RPC_REQUESTS}_total{{{selector}, {errors}}}{RATE}))",
                            "{{endpoint}} {{code}}",
                        )
                    ],
                    unit="reqps",
                )
            layout.panel(
                "Latency",
                [
                    (
                        f"histogram_quantile({quantile}, sum by (le) "
                        f"(rate({RPC_DURATION}_bucket{{{selector}}}{RATE})))",
                        f"p{round(quantile * 100)}",
                    )
                    for quantile in QUANTILES
                ],
                unit="s",
                width=12,
            )
            layout.panel(
                "In flight",
                [(f"sum by (instance) ({RPC_IN_FLIGHT}{{{selector}}})", "{{instance}}")],
                unit="short",
                width=12,
            )
        if service.has_events:
            layout.panel(
                "Events/s",
                [
                    (
                        f"sum by (subject, outcome) "
                        f"(rate({EVENTS_HANDLED}_total{{{selector}}}{RATE}))",
                        "{{subject}} {{outcome}}",
                    )
                ],
                unit="ops",
                width=12,
            )
        if service.has_timers:
            layout.panel(
                "Timer runs",
                [
                    (
                        f"sum by (timer, outcome) "
                        f"(increase({TIMER_RUNS}_total{{{selector}}}{RATE}))",
                        "{{timer}} {{outcome}}",
                    )
                ],
                unit="short",
                width=12,
            )
    return {
        "title": title,
        "uid": uid,
        "description": (
            "RPC traffic, errors (5xx failures and 4xx refusals apart), latency and load of "
            "each Cliffracer service."
        ),
        "tags": ["cliffracer", "nats"],
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "timezone": "browser",
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "annotations": {"list": []},
        "links": [],
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                    "refresh": 1,
                    "regex": "",
                    "options": [],
                }
            ]
        },
        "panels": layout.panels,
    }


def render(board: dict[str, Any]) -> str:
    return json.dumps(board, indent=2) + "\n"


def expressions(board: dict[str, Any]) -> list[str]:
    """Every PromQL expression of the dashboard's panels."""
    return [
        target["expr"]
        for panel in board.get("panels", [])
        for target in panel.get("targets", [])
        if "expr" in target
    ]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


class _Layout:
    """Places rows and panels left to right, top to bottom, with unique ids."""

    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.x = 0
        self.y = 0
        self.next_id = 1

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def _new_line(self) -> None:
        if self.x:
            self.x = 0
            self.y += PANEL_HEIGHT

    def row(self, title: str) -> None:
        self._new_line()
        self.panels.append(
            {
                "id": self._id(),
                "type": "row",
                "title": title,
                "collapsed": False,
                "panels": [],
                "gridPos": {"h": 1, "w": GRID_WIDTH, "x": 0, "y": self.y},
            }
        )
        self.y += 1

    def panel(
        self, title: str, queries: list[tuple[str, str]], *, unit: str, width: int = 8
    ) -> None:
        if self.x + width > GRID_WIDTH:
            self._new_line()
        self.panels.append(
            {
                "id": self._id(),
                "type": "timeseries",
                "title": title,
                "datasource": DATASOURCE,
                "targets": [
                    {
                        "refId": chr(ord("A") + index),
                        "datasource": DATASOURCE,
                        "expr": expression,
                        "legendFormat": legend,
                        "range": True,
                    }
                    for index, (expression, legend) in enumerate(queries)
                ],
                "fieldConfig": {
                    "defaults": {"unit": unit, "min": 0, "custom": {"fillOpacity": 10}},
                    "overrides": [],
                },
                "options": {
                    "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "desc"},
                },
                "gridPos": {"h": PANEL_HEIGHT, "w": width, "x": self.x, "y": self.y},
            }
        )
        self.x += width
