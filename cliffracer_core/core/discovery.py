"""The NATS Services API (ADR-32): PING, INFO and STATS replies and per-endpoint statistics.

The reply shapes are the ADR's (``io.nats.micro.v1.*_response``), written out here so that they
travel the same on every transport: a Go or JavaScript ``micro`` client reads them as NATS's
own. The dispatch is Cliffracer's (the runner), not ``nats.micro``'s, which runs an
endpoint's handlers one at a time.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cliffracer_core.core.service import Rpc, Service
    from cliffracer_core.transports.base import Transport

# A service or endpoint name as it may stand in a URL, a frame or a subject: one subject token,
# never a wildcard or a separator. NAME_PATTERN is for JSON Schema and OpenAPI, where "$" ends
# the text; in Python "$" also matches before a final newline, so code checks with is_name().
NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
NAME = re.compile(NAME_PATTERN)


def is_name(value: Any) -> bool:
    """Whether ``value`` is a whole service or endpoint name (``NAME``, fully matched)."""
    return isinstance(value, str) and NAME.fullmatch(value) is not None


@dataclass
class Counters:
    """Running totals for one endpoint, as ADR-32 STATS reports them."""

    num_requests: int = 0
    num_errors: int = 0
    processing_time: int = 0
    last_error: str = ""

    def record(self, elapsed_ns: int, error: str | None = None) -> None:
        self.num_requests += 1
        self.processing_time += elapsed_ns
        if error is not None:
            self.num_errors += 1
            self.last_error = error

    @property
    def average_processing_time(self) -> int:
        return self.processing_time // self.num_requests if self.num_requests else 0


ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def new_instance_id() -> str:
    """A 22-character id for an instance, as random as nats.nuid's and of its alphabet."""
    return "".join(secrets.choice(ALPHABET) for _ in range(22))


@dataclass
class Identity:
    """Who a running service instance is."""

    id: str
    name: str
    version: str
    description: str
    started: datetime = field(default_factory=lambda: datetime.now(UTC))


CONTROL_PREFIX = "$SRV"


class ServiceVerb(StrEnum):
    PING = "PING"
    INFO = "INFO"
    STATS = "STATS"


def control_subject(verb: str, name: str | None = None, instance_id: str | None = None) -> str:
    """``$SRV.<verb>``, ``$SRV.<verb>.<name>`` or ``$SRV.<verb>.<name>.<id>``."""
    parts = [CONTROL_PREFIX, str(verb)]
    if name is not None:
        parts.append(name)
        if instance_id is not None:
            parts.append(instance_id)
    return ".".join(parts)


def control_subjects(name: str, instance_id: str) -> list[tuple[ServiceVerb, str]]:
    """The nine subjects an instance answers: each verb for all, by name and by id."""
    subjects = []
    for verb in ServiceVerb:
        for service_name, service_id in ((None, None), (name, None), (name, instance_id)):
            subjects.append((verb, control_subject(verb, service_name, service_id)))
    return subjects


def schema_of(model: Any) -> str:
    return json.dumps(model.model_json_schema()) if model is not None else "null"


def service_metadata(service_class: type[Service], subject_prefix: str) -> dict[str, str]:
    """Instance metadata; ADR-32 allows only string values, so lists travel as JSON text."""
    from cliffracer_core.core import VERSION as __version__

    queue = service_class.service_name()
    events = [
        {
            "subject": event.subject,
            "handler": event.attribute,
            "queue_group": None if event.broadcast else f"{queue}.{event.attribute}",
            "schema": json.loads(schema_of(event.model)),
        }
        for event in service_class.events()
    ]
    timers = [
        {"handler": timer.attribute, "seconds": timer.seconds} for timer in service_class.timers()
    ]
    return {
        "framework": f"cliffracer/{__version__}",
        "host": socket.gethostname(),
        "pid": str(os.getpid()),
        "rpc_subject_prefix": subject_prefix,
        "events": json.dumps(events),
        "timers": json.dumps(timers),
    }


