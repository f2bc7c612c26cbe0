"""The NATS Services API (ADR-32): PING, INFO and STATS replies and per-endpoint statistics.

The reply shapes come from ``nats.micro``'s dataclasses so the wire format is the ADR's; the
dispatch is Cliffracer's own because ``nats.micro`` runs an endpoint's handlers one at a time.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from nats.micro.service import (
    DEFAULT_PREFIX,
    EndpointInfo,
    EndpointStats,
    ServiceInfo,
    ServicePing,
    ServiceStats,
    ServiceVerb,
    control_subject,
)

if TYPE_CHECKING:
    from cliffracer_core.service import Rpc, Service

# A service or endpoint name as it may stand in a URL, a frame or a subject: one subject token,
# never a wildcard or a separator.
NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
NAME = re.compile(NAME_PATTERN)


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


@dataclass
class Identity:
    """Who a running service instance is."""

    id: str
    name: str
    version: str
    description: str
    started: datetime = field(default_factory=lambda: datetime.now(UTC))


def control_subjects(name: str, instance_id: str) -> list[tuple[ServiceVerb, str]]:
    """The nine subjects an instance answers: each verb for all, by name and by id."""
    subjects = []
    for verb in (ServiceVerb.PING, ServiceVerb.INFO, ServiceVerb.STATS):
        for service_name, service_id in ((None, None), (name, None), (name, instance_id)):
            subjects.append(
                (verb, control_subject(verb, service_name, service_id, prefix=DEFAULT_PREFIX))
            )
    return subjects


def schema_of(model: Any) -> str:
    return json.dumps(model.model_json_schema()) if model is not None else "null"


def service_metadata(service_class: type[Service], subject_prefix: str) -> dict[str, str]:
    """Instance metadata; ADR-32 allows only string values, so lists travel as JSON text."""
    from cliffracer_core import __version__

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
        "permissions": json.dumps(list(rpc.permissions)),
        "description": rpc.description,
    }


def ping(identity: Identity, metadata: dict[str, str]) -> dict[str, Any]:
    return ServicePing(
        id=identity.id, name=identity.name, version=identity.version, metadata=metadata
    ).to_dict()


def info(
    identity: Identity,
    metadata: dict[str, str],
    endpoints: list[tuple[Rpc, str, str]],
) -> dict[str, Any]:
    """``endpoints`` holds (rpc, subject, queue group) for each endpoint."""
    return ServiceInfo(
        id=identity.id,
        name=identity.name,
        version=identity.version,
        description=identity.description,
        metadata=metadata,
        endpoints=[
            EndpointInfo(
                name=rpc.name, subject=subject, queue_group=queue, metadata=endpoint_metadata(rpc)
            )
            for rpc, subject, queue in endpoints
        ],
    ).to_dict()


def stats(
    identity: Identity,
    metadata: dict[str, str],
    endpoints: list[tuple[Rpc, str, str]],
    counters: dict[str, Counters],
    data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``data`` maps endpoint names to ADR-32's free-form per-endpoint ``data``."""
    return ServiceStats(
        id=identity.id,
        name=identity.name,
        version=identity.version,
        started=identity.started,
        metadata=metadata,
        endpoints=[
            EndpointStats(
                name=rpc.name,
                subject=subject,
                queue_group=queue,
                num_requests=counters[rpc.name].num_requests,
                num_errors=counters[rpc.name].num_errors,
                processing_time=counters[rpc.name].processing_time,
                average_processing_time=counters[rpc.name].average_processing_time,
                last_error=counters[rpc.name].last_error,
                data=data.get(rpc.name) if data else None,
            )
            for rpc, subject, queue in endpoints
        ],
    ).to_dict()


def latency_data(histograms: dict[str, Any]) -> dict[str, Any]:
    """Per-endpoint STATS ``data``: the latency histogram the runner keeps for its metrics.

    ``bounds`` are the buckets' upper bounds in seconds; ``counts`` has one more slot, for the
    requests slower than the last bound. Counts are per bucket, not cumulative.
    """
    from cliffracer_core.metrics.recorder import DURATION_BUCKETS

    bounds = list(DURATION_BUCKETS)
    return {
        name: {"latency_histogram": {"bounds": bounds, "counts": list(histogram.buckets)}}
        for name, histogram in histograms.items()
    }


def nats_server_of(connection: Any) -> str:
    """The NATS server a connection is on, as "name (host:port)", for INFO's metadata."""
    url = getattr(connection, "connected_url", None)
    address = f"{url.hostname}:{url.port}" if url is not None and url.hostname else ""
    name = (getattr(connection, "_server_info", None) or {}).get("server_name") or ""
    if name and address:
        return f"{name} ({address})"
    return name or address


async def request_all(
    connection: Any, verb: str, name: str | None = None, *, timeout: float = 0.5
) -> list[dict[str, Any]]:
    """Ask every instance (or every instance of ``name``) and gather the replies until
    ``timeout`` passes; ADR-32 discovery has no count of who will answer."""
    import asyncio

    subject = control_subject(ServiceVerb(verb), name, None, prefix=DEFAULT_PREFIX)
    inbox = connection.new_inbox()
    replies: list[dict[str, Any]] = []

    async def collect(message: Any) -> None:
        with contextlib.suppress(ValueError):
            replies.append(json.loads(message.data))

    subscription = await connection.subscribe(inbox, cb=collect)
    try:
        await connection.publish(subject, b"", reply=inbox)
        await connection.flush()
        await asyncio.sleep(timeout)
    finally:
        await subscription.unsubscribe()
    return replies
