"""Sample every running instance into the database; store error records; prune old rows.

``discover`` asks the whole NATS system (``$SRV.PING``, ``INFO`` and ``STATS`` at once) and
``record`` writes what came back: each instance's latest answers in its ``InstanceSnapshot``,
and the traffic since the previous sample (the growth of its cumulative ADR-32 counters) in
``EndpointMinute`` rows and, all endpoints together, in ``ServiceMinute`` rows (errors with
how many of them were 4xx refusals; the rest are server errors). Several
monitors may sample the same system: each instance's snapshot is updated only if it still holds
the sample that monitor read (compare and set), so a sample is counted once whoever takes it.

Anyone on the NATS system may answer ``$SRV``: a service in another language, a buggy one, a
hostile one. What a reply holds is read into one known shape (``read_replies``, ``info_of``,
``figures_of``): strings cut to a length, counts made whole numbers within a 64-bit column,
lists bounded, and whatever is not of the expected type left out, so no reply can fail a
sample or a console page.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from cliffracer_core.contrib.monitor import histograms
from cliffracer_core.contrib.monitor.models import (
    EndpointMinute,
    ErrorRecord,
    InstanceSnapshot,
    ServiceMinute,
)
from cliffracer_core.core.discovery import is_name, parse_time, request_all
from cliffracer_core.core.settings import cliffracer_settings

VERBS = ("PING", "INFO", "STATS")

# What one reply may store and a page may show (docs/console.md, "Replies from anyone").
TEXT_LIMIT = 255  # names, subjects, handlers, hosts
DESCRIPTION_LIMIT = 2000
LAST_ERROR_LIMIT = 500
# Metadata values carry the endpoints' JSON schemas: room for large ones.
METADATA_TEXT_LIMIT = 64 * 1024
# Endpoints, events, timers and metadata entries of one instance.
ITEMS_LIMIT = 1000
# The largest count a BigIntegerField holds.
MAX_COUNT = 2**63 - 1


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
    # The call policies' figures STATS carries in its "calls" metadata (docs/resilience.md).
    calls: dict[str, dict[str, Any]] | None = None


async def discover(connection: Any, *, window: float | None = None) -> list[InstanceReport]:
    """Every instance that answers within ``window`` seconds, wherever it runs."""
    wait = setting("DISCOVERY_WINDOW") if window is None else window
    answers = await asyncio.gather(*(request_all(connection, verb, timeout=wait) for verb in VERBS))
    return read_replies(dict(zip(VERBS, answers, strict=True)))


def read_replies(answers: Mapping[str, list[Any]]) -> list[InstanceReport]:
    """Merge the PING, INFO and STATS replies by instance id.

    A reply without a valid name and id is left out; so is any field of the wrong type.
    """
    by_instance: dict[str, dict[str, dict[str, Any]]] = {}
    for verb in VERBS:
        for reply in answers.get(verb) or []:
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
        reports.append(
            InstanceReport(
                id=instance_id,
                name=any_reply["name"],
                version=text(any_reply.get("version"), 64),
                description=text((info or {}).get("description"), DESCRIPTION_LIMIT),
                metadata=metadata_of(any_reply.get("metadata")),
                started=parse_time(stats.get("started")) if stats else None,
                endpoints=_list_of_dicts(info.get("endpoints")) if info else None,
                stats=_list_of_dicts(stats.get("endpoints")) if stats else None,
                calls=calls_of(metadata_of(stats.get("metadata")).get("calls")) if stats else None,
            )
        )
    return reports


def valid_name(value: Any) -> bool:
    """ADR-32's rule for service names (and a fair one for ids): letters, digits, - and _."""
    return is_name(value)


def _list_of_dicts(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, dict)][:ITEMS_LIMIT]


def text(value: Any, limit: int = TEXT_LIMIT) -> str:
    """A string of a reply, cut to ``limit`` characters; "" for anything else.

    NUL characters go: PostgreSQL stores none.
    """
    return value.replace("\x00", "")[:limit] if isinstance(value, str) else ""


