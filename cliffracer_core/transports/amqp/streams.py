"""Durable streams on RabbitMQ: an exchange per stream, a quorum queue per durable consumer.

- A stream is a durable topic exchange (``<exchange>.stream.<NAME>``) that a durable publish
  goes to, with publisher confirms; its declaration sits in the registry (``registry.py``).
- A durable consumer is a quorum queue (``<exchange>.consumer.<NAME>.<consumer>``) bound to the
  stream's exchange with its filter subject: manual acks, a delivery count kept by the broker,
  ``x-delivery-limit`` and a dead-letter queue per stream for what is terminated or goes past
  the limit. A message published while no consumer's filter takes it goes to the stream's
  alternate exchange and waits in the stream's unclaimed queue (within the stream's
  ``max_msgs``, ``max_bytes`` and ``max_age``) for the first consumer that takes its subject.
- ``nak(delay)`` without the delayed-message plugin: a copy goes to a retry queue per consumer
  and delay whose message TTL dead-letters it back into the consumer's queue, then the delivery
  is acknowledged.
- What RabbitMQ does not keep (``features.stream_history``): a stream's own numbering and
  history. A sequence is a number the publisher makes (microseconds and random bits, unique in
  practice, increasing per publisher only), ``stored_message`` finds nothing, a consumer made
  later receives only what was unclaimed, and the stream's message count is what waits
  unclaimed. Deduplication by message id is left to the consumer (``contrib.durable``'s
  idempotency records).
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any

import aio_pika
import aiormq.exceptions

from cliffracer_core.core.errors import RemoteError, RemoteUnavailable
from cliffracer_core.core.headers import MSG_ID
from cliffracer_core.core.streams import Stream, stream_config
from cliffracer_core.transports.base import ConsumerState, NoStream, StreamState
from cliffracer_core.transports.emulated import (
    check_declaration,
    check_size,
    new_incarnation,
    new_sequence,
    stream_of,
)

if TYPE_CHECKING:
    from cliffracer_core.transports.amqp.transport import AmqpTransport

# Headers the transport keeps in a stored message beside the seam's.
SEQUENCE = "x-cliffracer-sequence"
SUBJECT = "x-cliffracer-subject"
STORED_AT = "x-cliffracer-stored-at"
# Deliveries a message had before it was copied into a retry queue.
DELIVERED = "x-cliffracer-delivered"
# The broker's safety net for a message whose consumer's process dies on each delivery
# (``contrib.durable`` records a dead letter well before, at its ``max_deliveries``).
DELIVERY_LIMIT = 100


def exchange_name(transport: AmqpTransport, stream: str) -> str:
    return f"{transport.exchange_name}.stream.{stream}"


def unclaimed_name(transport: AmqpTransport, stream: str) -> str:
    return f"{transport.exchange_name}.unclaimed.{stream}"


def dead_name(transport: AmqpTransport, stream: str) -> str:
    return f"{transport.exchange_name}.dead.{stream}"


def consumer_queue(transport: AmqpTransport, stream: str, consumer: str) -> str:
    return f"{transport.exchange_name}.consumer.{stream}.{consumer}"


def limits(config: dict[str, Any]) -> dict[str, Any]:
    """Queue arguments for a stream's limits (those RabbitMQ has)."""
    arguments: dict[str, Any] = {}
    if config["retention"] == "interest":
        # Kept only for consumers that exist: nothing waits unclaimed.
        return {"x-max-length": 0, "x-overflow": "drop-head"}
    if config["max_msgs"] > 0:
        arguments["x-max-length"] = config["max_msgs"]
    if config["max_bytes"] > 0:
        arguments["x-max-length-bytes"] = config["max_bytes"]
    if config["max_age"] > 0:
        arguments["x-message-ttl"] = int(config["max_age"] * 1000)
    arguments["x-overflow"] = "reject-publish" if config["discard"] == "new" else "drop-head"
    return arguments


async def ensure_stream(transport: AmqpTransport, stream: Stream) -> str:
    wanted = stream_config(stream)
    async with transport.registry.change() as streams:
        old = check_declaration(streams, stream, wanted)
        if old is not None and old["config"] == wanted:
            return "unchanged"
        await declare_stream(transport, stream.name, wanted, old)
        if old is None:
            streams[stream.name] = {
                "config": wanted,
                "incarnation": new_incarnation(),
                "consumers": {},
            }
            return "created"
        old["config"] = wanted
        return "updated"


async def declare_stream(
    transport: AmqpTransport, name: str, config: dict[str, Any], old: dict[str, Any] | None
) -> None:
    """The stream's exchange, its unclaimed queue (behind its alternate exchange) and its
    dead-letter queue. A queue's limits are fixed when it is made: an update makes the
    unclaimed queue again when it holds nothing, and otherwise keeps the old limits."""
    channel = await transport.stream_channel()
    unclaimed = unclaimed_name(transport, name)
    alternate = await channel.declare_exchange(
        unclaimed, aio_pika.ExchangeType.FANOUT, durable=True
    )
    await channel.declare_exchange(
        exchange_name(transport, name),
        aio_pika.ExchangeType.TOPIC,
        durable=True,
        arguments={"alternate-exchange": unclaimed},
    )
    arguments = {"x-queue-type": "quorum", **limits(config)}
    if old is not None and limits(old["config"]) != limits(config):
        # Quorum queues have no ``if-empty`` delete: a message arriving between the count and
        # the delete would be lost, but only one no consumer takes, while none exists.
        if await ready(transport, unclaimed) == 0:
            await delete_queue(transport, unclaimed)
        else:
            arguments = {"x-queue-type": "quorum", **limits(old["config"])}
    queue = await channel.declare_queue(unclaimed, durable=True, arguments=arguments)
    await queue.bind(alternate)
    if old is None:
        # What is terminated or past the delivery limit, kept within the stream's limits as
        # they were when it was made (the oldest go first).
        dead = {"x-queue-type": "quorum", **limits({**config, "discard": "old"})}
        await channel.declare_queue(dead_name(transport, name), durable=True, arguments=dead)


