"""The memory transport: a connection to the broker of its location."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from cliffracer_core.core.errors import NoResponders, RemoteUnavailable, RpcTimeout
from cliffracer_core.core.headers import MSG_ID
from cliffracer_core.core.log import RateLimitedLog
from cliffracer_core.core.streams import Stream
from cliffracer_core.transports.base import (
    MAX_PAYLOAD,
    Callback,
    ConsumerState,
    Delivery,
    Features,
    Received,
    StreamState,
    Transport,
    bad_subject,
    check_subscription,
    too_large,
)
from cliffracer_core.transports.memory.broker import MemorySubscription, broker_for
from cliffracer_core.transports.memory.streams import MemoryConsumer

logger = logging.getLogger("cliffracer.connection")


class MemoryFeatures(Features):
    no_responders = True
    wildcards = True
    queue_groups = True
    broadcast = True
    durable = True
    delayed_nak = True
    deduplication = True
    stream_history = True
    discovery = True


def clean_headers(headers: dict[str, str] | None) -> dict[str, str] | None:
    """Headers as they arrive over NATS: a copy, keys and values trimmed, line breaks in values
    made spaces, None when there are none (nats-py sends and parses them so)."""
    cleaned = {}
    for key, value in (headers or {}).items():
        if key.strip():
            cleaned[key.strip()] = value.strip().replace("\r", " ").replace("\n", " ")
    return cleaned or None


class MemoryTransport(Transport):
    """A connection to the broker of its location (``memory://``, ``memory://name``)."""

    features = MemoryFeatures()
    schemes = ("memory",)

    def __init__(
        self, location: str, options: dict[str, Any] | None = None, *, role: str = "client"
    ) -> None:
        super().__init__(location, options, role=role)
        self.broker = broker_for(location)
        self.max_payload = int(self.options.get("max_payload", MAX_PAYLOAD))
        # Called with the subject of each message a subscription had no room for.
        self.on_dropped: Callable[[str], None] | None = None
        self._drops = RateLimitedLog(logger)
        self._connected = False
        self._closed = False

    # Connecting

    async def connect(self) -> None:
        self._connected = not self._closed

    async def close(self) -> None:
        if self._closed:
            return
        self._connected = False
        self._closed = True
        streams = self.broker.streams
        with streams.lock:
            attachments = [a for a in streams.attachments if a.transport is self]
        for attachment in attachments:
            await attachment.close()
        with self.broker.lock:
            subscriptions = [s for s in self.broker.subscriptions if s.transport is self]
        for subscription in subscriptions:
            await subscription.unsubscribe()

    @property
    def is_connected(self) -> bool:
        return self._connected

    @property
    def is_closed(self) -> bool:
        return self._closed

    def server(self) -> str:
        return self.location

    def _usable(self, subject: str = "") -> None:
        if not self._connected:
            raise RemoteUnavailable(
                "The memory transport cannot send now (it is not connected).",
                type="transport_unavailable",
                subject=subject or None,
            )

    def _message(
        self, subject: str, data: bytes, headers: dict[str, str] | None, reply: str = ""
    ) -> Received:
        """A message to send, refused where nats-py or nats-server would refuse it."""
        self._usable(subject)
        for name in (subject, reply) if reply else (subject,):
            if not name or any(character.isspace() for character in name):
                raise bad_subject(name)
        if len(data) > self.max_payload:
            raise too_large(subject)
        return Received(subject, bytes(data), clean_headers(headers), reply)

    # Messages

    def new_inbox(self) -> str:
        return f"_INBOX.{uuid.uuid4().hex}"

    async def publish(
        self,
        subject: str,
        data: bytes,
        *,
        headers: dict[str, str] | None = None,
        reply: str = "",
    ) -> None:
        message = self._message(subject, data, headers, reply)
        self.broker.route(message)
        if not subject.startswith("_INBOX."):
            # A stream keeps what is published on its subjects, however it was published.
            msg_id = (message.headers or {}).get(MSG_ID) or uuid.uuid4().hex
            with contextlib.suppress(RemoteUnavailable):  # a refusal nobody can be told of
                self.broker.streams.capture(message, msg_id)

    async def request(
        self,
        subject: str,
        data: bytes,
        *,
        headers: dict[str, str] | None = None,
        timeout: float,
    ) -> Received:
        message = self._message(subject, data, headers)
        reply: asyncio.Future[Received] = asyncio.get_running_loop().create_future()

        async def answer(message: Received) -> None:
            if not reply.done():
                reply.set_result(message)

        subscription = await self.subscribe(self.new_inbox(), answer)
        message.reply = subscription.subject
        try:
            if not self.broker.route(message):
                raise NoResponders(
                    f"No service is listening on {subject}.", type="no_responders", subject=subject
                )
            async with asyncio.timeout(timeout):
                return await reply
        except TimeoutError:
            raise RpcTimeout(
                f"No reply from {subject} within {timeout:g}s.", type="timeout", subject=subject
            ) from None
        finally:
            await subscription.unsubscribe()

    async def request_many(
        self,
        subject: str,
        data: bytes = b"",
        *,
        headers: dict[str, str] | None = None,
        timeout: float,
        stall: float | None = None,
        limit: int | None = None,
    ) -> list[Received]:

        async def send(inbox: str) -> None:
            await self.publish(subject, data, headers=headers, reply=inbox)

        return await self.replies_on_inbox(
            send, deadline=time.monotonic() + timeout, stall=stall, limit=limit
        )

    async def subscribe(
        self,
        subject: str,
        callback: Callback,
        *,
        queue: str = "",
        max_pending: int | None = None,
        max_pending_bytes: int | None = None,
    ) -> MemorySubscription:
        self._usable(subject)
        check_subscription(subject, queue, callback)
        subscription = MemorySubscription(
            self,
            subject,
            callback,
            queue=queue,
            max_pending=max_pending,
            max_pending_bytes=max_pending_bytes,
        )
        with self.broker.lock:
            self.broker.subscriptions.append(subscription)
        return subscription

    async def flush(self, timeout: float = 5.0) -> None:
        """Nothing to wait for: a message is routed before ``publish`` returns."""
        self._usable()

    # Durable streams (transports/memory/streams.py)

    async def ensure_stream(self, stream: Stream) -> str:
        return self.broker.streams.ensure(stream)

    async def compare_stream(self, stream: Stream) -> list[str] | None:
        return self.broker.streams.compare(stream)

    async def stream_state(self, name: str) -> StreamState | None:
        return self.broker.streams.state(name)

    async def delete_stream(self, name: str) -> bool:
        return self.broker.streams.delete(name)

    async def publish_durable(
        self,
        subject: str,
        data: bytes,
        *,
        headers: dict[str, str] | None = None,
        msg_id: str,
        timeout: float = 5.0,
    ) -> int:
        message = self._message(subject, data, {**(headers or {}), MSG_ID: msg_id})
        # Plain subscribers hear it too, as they hear a JetStream publish (a duplicate too).
        self.broker.route(message)
        return self.broker.streams.store(message, msg_id)

    async def stored_message(self, stream: str, sequence: int) -> Received | None:
        return self.broker.streams.stored(stream, sequence)

    async def consume(
        self,
        stream: str,
        name: str,
        callback: Callable[[Delivery], Awaitable[None]],
        *,
        filter_subject: str,
        ack_wait: float,
        max_in_flight: int,
        description: str = "",
    ) -> MemoryConsumer:
        self._usable()
        attachment = MemoryConsumer(
            self.broker.streams,
            stream,
            name,
            callback,
            filter_subject=filter_subject,
            ack_wait=ack_wait,
            max_in_flight=max_in_flight,
            transport=self,
        )
        attachment.start()
        return attachment

    async def consumer_state(self, stream: str, name: str) -> ConsumerState | None:
        return self.broker.streams.consumer_state(stream, name)

    async def consumers(self, stream: str) -> list[ConsumerState]:
        return self.broker.streams.consumers(stream)

    async def delete_consumer(self, stream: str, name: str) -> bool:
        return self.broker.streams.delete_consumer(stream, name)