def metadata_of(value: Any) -> dict[str, str]:
    """ADR-32 metadata: string keys to string values; entries of other types are left out."""
    if not isinstance(value, dict):
        return {}
    entries = [(key, item) for key, item in value.items() if isinstance(item, str)]
    return {text(key): text(item, METADATA_TEXT_LIMIT) for key, item in entries[:ITEMS_LIMIT]}


BREAKER_STATES = ("closed", "half_open", "open")


def calls_of(source: Any) -> dict[str, dict[str, Any]]:
    """The figures of each call-policy scope, from STATS' ``calls`` metadata (JSON text)."""
    value = load_json(source)
    if not isinstance(value, dict):
        return {}
    figures = {}
    for scope, item in list(value.items())[:ITEMS_LIMIT]:
        if not isinstance(item, dict) or not text(scope):
            continue
        rejected = item.get("rejected") if isinstance(item.get("rejected"), dict) else {}
        state = item.get("state")
        figures[text(scope, 128)] = {
            "state": state if state in BREAKER_STATES else "closed",
            "calls": count(item.get("calls")),
            "retries": count(item.get("retries")),
            "rejected": count(sum(count(number) for number in rejected.values())),
            "fallbacks": count(item.get("fallbacks")),
        }
    return figures


def load_json(source: Any) -> Any:
    """Parse JSON text found inside a reply; None when it is not text or not JSON.

    NaN and Infinity read as null (no database stores them in JSON), and nesting too deep for
    Python (``RecursionError``) as no JSON at all.
    """
    if not isinstance(source, str):
        return None
    try:
        return json.loads(source, parse_constant=lambda name: None)
    except (ValueError, RecursionError):
        return None


def _json_list(text: Any) -> list[Any]:
    """Metadata values are strings; Cliffracer sends its events and timers as JSON text."""
    value = load_json(text)
    return value if isinstance(value, list) else []


def seconds_of(value: Any) -> float | None:
    """A timer's interval: a finite number of seconds, not below zero; None otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        seconds = float(value)
    except OverflowError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def endpoint_of(value: Any) -> dict[str, Any] | None:
    """An INFO endpoint as the console shows it; None without a name to show it by."""
    if not isinstance(value, dict) or not text(value.get("name")):
        return None
    return {
        "name": text(value["name"], 128),
        "subject": text(value.get("subject")),
        "queue_group": text(value.get("queue_group")),
        "metadata": metadata_of(value.get("metadata")),
    }


def event_of(value: Any) -> dict[str, Any] | None:
    """An event subscription; ``queue_group`` None means every instance (broadcast)."""
    if not isinstance(value, dict):
        return None
    if not text(value.get("subject")) and not text(value.get("handler")):
        return None
    queue_group = value.get("queue_group")
    return {
        "subject": text(value.get("subject")),
        "handler": text(value.get("handler")),
        "queue_group": None if queue_group is None else text(queue_group),
    }


def timer_of(value: Any) -> dict[str, Any] | None:
    """A timer; its ``seconds`` None when the reply's value is not a number of seconds."""
    if not isinstance(value, dict) or not text(value.get("handler")):
        return None
    return {"handler": text(value["handler"]), "seconds": seconds_of(value.get("seconds"))}


def readable_info(info: Any) -> dict[str, Any]:
    """``info`` in the shape the console reads; what does not fit is left out.

    Idempotent: the console applies it again to what older versions stored.
    """
    info = info if isinstance(info, dict) else {}

    def items(key: str, read: Any) -> list[dict[str, Any]]:
        values = info.get(key)
        values = values if isinstance(values, list) else []
        return [item for item in map(read, values[:ITEMS_LIMIT]) if item is not None]

    return {
        "endpoints": items("endpoints", endpoint_of),
        "events": items("events", event_of),
        "timers": items("timers", timer_of),
        "metadata": metadata_of(info.get("metadata")),
    }