async def compare_stream(transport: AmqpTransport, stream: Stream) -> list[str] | None:
    wanted = stream_config(stream)
    existing = (await transport.registry.read()).get(stream.name)
    if existing is None:
        return None
    return sorted(key for key in wanted if existing["config"].get(key) != wanted[key])


async def ready(transport: AmqpTransport, queue: str) -> int:
    """Messages ready in ``queue`` (0 when it is missing)."""
    try:
        async with transport.probe() as probing:
            declared = await probing.declare_queue(queue, passive=True)
    except aiormq.exceptions.ChannelNotFoundEntity:
        return 0
    return int(declared.declaration_result.message_count or 0)


async def stream_state(transport: AmqpTransport, name: str) -> StreamState | None:
    found = (await transport.registry.read()).get(name)
    if found is None:
        return None
    return StreamState(
        name=name,
        incarnation=found["incarnation"],
        messages=await ready(transport, unclaimed_name(transport, name)),
        subjects=list(found["config"]["subjects"]),
        consumers=len(found["consumers"]),
    )


async def publish_durable(
    transport: AmqpTransport,
    subject: str,
    data: bytes,
    *,
    headers: dict[str, str] | None,
    msg_id: str,
) -> int:
    name, found = await stream_of(transport.registry, subject)
    headers = {**(headers or {}), MSG_ID: msg_id}
    check_size(found, subject, data, headers)
    sequence = new_sequence()
    now = time.time()
    message = transport.durable_message(
        data,
        {**headers, SEQUENCE: str(sequence), STORED_AT: f"{now:.6f}", SUBJECT: subject},
        message_id=msg_id[:255],
        timestamp=int(now),
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        subject=subject,
    )
    channel = await transport.stream_channel()
    try:
        exchange = await channel.get_exchange(exchange_name(transport, name), ensure=False)
        # Confirmed once a consumer's queue (or the unclaimed queue) has it; a nack is a
        # queue at its limit with ``discard: new``.
        confirmation = await exchange.publish(message, routing_key=subject)
    except aiormq.exceptions.DeliveryError as error:
        raise RemoteUnavailable(
            f"The stream refused the event on {subject}: maximum messages exceeded.",
            type="publish_refused",
            subject=subject,
        ) from error
    except aiormq.exceptions.ChannelNotFoundEntity:
        transport.registry.cached = None
        raise NoStream(subject) from None
    if isinstance(confirmation, aiormq.spec.Basic.Nack):
        raise RemoteUnavailable(
            f"The stream refused the event on {subject}: maximum messages exceeded.",
            type="publish_refused",
            subject=subject,
        )
    # Plain subscribers hear a durable publish, as on NATS (at most once, as they do: the
    # stream has the message, so a failure here is no reason to publish it again).
    with contextlib.suppress(RemoteError):
        await transport.publish(subject, data, headers=headers)
    return sequence


async def consumer_state(transport: AmqpTransport, stream: str, name: str) -> ConsumerState | None:
    found = (await transport.registry.read()).get(stream)
    if found is None or name not in found["consumers"]:
        return None
    held = [
        delivery
        for attachment in transport.attachments
        if (attachment.stream, attachment.name) == (stream, name)
        for delivery in attachment.held
    ]
    return ConsumerState(
        name=name,
        filter_subject=found["consumers"][name],
        pending=await ready(transport, consumer_queue(transport, stream, name)),
        ack_pending=len(held),
        redelivered=sum(1 for delivery in held if delivery.delivered > 1),
    )


async def consumers(transport: AmqpTransport, stream: str) -> list[ConsumerState]:
    found = (await transport.registry.read()).get(stream)
    names = sorted(found["consumers"]) if found else []
    states = [await consumer_state(transport, stream, name) for name in names]
    return [state for state in states if state is not None]


async def delete_queue(transport: AmqpTransport, name: str) -> None:
    try:
        async with transport.probe() as probing:
            await probing.queue_delete(name)
    except aiormq.exceptions.ChannelNotFoundEntity:
        pass


async def delete_consumer(transport: AmqpTransport, stream: str, name: str) -> bool:
    async with transport.registry.change() as streams:
        found = streams.get(stream)
        if found is None or name not in found["consumers"]:
            return False
        del found["consumers"][name]
        await delete_queue(transport, consumer_queue(transport, stream, name))
    await transport.restart_attachments(stream, name)
    return True


async def delete_stream(transport: AmqpTransport, name: str) -> bool:
    async with transport.registry.change() as streams:
        found = streams.pop(name, None)
        if found is None:
            return False
        for consumer in found["consumers"]:
            await delete_queue(transport, consumer_queue(transport, name, consumer))
        for queue in (unclaimed_name(transport, name), dead_name(transport, name)):
            await delete_queue(transport, queue)
        async with transport.probe() as probing:
            await probing.exchange_delete(exchange_name(transport, name))
            await probing.exchange_delete(unclaimed_name(transport, name))
    await transport.restart_attachments(name, None)
    return True
