"""Streams and durable consumers in memory, as JetStream keeps them.

A stream stores, deduplicates by message id within its window, and drops by age, count and
size as JetStream does, and counts a message's bytes with JetStream's formulas. A durable
consumer delivers from the start (``DeliverPolicy.ALL``) to its attachments, each taking a
delivery only while it holds fewer than ``max_in_flight`` unsettled, as a JetStream pull
consumer asks for them. What an attachment holds stays held while it is attached (NATS's
attachment says "in progress" for it); naked, it comes again after its delay; left unsettled
by an attachment that closed or whose loop ended, it comes again after the ack wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from cliffracer_core.core.errors import RemoteUnavailable
from cliffracer_core.core.streams import Stream, stream_config
from cliffracer_core.transports.base import (
    ConsumerState,
    Delivery,
    NoStream,
    Received,
    StreamError,
    StreamState,
)
from cliffracer_core.transports.memory.loops import call_soon, cancel
from cliffracer_core.transports.subjects import overlaps, subject_matches

logger = logging.getLogger("cliffracer.durable")


def header_size(headers: dict[str, str] | None) -> int:
    """The bytes of headers as NATS sends them: "NATS/1.0\\r\\n", a "key: value\\r\\n" line
    each, "\\r\\n"."""
    if not headers:
        return 0
    return 12 + sum(len(key.encode()) + len(value.encode()) + 4 for key, value in headers.items())


def stored_size(storage: str, subject: str, data: bytes, headers: dict[str, str] | None) -> int:
    """The bytes JetStream counts for a stored message (its file and memory store formulas)."""
    header_bytes = header_size(headers)
    if storage == "memory":
        return len(subject.encode()) + header_bytes + len(data) + 16
    return 30 + len(subject.encode()) + (4 + header_bytes if header_bytes else 0) + len(data)


@dataclass(slots=True)
class Stored:
    subject: str
    data: bytes
    headers: dict[str, str] | None
    stored_at: float  # time.time()
    size: int


@dataclass(slots=True)
class Pending:
    """A message delivered and not settled: which delivery it is, which attachment holds it
    and, once none does, from when it may be delivered again (``time.monotonic()``)."""

    delivered: int
    holder: MemoryConsumer | None
    due: float = 0.0


@dataclass
class DurableConsumer:
    """A durable consumer of a stream, shared by its attachments (explicit acks)."""

    name: str
    filter_subject: str
    ack_wait: float
    next_sequence: int = 1
    pending: dict[int, Pending] = field(default_factory=dict)


class MemoryStream:
    """One life of a stream: its messages, the ids it has seen, its durable consumers."""

    def __init__(self, name: str, config: dict[str, Any], created: datetime) -> None:
        self.name = name
        self.config = config
        self.incarnation = created.strftime("%Y%m%dT%H%M%S.%fZ")  # as NATS's incarnation_of
        self.messages: dict[int, Stored] = {}
        self.bytes = 0
        self.last_sequence = 0
        # Message ids within the duplicate window, oldest first: id → (sequence, time stored).
        self.ids: dict[str, tuple[int, float]] = {}
        self.consumers: dict[str, DurableConsumer] = {}

    @property
    def first_sequence(self) -> int:
        return next(iter(self.messages), self.last_sequence + 1)

    def holds(self, subject: str) -> bool:
        return any(subject_matches(pattern, subject) for pattern in self.config["subjects"])

    def store(self, message: Received, msg_id: str, now: float) -> int:
        self.trim(now)
        if msg_id in self.ids:
            return self.ids[msg_id][0]
        config = self.config
        size = stored_size(config["storage"], message.subject, message.data, message.headers)
        refusal = ""
        if config["max_msg_size"] != -1 and (
            header_size(message.headers) + len(message.data) > config["max_msg_size"]
        ):
            refusal = "message size exceeds maximum allowed"
        elif config["discard"] == "new":
            if config["max_msgs"] != -1 and len(self.messages) >= config["max_msgs"]:
                refusal = "maximum messages exceeded"
            elif config["max_bytes"] != -1 and self.bytes + size > config["max_bytes"]:
                refusal = "maximum bytes exceeded"
        if refusal:
            raise RemoteUnavailable(
                f"JetStream refused the event on {message.subject}: {refusal}.",
                type="publish_refused",
                subject=message.subject,
            )
        self.last_sequence += 1
        sequence = self.last_sequence
        self.ids[msg_id] = (sequence, now)
        self.messages[sequence] = Stored(message.subject, message.data, message.headers, now, size)
        self.bytes += size
        if config["max_msgs_per_subject"] != -1:
            same = [s for s, stored in self.messages.items() if stored.subject == message.subject]
            for old in same[: -config["max_msgs_per_subject"]]:
                self.remove(old)
        if config["retention"] == "interest" and not self.wanted(sequence):
            self.remove(sequence)  # no consumer will read it
        self.trim(now)
        return sequence

    def trim(self, now: float) -> None:
        """Apply the limits: age, count and size (the oldest go first), duplicate window."""
        config = self.config
        max_age = config["max_age"]
        while self.messages and (
            (max_age and self.messages[self.first_sequence].stored_at <= now - max_age)
            or (config["max_msgs"] != -1 and len(self.messages) > config["max_msgs"])
            or (config["max_bytes"] != -1 and self.bytes > config["max_bytes"])
        ):
            self.remove(self.first_sequence)
        while self.ids and next(iter(self.ids.values()))[1] <= now - config["duplicate_window"]:
            del self.ids[next(iter(self.ids))]

    def remove(self, sequence: int) -> None:
        self.bytes -= self.messages.pop(sequence).size

    def wanted(self, sequence: int) -> bool:
        """Whether a consumer has yet to deliver or settle the message at ``sequence``."""
        subject = self.messages[sequence].subject
        return any(
            subject_matches(consumer.filter_subject, subject)
            and (sequence >= consumer.next_sequence or sequence in consumer.pending)
            for consumer in self.consumers.values()
        )

    def settled(self, sequence: int) -> None:
        """Drop a message every consumer has settled from a stream that keeps messages only
        until then (interest and work-queue retention)."""
        retention = self.config["retention"]
        if retention != "limits" and sequence in self.messages and not self.wanted(sequence):
            self.remove(sequence)


class Streams:
    """The streams of one broker and the attachments to their consumers, behind one lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.streams: dict[str, MemoryStream] = {}
        self.attachments: list[MemoryConsumer] = []
        self.created = datetime.now(UTC)

    def reset(self) -> None:
        with self.lock:
            attachments, self.attachments = self.attachments, []
            self.streams = {}
        for attachment in attachments:
            attachment.closed = True
            if attachment.task is not None:
                cancel(attachment.task)

    def get(self, name: str) -> MemoryStream | None:
        """The stream ``name`` with its limits applied (the caller holds the lock)."""
        stream = self.streams.get(name)
        if stream is not None:
            stream.trim(time.time())
        return stream

    def ensure(self, stream: Stream) -> str:
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
        with self.lock:
            for other in self.streams.values():
                if other.name != stream.name and any(
                    overlaps(mine, theirs)
                    for mine in wanted["subjects"]
                    for theirs in other.config["subjects"]
                ):
                    raise refused("subjects overlap with an existing stream")
            existing = self.streams.get(stream.name)
            if existing is None:
                # Each life gets its own creation time, however quickly it follows the last.
                self.created = max(datetime.now(UTC), self.created + timedelta(microseconds=1))
                self.streams[stream.name] = MemoryStream(stream.name, wanted, self.created)
                self.wake(stream.name)
                return "created"
            old = existing.config
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
            existing.config = wanted
            existing.trim(time.time())
            return "updated"

    def compare(self, stream: Stream) -> list[str] | None:
        """The options in which the stream differs from ``stream``'s declaration, or None."""
        wanted = stream_config(stream)
        with self.lock:
            existing = self.streams.get(stream.name)
            if existing is None:
                return None
            return sorted(key for key in wanted if existing.config.get(key) != wanted[key])

    def state(self, name: str) -> StreamState | None:
        with self.lock:
            stream = self.get(name)
            if stream is None:
                return None
            return StreamState(
                name=name,
                incarnation=stream.incarnation,
                messages=len(stream.messages),
                bytes=stream.bytes,
                subjects=list(stream.config["subjects"]),
                consumers=len(stream.consumers),
            )

    def delete(self, name: str) -> bool:
        with self.lock:
            found = self.streams.pop(name, None) is not None
            self.wake(name)
        return found

    def store(self, message: Received, msg_id: str) -> int:
        """Store ``message`` in the stream that holds its subject; ``NoStream`` if none does."""
        sequence = self.capture(message, msg_id)
        if sequence is None:
            raise NoStream(message.subject)
        return sequence

    def capture(self, message: Received, msg_id: str) -> int | None:
        """Store ``message`` if a stream holds its subject (as JetStream captures every
        message on its subjects, a plain publish too); its sequence, or None."""
        with self.lock:
            for stream in self.streams.values():
                if stream.holds(message.subject):
                    sequence = stream.store(message, msg_id, time.time())
                    self.wake(stream.name)
                    return sequence
        return None

    def stored(self, name: str, sequence: int) -> Received | None:
        with self.lock:
            stream = self.get(name)
            stored = stream.messages.get(sequence) if stream is not None else None
            if stored is None:
                return None
            headers = dict(stored.headers) if stored.headers else None
            return Received(stored.subject, stored.data, headers)

    def attach(self, attachment: MemoryConsumer) -> None:
        with self.lock:
            stream = self.get(attachment.stream)
            if stream is None:
                raise NoStream(f"There is no stream {attachment.stream}.")
            limit = stream.config["max_consumers"]
            if attachment.name not in stream.consumers and 0 < limit <= len(stream.consumers):
                raise StreamError(f"Stream {stream.name}: maximum consumers limit reached.")
            self.consumer_of(attachment)
            self.attachments.append(attachment)

    def consumer_state(self, name: str, consumer_name: str) -> ConsumerState | None:
        with self.lock:
            stream = self.get(name)
            consumer = stream.consumers.get(consumer_name) if stream is not None else None
            if stream is None or consumer is None:
                return None
            return self._consumer_state(stream, consumer_name, consumer)

    def consumers(self, name: str) -> list[ConsumerState]:
        with self.lock:
            stream = self.get(name)
            if stream is None:
                return []
            return [
                self._consumer_state(stream, consumer_name, consumer)
                for consumer_name, consumer in sorted(stream.consumers.items())
            ]

    @staticmethod
    def _consumer_state(
        stream: MemoryStream, consumer_name: str, consumer: DurableConsumer
    ) -> ConsumerState:
        return ConsumerState(
            name=consumer_name,
            filter_subject=consumer.filter_subject,
            pending=sum(
                subject_matches(consumer.filter_subject, stored.subject)
                for sequence, stored in stream.messages.items()
                if sequence >= consumer.next_sequence
            ),
            ack_pending=len(consumer.pending),
            redelivered=sum(entry.delivered > 1 for entry in consumer.pending.values()),
        )

    def delete_consumer(self, name: str, consumer_name: str) -> bool:
        with self.lock:
            stream = self.streams.get(name)
            found = stream is not None and stream.consumers.pop(consumer_name, None) is not None
            self.wake(name, consumer_name)
        return found

    # Deliveries (the methods below run with the lock held)

    def wake(self, stream: str, consumer: str | None = None) -> None:
        """Have the attachments to ``stream`` (or to its ``consumer``) look for work."""
        for attachment in self.attachments:
            if attachment.stream == stream and consumer in (None, attachment.name):
                call_soon(attachment.loop, attachment.ready.set)

    def consumer_of(self, attachment: MemoryConsumer) -> DurableConsumer | None:
        """The consumer ``attachment`` reads (None while its stream is missing). A deleted
        consumer is created again, delivering from the start, as NATS's attachment does."""
        stream = self.get(attachment.stream)
        if stream is None:
            return None
        consumer = stream.consumers.get(attachment.name)
        if consumer is None:
            consumer = DurableConsumer(
                attachment.name, attachment.filter_subject, attachment.ack_wait
            )
            stream.consumers[attachment.name] = consumer
        elif attachment.consumer is None:  # attaching updates the consumer, as NATS's does
            consumer.filter_subject = attachment.filter_subject
            consumer.ack_wait = attachment.ack_wait
        if attachment.consumer is not consumer:
            attachment.consumer = consumer
            attachment.incarnation = stream.incarnation
        return consumer

    def next_delivery(self, attachment: MemoryConsumer) -> MemoryDelivery | float | None:
        """The next delivery for ``attachment``, or else the seconds until one may be due
        (None: until woken)."""
        with self.lock:
            if attachment.stopping or len(attachment.held) >= attachment.max_in_flight:
                return None
            consumer = self.consumer_of(attachment)
            if consumer is None:
                return None
            stream = self.streams[attachment.stream]
            now = time.monotonic()
            for sequence in sorted(
                sequence
                for sequence, entry in consumer.pending.items()
                if entry.holder is None and entry.due <= now
            ):
                if sequence in stream.messages:
                    return self.deliver(stream, consumer, attachment, sequence)
                del consumer.pending[sequence]  # dropped from the stream meanwhile
            consumer.next_sequence = max(consumer.next_sequence, stream.first_sequence)
            while consumer.next_sequence <= stream.last_sequence:
                sequence = consumer.next_sequence
                consumer.next_sequence += 1
                stored = stream.messages.get(sequence)
                if stored is not None and subject_matches(consumer.filter_subject, stored.subject):
                    return self.deliver(stream, consumer, attachment, sequence)
            waits = [entry.due - now for entry in consumer.pending.values() if not entry.holder]
            return min(waits) if waits else None

    def deliver(
        self,
        stream: MemoryStream,
        consumer: DurableConsumer,
        attachment: MemoryConsumer,
        sequence: int,
    ) -> MemoryDelivery:
        entry = consumer.pending.get(sequence)
        delivered = entry.delivered + 1 if entry is not None else 1
        consumer.pending[sequence] = Pending(delivered, attachment)
        delivery = MemoryDelivery(
            self, consumer, attachment, stream, sequence, delivered, stream.messages[sequence]
        )
        attachment.held.add(delivery)
        return delivery

    def settle(self, delivery: MemoryDelivery, outcome: str, delay: float = 0.0) -> None:
        """Ack, term or nak ``delivery``, or say it is in progress. An ack or a term settles
        the message whichever of its deliveries it comes from, as JetStream's do; a nak or an
        in-progress counts only from its latest delivery."""
        with self.lock:
            if outcome != "in_progress":
                delivery.attachment.held.discard(delivery)
            consumer = delivery.consumer
            stream = self.streams.get(delivery.stream)
            if stream is None or stream.consumers.get(consumer.name) is not consumer:
                return  # its consumer or its stream was deleted
            entry = consumer.pending.get(delivery.sequence)
            if entry is None:
                return
            if outcome in ("ack", "term"):
                del consumer.pending[delivery.sequence]
                stream.settled(delivery.sequence)
            elif entry.delivered != delivery.delivered:
                return
            elif outcome == "nak":
                entry.holder = None
                entry.due = time.monotonic() + delay
            elif entry.holder is None:  # in progress, after its attachment went away
                entry.due = time.monotonic() + consumer.ack_wait
            self.wake(stream.name, consumer.name)

    def detach(self, attachment: MemoryConsumer) -> None:
        """Let go of ``attachment``: what it holds unsettled comes again after the ack wait."""
        with self.lock:
            if attachment in self.attachments:
                self.attachments.remove(attachment)
            consumer = attachment.consumer
            if consumer is not None:
                due = time.monotonic() + consumer.ack_wait
                for entry in consumer.pending.values():
                    if entry.holder is attachment:
                        entry.holder = None
                        entry.due = due
            attachment.held.clear()
            self.wake(attachment.stream, attachment.name)


