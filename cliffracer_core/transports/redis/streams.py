"""Durable streams on Redis, as JetStream keeps them (``scripts.py`` holds the Lua that does it).

A stream's messages are a Redis stream with entry ids ``0-<sequence>``, so that sequences count
from 1 as JetStream's do; its configuration sits in one hash with every other stream's, so that
a publish finds the stream that holds its subject in the same script that routes it (a plain
publish on a stream's subjects is stored too). Limits (age, count, bytes counted with
JetStream's formulas, per subject, discard new, message size), retention by interest or work
queue and message-id deduplication within the window are applied by the scripts, atomically.

Durable consumers keep their own cursor, and what they delivered and did not settle with its
delivery count and when it may come again: Redis 7.0's consumer groups have no nak and no
filter, and what they count as deliveries differs from JetStream's, so the scripts keep that
state themselves beside the stream.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from cliffracer_core.core.errors import RemoteUnavailable
from cliffracer_core.core.headers import MSG_ID
from cliffracer_core.core.streams import Stream, stream_config
from cliffracer_core.transports.base import (
    ConsumerState,
    NoStream,
    Received,
    StreamError,
    StreamState,
)
from cliffracer_core.transports.redis.envelope import clean_headers, header_size
from cliffracer_core.transports.subjects import overlaps

if TYPE_CHECKING:
    from cliffracer_core.transports.redis.transport import RedisTransport


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def configs(transport: RedisTransport) -> dict[str, dict[str, Any]]:
    assert transport.redis is not None
    found = await transport.redis.hgetall(f"{transport.prefix}xn")
    return {text(name): json.loads(raw) for name, raw in found.items()}


async def ensure_stream(transport: RedisTransport, stream: Stream) -> str:
    wanted = stream_config(stream)

    def refused(reason: str) -> StreamError:
        return StreamError(
            f"Stream {stream.name} (declared in {stream.declared_by}): the server refused "
            f"it: {reason}."
        )

    if wanted["num_replicas"] > 1:
        raise refused("replicas > 1 not supported in non-clustered mode")
    if wanted["max_age"] and wanted["duplicate_window"] > wanted["max_age"]:
        raise refused("duplicates window can not be larger then max age")
    existing = await configs(transport)
    for name, other in existing.items():
        if name != stream.name and any(
            overlaps(mine, theirs) for mine in wanted["subjects"] for theirs in other["subjects"]
        ):
            raise refused("subjects overlap with an existing stream")
    old = existing.get(stream.name)
    if old is None:
        incarnation = f"{time.time():.6f}-{transport.client_id}"
        if await transport.stream_call("create", stream.name, json.dumps(wanted), incarnation):
            return "created"
        # Another process created it first (services start together): compare with that.
        old = (await configs(transport)).get(stream.name)
        if old is None:
            raise refused("it was deleted while it was being created")
    if old == wanted:
        return "unchanged"
    if old["storage"] != wanted["storage"]:
        raise refused("stream configuration update can not change storage type")
    if old["retention"] != wanted["retention"] and "workqueue" in (
        old["retention"],
        wanted["retention"],
    ):
        raise refused(
            "stream configuration update can not change retention policy to/from workqueue"
        )
    await transport.stream_call("update", stream.name, json.dumps(wanted))
    return "updated"


async def compare_stream(transport: RedisTransport, stream: Stream) -> list[str] | None:
    wanted = stream_config(stream)
    existing = (await configs(transport)).get(stream.name)
    if existing is None:
        return None
    return sorted(key for key in wanted if existing.get(key) != wanted[key])


async def stream_state(transport: RedisTransport, name: str) -> StreamState | None:
    reply = await transport.stream_call("state", name)
    if text(reply[0]) != "state":
        return None
    config = (await configs(transport)).get(name) or {"subjects": []}
    return StreamState(
        name=name,
        incarnation=text(reply[1]),
        messages=int(reply[2]),
        bytes=int(reply[3]),
        subjects=list(config["subjects"]),
        consumers=int(reply[4]),
    )


async def publish_durable(
    transport: RedisTransport,
    subject: str,
    data: bytes,
    *,
    headers: dict[str, str] | None,
    msg_id: str,
) -> int:
    headers = clean_headers({**(headers or {}), MSG_ID: msg_id})
    envelope = transport.envelope(subject, data, headers, "")
    reply = await transport.stream_store(
        subject, envelope, msg_id, (header_size(headers), len(data))
    )
    outcome = text(reply[0])
    if outcome == "stored":
        return int(reply[1])
    if outcome == "refused":
        raise RemoteUnavailable(
            f"The stream refused the event on {subject}: {text(reply[1])}.",
            type="publish_refused",
            subject=subject,
        )
    raise NoStream(subject)


async def stored_message(transport: RedisTransport, stream: str, sequence: int) -> Received | None:
    reply = await transport.stream_call("stored", stream, sequence)
    if len(reply) != 2:  # no such message, or no such stream
        return None
    return transport.unpack(reply[0])


async def consumer_state(transport: RedisTransport, stream: str, name: str) -> ConsumerState | None:
    reply = await transport.stream_call("consumer_state", stream, name)
    if not reply or text(reply[0]) == "nostream":
        return None
    return ConsumerState(
        name=text(reply[0]),
        filter_subject=text(reply[1]),
        pending=int(reply[2]),
        ack_pending=int(reply[3]),
        redelivered=int(reply[4]),
    )


async def consumers(transport: RedisTransport, stream: str) -> list[ConsumerState]:
    reply = await transport.stream_call("consumers", stream)
    if reply and text(reply[0]) == "nostream":
        return []
    found = [await consumer_state(transport, stream, text(name)) for name in sorted(reply)]
    return sorted((state for state in found if state is not None), key=lambda s: s.name)


async def delete_consumer(transport: RedisTransport, stream: str, name: str) -> bool:
    reply = await transport.stream_call("delete_consumer", stream, name)
    return isinstance(reply, int) and reply == 1


async def delete_stream(transport: RedisTransport, name: str) -> bool:
    return await transport.stream_call("delete_stream", name) == 1
