"""What the console's pages show, read from the monitor's rows in a few queries.

Nothing here talks to NATS: the monitor's samples are the live picture, at most one sample
interval old, and a page costs a handful of queries whatever the state of NATS.
"""

from __future__ import annotations

import json
import operator
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Max, Q
from django.utils import timezone

from cliffracer_core.contrib.monitor import histograms
from cliffracer_core.contrib.monitor.models import (
    EndpointMinute,
    ErrorRecord,
    InstanceSnapshot,
    ServiceMinute,
)
from cliffracer_core.contrib.monitor.sampling import (
    DESCRIPTION_LIMIT,
    InstanceReport,
    info_of,
    load_json,
    readable_info,
    setting,
    stale_after,
    text,
)
from cliffracer_core.contrib.monitor.service import MonitorService
from cliffracer_core.contrib.operations.examples import example_of
from cliffracer_core.core.errors import CLIENT_ERROR, SERVER_ERROR

UP, DEGRADED, DOWN = "up", "degraded", "down"
# A JSON schema nested deeper than this is not shown (pretty-printing it would recurse).
MAX_SCHEMA_DEPTH = 32
# Cliffracer's last_error: "<code>:<message>", the code as the error replies carry it.
LAST_ERROR_CODE = re.compile(r"[0-9]{3}")
MONITOR_SERVICE = MonitorService.service_name()


@dataclass
class Traffic:
    """Requests over a span of time, added up over instances and minutes.

    ``errors`` are all error replies (ADR-32's ``num_errors``); ``client_errors`` those that
    were 4xx refusals, and ``server_errors`` the rest: the service failing.
    """

    requests: int = 0
    errors: int = 0
    client_errors: int = 0
    processing_time: int = 0
    histogram: list[int] = field(default_factory=histograms.empty)

    def add(
        self,
        requests: int,
        errors: int,
        client_errors: int,
        processing_time: int,
        histogram: Any,
    ) -> None:
        self.requests += requests
        self.errors += errors
        self.client_errors += min(max(client_errors, 0), errors)
        self.processing_time += processing_time
        if isinstance(histogram, list) and len(histogram) == histograms.SIZE:
            self.histogram = list(map(operator.add, self.histogram, histogram))

    def add_traffic(self, other: Traffic) -> None:
        self.add(
            other.requests,
            other.errors,
            other.client_errors,
            other.processing_time,
            other.histogram,
        )

    @property
    def server_errors(self) -> int:
        return self.errors - self.client_errors

    @property
    def average_ms(self) -> float | None:
        return self.processing_time / self.requests / 1e6 if self.requests else None

    @property
    def p95_ms(self) -> float | None:
        seconds = histograms.quantile(self.histogram, 0.95)
        return seconds * 1000 if seconds is not None else None

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    @property
    def client_error_rate(self) -> float | None:
        return self.client_errors / self.requests if self.requests else None

    @property
    def server_error_rate(self) -> float | None:
        return self.server_errors / self.requests if self.requests else None

    def counts(self) -> dict[str, Any]:
        """Requests and errors, all and by class, with their rates: for the JSON views."""
        return {
            "requests": self.requests,
            "errors": self.errors,
            "client_errors": self.client_errors,
            "server_errors": self.server_errors,
            "error_rate": self.error_rate,
            "client_error_rate": self.client_error_rate,
            "server_error_rate": self.server_error_rate,
        }


def state_of(*, live: bool, traffic: Traffic) -> str:
    """Down without a live instance; degraded when its server errors (not its 4xx refusals,
    which are the service keeping its contract) reach ``DEGRADED_ERROR_RATE`` of its
    requests over the rate window; up otherwise."""
    if not live:
        return DOWN
    threshold = float(setting("DEGRADED_ERROR_RATE"))
    rate = traffic.server_error_rate
    if threshold > 0 and rate is not None and rate >= threshold:
        return DEGRADED
    return UP


@dataclass
class LastError:
    code: int | None
    type: str
    message: str
    time: datetime | None = None
    endpoint: str = ""
    correlation_id: str = ""
    trace_id: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "type": self.type,
            "message": self.message,
            "time": self.time.isoformat() if self.time else None,
            "endpoint": self.endpoint,
            "correlation_id": self.correlation_id,
            "trace_id": self.trace_id,
        }


