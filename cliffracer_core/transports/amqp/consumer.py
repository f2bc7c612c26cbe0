"""A durable consumer's attachment on RabbitMQ: a channel of its own on the consumer's quorum
queue, ``basic.qos`` as ``max_in_flight``, manual acks (see ``streams.py`` for the layout).

Deliveries are handed to the callback one at a time, in order, in a task of the attachment's;
a callback that raises leaves its delivery to come again at once. RabbitMQ keeps an unsettled
delivery with its attachment for as long as the attachment's channel is open, so ``ack_wait``
is not a per-delivery timer here: what an attachment held comes again when it goes away (its
process stopped or its connection was lost), and ``in_progress`` has nothing to extend.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from cliffracer_core.transports.amqp import streams
from cliffracer_core.transports.base import NoStream
from cliffracer_core.transports.subjects import subject_matches

if TYPE_CHECKING:
    from cliffracer_core.transports.amqp.transport import AmqpTransport

logger = logging.getLogger("cliffracer.connection")

# A retry queue goes away once unused this much longer than its delay.
RETRY_QUEUE_IDLE = 3600.0
# Seconds an attachment waits for what it claims before it is returned (the rest follows).
CLAIM_WAIT = 2.0
# Seconds between looks for a deleted stream that an attachment waits to follow.
FOLLOW_INTERVAL = 0.25


def seam_headers(headers: dict[str, Any] | None) -> dict[str, str] | None:
    """A delivery's headers without the broker's and the transport's own (``x-``)."""
    from cliffracer_core.transports.amqp.transport import text_headers

    kept = {key: value for key, value in (headers or {}).items() if not key.startswith("x-")}
    return text_headers(kept)


class AmqpDelivery:
    """One delivery of a durable message; settled once."""

    def __init__(self, attachment: AmqpAttachment, incoming: AbstractIncomingMessage) -> None:
        headers = incoming.headers or {}
        self.attachment = attachment
        self.incoming = incoming
        self.subject = subject_of(incoming)
        self.data = incoming.body
        self.headers = seam_headers(headers)
        self.stream = attachment.stream
        self.sequence = number(headers.get(streams.SEQUENCE)) or 0
        # Deliveries before a copy into a retry queue, and returns since (the broker's count).
        self.delivered = (
            number(headers.get(streams.DELIVERED)) + number(headers.get("x-delivery-count")) + 1
        )
        stored = headers.get(streams.STORED_AT)
        self.stored_at = (
            float(stored)
            if stored
            else float(incoming.timestamp.timestamp() if incoming.timestamp else 0.0)
        )
        self.settled = False

    def _settle(self) -> bool:
        if self.settled:
            return False
        self.settled = True
        self.attachment.held.discard(self)
        return True

    async def ack(self) -> None:
        if self._settle():
            with contextlib.suppress(*self.attachment.unavailable):
                await self.incoming.ack()

    async def nak(self, delay: float = 0.0) -> None:
        if not self._settle():
            return
        with contextlib.suppress(*self.attachment.unavailable):
            if delay <= 0:
                await self.incoming.nack(requeue=True)
                return
            # No delayed-message plugin: a copy waits out the delay in a retry queue whose
            # TTL dead-letters it back into the consumer's queue.
            await self.attachment.retry(self.incoming, self.delivered, delay)
            await self.incoming.ack()

    async def in_progress(self) -> None:
        """Nothing to extend: RabbitMQ keeps the delivery while its attachment is open."""

    async def term(self) -> None:
        if self._settle():
            # To the stream's dead-letter queue; never delivered again.
            with contextlib.suppress(*self.attachment.unavailable):
                await self.incoming.reject(requeue=False)


def subject_of(incoming: AbstractIncomingMessage) -> str:
    """A stored message's subject: its routing key is a queue's name once it was moved or
    dead-lettered back from a retry queue, so the subject travels in a header too."""
    subject = (incoming.headers or {}).get(streams.SUBJECT)
    if isinstance(subject, bytes):
        subject = subject.decode()
    return str(subject) if subject else incoming.routing_key or ""


