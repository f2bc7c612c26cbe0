"""Sample every running instance into the database; store error records; prune old rows.

``discover`` asks the whole NATS system (``$SRV.PING``, ``INFO`` and ``STATS`` at once) and
``record`` writes what came back: each instance's latest answers in its ``InstanceSnapshot``,
and the traffic since the previous sample (the growth of its cumulative ADR-32 counters) in
``EndpointMinute`` rows and, all endpoints together, in ``ServiceMinute`` rows. Several
monitors may sample the same system: each instance's snapshot is updated only if it still holds
the sample that monitor read (compare and set), so a sample is counted once whoever takes it.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from cliffracer_core.console import parse_time
from cliffracer_core.discovery import NAME, request_all
from cliffracer_core.models import EndpointMinute, ErrorRecord, InstanceSnapshot, ServiceMinute
from cliffracer_core.monitor import histograms
from cliffracer_core.settings import cliffracer_settings

VERBS = ("PING", "INFO", "STATS")


def setting(key: str) -> Any:
    return cliffracer_settings.MONITOR[key]


def stale_after() -> timedelta:
    """How long an instance counts as live after its last answer: three missed samples."""
    return timedelta(seconds=3 * setting("SAMPLE_INTERVAL") + setting("DISCOVERY_WINDOW"))


@dataclass
class InstanceReport:
    """What one instance said in one round of discovery."""

    id: str
    name: str
    version: str = ""
    description: str = ""
    metadata: dict[str, Any] | None = None
    started: datetime | None = None
    # INFO's endpoints (None when INFO did not answer in time), and STATS' endpoints.
    endpoints: list[dict[str, Any]] | None = None
    stats: list[dict[str, Any]] | None = None


async def discover(connection: Any, *, window: float | None = None) -> list[InstanceReport]:
    """Every instance that answers within ``window`` seconds, wherever it runs."""
    wait = setting("DISCOVERY_WINDOW") if window is None else window
    answers = await asyncio.gather(*(request_all(connection, verb, timeout=wait) for verb in VERBS))
    by_instance: dict[str, dict[str, dict[str, Any]]] = {}
    for verb, replies in zip(VERBS, answers, strict=True):
        for reply in replies:
            if (
                isinstance(reply, dict)
                and valid_name(reply.get("id"))
                and valid_name(reply.get("name"))
            ):
                by_instance.setdefault(reply["id"], {})[verb] = reply
    reports = []
    for instance_id, replies in sorted(by_instance.items()):
        info, stats = replies.get("INFO"), replies.get("STATS")
        any_reply = info or stats or replies["PING"]
        metadata = any_reply.get("metadata")
        reports.append(
            InstanceReport(
                id=instance_id,
                name=any_reply["name"],
                version=str(any_reply.get("version") or ""),
                description=str((info or {}).get("description") or ""),
                metadata=metadata if isinstance(metadata, dict) else {},
                started=parse_time(stats.get("started")) if stats else None,
                endpoints=_list_of_dicts(info.get("endpoints")) if info else None,
                stats=_list_of_dicts(stats.get("endpoints")) if stats else None,
            )
        )
    return reports


def valid_name(value: Any) -> bool:
    """ADR-32's rule for service names (and a fair one for ids): letters, digits, - and _."""
    return isinstance(value, str) and NAME.fullmatch(value) is not None


