"""A JetStream pull consumer of one durable handler, shared by every instance of its service.

Each attachment asks the consumer for events with pull requests of its own (not nats-py's
``fetch()``, which holds the first event of a quiet stream), at most ``max_in_flight`` asked
for or unsettled at once, and asks again once a quarter of that is free. It renews what the
server forgot (a reconnect, a restarted server, a consumer or stream deleted and created
again), says "still working" for deliveries held longer than half the ack wait, and hands
back at once whatever arrives after ``stop()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import nats.js.errors
from nats.aio.msg import Msg
from nats.js import api

from cliffracer_core.transports.base import NoStream, StreamError
from cliffracer_core.transports.nats.jetstream import incarnation_of

if TYPE_CHECKING:
    from cliffracer_core.transports.nats.transport import NatsTransport

logger = logging.getLogger("cliffracer.durable")

# Seconds a pull request waits on the server for events before it expires (and is renewed).
PULL_EXPIRES = 5.0
# How often the consumer checks that its pull requests are alive.
WATCH_INTERVAL = 1.0
STATUS = "Status"
PENDING_MESSAGES = "Nats-Pending-Messages"


class NatsDelivery:
    """One delivery of a JetStream message; settle it once (ack, nak, term)."""

    __slots__ = (
        "message",
        "consumer",
        "subject",
        "data",
        "headers",
        "stream",
        "sequence",
        "delivered",
        "stored_at",
        "settled",
        "since",
    )

    def __init__(self, message: Msg, consumer: PullConsumer) -> None:
        self.message = message
        self.consumer = consumer
        self.subject = message.subject
        self.data = message.data
        self.headers = message.headers
        # The reply subject says where it is: $JS.ACK.<stream>.<consumer>.<delivered>.
        # <stream seq>.<consumer seq>.<nanoseconds>.<pending> (read without the date nats-py's
        # ``metadata`` also builds), or, with a domain and account, a longer form.
        tokens = (message.reply or "").split(".")
        if len(tokens) == 9:
            self.stream = tokens[2]
            self.sequence = int(tokens[5])
            self.delivered = int(tokens[4])
            self.stored_at = int(tokens[7]) / 1e9
        else:
            metadata = message.metadata
            self.stream = metadata.stream
            self.sequence = metadata.sequence.stream
            self.delivered = metadata.num_delivered
            self.stored_at = metadata.timestamp.timestamp()
        self.settled = False
        self.since = time.monotonic()

    async def ack(self) -> None:
        await self._settle(self.message.ack)

    async def nak(self, delay: float = 0.0) -> None:
        await self._settle(self.message.nak, delay or None)

    async def term(self) -> None:
        await self._settle(self.message.term)

    async def in_progress(self) -> None:
        self.since = time.monotonic()
        with contextlib.suppress(Exception):  # lost on the way: a redelivery, no more
            await self.message.in_progress()

    async def _settle(self, action: Any, *args: Any) -> None:
        if self.settled:
            return
        self.settled = True
        try:
            await action(*args)
        except Exception:  # noqa: BLE001  (lost on the way: a redelivery, no more)
            logger.debug("Could not settle a durable event", exc_info=True)
        await self.consumer.settled(self)


class PullConsumer:
    """One attachment to a durable consumer: pulls, delivers to the callback, renews."""

    def __init__(
        self,
        transport: NatsTransport,
        stream: str,
        name: str,
        callback: Callable[[Any], Awaitable[None]],
        *,
        filter_subject: str,
        ack_wait: float,
        max_in_flight: int,
        description: str = "",
    ) -> None:
        self.transport = transport
        self.stream = stream
        self.name = name
        self.callback = callback
        self.filter_subject = filter_subject
        self.ack_wait = ack_wait
        self.batch = max(1, max_in_flight)
        self.pull_threshold = max(1, self.batch // 4)
        self.description = description
        self.next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{name}"
        self.inbox = ""
        self.incarnation = ""
        # Events asked for and not yet taken, and events delivered and not yet settled.
        self.requested = 0
        self.unsettled: set[NatsDelivery] = set()
        self.pulled_at = 0.0
        self.heard_at = 0.0
        self.in_callback = False
        self.reconnects = 0
        self.lost = False
        self.stopping = False
        self.subscription: Any = None
        self.watcher: asyncio.Task[None] | None = None

    def config(self) -> api.ConsumerConfig:
        return api.ConsumerConfig(
            name=self.name,
            durable_name=self.name,
            description=self.description or None,
            filter_subject=self.filter_subject,
            deliver_policy=api.DeliverPolicy.ALL,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait,
            # Cliffracer counts deliveries itself, so that the last one becomes a dead letter
            # (the server would only drop it).
            max_deliver=-1,
        )

    async def attach(self) -> None:
        """Create (or find) the consumer, and learn which incarnation of the stream it reads.

        Raises ``NoStream`` when the stream is missing and ``StreamError`` when JetStream
        refuses the consumer."""
        js = self.transport.jetstream()
        try:
            await js.add_consumer(self.stream, self.config())
            info = await js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            raise NoStream(f"There is no stream {self.stream}.") from None
        except nats.js.errors.APIError as error:
            raise StreamError(
                f"Stream {self.stream}: JetStream refused the consumer {self.name}: "
                f"{error.description or error}."
            ) from None
        self.incarnation = incarnation_of(info)

    async def start(self) -> None:
        await self.attach()
        client = self.transport.client
        self.inbox = client.new_inbox()
        self.subscription = await client.subscribe(self.inbox, cb=self.on_message)
        self.reconnects = client.stats["reconnects"]
        self.heard_at = asyncio.get_running_loop().time()
        self.watcher = asyncio.create_task(self.watch())
        await self.pull()

    def stop(self) -> None:
        """Take no new events; those the server still sends are handed back at once."""
        self.stopping = True

    async def close(self) -> None:
        self.stop()
        if self.watcher is not None:
            self.watcher.cancel()
            with contextlib.suppress(BaseException):
                await self.watcher
        if self.subscription is not None:
            with contextlib.suppress(Exception):
                await self.subscription.unsubscribe()

    async def settled(self, delivery: NatsDelivery) -> None:
        self.unsettled.discard(delivery)
        await self.pull()

    async def pull(self) -> None:
        count = self.batch - self.requested - len(self.unsettled)
        if count <= 0 or self.stopping or (count < self.pull_threshold and self.requested):
            return
        self.requested += count
        self.pulled_at = asyncio.get_running_loop().time()
        request = {"batch": count, "expires": int(PULL_EXPIRES * 1e9)}
        try:
            await self.transport.client.publish(
                self.next_subject, json.dumps(request).encode(), self.inbox
            )
        except Exception:  # noqa: BLE001  (the watcher asks again)
            self.requested -= count
            logger.debug("Pull request of %s failed", self.name, exc_info=True)

    async def keep_alive(self) -> None:
        """Say "still working" (+WPI) for every delivery held half an ack wait since it came
        or was last said, so that JetStream does not deliver it again meanwhile."""
        due = time.monotonic() - self.ack_wait / 2
        for delivery in list(self.unsettled):
            if delivery.since <= due and not delivery.settled:
                await delivery.in_progress()

    async def watch(self) -> None:
        """Renew lost pull requests and a lost consumer; keep long deliveries alive."""
        loop = asyncio.get_running_loop()
        client = self.transport.client
        interval = min(WATCH_INTERVAL, self.ack_wait / 4)
        while True:
            await asyncio.sleep(interval)
            if not client.is_connected:
                continue
            if self.unsettled:
                await self.keep_alive()
            if self.stopping:
                continue
            reconnects = client.stats["reconnects"]
            # A pull request ends with events or, at its expiry, a status; hearing neither
            # means the server no longer has it.
            silent = (
                self.requested > 0
                and not self.in_callback
                and loop.time() - max(self.heard_at, self.pulled_at) > PULL_EXPIRES + 2
            )
            if reconnects != self.reconnects or self.lost or silent:
                try:
                    # After a restart the server may hold the consumer, or may have lost it
                    # (and its stream: a store lost, a stream deleted and created again).
                    await self.attach()
                except Exception as error:  # noqa: BLE001  (tried again on the next round)
                    logger.warning(
                        "Durable consumer %s on stream %s: %s; retrying.",
                        self.name,
                        self.stream,
                        getattr(error, "description", None) or type(error).__name__,
                    )
                    continue
                self.reconnects = reconnects
                self.lost = False
                self.requested = 0
                self.heard_at = loop.time()
            await self.pull()

    async def on_message(self, message: Msg) -> None:
        self.heard_at = asyncio.get_running_loop().time()
        if not message.reply:
            # A status from the server about a pull request: expired (408) or ended (409).
            headers = message.headers or {}
            status = headers.get(STATUS)
            if status in ("408", "409"):
                try:
                    unmet = int(headers.get(PENDING_MESSAGES) or 0)
                except ValueError:
                    unmet = 0
                self.requested = max(0, self.requested - unmet)
                if status == "409" and "deleted" in str(headers.get("Description", "")).lower():
                    self.lost = True
                    self.requested = 0
            if not self.lost:
                await self.pull()
            return
        self.requested = max(0, self.requested - 1)
        delivery = NatsDelivery(message, self)
        self.unsettled.add(delivery)
        if self.stopping:
            # Handed back for later: the pull requests still out would bring it straight back
            # here, a delivery more each time, until they expire.
            await delivery.nak(PULL_EXPIRES + 1)
            return
        # The callback may wait (for a handler slot): that holds back the next deliveries.
        self.in_callback = True
        try:
            await self.callback(delivery)
        except Exception:  # noqa: BLE001  (a callback's failure must not stop the consumer)
            logger.exception("Delivering a durable event of %s failed.", self.name)
            await delivery.nak()
        finally:
            self.in_callback = False
        await self.pull()
