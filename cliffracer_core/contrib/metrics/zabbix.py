"""Zabbix: what the exporter sends and the template that receives it (docs/metrics.md#zabbix).

One Zabbix host per service (``cliffracer-orders``), whichever instance sends: each instance
pushes its own per-interval increases (requests, errors by class, events, timer runs) and the
interval's p95 latency, so sums over a time window (``sum(...,5m)``, what the triggers use) add
up across instances. Endpoints, event subjects and timers are found by low-level discovery: the
exporter sends ``{#ENDPOINT}``, ``{#SUBJECT}``, ``{#TIMER}`` and ``{#TARGET}`` lists to trapper
discovery rules, so a new endpoint appears in Zabbix by itself. ``{#TARGET}`` is a service or a
``service.method`` this service calls under a call policy (docs/resilience.md): its calls,
retries, rejections and fallbacks per interval and its circuit breaker's state, with a trigger
while the breaker is open.

This module builds the keys, the values and the template (a Zabbix 6.0 export: discovery rules,
item, trigger and graph prototypes, a "no data" trigger and a template dashboard); the exporter
(``backends.zabbix``) and the commands (``zabbix_template``, ``zabbix_sync``) use it.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

from cliffracer_core.contrib.metrics.reading import Figures
from cliffracer_core.core.errors import CLIENT_ERROR, error_class

TEMPLATE = "Cliffracer service"
TEMPLATE_GROUP = "Templates/Applications"
HOST_GROUP = "Cliffracer services"
HOST_FORMAT = "cliffracer-{service}"

ENDPOINTS_RULE = "cliffracer.endpoints"
EVENTS_RULE = "cliffracer.events"
TIMERS_RULE = "cliffracer.timers"
CALLS_RULE = "cliffracer.calls"

IN_FLIGHT = "cliffracer.rpc.in_flight"
RECONNECTS = "cliffracer.nats.reconnects"
REQUESTS = "cliffracer.rpc.requests[{}]"
CLIENT_ERRORS = "cliffracer.rpc.client_errors[{}]"
SERVER_ERRORS = "cliffracer.rpc.server_errors[{}]"
P95 = "cliffracer.rpc.p95[{}]"
EVENTS_OK = "cliffracer.events.ok[{}]"
EVENTS_FAILED = "cliffracer.events.failed[{}]"
TIMER_ERRORS = "cliffracer.timer.errors[{}]"
CALLS = "cliffracer.calls[{}]"
RETRIES = "cliffracer.call.retries[{}]"
REJECTIONS = "cliffracer.call.rejections[{}]"
FALLBACKS = "cliffracer.call.fallbacks[{}]"
BREAKER = "cliffracer.breaker.state[{}]"
# The web process's sockets (items of every host; only the web host sends them).
WEBSOCKET_ITEMS = {
    "cliffracer.websocket.connections": ("WebSocket connections open", "sockets"),
    "cliffracer.websocket.subscriptions": (
        "NATS subscriptions for WebSocket sockets",
        "socket_subscriptions",
    ),
    "cliffracer.websocket.frames_in": ("WebSocket frames received", "frames_in"),
    "cliffracer.websocket.frames_out": ("WebSocket frames sent", "frames_out"),
    "cliffracer.websocket.closes": ("WebSockets closed by the server", "socket_closes"),
    "cliffracer.websocket.dropped_events": (
        "Events a slow WebSocket did not get",
        "socket_dropped_events",
    ),
}
# The breaker state's value while open (core.breaker.STATE_VALUES).
BREAKER_OPEN = 2

# Event outcomes that count as failed: the handler raised, or the payload was refused.
FAILED_OUTCOMES = ("rejected", "error", "refused")


def host_name(service: str, host_format: str = HOST_FORMAT) -> str:
    return host_format.format(service=service)


def _key_parameter(value: str) -> str:
    """A Zabbix item key parameter: quoted when it holds what would end or split it."""
    if any(character in value for character in ',[]" '):
        return '"' + value.replace('"', '\\"') + '"'
    return value


def discovery(figures: Figures, service: str) -> dict[str, str]:
    """The low-level discovery data of ``service``: one JSON list per discovery rule."""
    endpoints = [{"{#ENDPOINT}": endpoint} for endpoint in figures.endpoints(service)]
    subjects = sorted({subject for name, subject, _ in figures.events if name == service})
    timers = sorted({timer for name, timer, _ in figures.timers if name == service})
    return {
        ENDPOINTS_RULE: json.dumps(endpoints),
        EVENTS_RULE: json.dumps([{"{#SUBJECT}": subject} for subject in subjects]),
        TIMERS_RULE: json.dumps([{"{#TIMER}": timer} for timer in timers]),
        CALLS_RULE: json.dumps([{"{#TARGET}": target} for target in figures.targets(service)]),
    }


def values(increase: Figures, service: str) -> dict[str, float]:
    """The item values of ``service`` for one interval (``increase``: its counters' increase)."""
    sent: dict[str, float] = {
        IN_FLIGHT: sum(v for labels, v in increase.in_flight.items() if labels[0] == service),
        RECONNECTS: sum(v for labels, v in increase.reconnects.items() if labels[0] == service),
    }
    for endpoint in increase.endpoints(service):
        parameter = _key_parameter(endpoint)
        counts = {
            code: count
            for (name, name_endpoint, code), count in increase.requests.items()
            if name == service and name_endpoint == endpoint
        }
        client = sum(c for code, c in counts.items() if code != "200" and _client(code))
        server = sum(c for code, c in counts.items() if code != "200" and not _client(code))
        sent[REQUESTS.format(parameter)] = sum(counts.values())
        sent[CLIENT_ERRORS.format(parameter)] = client
        sent[SERVER_ERRORS.format(parameter)] = server
        p95 = increase.durations[(service, endpoint)].quantile(0.95)
        if p95 is not None:
            sent[P95.format(parameter)] = p95
    for (name, subject, outcome), count in increase.events.items():
        if name != service or outcome not in ("ok", *FAILED_OUTCOMES):
            continue
        key = (EVENTS_OK if outcome == "ok" else EVENTS_FAILED).format(_key_parameter(subject))
        sent[key] = sent.get(key, 0) + count
    for (name, timer, outcome), count in increase.timers.items():
        if name == service and outcome == "error":
            sent[TIMER_ERRORS.format(_key_parameter(timer))] = count
    for target in increase.targets(service):
        parameter = _key_parameter(target)
        sent[CALLS.format(parameter)] = increase.calls[(service, target)]
        sent[RETRIES.format(parameter)] = increase.retries[(service, target)]
        sent[REJECTIONS.format(parameter)] = sum(
            count
            for (name, rejected, _), count in increase.rejections.items()
            if (name, rejected) == (service, target)
        )
        sent[FALLBACKS.format(parameter)] = increase.fallbacks[(service, target)]
        sent[BREAKER.format(parameter)] = increase.breakers[(service, target)]
    if any(labels[0] == service for labels in increase.sockets):
        # Totals over their labels (frame types, kinds, close codes): the per-label series
        # are in OTLP and CloudWatch; here one item each keeps the template short.
        for key, (_, series) in WEBSOCKET_ITEMS.items():
            sent[key] = sum(
                value for labels, value in getattr(increase, series).items() if labels[0] == service
            )
    return sent


def _client(code: str) -> bool:
    return code.isdigit() and error_class(int(code)) == CLIENT_ERROR


# The template


def _uuid(name: str) -> str:
    """A stable UUIDv4-shaped id per object, so that importing again updates, not duplicates."""
    digest = hashlib.md5(f"cliffracer:{name}".encode()).digest()  # noqa: S324  (an id, not a secret)
    return uuid.UUID(bytes=digest, version=4).hex


def _item(name: str, key: str, value_type: str, units: str = "", **extra: Any) -> dict[str, Any]:
    item = {
        "uuid": _uuid(key),
        "name": name,
        "type": "TRAP",
        "key": key,
        "delay": "0",
        "history": "31d",
        "value_type": value_type,
        "units": units,
    }
    item.update(extra)
    return item


def template(services: list[str]) -> dict[str, Any]:
    """The Zabbix 6.0 export of the template (for ``configuration.import``), plus the host
    group its hosts go in. ``services`` only documents which hosts link it."""
    t = f"/{TEMPLATE}/"
    requests = f"{t}{REQUESTS.format('{#ENDPOINT}')}"
    server_errors = f"{t}{SERVER_ERRORS.format('{#ENDPOINT}')}"
    p95 = f"{t}{P95.format('{#ENDPOINT}')}"
    endpoint_rule = {
        "uuid": _uuid(ENDPOINTS_RULE),
        "name": "RPC endpoints",
        "type": "TRAP",
        "key": ENDPOINTS_RULE,
        "delay": "0",
        "lifetime": "7d",
        "item_prototypes": [
            _item("{#ENDPOINT}: requests", REQUESTS.format("{#ENDPOINT}"), "UNSIGNED"),
            _item(
                "{#ENDPOINT}: client errors (4xx)",
                CLIENT_ERRORS.format("{#ENDPOINT}"),
                "UNSIGNED",
            ),
            _item(
                "{#ENDPOINT}: server errors (5xx)",
                SERVER_ERRORS.format("{#ENDPOINT}"),
                "UNSIGNED",
            ),
            _item("{#ENDPOINT}: latency p95", P95.format("{#ENDPOINT}"), "FLOAT", "s"),
        ],
        "trigger_prototypes": [
            {
                "uuid": _uuid("trigger:error-rate"),
                "expression": (
                    f"sum({server_errors},5m)>{{$CLIFFRACER.ERROR_RATE.MAX}}*sum({requests},5m)"
                    f" and sum({requests},5m)>0"
                ),
                "name": "{#ENDPOINT}: server errors above {$CLIFFRACER.ERROR_RATE.MAX} of requests",
                "priority": "AVERAGE",
            },
            {
                "uuid": _uuid("trigger:p95"),
                "expression": f"max({p95},5m)>{{$CLIFFRACER.P95.MAX}}",
                "name": "{#ENDPOINT}: p95 latency above {$CLIFFRACER.P95.MAX}s",
                "priority": "WARNING",
            },
        ],
        "graph_prototypes": [
            {
                "uuid": _uuid("graph:endpoint"),
                "name": "{#ENDPOINT}: requests and errors",
                "graph_items": [
                    _graph_item(0, "1A7C11", REQUESTS.format("{#ENDPOINT}")),
                    _graph_item(1, "F4A000", CLIENT_ERRORS.format("{#ENDPOINT}")),
                    _graph_item(2, "E53935", SERVER_ERRORS.format("{#ENDPOINT}")),
                ],
            },
            {
                "uuid": _uuid("graph:latency"),
                "name": "{#ENDPOINT}: latency p95",
                "graph_items": [_graph_item(0, "2774A4", P95.format("{#ENDPOINT}"))],
            },
        ],
    }
    event_rule = {
        "uuid": _uuid(EVENTS_RULE),
        "name": "Event subjects",
        "type": "TRAP",
        "key": EVENTS_RULE,
        "delay": "0",
        "lifetime": "7d",
        "item_prototypes": [
            _item("{#SUBJECT}: events handled", EVENTS_OK.format("{#SUBJECT}"), "UNSIGNED"),
            _item("{#SUBJECT}: events failed", EVENTS_FAILED.format("{#SUBJECT}"), "UNSIGNED"),
        ],
    }
    timer_rule = {
        "uuid": _uuid(TIMERS_RULE),
        "name": "Timers",
        "type": "TRAP",
        "key": TIMERS_RULE,
        "delay": "0",
        "lifetime": "7d",
        "item_prototypes": [
            _item("{#TIMER}: failed runs", TIMER_ERRORS.format("{#TIMER}"), "UNSIGNED")
        ],
    }
    breaker = f"{t}{BREAKER.format('{#TARGET}')}"
    calls_rule = {
        "uuid": _uuid(CALLS_RULE),
        "name": "Calls under a call policy",
        "type": "TRAP",
        "key": CALLS_RULE,
        "delay": "0",
        "lifetime": "7d",
        "item_prototypes": [
            _item("Calls to {#TARGET}", CALLS.format("{#TARGET}"), "UNSIGNED"),
            _item("Calls to {#TARGET}: retries", RETRIES.format("{#TARGET}"), "UNSIGNED"),
            _item(
                "Calls to {#TARGET}: refused (breaker open or bulkhead full)",
                REJECTIONS.format("{#TARGET}"),
                "UNSIGNED",
            ),
            _item("Calls to {#TARGET}: fallbacks", FALLBACKS.format("{#TARGET}"), "UNSIGNED"),
            _item(
                "Circuit breaker to {#TARGET} (0 closed, 1 half-open, 2 open)",
                BREAKER.format("{#TARGET}"),
                "UNSIGNED",
            ),
        ],
        "trigger_prototypes": [
            {
                "uuid": _uuid("trigger:breaker-open"),
                "expression": f"last({breaker})={BREAKER_OPEN}",
                "name": "Circuit breaker to {#TARGET} is open",
                "priority": "WARNING",
            }
        ],
    }
    return {
        "zabbix_export": {
            "version": "6.0",
            "groups": [{"uuid": _uuid(TEMPLATE_GROUP), "name": TEMPLATE_GROUP}],
            "templates": [
                {
                    "uuid": _uuid(TEMPLATE),
                    "template": TEMPLATE,
                    "name": TEMPLATE,
                    "description": (
                        "Cliffracer service figures, pushed by "
                        "cliffracer_core.contrib.metrics.backends.zabbix.ZabbixExporter. "
                        "Generated by manage.py zabbix_template for: " + ", ".join(services)
                    ),
                    "groups": [{"name": TEMPLATE_GROUP}],
                    "items": [
                        _item(
                            "RPC requests in flight",
                            IN_FLIGHT,
                            "UNSIGNED",
                            triggers=[
                                {
                                    "uuid": _uuid("trigger:nodata"),
                                    "expression": (
                                        f"nodata({t}{IN_FLIGHT},{{$CLIFFRACER.NODATA}})=1"
                                    ),
                                    "name": "No figures from the service for {$CLIFFRACER.NODATA}",
                                    "priority": "HIGH",
                                }
                            ],
                        ),
                        _item("NATS reconnects", RECONNECTS, "UNSIGNED"),
                        *(
                            _item(name, key, "UNSIGNED")
                            for key, (name, _) in WEBSOCKET_ITEMS.items()
                        ),
                    ],
                    "discovery_rules": [endpoint_rule, event_rule, timer_rule, calls_rule],
                    "macros": [
                        {"macro": "{$CLIFFRACER.ERROR_RATE.MAX}", "value": "0.05"},
                        {"macro": "{$CLIFFRACER.P95.MAX}", "value": "1"},
                        {"macro": "{$CLIFFRACER.NODATA}", "value": "5m"},
                    ],
                    "dashboards": [
                        {
                            "uuid": _uuid("dashboard"),
                            "name": "Cliffracer service",
                            "pages": [{"widgets": _dashboard_widgets()}],
                        }
                    ],
                }
            ],
        }
    }


def _graph_item(order: int, color: str, key: str) -> dict[str, Any]:
    return {"sortorder": str(order), "color": color, "item": {"host": TEMPLATE, "key": key}}


def _dashboard_widgets() -> list[dict[str, Any]]:
    widgets = []
    for row, graph in enumerate(("{#ENDPOINT}: requests and errors", "{#ENDPOINT}: latency p95")):
        widgets.append(
            {
                "type": "GRAPH_PROTOTYPE",
                "name": graph.replace("{#ENDPOINT}: ", "").capitalize() + " by endpoint",
                "x": "0",
                "y": str(row * 5),
                "width": "24",
                "height": "5",
                "fields": [
                    {
                        "type": "GRAPH_PROTOTYPE",
                        "name": "graphid",
                        "value": {"name": graph, "host": TEMPLATE},
                    },
                    {"type": "INTEGER", "name": "columns", "value": "3"},
                ],
            }
        )
    return widgets


# The processes that run no service but push under a name of their own (the web process's
# calls, the Celery worker's tasks as endpoints): each gets a host too.
PROCESSES = ("celery-worker", "web")


def installed_services() -> list[str]:
    """The names of the installed services, sorted."""
    from cliffracer_core.core.apps import service_app_configs

    return sorted(
        config.service_class.service_name()
        for config in service_app_configs()
        if config.service_class
    )


IMPORT_RULES: dict[str, dict[str, bool]] = {
    "groups": {"createMissing": True},
    "templates": {"createMissing": True, "updateExisting": True},
    "items": {"createMissing": True, "updateExisting": True},
    "discoveryRules": {"createMissing": True, "updateExisting": True},
    "triggers": {"createMissing": True, "updateExisting": True},
    "graphs": {"createMissing": True, "updateExisting": True},
    "templateDashboards": {"createMissing": True, "updateExisting": True},
}


def sync(api: Any, services: list[str], host_format: str = HOST_FORMAT) -> list[str]:
    """Import the template through a logged-in ``zabbix_utils.ZabbixAPI`` and create (or link)
    one host per service in the ``Cliffracer services`` group; returns the host names."""
    api.configuration.import_(
        format="json", source=json.dumps(template(services)), rules=IMPORT_RULES
    )
    template_id = api.template.get(filter={"host": TEMPLATE}, output=["templateid"])[0][
        "templateid"
    ]
    groups = api.hostgroup.get(filter={"name": HOST_GROUP}, output=["groupid"])
    group_id = (
        groups[0]["groupid"] if groups else api.hostgroup.create(name=HOST_GROUP)["groupids"][0]
    )
    names = []
    for service in services:
        name = host_name(service, host_format)
        existing = api.host.get(filter={"host": name}, output=["hostid"])
        if existing:
            api.host.massadd(hosts=existing, templates=[{"templateid": template_id}])
        else:
            api.host.create(
                host=name,
                groups=[{"groupid": group_id}],
                templates=[{"templateid": template_id}],
                description=f"Cliffracer service {service}",
            )
        names.append(name)
    return names