@dataclass
class ServiceRow:
    name: str
    installed: bool
    versions: list[str]
    instances: int
    state: str
    # The minutes of the rate window the monitor has counted; None for a service never seen.
    minutes: float | None
    traffic: Traffic
    last_error: LastError | None
    last_seen: datetime | None

    def per_minute(self, count: int) -> float | None:
        return count / self.minutes if self.minutes else None

    @property
    def requests_per_minute(self) -> float | None:
        return self.per_minute(self.traffic.requests)

    @property
    def errors_per_minute(self) -> float | None:
        return self.per_minute(self.traffic.errors)

    @property
    def client_errors_per_minute(self) -> float | None:
        return self.per_minute(self.traffic.client_errors)

    @property
    def server_errors_per_minute(self) -> float | None:
        return self.per_minute(self.traffic.server_errors)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state,
            "installed": self.installed,
            "versions": self.versions,
            "instances": self.instances,
            "requests_per_minute": self.requests_per_minute,
            "errors_per_minute": self.errors_per_minute,
            "client_errors_per_minute": self.client_errors_per_minute,
            "server_errors_per_minute": self.server_errors_per_minute,
            "client_error_rate": self.traffic.client_error_rate,
            "server_error_rate": self.traffic.server_error_rate,
            "average_ms": self.traffic.average_ms,
            "p95_ms": self.traffic.p95_ms,
            "last_error": self.last_error.as_dict() if self.last_error else None,
            "last_seen": self.last_seen.isoformat() if self.last_seen else None,
        }


@dataclass
class MonitorStatus:
    """Whether the figures are current: is a monitor sampling, and when did it last."""

    installed: bool
    running: bool
    last_sample: datetime | None
    stale_after: timedelta


@dataclass
class Overview:
    now: datetime
    services: list[ServiceRow]
    monitor: MonitorStatus
    window_minutes: float


def installed_services() -> dict[str, Any]:
    """The service classes of this project's service apps, by service name."""
    from cliffracer_core.core.apps import service_app_configs

    return {
        config.service_class.service_name(): config.service_class
        for config in service_app_configs()
        if config.service_class is not None
    }


def is_live(snapshot: InstanceSnapshot, now: datetime) -> bool:
    return snapshot.last_seen >= now - stale_after()


def window_start(now: datetime) -> datetime:
    start = now - timedelta(seconds=setting("RATE_WINDOW"))
    return start.replace(second=0, microsecond=0)


def window_traffic(now: datetime, service: str | None = None) -> dict[tuple[str, str], Traffic]:
    """Traffic per (service, endpoint) since ``window_start(now)``."""
    rows = EndpointMinute.objects.filter(minute__gte=window_start(now))
    if service is not None:
        rows = rows.filter(service=service)
    traffic: dict[tuple[str, str], Traffic] = defaultdict(Traffic)
    for name, endpoint, *figures in rows.values_list(
        "service",
        "endpoint",
        "requests",
        "errors",
        "client_errors",
        "processing_time",
        "histogram",
    ):
        traffic[(name, endpoint)].add(*figures)
    return traffic


def covered_minutes(now: datetime, snapshots: Iterable[InstanceSnapshot]) -> float:
    """Minutes of the window the monitor has counted, for per-minute rates."""
    start = window_start(now)
    counted = [snapshot.counted_since for snapshot in snapshots]
    if counted:
        start = max(start, min(counted))
    # At least a minute: in a service's first minute, its requests so far are the rate.
    return max((now - start).total_seconds(), 60.0) / 60


def last_errors(names: Iterable[str], by: str = "service") -> dict[Any, LastError]:
    """The newest error record per service (``by="service"``) or per (service, endpoint)."""
    keys = ["service"] if by == "service" else ["service", "endpoint"]
    newest = (
        ErrorRecord.objects.filter(service__in=list(names))
        .values(*keys)
        .annotate(newest=Max("id"))
        .values_list("newest", flat=True)
    )
    found = {}
    for record in ErrorRecord.objects.filter(id__in=list(newest)):
        key = record.service if by == "service" else (record.service, record.endpoint)
        found[key] = LastError(
            code=record.code,
            type=record.type,
            message=record.message,
            time=record.time,
            endpoint=record.endpoint,
            correlation_id=record.correlation_id,
            trace_id=record.trace_id,
        )
    return found


def parse_last_error(text: str, endpoint: str = "") -> LastError | None:
    """STATS' ``last_error`` ("code:message" from Cliffracer), when no record has it."""
    if not text:
        return None
    code, separator, message = text.partition(":")
    if separator and LAST_ERROR_CODE.fullmatch(code):
        return LastError(code=int(code), type="", message=message, endpoint=endpoint)
    return LastError(code=None, type="", message=text, endpoint=endpoint)