class MemoryDelivery:
    """One delivery of a stored message; settle it once (ack, nak, term)."""

    __slots__ = (
        "streams",
        "consumer",
        "attachment",
        "subject",
        "data",
        "headers",
        "stream",
        "sequence",
        "delivered",
        "stored_at",
        "settled",
    )

    def __init__(
        self,
        streams: Streams,
        consumer: DurableConsumer,
        attachment: MemoryConsumer,
        stream: MemoryStream,
        sequence: int,
        delivered: int,
        stored: Stored,
    ) -> None:
        self.streams = streams
        self.consumer = consumer
        self.attachment = attachment
        self.subject = stored.subject
        self.data = stored.data
        self.headers = dict(stored.headers) if stored.headers else None
        self.stream = stream.name
        self.sequence = sequence
        self.delivered = delivered
        self.stored_at = stored.stored_at
        self.settled = False

    async def ack(self) -> None:
        self._settle("ack")

    async def nak(self, delay: float = 0.0) -> None:
        self._settle("nak", delay)

    async def term(self) -> None:
        self._settle("term")

    async def in_progress(self) -> None:
        if not self.settled:
            self.streams.settle(self, "in_progress")

    def _settle(self, outcome: str, delay: float = 0.0) -> None:
        if not self.settled:
            self.settled = True
            self.streams.settle(self, outcome, delay)


