"""What the backends that emulate JetStream's streams on a broker without them share (RabbitMQ's
quorum queues, SNS/SQS): the checks of a stream's declaration against the registry of streams,
with nats-server's own refusals, the incarnation stamp, and message numbers made by the
publisher (neither broker numbers a stream's messages)."""

from __future__ import annotations

import random
import time
from typing import Any, Protocol

from cliffracer_core.core.errors import RemoteUnavailable
from cliffracer_core.core.streams import Stream
from cliffracer_core.transports.base import NoStream, StreamError
from cliffracer_core.transports.subjects import overlaps, subject_matches

_last_sequence = 0


def new_sequence() -> int:
    """A message's number: microseconds since the epoch times 1024 plus random bits, increasing
    in this process (it fits a signed 64-bit integer until the year 2250)."""
    global _last_sequence
    sequence = time.time_ns() // 1000 * 1024 + random.randrange(1024)  # noqa: S311
    _last_sequence = max(sequence, _last_sequence + 1)
    return _last_sequence


def new_incarnation() -> str:
    """The stamp of a stream created now (UTC to the microsecond), as the registry keeps it."""
    incarnation = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    return incarnation + f".{time.time_ns() // 1000 % 1000000:06d}Z"


def refused(stream: Stream, reason: str) -> StreamError:
    return StreamError(
        f"Stream {stream.name} (declared in {stream.declared_by}): the server refused it: {reason}."
    )


def check_declaration(
    streams: dict[str, Any], stream: Stream, wanted: dict[str, Any]
) -> dict[str, Any] | None:
    """Refuse what nats-server refuses (``StreamError`` with its words): replicas, a duplicate
    window beyond the age limit, subjects another stream holds, a change of storage or to or
    from work-queue retention. Returns the stream's registry entry, None when it is new."""
    if wanted["num_replicas"] > 1:
        raise refused(stream, "replicas > 1 not supported in non-clustered mode")
    if wanted["max_age"] and wanted["duplicate_window"] > wanted["max_age"]:
        raise refused(stream, "duplicates window can not be larger then max age")
    for name, other in streams.items():
        if name != stream.name and any(
            overlaps(mine, theirs)
            for mine in wanted["subjects"]
            for theirs in other["config"]["subjects"]
        ):
            raise refused(stream, "subjects overlap with an existing stream")
    old = streams.get(stream.name)
    if old is None or old["config"] == wanted:
        return old
    if old["config"]["storage"] != wanted["storage"]:
        raise refused(stream, "stream configuration update can not change storage type")
    if old["config"]["retention"] != wanted["retention"] and "workqueue" in (
        old["config"]["retention"],
        wanted["retention"],
    ):
        raise refused(
            stream, "stream configuration update can not change retention policy to/from workqueue"
        )
    return old


class Registry(Protocol):
    """A backend's registry of streams, as the emulating backends keep it."""

    async def streams(self, *, fresh: bool = False) -> dict[str, Any]: ...


async def stream_of(registry: Registry, subject: str) -> tuple[str, dict[str, Any]]:
    """The stream that holds ``subject`` (the cached registry first, then read again)."""
    for fresh in (False, True):
        for name, found in (await registry.streams(fresh=fresh)).items():
            if any(subject_matches(pattern, subject) for pattern in found["config"]["subjects"]):
                return name, found
    raise NoStream(subject)


def check_size(found: dict[str, Any], subject: str, data: bytes, headers: dict[str, str]) -> None:
    """Refuse an event over the stream's ``max_msg_size``, counted as nats-server counts it."""
    size = len(data) + sum(len(key) + len(value) + 4 for key, value in headers.items()) + 10
    if 0 < found["config"]["max_msg_size"] < size:
        raise RemoteUnavailable(
            f"The stream refused the event on {subject}: message size exceeds maximum allowed.",
            type="publish_refused",
            subject=subject,
        )