def monitor_status(snapshots: Iterable[InstanceSnapshot], now: datetime) -> MonitorStatus:
    snapshots = list(snapshots)
    return MonitorStatus(
        installed=MONITOR_SERVICE in installed_services(),
        running=any(s.service == MONITOR_SERVICE and is_live(s, now) for s in snapshots),
        last_sample=max((s.last_seen for s in snapshots), default=None),
        stale_after=stale_after(),
    )


def overview(now: datetime | None = None) -> Overview:
    """Every service: installed ones and every one seen within the retention."""
    now = now or timezone.now()
    snapshots = list(
        InstanceSnapshot.objects.defer("info", "description").order_by("service", "-last_seen")
    )
    installed = installed_services()
    by_service: dict[str, list[InstanceSnapshot]] = defaultdict(list)
    for snapshot in snapshots:
        by_service[snapshot.service].append(snapshot)
    traffic_by_endpoint = window_traffic(now)
    names = sorted(set(installed) | set(by_service))
    errors = last_errors(names)
    rows = []
    for name in names:
        members = by_service.get(name, [])
        live = [snapshot for snapshot in members if is_live(snapshot, now)]
        traffic = Traffic()
        for (service, _), figures in traffic_by_endpoint.items():
            if service == name:
                traffic.add_traffic(figures)
        last_error = errors.get(name)
        if last_error is None:
            last_error = next(
                (
                    parse_last_error(figures.get("last_error", ""), endpoint)
                    for snapshot in members
                    for endpoint, figures in (snapshot.stats or {}).items()
                    if figures.get("last_error")
                ),
                None,
            )
        rows.append(
            ServiceRow(
                name=name,
                installed=name in installed,
                versions=sorted({snapshot.version for snapshot in live or members[:1]}),
                instances=len(live),
                state=state_of(live=bool(live), traffic=traffic),
                minutes=covered_minutes(now, members) if members else None,
                traffic=traffic,
                last_error=last_error,
                last_seen=members[0].last_seen if members else None,
            )
        )
    return Overview(
        now=now,
        services=rows,
        monitor=monitor_status(snapshots, now),
        window_minutes=float(setting("RATE_WINDOW")) / 60,
    )


# One service


@dataclass
class InstanceRow:
    id: str
    version: str
    host: str
    pid: str
    nats_server: str
    started: datetime | None
    last_seen: datetime
    live: bool
    uptime_seconds: float | None
    requests: int
    errors: int
    client_errors: int

    @property
    def server_errors(self) -> int:
        return self.errors - self.client_errors


@dataclass
class EndpointRow:
    name: str
    subject: str
    queue_group: str
    permissions: list[str]
    public: bool
    description: str
    request_schema: Any
    reply_schema: Any
    example: str
    # Since the live instances started (their cumulative STATS figures) ...
    total: Traffic
    # ... and over the rate window.
    recent: Traffic
    requests_per_minute: float | None
    last_error: LastError | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "subject": self.subject,
            "queue_group": self.queue_group,
            "permissions": self.permissions,
            "public": self.public,
            **self.total.counts(),
            "average_ms": self.total.average_ms,
            "p95_ms": self.total.p95_ms,
            "requests_per_minute": self.requests_per_minute,
            "last_error": self.last_error.as_dict() if self.last_error else None,
        }


@dataclass
class CallRow:
    """The calls a service's live instances make to one dependency under a call policy."""

    target: str
    # The worst breaker state among the instances, and how many have it open.
    state: str
    open_instances: int
    calls: int = 0
    retries: int = 0
    rejected: int = 0
    fallbacks: int = 0

    @property
    def retry_rate(self) -> float | None:
        """Retries per call, since the instances started."""
        return self.retries / self.calls if self.calls else None


BREAKER_ORDER = {"closed": 0, "half_open": 1, "open": 2}


def call_rows(live: Iterable[InstanceSnapshot]) -> list[CallRow]:
    """The live instances' call-policy figures, added up per dependency; open ones first."""
    rows: dict[str, CallRow] = {}
    for snapshot in live:
        for target, figures in (snapshot.calls or {}).items():
            if not isinstance(figures, dict):
                continue
            state = figures.get("state", "closed")
            row = rows.setdefault(target, CallRow(target=target, state="closed", open_instances=0))
            if BREAKER_ORDER.get(state, 0) > BREAKER_ORDER[row.state]:
                row.state = state
            row.open_instances += state == "open"
            row.calls += int(figures.get("calls", 0))
            row.retries += int(figures.get("retries", 0))
            row.rejected += int(figures.get("rejected", 0))
            row.fallbacks += int(figures.get("fallbacks", 0))
    return sorted(rows.values(), key=lambda row: (-BREAKER_ORDER[row.state], row.target))