def endpoint_metadata(rpc: Rpc) -> dict[str, str]:
    return {
        "request_schema": schema_of(rpc.request_model),
        "reply_schema": schema_of(rpc.reply_model),
        "handler": "async" if rpc.is_async else "sync",
        "public": "true" if rpc.public else "false",
        "idempotent": "true" if rpc.idempotent else "false",
        "permissions": json.dumps(list(rpc.permissions)),
        "description": rpc.description,
    }


def ping(identity: Identity, metadata: dict[str, str]) -> dict[str, Any]:
    return {
        "type": "io.nats.micro.v1.ping_response",
        "id": identity.id,
        "name": identity.name,
        "version": identity.version,
        "metadata": metadata,
    }


def info(
    identity: Identity,
    metadata: dict[str, str],
    endpoints: list[tuple[Rpc, str, str]],
) -> dict[str, Any]:
    """``endpoints`` holds (rpc, subject, queue group) for each endpoint."""
    return {
        "type": "io.nats.micro.v1.info_response",
        "id": identity.id,
        "name": identity.name,
        "version": identity.version,
        "description": identity.description,
        "endpoints": [
            {
                "name": rpc.name,
                "subject": subject,
                "queue_group": queue,
                "metadata": endpoint_metadata(rpc),
            }
            for rpc, subject, queue in endpoints
        ],
        "metadata": metadata,
    }


def stats(
    identity: Identity,
    metadata: dict[str, str],
    endpoints: list[tuple[Rpc, str, str]],
    counters: dict[str, Counters],
    data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``data`` maps endpoint names to ADR-32's free-form per-endpoint ``data``."""
    return {
        "type": "io.nats.micro.v1.stats_response",
        "name": identity.name,
        "id": identity.id,
        "version": identity.version,
        # ADR-32's time format: RFC 3339 in UTC, to the millisecond.
        "started": identity.started.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
        "endpoints": [
            {
                "name": rpc.name,
                "subject": subject,
                "queue_group": queue,
                "num_requests": counters[rpc.name].num_requests,
                "num_errors": counters[rpc.name].num_errors,
                "last_error": counters[rpc.name].last_error,
                "processing_time": counters[rpc.name].processing_time,
                "average_processing_time": counters[rpc.name].average_processing_time,
                "data": data.get(rpc.name) if data else None,
            }
            for rpc, subject, queue in endpoints
        ],
        "metadata": metadata,
    }


def latency_data(histograms: dict[str, Any]) -> dict[str, Any]:
    """Per-endpoint STATS ``data``: the latency histogram the runner keeps for its metrics.

    ``bounds`` are the buckets' upper bounds in seconds; ``counts`` has one more slot, for the
    requests slower than the last bound. Counts are per bucket, not cumulative.
    """
    from cliffracer_core.core.figures import DURATION_BUCKETS

    bounds = list(DURATION_BUCKETS)
    return {
        name: {"latency_histogram": {"bounds": bounds, "counts": list(histogram.buckets)}}
        for name, histogram in histograms.items()
    }


async def request_all(
    transport: Transport, verb: str, name: str | None = None, *, timeout: float = 0.5
) -> list[dict[str, Any]]:
    """Ask every instance (or every instance of ``name``) and gather the replies until
    ``timeout`` passes; ADR-32 discovery has no count of who will answer."""
    replies = await transport.request_many(control_subject(verb, name), b"", timeout=timeout)
    gathered = []
    for reply in replies:
        try:
            gathered.append(json.loads(reply.data))
        except (ValueError, RecursionError):
            continue
    return gathered


def parse_time(text: Any) -> datetime | None:
    """Parse an ADR-32 ``started`` time; Go services send nanoseconds, Python milliseconds.

    None for what is not such a time, or one that is out of range in UTC.
    """
    if not isinstance(text, str) or not text:
        return None
    text = re.sub(r"(\.\d{6})\d+", r"\1", text.strip())
    try:
        moment = datetime.fromisoformat(text)
        return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    except (ValueError, OverflowError):
        return None
