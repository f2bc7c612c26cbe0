"""The RabbitMQ transport: aio-pika behind the seam, with NATS's semantics.

- Every message goes through one topic exchange (``cliffracer`` unless the option
  ``exchange`` says otherwise), its subject as the routing key. A subscription binds its
  pattern with ``*`` → ``*`` and ``>`` → ``#``; AMQP matches more loosely at the edges (``a.#``
  matches ``a``, a literal ``#`` token is a wildcard), so what arrives is filtered with the
  NATS matcher and a subscription receives exactly what it would on NATS.
- A subscription in a queue group consumes the queue of its (group, pattern), shared by the
  group's members and deleted with its last consumer: a stopped service leaves no backlog, and
  a request to it is returned (``mandatory``) as ``NoResponders``. A subscription without a
  group has an exclusive auto-delete queue of its own.
- Requests (and discovery's ``request_many``) go out on a channel with publisher confirms and
  ``mandatory``, replies come back on direct reply-to (``amq.rabbitmq.reply-to``) and are matched
  by correlation id, as many in flight at once as callers make. A request expires in the queue
  with its caller's timeout. Replies to direct reply-to are not ``mandatory``.
- A message's ``reply`` for a request is its direct reply-to address with the correlation id
  appended (``amq.rabbitmq.reply-to.<token>.<id>``): publishing to it sends the reply there.
- Deliveries are taken without acks and wait in the subscription's pending queue for its
  callback, which runs in a task of the subscription's, one message at a time; past the pending
  limits they are dropped and reported, as nats-py does.
- aio-pika's robust connection reconnects and declares the queues, bindings and consumers
  again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import aiormq.exceptions
from aio_pika.abc import AbstractIncomingMessage

from cliffracer_core.core.errors import (
    NoResponders,
    RemoteError,
    RemoteUnavailable,
    RpcTimeout,
    remote_error,
)
from cliffracer_core.core.log import RateLimitedLog
from cliffracer_core.core.settings import cliffracer_settings
from cliffracer_core.transports import redact
from cliffracer_core.transports.amqp import streams
from cliffracer_core.transports.amqp.consumer import AmqpAttachment
from cliffracer_core.transports.amqp.registry import Registry
from cliffracer_core.transports.base import (
    MAX_PAYLOAD,
    Callback,
    ConsumerState,
    Features,
    Pending,
    Received,
    Replies,
    StreamError,
    StreamState,
    Transport,
    bad_subject,
    check_subscription,
    too_large,
)
from cliffracer_core.transports.subjects import subject_matches

logger = logging.getLogger("cliffracer.connection")

EXCHANGE = "cliffracer"
# Direct reply-to: the pseudo-queue a request's reply comes back on.
REPLY_TO = "amq.rabbitmq.reply-to"
# Seconds an attempt to connect may take.
CONNECT_TIMEOUT = 2.0
# AMQP's short strings (routing keys, queue names) hold at most 255 bytes.
SHORT_STRING = 255
# The frame size RabbitMQ offers by default, and the room in a content header frame kept for
# the properties other than the headers.
FRAME_MAX = 131072
HEADER_ROOM = 1024
QUEUE_NAME = re.compile(r"[a-zA-Z0-9_.:-]*")
NOT_IN_QUEUE_NAME = re.compile(r"[^a-zA-Z0-9_.:-]")

# What aio-pika and aiormq raise when a message cannot be sent now.
UNAVAILABLE = (
    aiormq.exceptions.AMQPError,
    ConnectionError,
    RuntimeError,  # aiormq's ChannelInvalidStateError: the channel is closed
    OSError,
)


class AmqpFeatures(Features):
    no_responders = True
    wildcards = True
    queue_groups = True
    broadcast = True
    durable = True
    delayed_nak = True
    # At the consumer (contrib.durable's idempotency records), not in the stream.
    deduplication = False
    discovery = True
    # Quorum queues per consumer keep no stream numbering or history (streams.py).
    stream_history = False


def connection_name(role: str) -> str:
    return f"{cliffracer_settings.CONNECTION_NAME}:{role}@{socket.gethostname()}:{os.getpid()}"


def routing_pattern(subject: str) -> str:
    """The binding key of a NATS pattern: ``*`` stays, ``>`` becomes ``#``."""
    return ".".join("#" if token == ">" else token for token in subject.split("."))