def _list_of_dicts(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _json_list(text: Any) -> list[Any]:
    """Metadata values are strings; Cliffracer sends its events and timers as JSON text."""
    try:
        value = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return []
    return value if isinstance(value, list) else []


def info_of(report: InstanceReport) -> dict[str, Any]:
    metadata = dict(report.metadata or {})
    return {
        "endpoints": report.endpoints or [],
        "events": _json_list(metadata.pop("events", None)),
        "timers": _json_list(metadata.pop("timers", None)),
        "metadata": metadata,
    }


def figures_of(stats: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Cumulative figures per endpoint from STATS' endpoints."""
    figures = {}
    for endpoint in stats:
        name = endpoint.get("name")
        if not isinstance(name, str):
            continue
        figures[name[:128]] = {
            "subject": str(endpoint.get("subject") or ""),
            "num_requests": _count(endpoint.get("num_requests")),
            "num_errors": _count(endpoint.get("num_errors")),
            "processing_time": _count(endpoint.get("processing_time")),
            "last_error": str(endpoint.get("last_error") or "")[:500],
            "histogram": histograms.from_stats(endpoint.get("data")),
        }
    return figures


def _count(value: Any) -> int:
    return value if isinstance(value, int) and value > 0 else 0


def record(reports: list[InstanceReport], *, now: datetime | None = None) -> int:
    """Store one round of discovery; returns how many instances this call recorded."""
    now = now or timezone.now()
    known = InstanceSnapshot.objects.in_bulk(
        [report.id for report in reports], field_name="instance_id"
    )
    recorded = 0
    for report in reports:
        with transaction.atomic():
            recorded += _record_instance(report, known.get(report.id), now)
    return recorded


def _record_instance(
    report: InstanceReport, snapshot: InstanceSnapshot | None, now: datetime
) -> int:
    metadata = report.metadata or {}
    fields: dict[str, Any] = {
        "service": report.name,
        "version": report.version[:64],
        "host": str(metadata.get("host") or "")[:255],
        "pid": str(metadata.get("pid") or "")[:20],
        "nats_server": str(metadata.get("nats_server") or "")[:255],
        "started": report.started,
    }
    # A reply that missed this round's window keeps the previous one.
    if report.endpoints is not None:
        fields["info"] = info_of(report)
        fields["description"] = report.description
    current = figures_of(report.stats) if report.stats is not None else None
    if current is not None:
        fields["stats"] = current

    if snapshot is None:
        # The monitor saw it start when it started within three samples: its counts so far
        # are recent traffic. Otherwise they are history of unknown age, and only a baseline.
        seen_start = report.started is not None and now - report.started <= stale_after()
        try:
            with transaction.atomic():
                InstanceSnapshot.objects.create(
                    instance_id=report.id,
                    first_seen=now,
                    last_seen=now,
                    counted_since=report.started if seen_start else now,
                    **fields,
                )
        except IntegrityError:
            return 0  # another monitor recorded it first
        previous: dict[str, Any] | None = {} if seen_start else None
    else:
        if now <= snapshot.last_seen:
            return 0
        updated = InstanceSnapshot.objects.filter(
            pk=snapshot.pk, last_seen=snapshot.last_seen
        ).update(last_seen=now, **fields)
        if not updated:
            return 0  # another monitor took this sample
        previous = snapshot.stats

    if current is not None and previous is not None:
        _add_traffic(report, current, previous, now)
    return 1


def _add_traffic(
    report: InstanceReport,
    current: dict[str, dict[str, Any]],
    previous: dict[str, Any],
    now: datetime,
) -> None:
    minute = now.replace(second=0, microsecond=0)
    deltas = {}
    for name, figures in current.items():
        before = previous.get(name) or {}
        requests = figures["num_requests"] - before.get("num_requests", 0)
        if requests < 0 or figures["num_errors"] < before.get("num_errors", 0):
            before = {}  # the counters restarted
            requests = figures["num_requests"]
        if requests <= 0:
            continue
        histogram = figures["histogram"]
        deltas[name] = (
            requests,
            figures["num_errors"] - before.get("num_errors", 0),
            max(0, figures["processing_time"] - before.get("processing_time", 0)),
            histograms.subtract(histogram, before.get("histogram")) if histogram else None,
        )
    if not deltas:
        return
    rows = {
        row.endpoint: row
        for row in EndpointMinute.objects.filter(
            instance_id=report.id, minute=minute, endpoint__in=list(deltas)
        )
    }
    for name, delta in deltas.items():
        row = rows.get(name) or EndpointMinute(
            instance_id=report.id, service=report.name, endpoint=name, minute=minute
        )
        _add(row, *delta)
    # All endpoints together, for the charts.
    total = ServiceMinute.objects.filter(instance_id=report.id, minute=minute).first()
    total = total or ServiceMinute(instance_id=report.id, service=report.name, minute=minute)
    for delta in deltas.values():
        _add(total, *delta, save=False)
    total.save()


def _add(
    row: EndpointMinute | ServiceMinute,
    requests: int,
    errors: int,
    processing_time: int,
    histogram: list[int] | None,
    *,
    save: bool = True,
) -> None:
    row.requests += requests
    row.errors += errors
    row.processing_time += processing_time
    if histogram is not None:
        row.histogram = histograms.merge([row.histogram or histograms.empty(), histogram])
    if save:
        row.save()


def store_error(report: Any) -> ErrorRecord:
    """Store one error record (the ``ErrorReport`` event the runners publish)."""
    return ErrorRecord.objects.create(
        time=report.time,
        service=report.service[:64],
        instance_id=report.instance[:64],
        kind=report.kind,
        endpoint=report.endpoint[:128],
        subject=report.subject[:255],
        code=report.code,
        type=report.type[:64],
        message=report.message[:500],
        correlation_id=report.correlation_id[:128],
        dropped=max(0, report.dropped),
    )


def prune(*, now: datetime | None = None) -> dict[str, int]:
    """Delete what is older than the retention settings; returns the rows deleted per kind."""
    now = now or timezone.now()
    # The endpoints' rows serve the current figures: kept at least for the rate window.
    endpoint_retention = max(setting("ENDPOINT_MINUTE_RETENTION"), setting("RATE_WINDOW") + 60)
    deleted = {
        "minutes": ServiceMinute.objects.filter(
            minute__lt=now - timedelta(seconds=setting("MINUTE_RETENTION"))
        ).delete()[0],
        "endpoint_minutes": EndpointMinute.objects.filter(
            minute__lt=now - timedelta(seconds=endpoint_retention)
        ).delete()[0],
        "errors": ErrorRecord.objects.filter(
            time__lt=now - timedelta(seconds=setting("ERROR_RETENTION"))
        ).delete()[0],
        "instances": InstanceSnapshot.objects.filter(
            last_seen__lt=now - timedelta(seconds=setting("INSTANCE_RETENTION"))
        ).delete()[0],
    }
    # Beyond MAX_ERRORS, the oldest go: from the first record past the limit on.
    limit = int(setting("MAX_ERRORS"))
    newest_first = ErrorRecord.objects.order_by("-time", "-id")
    if boundary := list(newest_first.values_list("time", "id")[limit : limit + 1]):
        time, pk = boundary[0]
        deleted["errors"] += ErrorRecord.objects.filter(
            Q(time__lt=time) | Q(time=time, id__lte=pk)
        ).delete()[0]
    return deleted