class MemoryConsumer:
    """One attachment to a durable consumer: in a task on its loop, it takes a delivery while
    it holds fewer than ``max_in_flight`` and hands it to the callback, one at a time."""

    def __init__(
        self,
        streams: Streams,
        stream: str,
        name: str,
        callback: Callable[[Delivery], Awaitable[None]],
        *,
        filter_subject: str,
        ack_wait: float,
        max_in_flight: int,
        transport: object = None,
    ) -> None:
        self.streams = streams
        # The connection it came from, which closes it when it closes.
        self.transport = transport
        self.stream = stream
        self.name = name
        self.callback = callback
        self.filter_subject = filter_subject
        self.ack_wait = ack_wait
        self.max_in_flight = max(1, max_in_flight)
        self.incarnation = ""
        self.consumer: DurableConsumer | None = None
        self.held: set[MemoryDelivery] = set()
        self.stopping = False
        self.closed = False
        self.loop = asyncio.get_running_loop()
        self.ready = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.streams.attach(self)
        self.task = self.loop.create_task(self.run())
        self.task.add_done_callback(lambda _: self.streams.detach(self))

    async def run(self) -> None:
        while not self.closed:
            self.ready.clear()
            found = self.streams.next_delivery(self)
            if not isinstance(found, MemoryDelivery):
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(found):
                        await self.ready.wait()
                continue
            try:
                await self.callback(found)
            except Exception:  # noqa: BLE001  (a callback's failure must not stop the consumer)
                logger.exception("Delivering a durable event of %s failed.", self.name)
                await found.nak()

    def stop(self) -> None:
        """Take no new deliveries; those held stay held until settled or ``close()``."""
        self.stopping = True

    async def close(self) -> None:
        self.stop()
        self.closed = True
        self.streams.detach(self)
        if self.task is None or self.task is asyncio.current_task():
            return
        cancel(self.task)
        if self.task.get_loop() is asyncio.get_running_loop():
            with contextlib.suppress(BaseException):
                await self.task