@dataclass
class ServiceDetail:
    name: str
    state: str
    installed: bool
    description: str
    instances: list[InstanceRow]
    endpoints: list[EndpointRow]
    events: list[dict[str, Any]]
    timers: list[dict[str, Any]]
    # Where the endpoints come from: "live", "last seen" or "code" (installed, never seen).
    source: str
    monitor: MonitorStatus
    # Its calls to other services under call policies (docs/resilience.md).
    calls: list[CallRow] = field(default_factory=list)

    @property
    def open_breakers(self) -> list[CallRow]:
        return [row for row in self.calls if row.state == "open"]

    @property
    def retry_rate(self) -> float | None:
        """Retries per call over all its dependencies, since its live instances started."""
        calls = sum(row.calls for row in self.calls)
        return sum(row.retries for row in self.calls) / calls if calls else None


def _local_info(service_class: Any) -> dict[str, Any]:
    """INFO as an instance of ``service_class`` would answer, for a service never seen."""
    from cliffracer_core.core import discovery
    from cliffracer_core.core.settings import cliffracer_settings

    prefix = cliffracer_settings.RPC_SUBJECT_PREFIX
    name = service_class.service_name()
    identity = discovery.Identity(
        id="-",
        name=name,
        version=service_class.service_version(),
        description=service_class.service_description(),
    )
    reply = discovery.info(
        identity,
        discovery.service_metadata(service_class, prefix),
        [(rpc, f"{prefix}.{name}.{rpc.name}", name) for rpc in service_class.rpcs().values()],
    )
    report = InstanceReport(
        id="-", name=name, metadata=reply["metadata"], endpoints=reply["endpoints"]
    )
    return {**info_of(report), "description": reply["description"]}


def _schema(source: Any) -> Any:
    """A JSON schema from endpoint metadata; None when it is not JSON or nested too deep."""
    value = load_json(source)
    return value if _nested_within(value, MAX_SCHEMA_DEPTH) else None


def _nested_within(value: Any, limit: int) -> bool:
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return False
            children = item.values() if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children)
    return True


def _permissions(source: Any) -> list[str]:
    value = load_json(source)
    return [item for item in value if isinstance(item, str)] if isinstance(value, list) else []


def service_detail(name: str, now: datetime | None = None) -> ServiceDetail | None:
    """One service's instances and endpoints; None when it is neither installed nor seen."""
    now = now or timezone.now()
    snapshots = list(InstanceSnapshot.objects.filter(service=name).order_by("-last_seen"))
    installed = installed_services()
    if not snapshots and name not in installed:
        return None
    live = [snapshot for snapshot in snapshots if is_live(snapshot, now)]
    described = next((s for s in live if s.info.get("endpoints") is not None), None)
    if described is not None:
        info, source, description = described.info, "live", described.description
    elif snapshots:
        info, source, description = snapshots[0].info, "last seen", snapshots[0].description
    else:
        info = _local_info(installed[name])
        source, description = "code", info["description"]
    # Rows stored by an older monitor hold the replies as they came.
    info = readable_info(info)

    recent = window_traffic(now, name)
    minutes = covered_minutes(now, snapshots)
    errors = last_errors([name], by="endpoint")
    endpoints = []
    for endpoint in info["endpoints"]:
        endpoint_name = endpoint["name"]
        metadata = endpoint["metadata"]
        total = Traffic()
        last_error_text = ""
        for snapshot in live:
            figures = (snapshot.stats or {}).get(endpoint_name)
            if figures:
                total.add(
                    figures["num_requests"],
                    figures["num_errors"],
                    figures.get("client_errors", 0),
                    figures["processing_time"],
                    figures.get("histogram"),
                )
                last_error_text = last_error_text or figures.get("last_error", "")
        request_schema = _schema(metadata.get("request_schema"))
        window = recent.get((name, endpoint_name), Traffic())
        endpoints.append(
            EndpointRow(
                name=endpoint_name,
                subject=endpoint["subject"],
                queue_group=endpoint["queue_group"],
                permissions=_permissions(metadata.get("permissions")),
                public=metadata.get("public") == "true",
                description=text(metadata.get("description"), DESCRIPTION_LIMIT),
                request_schema=request_schema,
                reply_schema=_schema(metadata.get("reply_schema")),
                example=json.dumps(example_of(request_schema), indent=2)
                if request_schema is not None
                else "{}",
                total=total,
                recent=window,
                requests_per_minute=window.requests / minutes if snapshots else None,
                last_error=errors.get((name, endpoint_name))
                or parse_last_error(last_error_text, endpoint_name),
            )
        )
    instances = [
        InstanceRow(
            id=snapshot.instance_id,
            version=snapshot.version,
            host=snapshot.host,
            pid=snapshot.pid,
            nats_server=snapshot.nats_server,
            started=snapshot.started,
            last_seen=snapshot.last_seen,
            live=is_live(snapshot, now),
            uptime_seconds=(now - snapshot.started).total_seconds()
            if snapshot.started and is_live(snapshot, now)
            else None,
            requests=sum(f.get("num_requests", 0) for f in (snapshot.stats or {}).values()),
            errors=sum(f.get("num_errors", 0) for f in (snapshot.stats or {}).values()),
            client_errors=sum(f.get("client_errors", 0) for f in (snapshot.stats or {}).values()),
        )
        for snapshot in snapshots
    ]
    recent_total = Traffic()
    for figures in recent.values():
        recent_total.add_traffic(figures)
    return ServiceDetail(
        name=name,
        state=state_of(live=bool(live), traffic=recent_total),
        installed=name in installed,
        description=text(description, DESCRIPTION_LIMIT),
        instances=instances,
        endpoints=endpoints,
        events=info["events"],
        timers=info["timers"],
        source=source,
        monitor=monitor_status(
            InstanceSnapshot.objects.filter(last_seen__gte=now - stale_after()).only(
                "service", "last_seen"
            ),
            now,
        ),
        calls=call_rows(live),
    )