def number(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


class AmqpAttachment:
    """An attachment to one durable consumer, delivering to ``callback`` until stopped."""

    def __init__(
        self,
        transport: AmqpTransport,
        stream: str,
        name: str,
        callback: Callable[[Any], Awaitable[None]],
        *,
        filter_subject: str,
        max_in_flight: int,
    ) -> None:
        self.transport = transport
        self.stream = stream
        self.name = name
        self.callback = callback
        self.filter_subject = filter_subject
        self.max_in_flight = max(1, max_in_flight)
        self.incarnation = ""
        self.unavailable = transport.unavailable_errors
        self.channel: Any = None
        self.queue: Any = None
        self.consumer_tag: str | None = None
        self.held: set[AmqpDelivery] = set()
        self.waiting: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self.stopped = False
        self.task: asyncio.Task[None] | None = None
        self.retry_queues: set[str] = set()
        self.claiming: asyncio.Task[None] | None = None
        self.following: asyncio.Task[None] | None = None

    @property
    def queue_name(self) -> str:
        return streams.consumer_queue(self.transport, self.stream, self.name)

    async def start(self) -> None:
        from cliffracer_core.transports.amqp.transport import routing_pattern

        transport = self.transport
        async with transport.registry.change() as registered:
            found = registered.get(self.stream)
            if found is None:
                raise NoStream(f"Stream {self.stream} does not exist.")
            self.incarnation = found["incarnation"]
            found["consumers"][self.name] = self.filter_subject
            self.channel = await transport.new_channel()
            await self.channel.set_qos(prefetch_count=self.max_in_flight)
            arguments = {
                "x-queue-type": "quorum",
                "x-delivery-limit": streams.DELIVERY_LIMIT,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": streams.dead_name(transport, self.stream),
            }
            self.queue = await self.channel.declare_queue(
                self.queue_name, durable=True, arguments=arguments
            )
            exchange = streams.exchange_name(transport, self.stream)
            await self.queue.bind(exchange, routing_key=routing_pattern(self.filter_subject))
        loop = asyncio.get_running_loop()
        if self.task is None:
            self.task = loop.create_task(self.run())
        self.consumer_tag = await self.queue.consume(self.deliver, no_ack=False)
        # What waited for a consumer of its subject is this one's now: usually moved before
        # the attachment is returned, the rest of a large backlog in the task's own time.
        self.claiming = loop.create_task(self.claim())
        await asyncio.wait({self.claiming}, timeout=CLAIM_WAIT)

    async def claim(self) -> None:
        """Move what waits unclaimed in the stream and this consumer takes into its queue;
        the rest goes back through the stream's exchange (unclaimed again, unless a consumer
        made meanwhile takes it)."""
        try:
            unclaimed = streams.unclaimed_name(self.transport, self.stream)
            count = await streams.ready(self.transport, unclaimed)
            if not count:
                return
            queue = await self.channel.get_queue(unclaimed, ensure=False)
            exchange = await self.channel.get_exchange(
                streams.exchange_name(self.transport, self.stream), ensure=False
            )
            for _ in range(count):
                incoming = await queue.get(no_ack=False, fail=False)
                if incoming is None or self.stopped:
                    if incoming is not None:
                        await incoming.reject(requeue=True)
                    return
                subject = subject_of(incoming)
                copy = aio_pika.Message(
                    incoming.body,
                    headers=incoming.headers,
                    message_id=incoming.message_id,
                    timestamp=incoming.timestamp,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                )
                if subject_matches(self.filter_subject, subject):
                    await self.channel.default_exchange.publish(copy, routing_key=self.queue_name)
                else:
                    await exchange.publish(copy, routing_key=subject)
                await incoming.ack()
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001  (what is left waits for the next attachment)
            logger.warning(
                "Consumer %s could not take what waited unclaimed in stream %s.",
                self.name,
                self.stream,
                exc_info=True,
            )

    async def deliver(self, incoming: AbstractIncomingMessage) -> None:
        await self.waiting.put(incoming)

    async def run(self) -> None:
        while True:
            incoming = await self.waiting.get()
            if self.stopped:
                with contextlib.suppress(*self.unavailable):
                    await incoming.nack(requeue=True)
                continue
            if not subject_matches(self.filter_subject, subject_of(incoming)):
                # What AMQP's looser matching let through (``a.#`` takes ``a``).
                with contextlib.suppress(*self.unavailable):
                    await incoming.ack()
                continue
            delivery = AmqpDelivery(self, incoming)
            self.held.add(delivery)
            try:
                await self.callback(delivery)
            except Exception:  # noqa: BLE001  (as NATS: the delivery comes again)
                logger.exception("A durable consumer callback on %s failed.", delivery.subject)
                await delivery.nak()

    async def retry(self, incoming: AbstractIncomingMessage, delivered: int, delay: float) -> None:
        milliseconds = max(1, round(delay * 1000))
        name = f"{self.queue_name}.retry.{milliseconds}"
        if name not in self.retry_queues:
            await self.channel.declare_queue(
                name,
                durable=True,
                arguments={
                    "x-message-ttl": milliseconds,
                    "x-expires": milliseconds + int(RETRY_QUEUE_IDLE * 1000),
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": self.queue_name,
                },
            )
            self.retry_queues.add(name)
        headers = {
            key: value
            for key, value in (incoming.headers or {}).items()
            if key not in ("x-delivery-count", "x-death") and not key.startswith("x-first-death")
        }
        headers[streams.DELIVERED] = delivered
        copy = aio_pika.Message(
            incoming.body,
            headers=headers,
            message_id=incoming.message_id,
            timestamp=incoming.timestamp,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        await self.channel.default_exchange.publish(copy, routing_key=name)

    def stop(self) -> None:
        """Take no new deliveries; what still comes is handed back at once."""
        if self.stopped:
            return
        self.stopped = True
        if self.queue is not None and self.consumer_tag is not None:
            asyncio.get_running_loop().create_task(self._cancel())

    async def _cancel(self) -> None:
        with contextlib.suppress(*self.unavailable, TimeoutError):
            await self.queue.cancel(self.consumer_tag, timeout=5)

    async def close(self) -> None:
        """Stop and let go: what is not settled comes again to another attachment."""
        self.stopped = True
        self.transport.attachments.discard(self)
        for task in (self.task, self.claiming, self.following):
            if task is not None:
                task.cancel()
        if self.channel is not None:
            with contextlib.suppress(Exception):
                await self.channel.close()

    async def restart(self) -> None:
        """Attach again after the consumer (or its stream) was deleted under this attachment,
        as NATS's does: a new consumer, or, without a stream, one as soon as the stream is
        created again (a new incarnation)."""
        if self.stopped:
            return
        if self.channel is not None:
            with contextlib.suppress(Exception):
                await self.channel.close()
        self.held.clear()
        try:
            await self.start()
        except NoStream:
            logger.warning("Stream %s is gone; consumer %s waits for it.", self.stream, self.name)
            self.following = asyncio.get_running_loop().create_task(self.follow())

    async def follow(self) -> None:
        """Attach once the deleted stream exists again."""
        while not self.stopped:
            await asyncio.sleep(FOLLOW_INTERVAL)
            try:
                if self.stream in await self.transport.registry.read():
                    await self.start()
                    return
            except NoStream:
                continue
            except Exception:  # noqa: BLE001  (tried again at the next interval)
                logger.debug("Consumer %s could not attach yet.", self.name, exc_info=True)