def info_of(report: InstanceReport) -> dict[str, Any]:
    metadata = metadata_of(report.metadata)
    return readable_info(
        {
            "endpoints": report.endpoints or [],
            "events": _json_list(metadata.pop("events", None)),
            "timers": _json_list(metadata.pop("timers", None)),
            "metadata": metadata,
        }
    )


def figures_of(stats: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Cumulative figures per endpoint from STATS' endpoints."""
    figures = {}
    for endpoint in stats[:ITEMS_LIMIT]:
        name = text(endpoint.get("name"), 128)
        if not name:
            continue
        errors = count(endpoint.get("num_errors"))
        figures[name] = {
            "subject": text(endpoint.get("subject")),
            "num_requests": count(endpoint.get("num_requests")),
            "num_errors": errors,
            "client_errors": client_errors_of(endpoint.get("data"), errors),
            "processing_time": count(endpoint.get("processing_time")),
            "last_error": text(endpoint.get("last_error"), LAST_ERROR_LIMIT),
            "histogram": histograms.from_stats(endpoint.get("data")),
        }
    return figures


def client_errors_of(data: Any, errors: int) -> int:
    """How many of ``errors`` were 4xx refusals, from STATS ``data``'s ``client_errors``.

    ADR-32's ``num_errors`` counts both classes; Cliffracer's runner splits them in ``data``.
    Without the split (a service in another language), every error counts as a server error:
    the verdict errs on the side of showing a failure, as before the split existed.
    """
    client = count(data.get("client_errors")) if isinstance(data, dict) else 0
    return min(client, errors)


def count(value: Any) -> int:
    """A cumulative ADR-32 count: a whole number, 0 if it is none or below, at most MAX_COUNT."""
    if isinstance(value, bool) or not isinstance(value, int):
        return 0
    return min(max(value, 0), MAX_COUNT)


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
    metadata = metadata_of(report.metadata)
    fields: dict[str, Any] = {
        "service": report.name,
        "version": text(report.version, 64),
        "host": text(metadata.get("host")),
        "pid": text(metadata.get("pid"), 20),
        "nats_server": text(metadata.get("nats_server")),
        "started": report.started,
    }
    # A reply that missed this round's window keeps the previous one.
    if report.endpoints is not None:
        fields["info"] = info_of(report)
        fields["description"] = text(report.description, DESCRIPTION_LIMIT)
    current = figures_of(report.stats) if report.stats is not None else None
    if current is not None:
        fields["stats"] = current
    if report.calls is not None:
        fields["calls"] = report.calls

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
        errors = figures["num_errors"] - before.get("num_errors", 0)
        # Within the errors added: a split that went down or is missing (a reply of another
        # shape) counts those errors as server errors.
        client_errors = figures.get("client_errors", 0) - before.get("client_errors", 0)
        deltas[name] = (
            requests,
            errors,
            min(max(client_errors, 0), errors),
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
    client_errors: int,
    processing_time: int,
    histogram: list[int] | None,
    *,
    save: bool = True,
) -> None:
    # Sums of counts near MAX_COUNT stay within the 64-bit columns.
    row.requests = min(row.requests + requests, MAX_COUNT)
    row.errors = min(row.errors + errors, MAX_COUNT)
    row.client_errors = min(row.client_errors + client_errors, row.errors)
    row.processing_time = min(row.processing_time + processing_time, MAX_COUNT)
    if histogram is not None:
        row.histogram = histograms.merge([row.histogram or histograms.empty(), histogram])
    if save:
        row.save()


def store_error(report: Any) -> ErrorRecord:
    """Store one error record (the ``ErrorReport`` event the runners publish)."""
    return ErrorRecord.objects.create(
        time=report.time,
        service=report.service[:64],
        instance_id=text(report.instance, 64),
        kind=report.kind,
        endpoint=text(report.endpoint, 128),
        subject=text(report.subject, 255),
        code=report.code,
        type=text(report.type, 64),
        message=text(report.message, 500),
        correlation_id=text(report.correlation_id, 128),
        trace_id=report.trace_id,
        dropped=report.dropped,
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