def text_headers(headers: Any) -> dict[str, str] | None:
    """AMQP headers as the seam's: strings, trimmed, line breaks made spaces, None if none."""
    if not headers:
        return None
    cleaned = {}
    for key, value in headers.items():
        key = str(key).strip()
        if not key:
            continue
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        cleaned[key] = str(value).strip().replace("\r", " ").replace("\n", " ")
    return cleaned or None


def _unavailable(subject: str, error: BaseException | None = None) -> RemoteUnavailable:
    why = f" ({type(error).__name__})" if error is not None else " (it is not connected)"
    return RemoteUnavailable(
        f"The RabbitMQ connection cannot send now{why}.",
        type="transport_unavailable",
        subject=subject or None,
    )


class AmqpSubscription(Pending):
    """A subscription: its queue's deliveries wait in ``pending`` for its task's callback."""

    def __init__(
        self,
        transport: AmqpTransport,
        subject: str,
        callback: Callback,
        *,
        queue: str,
        max_pending: int | None,
        max_pending_bytes: int | None,
    ) -> None:
        super().__init__(
            subject,
            callback,
            max_pending=max_pending,
            max_pending_bytes=max_pending_bytes,
            dropped=transport.dropped,
        )
        self.transport = transport
        self.queue = queue
        self.amqp_queue: Any = None
        self.consumer_tag: str | None = None

    def queue_name(self) -> str:
        exchange = self.transport.exchange_name
        if not self.queue:
            return f"{exchange}.sub.{uuid.uuid4().hex}"
        name = f"{exchange}.group.{self.queue}.{self.subject}"
        if QUEUE_NAME.fullmatch(name) and len(name) <= SHORT_STRING:
            return name
        # AMQP takes letters, digits and "-_.:" in a queue name: the rest become "_", and a
        # digest of the group and pattern tells apart the names that become alike.
        digest = hashlib.sha256(f"{self.queue}\0{self.subject}".encode()).hexdigest()[:16]
        readable = NOT_IN_QUEUE_NAME.sub("_", name)[: SHORT_STRING - 17]
        return f"{readable}.{digest}"

    async def start(self) -> None:
        channel = self.transport.channel
        name = self.queue_name()
        # A group's queue goes with its last consumer; one being deleted just as another
        # member declares it is declared again.
        for attempt in range(3):
            try:
                self.amqp_queue = await channel.declare_queue(
                    name, durable=False, exclusive=not self.queue, auto_delete=True
                )
                await self.amqp_queue.bind(
                    self.transport.exchange, routing_key=routing_pattern(self.subject)
                )
                self.consumer_tag = await self.amqp_queue.consume(self.deliver, no_ack=True)
                break
            except aiormq.exceptions.ChannelNotFoundEntity:
                if attempt == 2:
                    raise
        self.start_task()

    async def deliver(self, incoming: AbstractIncomingMessage) -> None:
        subject = incoming.routing_key or ""
        if self.closed or not subject_matches(self.subject, subject):
            return  # what AMQP's looser matching let through
        self.offer(
            Received(subject, incoming.body, text_headers(incoming.headers), reply_of(incoming))
        )

    def stop(self) -> None:
        self.close()
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()

    async def unsubscribe(self) -> None:
        """Stop at once: messages waiting are dropped, a callback running is cancelled (as
        nats-py's ``unsubscribe``); the queue goes with its consumer."""
        if self.closed:
            return
        self.stop()
        self.transport.subscriptions.discard(self)
        if self.amqp_queue is not None and self.consumer_tag is not None:
            with contextlib.suppress(*UNAVAILABLE, TimeoutError):
                await self.amqp_queue.cancel(self.consumer_tag, timeout=5)


def reply_of(incoming: AbstractIncomingMessage) -> str:
    """The ``reply`` of a delivered message: its reply-to, with the correlation id appended
    when it is a direct reply-to address."""
    reply = incoming.reply_to or ""
    if reply.startswith(REPLY_TO):
        return f"{reply}.{incoming.correlation_id or '-'}"
    return reply