# History, for the charts


@dataclass
class HistoryPoint:
    start: datetime
    requests_per_minute: float
    errors_per_minute: float
    client_errors_per_minute: float
    server_errors_per_minute: float
    average_ms: float | None
    p95_ms: float | None


def history(
    name: str, *, span: timedelta, step: timedelta, now: datetime | None = None
) -> list[HistoryPoint]:
    """The service's traffic over ``span`` up to now, in points of ``step`` each."""
    now = now or timezone.now()
    step_seconds = step.total_seconds()
    end = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    count = max(1, int(span.total_seconds() // step_seconds))
    start = end - step * count
    buckets = [Traffic() for _ in range(count)]
    rows = ServiceMinute.objects.filter(service=name, minute__gte=start).values_list(
        "minute", "requests", "errors", "client_errors", "processing_time", "histogram"
    )
    for minute, *figures in rows:
        index = int((minute - start).total_seconds() // step_seconds)
        if 0 <= index < count:
            buckets[index].add(*figures)
    minutes = step_seconds / 60
    return [
        HistoryPoint(
            start=start + step * index,
            requests_per_minute=traffic.requests / minutes,
            errors_per_minute=traffic.errors / minutes,
            client_errors_per_minute=traffic.client_errors / minutes,
            server_errors_per_minute=traffic.server_errors / minutes,
            average_ms=traffic.average_ms,
            p95_ms=traffic.p95_ms,
        )
        for index, traffic in enumerate(buckets)
    ]


ERROR_CLASSES = {CLIENT_ERROR: "4xx (refused)", SERVER_ERROR: "5xx (failed)"}
# The records of the client class; the server class is every other code
# (cliffracer_core.core.errors.error_class).
CLIENT_CODES = Q(code__gte=400, code__lte=499)


def recent_errors(
    *,
    service: str = "",
    endpoint: str = "",
    code: int | None = None,
    of_class: str = "",
    limit: int = 200,
) -> list[ErrorRecord]:
    """The newest error records that match; ``of_class`` is ``"client"`` (4xx), ``"server"``
    (every other code) or "" for both."""
    records = ErrorRecord.objects.all()
    if service:
        records = records.filter(service=service)
    if endpoint:
        records = records.filter(endpoint=endpoint)
    if code is not None:
        records = records.filter(code=code)
    if of_class == CLIENT_ERROR:
        records = records.filter(CLIENT_CODES)
    elif of_class == SERVER_ERROR:
        records = records.exclude(CLIENT_CODES)
    return list(records.order_by("-time", "-id")[:limit])


def error_choices(service: str = "") -> dict[str, list[Any]]:
    """The values the errors page may be filtered by."""
    # No ordering, or DISTINCT would also tell rows apart by the ordering's columns.
    records = ErrorRecord.objects.order_by()
    endpoints = records.filter(service=service) if service else records
    return {
        "services": sorted(set(records.values_list("service", flat=True).distinct())),
        "endpoints": sorted(set(endpoints.values_list("endpoint", flat=True).distinct())),
        "codes": sorted(set(records.values_list("code", flat=True).distinct())),
        "classes": list(ERROR_CLASSES.items()),
    }
