"""A durable consumer's attachment on SQS: a long-polling task on the consumer's queue (see
``streams.py`` for the layout).

- It receives while it holds fewer than ``max_in_flight`` deliveries, with a visibility
  timeout of ``ack_wait`` (whole seconds, at least 1), hands them to the callback one at a time,
  and renews what it holds every third of that, so that nothing it holds is delivered elsewhere
  while it is attached; what a process that died held comes again after the visibility timeout.
- ack deletes the message; ``nak(delay)`` makes it visible again after the delay (rounded up to
  whole seconds, 12 hours at most); ``in_progress`` restarts its visibility timeout; ``term``
  sends it to the stream's dead-letter queue and deletes it. The delivery count is SQS's
  ``ApproximateReceiveCount``, which also counts a receive a closing attachment handed back.
- When it attaches, it claims what waits in the stream's unclaimed queue and its filter takes.
- On an ordered stream's FIFO queue the same, with each message's group and deduplication id
  kept when it moves (claimed, buried): SQS gives out no message of the stream while one
  before it is held, so a nak holds back what follows until it comes again.
- A receive is never cancelled while it waits in SQS (what it took would be hidden for the
  visibility timeout, and counted as a delivery): a stopped attachment's last receive ends by
  itself within ``poll_wait`` and hands back what it took; the transport's close waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from cliffracer_core.transports.base import NoStream
from cliffracer_core.transports.sqs import names, streams
from cliffracer_core.transports.sqs.envelope import unpack_stored
from cliffracer_core.transports.subjects import subject_matches

if TYPE_CHECKING:
    from cliffracer_core.transports.sqs.transport import SqsTransport

logger = logging.getLogger("cliffracer.connection")

# Seconds an attachment waits for what it claims before it is returned (the rest follows).
CLAIM_WAIT = 2.0
# Seconds between looks for a deleted stream that an attachment waits to follow.
FOLLOW_INTERVAL = 0.5
# SQS's longest visibility timeout.
MAX_VISIBILITY = 43200
# What a receive asks of each message: its delivery count and, on a FIFO queue, its group and
# deduplication id (kept when it moves to another queue).
SYSTEM_ATTRIBUTES = ["ApproximateReceiveCount", "MessageGroupId", "MessageDeduplicationId"]


def whole_seconds(seconds: float) -> int:
    return int(min(MAX_VISIBILITY, max(0, math.ceil(seconds))))


class SqsDelivery:
    """One delivery of a durable message; settled once."""

    def __init__(self, attachment: SqsAttachment, item: dict[str, Any]) -> None:
        message, sequence, stored_at = unpack_stored(item["Body"])
        self.attachment = attachment
        self.receipt = item["ReceiptHandle"]
        self.body = item["Body"]
        self.item = item
        self.subject = message.subject
        self.data = message.data
        self.headers = message.headers
        self.stream = attachment.stream
        self.sequence = sequence
        self.delivered = int(item.get("Attributes", {}).get("ApproximateReceiveCount", "1"))
        self.stored_at = stored_at
        self.settled = False

    def _settle(self) -> bool:
        if self.settled:
            return False
        self.settled = True
        self.attachment.release(self)
        return True

    async def ack(self) -> None:
        if self._settle():
            await self.attachment.delete(self.receipt)

    async def nak(self, delay: float = 0.0) -> None:
        if self._settle():
            await self.attachment.show(self.receipt, whole_seconds(delay))

    async def in_progress(self) -> None:
        if not self.settled:
            await self.attachment.show(self.receipt, self.attachment.visibility)

    async def term(self) -> None:
        if self._settle():
            await self.attachment.bury(self.item)


class SqsAttachment:
    """An attachment to one durable consumer, delivering to ``callback`` until stopped."""

    def __init__(
        self,
        transport: SqsTransport,
        stream: str,
        name: str,
        callback: Callable[[Any], Awaitable[None]],
        *,
        filter_subject: str,
        ack_wait: float,
        max_in_flight: int,
    ) -> None:
        self.transport = transport
        self.stream = stream
        self.name = name
        self.callback = callback
        self.filter_subject = filter_subject
        self.visibility = max(1, whole_seconds(ack_wait))
        self.max_in_flight = max(1, max_in_flight)
        self.incarnation = ""
        self.url = ""
        self.dead_url = ""
        # The consumer's queue is a FIFO queue (its stream is ordered).
        self.fifo = False
        self.held: set[SqsDelivery] = set()
        self.room = asyncio.Event()
        self.stopped = False
        self.receiving = False
        self.tasks: list[asyncio.Task[None]] = []
        self.following: asyncio.Task[None] | None = None

    async def start(self) -> None:
        transport = self.transport
        async with transport.registry.change() as registered:
            found = registered.get(self.stream)
            if found is None:
                raise NoStream(f"Stream {self.stream} does not exist.")
            self.incarnation = found["incarnation"]
            entry = found["consumers"].get(self.name)
            if entry is None:
                entry = await streams.add_consumer(
                    transport, self.stream, found, self.name, self.filter_subject
                )
                found["consumers"][self.name] = entry
            elif entry["filter"] != self.filter_subject:
                entry["filter"] = self.filter_subject
                await transport.sns.set_subscription_attributes(
                    SubscriptionArn=entry["subscription"],
                    AttributeName="FilterPolicy",
                    AttributeValue=streams.consumer_policy(self.stream, self.filter_subject),
                )
            queue = streams.consumer_name(transport, self.stream, self.name, entry)
            url = await streams.queue_url(transport, queue)
            dead_url = await streams.queue_url(
                transport, streams.dead_name(transport, self.stream, found)
            )
            if url is None or dead_url is None:
                raise NoStream(f"Stream {self.stream} is being deleted.")
            self.url, self.dead_url = url, dead_url
            self.fifo = bool(entry.get("fifo"))
            unclaimed = await streams.queue_url(
                transport, streams.unclaimed_name(transport, self.stream, found)
            )
        loop = asyncio.get_running_loop()
        self.room.set()
        self.tasks = [loop.create_task(self.run(url)), loop.create_task(self.renew())]
        if unclaimed is not None:
            claiming = loop.create_task(self.claim(unclaimed))
            self.tasks.append(claiming)
            await asyncio.wait({claiming}, timeout=CLAIM_WAIT)

    async def claim(self, unclaimed: str) -> None:
        """Move what waits unclaimed in the stream and this consumer takes into its queue;
        the rest is made visible again for the next consumer attached. On a FIFO queue the
        rest is sent to its end instead (held, it would keep back what follows it), in its
        order, so that one pass sees everything."""
        sqs = self.transport.sqs
        left: list[dict[str, Any]] = []
        try:
            visible, _ = await streams.count(self.transport, unclaimed.rsplit("/", 1)[-1])
            taken = 0
            while taken < visible and not self.stopped:
                answer = await sqs.receive_message(
                    QueueUrl=unclaimed,
                    MaxNumberOfMessages=10,
                    WaitTimeSeconds=1,
                    MessageSystemAttributeNames=SYSTEM_ATTRIBUTES,
                )
                items = answer.get("Messages", [])
                if not items:
                    break
                taken += len(items)
                mine, others = [], []
                for item in items:
                    try:
                        message, _, _ = unpack_stored(item["Body"])
                    except (ValueError, KeyError, TypeError):
                        others.append(item)
                        continue
                    taker = subject_matches(self.filter_subject, message.subject)
                    (mine if taker else others).append(item)
                if mine:
                    await self.move(mine, unclaimed, self.url)
                if self.fifo and others:
                    await self.move(others, unclaimed, unclaimed, again=True)
                else:
                    left += others
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001  (what is left waits for the next attachment)
            logger.warning(
                "Consumer %s could not take what waited unclaimed in stream %s.",
                self.name,
                self.stream,
                exc_info=True,
            )
        finally:
            for start in range(0, len(left), 10):
                with contextlib.suppress(*self.transport.unavailable):
                    await sqs.change_message_visibility_batch(
                        QueueUrl=unclaimed,
                        Entries=[
                            {
                                "Id": str(n),
                                "ReceiptHandle": item["ReceiptHandle"],
                                "VisibilityTimeout": 0,
                            }
                            for n, item in enumerate(left[start : start + 10])
                        ],
                    )

    async def move(
        self, items: list[dict[str, Any]], source: str, target: str, *, again: bool = False
    ) -> None:
        """Send ``items`` to ``target`` and delete them from ``source`` (sent ``again`` to the
        queue they come from: with new deduplication ids, which it would otherwise drop)."""
        sqs = self.transport.sqs
        entries = []
        for n, item in enumerate(items):
            fields = self.fifo_fields(item)
            if again:
                fields["MessageDeduplicationId"] = uuid.uuid4().hex
            entries.append({"Id": str(n), "MessageBody": item["Body"], **fields})
        await sqs.send_message_batch(QueueUrl=target, Entries=entries)
        await sqs.delete_message_batch(
            QueueUrl=source,
            Entries=[
                {"Id": str(n), "ReceiptHandle": item["ReceiptHandle"]}
                for n, item in enumerate(items)
            ],
        )

    async def run(self, url: str) -> None:
        """Receive from ``url`` and deliver until stopped (or attached again elsewhere)."""
        sqs = self.transport.sqs
        while not self.stopped and self.url == url:
            room = self.max_in_flight - len(self.held)
            if room <= 0:
                self.room.clear()
                await self.room.wait()
                continue
            self.receiving = True
            try:
                answer = await sqs.receive_message(
                    QueueUrl=url,
                    MaxNumberOfMessages=min(10, room),
                    WaitTimeSeconds=self.transport.poll_wait,
                    VisibilityTimeout=self.visibility,
                    MessageSystemAttributeNames=SYSTEM_ATTRIBUTES,
                )
            except asyncio.CancelledError:
                raise
            except self.transport.unavailable as error:
                if self.stopped:
                    return
                if self.transport.missing(error):
                    # The consumer or its stream was deleted (here or by another process).
                    asyncio.get_running_loop().create_task(self.restart())
                    return
                self.transport.failures.warning(
                    self.url, "Receiving from %s failed (%s); trying again.", self.url, error
                )
                await asyncio.sleep(1.0)
                continue
            finally:
                self.receiving = False
            items = answer.get("Messages", [])
            if self.stopped or self.url != url:
                # Taken by the receive under way when the attachment stopped: visible again
                # at once for the consumer's other attachments.
                for item in items:
                    await self.show(item["ReceiptHandle"], 0, url)
                return
            for item in items:
                await self.deliver(item)

    async def deliver(self, item: dict[str, Any]) -> None:
        try:
            delivery = SqsDelivery(self, item)
        except (ValueError, KeyError, TypeError):
            logger.warning("A message on %s is not ours; it goes to dead letters.", self.url)
            await self.bury(item)
            return
        if not subject_matches(self.filter_subject, delivery.subject):
            # What the filter policy's prefix let through (``orders.*`` takes ``orders.a.b``).
            await self.delete(delivery.receipt)
            return
        if self.stopped:
            await self.show(delivery.receipt, 0)
            return
        self.held.add(delivery)
        try:
            await self.callback(delivery)
        except Exception:  # noqa: BLE001  (as NATS: the delivery comes again)
            logger.exception("A durable consumer callback on %s failed.", delivery.subject)
            await delivery.nak()

    async def renew(self) -> None:
        """Keep what this attachment holds from being delivered elsewhere."""
        while True:
            await asyncio.sleep(self.visibility / 3)
            held = [d for d in self.held if not d.settled]
            for start in range(0, len(held), 10):
                with contextlib.suppress(*self.transport.unavailable):
                    await self.transport.sqs.change_message_visibility_batch(
                        QueueUrl=self.url,
                        Entries=[
                            {
                                "Id": str(n),
                                "ReceiptHandle": d.receipt,
                                "VisibilityTimeout": self.visibility,
                            }
                            for n, d in enumerate(held[start : start + 10])
                        ],
                    )

    def release(self, delivery: SqsDelivery) -> None:
        self.held.discard(delivery)
        self.room.set()

    async def delete(self, receipt: str) -> None:
        with contextlib.suppress(*self.transport.unavailable):
            await self.transport.sqs.delete_message(QueueUrl=self.url, ReceiptHandle=receipt)

    async def show(self, receipt: str, seconds: int, url: str = "") -> None:
        with contextlib.suppress(*self.transport.unavailable):
            await self.transport.sqs.change_message_visibility(
                QueueUrl=url or self.url, ReceiptHandle=receipt, VisibilityTimeout=seconds
            )

    async def bury(self, item: dict[str, Any]) -> None:
        """To the stream's dead-letter queue; never delivered again."""
        with contextlib.suppress(*self.transport.unavailable):
            await self.transport.sqs.send_message(
                QueueUrl=self.dead_url, MessageBody=item["Body"], **self.fifo_fields(item)
            )
            await self.transport.sqs.delete_message(
                QueueUrl=self.url, ReceiptHandle=item["ReceiptHandle"]
            )

    def fifo_fields(self, item: dict[str, Any]) -> dict[str, str]:
        """A message's group and deduplication id as it moves to another FIFO queue of the
        stream (none on a stream that is not ordered)."""
        if not self.fifo:
            return {}
        attributes = item.get("Attributes", {})
        digest = hashlib.sha256(item["Body"].encode()).hexdigest()
        return {
            "MessageGroupId": attributes.get("MessageGroupId") or names.group_id(self.stream),
            "MessageDeduplicationId": attributes.get("MessageDeduplicationId") or digest,
        }

    def stop(self) -> None:
        """Take no new deliveries; what still comes is handed back at once."""
        self.stopped = True
        self.room.set()

    async def close(self) -> None:
        """Stop and let go: what is not settled comes again to another attachment at once."""
        self.stop()
        self.transport.attachments.discard(self)
        held, self.held = [d for d in self.held if not d.settled], set()
        for delivery in held:
            delivery.settled = True
            await self.show(delivery.receipt, 0)
        current = asyncio.current_task()
        for task in [*self.tasks, self.following]:
            if task is None or task is current or task.done():
                continue
            if task is self.tasks[0] and self.receiving:
                # The receive under way ends by itself and hands back what it took.
                self.transport.keep_until_closed(task)
                continue
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def restart(self) -> None:
        """Attach again after the consumer (or its stream) was deleted under this attachment,
        as NATS's does: a new consumer, or, without a stream, one as soon as the stream is
        created again (a new incarnation)."""
        if self.stopped:
            return
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current and not task.done():
                if task is self.tasks[0] and self.receiving:
                    self.transport.keep_until_closed(task)
                    continue
                task.cancel()
        self.tasks = []
        self.held.clear()
        # A receive still under way on the old queue ends with its answer (``run``).
        self.url = ""
        try:
            await self.start()
        except NoStream:
            logger.warning("Stream %s is gone; consumer %s waits for it.", self.stream, self.name)
            self.following = asyncio.get_running_loop().create_task(self.follow())
        except Exception:  # noqa: BLE001  (tried again by following)
            logger.warning("Consumer %s could not attach again.", self.name, exc_info=True)
            self.following = asyncio.get_running_loop().create_task(self.follow())

    async def follow(self) -> None:
        """Attach once the deleted stream exists again."""
        while not self.stopped and not self.transport.is_closed:
            await asyncio.sleep(FOLLOW_INTERVAL)
            try:
                if self.stream in await self.transport.registry.read():
                    await self.start()
                    return
            except NoStream:
                continue
            except Exception:  # noqa: BLE001  (tried again at the next interval)
                logger.debug("Consumer %s could not attach yet.", self.name, exc_info=True)