class AmqpTransport(Transport):
    """One robust aio-pika connection: a channel for subscriptions and plain publishes, and
    one with publisher confirms for requests and their direct reply-to replies."""

    features = AmqpFeatures()
    schemes = ("amqp", "amqps")
    display_name = "RabbitMQ"

    def __init__(
        self, location: str, options: dict[str, Any] | None = None, *, role: str = "client"
    ) -> None:
        super().__init__(location, options, role=role)
        options = self.options
        self.exchange_name = str(options.pop("exchange", EXCHANGE))
        self.max_payload = int(options.pop("max_payload", MAX_PAYLOAD))
        self.quiet = bool(options.pop("quiet", False))
        self.max_reconnect_attempts = int(
            options.pop("max_reconnect_attempts", cliffracer_settings.MAX_RECONNECT_ATTEMPTS)
        )
        self.connection: Any = None
        self.channel: Any = None
        self.exchange: Any = None
        self.rpc_channel: Any = None
        self.rpc_exchange: Any = None
        self.reply_exchange: Any = None
        self.subscriptions: set[AmqpSubscription] = set()
        self.attachments: set[AmqpAttachment] = set()
        self.registry = Registry(self)
        self.unavailable_errors = UNAVAILABLE
        self._stream_channel: Any = None
        self._closed = False
        self._watchdog: asyncio.Task[None] | None = None
        self._reconnects = 0
        self._drops = RateLimitedLog(logger)
        # Requests waiting for their reply, and request_many collectors, by correlation id.
        self._waiting: dict[str, asyncio.Future[Received]] = {}
        self._collecting: dict[str, Callable[[Received], None]] = {}
        self._ids = itertools.count(1)
        self._prefix = uuid.uuid4().hex[:12]

    # Connecting

    async def connect(self) -> None:
        url = self.location
        try:
            self.connection = await aio_pika.connect_robust(
                url,
                timeout=CONNECT_TIMEOUT,
                reconnect_interval=float(cliffracer_settings.RECONNECT_WAIT),
                client_properties={"connection_name": connection_name(self.role)},
            )
            self.connection.reconnect_callbacks.add(self._reconnected)
            self.connection.close_callbacks.add(self._lost)
            self.channel = await self.connection.channel(publisher_confirms=False)
            self.exchange = await self.channel.declare_exchange(
                self.exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
            )
            self.rpc_channel = await self.connection.channel(
                publisher_confirms=True, on_return_raises=True
            )
            self.rpc_exchange = await self.rpc_channel.declare_exchange(
                self.exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
            )
            self.reply_exchange = self.channel.default_exchange
            replies = await self.rpc_channel.declare_queue(REPLY_TO, passive=True)
            await replies.consume(self._on_reply, no_ack=True)
        except (*UNAVAILABLE, TimeoutError) as failure:
            if self.connection is not None:
                with contextlib.suppress(Exception):
                    await self.connection.close()
            raise RemoteUnavailable(
                f"RabbitMQ at {redact(url)} is not reachable "
                f"({str(failure) or type(failure).__name__}).",
                type="transport_unavailable",
            ) from None

    def _reconnected(self, *_: Any) -> None:
        self._reconnects += 1
        logger.warning("Reconnected to RabbitMQ at %s.", self.redacted_location())

    def _lost(self, *args: Any) -> None:
        if self._closed:
            return
        logger.warning("Disconnected from RabbitMQ (%s); reconnecting.", self.redacted_location())
        attempts = self.max_reconnect_attempts
        if attempts >= 0 and (self._watchdog is None or self._watchdog.done()):
            # A shared client connection gives up after a few attempts (transports'
            # get_transport opens another on the next call), as nats-py's does.
            wait = (attempts + 1) * (float(cliffracer_settings.RECONNECT_WAIT) + CONNECT_TIMEOUT)
            self._watchdog = asyncio.get_running_loop().create_task(self._give_up_after(wait))

    async def _give_up_after(self, wait: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                while not self.is_connected:
                    await asyncio.sleep(0.1)
                return
        logger.warning(
            "RabbitMQ at %s is still unreachable; this connection gives up.",
            self.redacted_location(),
        )
        await self.close()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._watchdog is not None and self._watchdog is not asyncio.current_task():
            self._watchdog.cancel()
        for subscription in list(self.subscriptions):
            subscription.stop()
        self.subscriptions.clear()
        for attachment in list(self.attachments):
            await attachment.close()
        for waiting in self._waiting.values():
            if not waiting.done():
                waiting.set_exception(_unavailable(""))
        if self.connection is not None:
            with contextlib.suppress(Exception):
                await self.connection.close()

    @property
    def is_connected(self) -> bool:
        connection = self.connection
        return (
            not self._closed
            and connection is not None
            and not connection.is_closed
            and connection.connected.is_set()
        )

    @property
    def is_closed(self) -> bool:
        return self._closed

    @property
    def reconnects(self) -> int:
        return self._reconnects

    def server(self) -> str:
        """The RabbitMQ this connection is on, as "RabbitMQ 3.10.8 (host:port)"."""
        parts = urlsplit(self.location)
        address = f"{parts.hostname}:{parts.port or (5671 if parts.scheme == 'amqps' else 5672)}"
        properties: dict[str, Any] = {}
        with contextlib.suppress(Exception):
            properties = self.connection.transport.connection.server_properties or {}
        product = properties.get("product") or "RabbitMQ"
        version = properties.get("version") or ""
        if isinstance(product, bytes):
            product = product.decode()
        if isinstance(version, bytes):
            version = version.decode()
        return f"{product} {version} ({address})".replace("  ", " ")

    def redacted_location(self) -> str:
        return redact(self.location)

    # Messages

    def new_inbox(self) -> str:
        return f"_INBOX.{uuid.uuid4().hex}"

    def _check(self, subject: str, data: bytes, reply: str = "") -> None:
        if self._closed or self.connection is None or not self.connection.connected.is_set():
            raise _unavailable(subject)
        for name in (subject, reply) if reply else (subject,):
            if (
                not name
                or len(name.encode()) > SHORT_STRING
                or any(character.isspace() for character in name)
            ):
                raise bad_subject(name)
        if len(data) > self.max_payload:
            raise too_large(subject)

    def _check_headers(self, subject: str, headers: dict[str, str] | None) -> None:
        """Refuse headers that do not fit one AMQP frame: the broker would close the whole
        connection over them (``frame_too_large``), every caller's requests with it."""
        if not headers:
            return
        size = sum(len(f"{key}{value}".encode()) + 6 for key, value in headers.items())
        if size > self.frame_max - HEADER_ROOM:
            raise remote_error(
                413,
                f"The headers of the message to {subject} are larger than RabbitMQ takes "
                f"({size} bytes; a frame holds {self.frame_max}).",
                type="request_too_large",
                subject=subject,
            )

    @property
    def frame_max(self) -> int:
        with contextlib.suppress(Exception):
            return int(self.connection.transport.connection.connection_tune.frame_max) or FRAME_MAX
        return FRAME_MAX

    def _message(
        self, data: bytes, headers: dict[str, str] | None, **properties: Any
    ) -> aio_pika.Message:
        self._check_headers(properties.pop("subject", ""), headers)
        return aio_pika.Message(
            bytes(data), headers=dict(headers) if headers else None, **properties
        )

    async def publish(
        self,
        subject: str,
        data: bytes,
        *,
        headers: dict[str, str] | None = None,
        reply: str = "",
    ) -> None:
        self._check(subject, data, reply)
        try:
            # A robust connection that lost its socket holds a publish until it is back.
            async with asyncio.timeout(float(cliffracer_settings.PUBLISH_TIMEOUT)):
                await self._publish(subject, data, headers, reply)
        except TimeoutError as error:
            raise _unavailable(subject, error) from None
        except UNAVAILABLE as error:
            raise _unavailable(subject, error) from None

    async def _publish(
        self, subject: str, data: bytes, headers: dict[str, str] | None, reply: str
    ) -> None:
        if subject.startswith(REPLY_TO + "."):
            # A reply to a request: to its direct reply-to address, never mandatory.
            address, _, correlation = subject.rpartition(".")
            message = self._message(data, headers, correlation_id=correlation, subject=subject)
            await self.reply_exchange.publish(message, routing_key=address, mandatory=False)
        elif reply:
            # Tell the reply subject when nobody gets the message, as NATS does (503).
            message = self._message(data, headers, reply_to=reply, subject=subject)
            try:
                await self.rpc_exchange.publish(message, routing_key=subject, mandatory=True)
            except aiormq.exceptions.PublishError:
                status = {"Status": "503", "Nats-Subject": subject}
                await self._publish(reply, b"", status, "")
        else:
            message = self._message(data, headers, subject=subject)
            await self.exchange.publish(message, routing_key=subject, mandatory=False)

    def _correlation(self) -> str:
        return f"{self._prefix}{next(self._ids):x}"

    async def _on_reply(self, incoming: AbstractIncomingMessage) -> None:
        correlation = incoming.correlation_id or ""
        message = Received(
            incoming.routing_key or REPLY_TO, incoming.body, text_headers(incoming.headers)
        )
        waiting = self._waiting.get(correlation)
        if waiting is not None:
            if not waiting.done():
                waiting.set_result(message)
            return
        collect = self._collecting.get(correlation)
        if collect is not None:
            collect(message)

    async def request(
        self,
        subject: str,
        data: bytes,
        *,
        headers: dict[str, str] | None = None,
        timeout: float,
    ) -> Received:
        self._check(subject, data)
        correlation = self._correlation()
        message = self._message(
            data,
            headers,
            reply_to=REPLY_TO,
            correlation_id=correlation,
            expiration=max(timeout, 0.001),
            subject=subject,
        )
        reply: asyncio.Future[Received] = asyncio.get_running_loop().create_future()
        self._waiting[correlation] = reply
        try:
            async with asyncio.timeout(timeout):
                try:
                    await self.rpc_exchange.publish(message, routing_key=subject, mandatory=True)
                except aiormq.exceptions.PublishError:
                    raise NoResponders(
                        f"No service is listening on {subject}.",
                        type="no_responders",
                        subject=subject,
                    ) from None
                except UNAVAILABLE as error:
                    raise _unavailable(subject, error) from None
                return await reply
        except TimeoutError:
            raise RpcTimeout(
                f"No reply from {subject} within {timeout:g}s.", type="timeout", subject=subject
            ) from None
        finally:
            self._waiting.pop(correlation, None)

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
        self._check(subject, data)
        replies = Replies(limit)

        correlation = self._correlation()
        message = self._message(
            data,
            headers,
            reply_to=REPLY_TO,
            correlation_id=correlation,
            expiration=max(timeout, 0.001),
            subject=subject,
        )
        self._collecting[correlation] = replies.add
        try:
            deadline = time.monotonic() + timeout
            try:
                async with asyncio.timeout(timeout):
                    await self.rpc_exchange.publish(message, routing_key=subject, mandatory=True)
            except aiormq.exceptions.PublishError:
                return []  # nobody listens
            except TimeoutError:
                return list(replies.items)
            except UNAVAILABLE as error:
                raise _unavailable(subject, error) from None
            return await replies.wait(deadline, stall)
        finally:
            self._collecting.pop(correlation, None)

    async def subscribe(
        self,
        subject: str,
        callback: Callback,
        *,
        queue: str = "",
        max_pending: int | None = None,
        max_pending_bytes: int | None = None,
    ) -> AmqpSubscription:
        if self._closed or self.connection is None:
            raise _unavailable(subject)
        if len(subject.encode()) > SHORT_STRING:  # an AMQP routing key's limit
            raise bad_subject(subject)
        check_subscription(subject, queue, callback)
        subscription = AmqpSubscription(
            self,
            subject,
            callback,
            queue=queue,
            max_pending=max_pending,
            max_pending_bytes=max_pending_bytes,
        )
        try:
            await subscription.start()
        except ValueError:  # pamqp refused a name
            raise bad_subject(subject) from None
        except UNAVAILABLE as error:
            raise _unavailable(subject, error) from None
        self.subscriptions.add(subscription)
        return subscription

    async def flush(self, timeout: float = 5.0) -> None:
        """A round trip on the channel that publishes and subscribes: the broker has handled
        everything sent before it."""
        if self._closed or self.connection is None:
            raise _unavailable("")
        try:
            async with asyncio.timeout(timeout):
                channel = await self.channel.get_underlay_channel()
                await channel.exchange_declare(
                    self.exchange_name, exchange_type="topic", durable=True, passive=True
                )
        except (*UNAVAILABLE, TimeoutError) as error:
            raise _unavailable("", error) from None

    # Durable streams (streams.py, consumer.py, registry.py)

    async def stream_channel(self) -> Any:
        """The channel with publisher confirms that streams are managed and published on
        (opened again when the broker closed it over an error)."""
        if self._closed or self.connection is None:
            raise _unavailable("")
        self._stream_channel = await self.new_channel(self._stream_channel)
        return self._stream_channel

    async def new_channel(self, replacing: Any = None) -> Any:
        """A channel with publisher confirms, restored with the connection; or ``replacing``
        while it is open. A robust channel the broker closed over an error would open again on
        its own and be restored for ever after: closing it first lets it go."""
        if replacing is not None:
            if not replacing.is_closed:
                return replacing
            with contextlib.suppress(Exception):
                await replacing.close()
        if self._closed or self.connection is None:
            raise _unavailable("")
        return await self.connection.channel(publisher_confirms=True)

    @contextlib.asynccontextmanager
    async def probe(self) -> AsyncIterator[Any]:
        """A channel of its own for a command the broker may answer by closing the channel
        (a passive declare of something missing), closed after."""
        if self._closed or self.connection is None:
            raise _unavailable("")
        channel = await self.connection.channel(publisher_confirms=False)
        try:
            yield channel
        finally:
            # Even when the broker closed it, so that it does not open again (new_channel).
            with contextlib.suppress(Exception):
                await channel.close()

    def durable_message(
        self, data: bytes, headers: dict[str, Any], **properties: Any
    ) -> aio_pika.Message:
        return self._message(data, headers, **properties)

    async def restart_attachments(self, stream: str, name: str | None) -> None:
        """Attach again the attachments of a consumer (or a stream) deleted under them."""
        for attachment in list(self.attachments):
            if attachment.stream == stream and name in (None, attachment.name):
                await attachment.restart()

    async def _durably(self, subject: str, call: Any) -> Any:
        """Run a durable operation, in the project's errors when the broker cannot be used."""
        try:
            async with asyncio.timeout(float(cliffracer_settings.PUBLISH_TIMEOUT)):
                return await call
        except TimeoutError as error:
            raise _unavailable(subject, error) from None
        except (StreamError, RemoteError):
            raise
        except UNAVAILABLE as error:
            raise _unavailable(subject, error) from None

    async def ensure_stream(self, stream: Any) -> str:
        return await self._durably("", streams.ensure_stream(self, stream))

    async def compare_stream(self, stream: Any) -> list[str] | None:
        return await self._durably("", streams.compare_stream(self, stream))

    async def stream_state(self, name: str) -> StreamState | None:
        return await self._durably("", streams.stream_state(self, name))

    async def delete_stream(self, name: str) -> bool:
        return await self._durably("", streams.delete_stream(self, name))

    async def publish_durable(
        self,
        subject: str,
        data: bytes,
        *,
        headers: dict[str, str] | None = None,
        msg_id: str,
        timeout: float = 5.0,
    ) -> int:
        self._check(subject, data)
        try:
            async with asyncio.timeout(timeout):
                return await streams.publish_durable(
                    self, subject, data, headers=headers, msg_id=msg_id
                )
        except TimeoutError:
            raise RpcTimeout(
                f"The stream did not confirm the event on {subject} within {timeout:g}s.",
                type="timeout",
                subject=subject,
            ) from None
        except (StreamError, RemoteError):
            raise
        except UNAVAILABLE as error:
            raise _unavailable(subject, error) from None

    async def stored_message(self, stream: str, sequence: int) -> None:
        """None: RabbitMQ keeps no stream history to read by sequence (features.stream_history)."""
        return None

    async def consume(
        self,
        stream: str,
        name: str,
        callback: Callable[[Any], Awaitable[None]],
        *,
        filter_subject: str,
        ack_wait: float,
        max_in_flight: int,
        description: str = "",
    ) -> AmqpAttachment:
        attachment = AmqpAttachment(
            self,
            stream,
            name,
            callback,
            filter_subject=filter_subject,
            max_in_flight=max_in_flight,
        )
        await self._durably("", attachment.start())
        self.attachments.add(attachment)
        return attachment

    async def consumer_state(self, stream: str, name: str) -> ConsumerState | None:
        return await self._durably("", streams.consumer_state(self, stream, name))

    async def consumers(self, stream: str) -> list[ConsumerState]:
        return await self._durably("", streams.consumers(self, stream))

    async def delete_consumer(self, stream: str, name: str) -> bool:
        return await self._durably("", streams.delete_consumer(self, stream, name))
