"""Attachments to durable consumers on Redis, and their deliveries.

An attachment asks the stream script for one delivery at a time while it holds fewer than
``max_in_flight``, hands it to the callback, and renews what it holds every third of the ack
wait (as NATS's attachment says "in progress"), so that nothing it holds is delivered elsewhere
while it is attached; what it held comes again an ack wait after it goes away. It sleeps until
the stream's wake-up channel says something changed, or until the next nak is due.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from cliffracer_core.core.errors import RemoteUnavailable
from cliffracer_core.transports.base import Delivery, NoStream, Received, StreamError

if TYPE_CHECKING:
    from cliffracer_core.transports.redis.transport import RedisTransport

logger = logging.getLogger("cliffracer.durable")

# The longest an idle attachment sleeps before it asks again (a wake-up lost in a reconnect).
POLL = 1.0


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisDelivery:
    """One delivery of a stored message; settle it once (ack, nak, term)."""

    __slots__ = (
        "attachment",
        "generation",
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
        attachment: RedisConsumer,
        generation: str,
        sequence: int,
        delivered: int,
        message: Received,
        stored_at: float,
    ) -> None:
        self.attachment = attachment
        self.generation = generation
        self.subject = message.subject
        self.data = message.data
        self.headers = message.headers
        self.stream = attachment.stream
        self.sequence = sequence
        self.delivered = delivered
        self.stored_at = stored_at
        self.settled = False

    async def ack(self) -> None:
        await self._settle("ack")

    async def nak(self, delay: float = 0.0) -> None:
        await self._settle("nak", delay)

    async def term(self) -> None:
        await self._settle("term")

    async def in_progress(self) -> None:
        if not self.settled:
            await self.attachment.settle(self, "in_progress")

    async def _settle(self, outcome: str, delay: float = 0.0) -> None:
        if not self.settled:
            self.settled = True
            await self.attachment.settle(self, outcome, delay)


class RedisConsumer:
    """One attachment to a durable consumer, in a task of its own."""

    def __init__(
        self,
        transport: RedisTransport,
        stream: str,
        name: str,
        callback: Callable[[Delivery], Awaitable[None]],
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
        self.ack_wait = ack_wait
        self.ack_wait_ms = max(1, int(ack_wait * 1000))
        self.max_in_flight = max(1, max_in_flight)
        self.incarnation = ""
        self.held: set[RedisDelivery] = set()
        self.stopping = False
        self.closed = False
        self.ready = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        reply = await self.transport.stream_call(
            "attach", self.stream, self.name, self.filter_subject, self.ack_wait_ms
        )
        outcome = text(reply[0])
        if outcome == "nostream":
            raise NoStream(f"There is no stream {self.stream}.")
        if outcome == "refused":
            raise StreamError(f"Stream {self.stream}: {text(reply[1])}.")
        self.incarnation = text(reply[1])
        await self.transport.watch_stream(self.stream, self.ready)
        loop = asyncio.get_running_loop()
        self.tasks = [loop.create_task(self.run()), loop.create_task(self.renew())]

    async def sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, min(seconds, POLL))):
                await self.ready.wait()

    async def run(self) -> None:
        while not self.closed:
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001  (the attachment must keep delivering)
                logger.exception("The attachment to %s failed; it asks again.", self.name)
                await asyncio.sleep(POLL)

    async def step(self) -> None:
        """Take one delivery and hand it over, or wait for one."""
        if not self.closed:
            self.ready.clear()
            if self.stopping or len(self.held) >= self.max_in_flight:
                await self.ready.wait()
                return
            try:
                reply = await self.transport.stream_call(
                    "next", self.stream, self.name, self.filter_subject, self.ack_wait_ms
                )
            except RemoteUnavailable:
                await asyncio.sleep(POLL)
                return
            outcome = text(reply[0])
            if outcome == "nostream":
                await self.sleep(POLL)
                return
            self.incarnation = text(reply[1])
            if outcome == "wait":
                await self.sleep(int(reply[3]) / 1000)
                return
            if outcome != "message":
                await self.sleep(POLL)
                return
            message = self.transport.unpack(reply[5])
            delivery = RedisDelivery(
                self, text(reply[2]), int(reply[3]), int(reply[4]), message, float(reply[6])
            )
            self.held.add(delivery)
            try:
                await self.callback(delivery)
            except Exception:  # noqa: BLE001  (a callback's failure must not stop the consumer)
                logger.exception("Delivering a durable event of %s failed.", self.name)
                with contextlib.suppress(RemoteUnavailable):
                    await delivery.nak()

    async def renew(self) -> None:
        """Keep what this attachment holds from being delivered elsewhere."""
        while not self.closed:
            await asyncio.sleep(self.ack_wait / 3)
            for delivery in list(self.held):
                with contextlib.suppress(RemoteUnavailable):
                    await self.call_settle(delivery, "renew")

    async def call_settle(self, delivery: RedisDelivery, outcome: str, delay: float = 0.0) -> Any:
        return await self.transport.stream_call(
            "settle",
            self.stream,
            self.name,
            delivery.generation,
            outcome,
            delivery.sequence,
            delivery.delivered,
            int(delay * 1000) + 1,
        )

    async def settle(self, delivery: RedisDelivery, outcome: str, delay: float = 0.0) -> None:
        if outcome != "in_progress":
            self.held.discard(delivery)
            self.ready.set()
        await self.call_settle(delivery, outcome, delay)

    def stop(self) -> None:
        """Take no new deliveries; those held stay held until settled or ``close()``."""
        self.stopping = True

    async def close(self) -> None:
        if self.closed:
            return
        self.stop()
        self.closed = True
        self.held.clear()
        await self.transport.unwatch_stream(self.stream, self.ready)
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()
        for task in self.tasks:
            if task is not current:
                with contextlib.suppress(BaseException):
                    await task
