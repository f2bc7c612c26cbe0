"""The Redis transport: redis-py's asyncio client (with hiredis) behind the seam.

``redis://host:6379/0`` and ``rediss://`` (TLS). Every key and channel starts with a prefix
(``cliffracer:`` by default; ``?prefix=`` in the URL or ``OPTIONS["prefix"]``), since pub/sub
channels ignore the database number. How messages travel (``scripts.py`` names the keys):

- A queue group is a set of members, each with a list; the publisher's Lua script pushes to
  one member (in turn) of every group whose pattern matches (a binding registry in Redis says
  which exist), and a few popper tasks per connection take up to ``batch`` messages at a time
  with ``BLMPOP`` (the fast pattern measured in docs/transports.md). Each popper also blocks
  on a wake-up list of its own, so a new group is listened to without cancelling a blocked pop
  (which could lose what it popped).
- Publishes and requests go out in batches, in order (``writer.py``): a publish returns at
  once, as nats-py's does.
- Without a group, ``PUBLISH`` on the subject's channel; a wildcard subscription is a
  ``PSUBSCRIBE`` whose glob (``*`` crosses dots) is filtered again with NATS semantics.
- Replies go to inboxes ``_INBOX.<client>.<n>``, published on the client's one inbox channel
  and matched here by inbox; a request is one script call and one reply, nothing to subscribe.
- No responders: the script counts who got the message (groups with live members, the
  receivers ``PUBLISH`` reports); a member is live while its connection subscribes to its
  inbox channel, which Redis drops the moment the connection goes.
- Bodies, headers and reply subjects travel in a msgpack envelope.

One connection (of its own) reads pub/sub; when it is lost the transport connects again,
subscribes everything again and binds its groups again (a restarted Redis has forgotten them),
counting ``reconnects``. Commands use a pool that reconnects by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import random
import socket
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError

from cliffracer_core.core.errors import NoResponders, RemoteUnavailable, RpcTimeout
from cliffracer_core.core.headers import MSG_ID
from cliffracer_core.core.log import RateLimitedLog
from cliffracer_core.core.settings import cliffracer_settings
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
from cliffracer_core.transports.redis import scripts, streams
from cliffracer_core.transports.redis.consumer import RedisConsumer
from cliffracer_core.transports.redis.envelope import (
    clean_headers,
    copy,
    header_size,
    pack,
    unpack,
)
from cliffracer_core.transports.redis.subscription import RedisSubscription
from cliffracer_core.transports.redis.writer import Command, Writer
from cliffracer_core.transports.subjects import subject_matches

logger = logging.getLogger("cliffracer.connection")

PREFIX = "cliffracer:"
# Popper tasks per connection, and how many messages one BLMPOP takes at most.
WORKERS = 4
BATCH = 64
# How long a group's list outlives its last push (its members may all be gone).
QUEUE_TTL = 60.0
INBOX = "_INBOX."
# Seconds between pings on the pub/sub connection, and the most a pong may take.
HEARTBEAT = 5.0


class RedisFeatures(Features):
    no_responders = True
    wildcards = True
    queue_groups = True
    broadcast = True
    discovery = True
    durable = True
    delayed_nak = True
    deduplication = True
    stream_history = True


def glob_escape(text: str) -> str:
    """``text`` matched literally in a Redis glob."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def split_location(location: str) -> tuple[str, str | None]:
    """The URL for redis-py, and the ``prefix`` of its query (None if it has none)."""
    parts = urlsplit(location.strip())
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefix = next((value for key, value in query if key == "prefix"), None)
    rest = urlencode([(key, value) for key, value in query if key != "prefix"])
    return urlunsplit(parts._replace(query=rest)), prefix


def redact(location: str) -> str:
    scheme, separator, rest = location.strip().partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return f"{scheme}{separator}{rest}"


# What redis-py raises when Redis cannot be reached or cannot take a command now.
UNAVAILABLE = (RedisError, OSError, TimeoutError)


class RedisTransport(Transport):
    """A connection to Redis: a command pool, a pub/sub reader and a few list poppers."""

    features = RedisFeatures()
    schemes = ("redis", "rediss")
    display_name = "Redis"

    def __init__(
        self, location: str, options: dict[str, Any] | None = None, *, role: str = "client"
    ) -> None:
        super().__init__(location, options, role=role)
        url, url_prefix = split_location(location)
        self.url = url
        self.prefix = str(self.options.pop("prefix", None) or url_prefix or PREFIX)
        self.max_payload = int(self.options.pop("max_payload", MAX_PAYLOAD))
        self.workers = max(1, int(self.options.pop("workers", WORKERS)))
        self.batch = max(1, int(self.options.pop("batch", BATCH)))
        self.queue_ttl = float(self.options.pop("queue_ttl", QUEUE_TTL))
        # Taken for the tools that pass it to any transport (NATS's "log no failed attempt"):
        # this one logs nothing before it has connected anyway.
        self.quiet = bool(self.options.pop("quiet", False))
        self.max_reconnect_attempts = int(
            self.options.pop("max_reconnect_attempts", cliffracer_settings.MAX_RECONNECT_ATTEMPTS)
        )
        self.reconnect_wait = float(
            self.options.pop("reconnect_wait", cliffracer_settings.RECONNECT_WAIT)
        )
        self.client_id = uuid.uuid4().hex[:16]
        self.inbox_channel = f"{self.prefix}i:{self.client_id}"
        self._inboxes = itertools.count()
        self._drops = RateLimitedLog(logger)
        self._connected = False
        self._closed = False
        self._reconnects = 0
        self._server = ""
        self.pool: ConnectionPool | None = None
        self.redis: aioredis.Redis | None = None
        self._publish_sha = ""
        self._writer: Writer | None = None
        self._leave_script: Any = None
        # The pub/sub connection, its reader, and what it subscribes to.
        self._pubsub: AbstractConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._write_lock = asyncio.Lock()
        self._channels: dict[str, list[RedisSubscription]] = {}
        self._patterns: dict[str, list[RedisSubscription]] = {}
        self._groups: dict[str, list[RedisSubscription]] = {}
        self._requests: dict[str, asyncio.Future[Received]] = {}
        # The wake-up channels of streams that attachments here read, and their events.
        self._wakes: dict[str, set[asyncio.Event]] = {}
        self._pings: dict[str, asyncio.Future[None]] = {}
        self._up = asyncio.Event()
        # The popper tasks, their connections, and the lists they pop from.
        self._poppers: list[asyncio.Task[None]] = []
        self._popper_connections: set[AbstractConnection] = set()
        self._round = itertools.count()
        self._groups_changed = asyncio.Event()
        # Attachments to durable consumers, closed with the connection.
        self._consumers: weakref.WeakSet[RedisConsumer] = weakref.WeakSet()

    # Connecting

    def _connection(self) -> AbstractConnection:
        """A connection of its own (pub/sub, a popper): no read timeout, it waits for long."""
        assert self.pool is not None
        kwargs = {**self.pool.connection_kwargs, "socket_timeout": None}
        return self.pool.connection_class(**kwargs)

    async def connect(self) -> None:
        name = (
            f"{cliffracer_settings.CONNECTION_NAME}:{self.role}@{socket.gethostname()}:"
            f"{os.getpid()}"
        )
        try:
            self.pool = ConnectionPool.from_url(
                self.url,
                socket_connect_timeout=2,
                # RESP2: pub/sub messages are replies on their own connection, read here.
                protocol=2,
                socket_timeout=10,
                client_name=name.replace(" ", "_"),
                retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
                **self.options,
            )
        except (ValueError, TypeError) as error:
            raise RemoteUnavailable(
                f"Redis URL {redact(self.location)} is not usable ({error}).",
                type="transport_unavailable",
            ) from None
        self.redis = aioredis.Redis(connection_pool=self.pool)
        self._leave_script = self.redis.register_script(scripts.LEAVE)
        try:
            version = str((await self.redis.info("server")).get("redis_version", "0"))
            if int(version.split(".")[0]) < 7:
                await self.pool.aclose()
                raise RemoteUnavailable(
                    f"Redis at {redact(self.location)} is {version}; the Redis transport needs "
                    "7.0 or later (BLMPOP).",
                    type="transport_unavailable",
                )
            self._publish_sha = await self.redis.script_load(scripts.PUBLISH)
            await self._open_pubsub()
        except UNAVAILABLE as error:
            await self.pool.aclose()
            raise RemoteUnavailable(
                f"Redis at {redact(self.location)} is not reachable "
                f"({str(error) or type(error).__name__}).",
                type="transport_unavailable",
            ) from None
        kwargs = self.pool.connection_kwargs
        self._server = f"{kwargs.get('host', '')}:{kwargs.get('port', '')}".strip(":")
        if kwargs.get("path"):
            self._server = str(kwargs["path"])
        self._writer = Writer(self.redis, {self._publish_sha: scripts.PUBLISH})
        self._connected = True
        self._up.set()
        loop = asyncio.get_running_loop()
        self._reader = loop.create_task(self._read())
        self._heartbeat = loop.create_task(self._beat())

    async def _open_pubsub(self) -> None:
        """Connect the pub/sub connection and subscribe to everything this transport wants."""
        connection = self._connection()
        await connection.connect()
        self._pubsub = connection
        channels = list(dict.fromkeys([self.inbox_channel, *self._channels, *self._wakes]))
        await connection.send_command("SUBSCRIBE", *channels)
        if self._patterns:
            await connection.send_command("PSUBSCRIBE", *self._patterns)
        # Read the confirmations here, before the reader runs, so that the groups are joined
        # only once this member is live (subscribed to its inbox channel).
        for _ in range(len(channels) + len(self._patterns)):
            await connection.read_response(timeout=None)
        if self._groups:
            await self._bind(*self._groups)

    async def _bind(self, *groups: str) -> None:
        """Join ``groups`` and bind them (the publisher's script finds them so)."""
        assert self.redis is not None
        async with self.redis.pipeline(transaction=False) as pipeline:
            for group in groups:
                pipeline.sadd(f"{self.prefix}gm:{group}", self.client_id)
                pattern = group.partition(" ")[2]
                if "*" in pattern or ">" in pattern:
                    pipeline.sadd(f"{self.prefix}bw", group)
                else:
                    pipeline.sadd(f"{self.prefix}bx:{pattern}", group)
            await pipeline.execute()

    async def _read(self) -> None:
        """Read pub/sub messages; connect again when the connection is lost."""
        while not self._closed:
            connection = self._pubsub
            try:
                assert connection is not None
                response = await connection.read_response(timeout=None)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001  (lost, whatever redis-py raised)
                if self._closed:
                    return
                await self._reconnect(error)
                continue
            try:
                self._dispatch(response)
            except Exception:  # noqa: BLE001  (a message we cannot read is dropped)
                logger.exception("A message from Redis could not be read; dropped.")

    async def _beat(self) -> None:
        """Ping on the pub/sub connection now and then: a connection that went silent (a
        network that dropped it without a word) is closed, and the reader connects again."""
        while not self._closed:
            await asyncio.sleep(HEARTBEAT)
            if not self._connected:
                continue
            try:
                await self._ping(HEARTBEAT)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001
                if self._connected and self._pubsub is not None:
                    logger.warning("Redis did not answer a ping (%s).", type(error).__name__)
                    with contextlib.suppress(Exception):
                        await self._pubsub.disconnect()

    async def _reconnect(self, error: BaseException) -> None:
        self._connected = False
        self._up.clear()
        logger.warning(
            "Disconnected from Redis (%s: %s); reconnecting.",
            redact(self.location),
            type(error).__name__,
        )
        for ping in self._pings.values():
            if not ping.done():
                ping.set_exception(ConnectionError("lost"))
        attempts = 0
        while not self._closed:
            if self._pubsub is not None:
                with contextlib.suppress(Exception):
                    await self._pubsub.disconnect()
            try:
                async with self._write_lock:
                    await self._open_pubsub()
            except asyncio.CancelledError:
                raise
            except Exception as failure:  # noqa: BLE001
                attempts += 1
                if 0 <= self.max_reconnect_attempts <= attempts:
                    logger.warning(
                        "Redis at %s is still not reachable (%s); giving up.",
                        redact(self.location),
                        type(failure).__name__,
                    )
                    asyncio.get_running_loop().create_task(self.close())
                    return
                await asyncio.sleep(self.reconnect_wait)
                continue
            self._reconnects += 1
            self._connected = True
            self._up.set()
            logger.warning("Reconnected to Redis at %s.", redact(self.location))
            return

    async def _leave(self, groups: list[str]) -> None:
        """Leave ``groups``, and unbind those with no member left."""
        await self._leave_script(args=[self.prefix, self.client_id, *groups])

    async def close(self) -> None:
        if self._closed:
            return
        if self._writer is not None and self._connected:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    await self._writer.drained()
        for consumer in list(self._consumers):
            await consumer.close()
        if self._groups and self._connected:
            with contextlib.suppress(*UNAVAILABLE):
                await self._leave(list(self._groups))
        self._closed = True
        if self._writer is not None:
            await self._writer.close()
        self._connected = False
        self._up.set()  # poppers waiting for a connection see the close
        subscriptions = [
            s
            for table in (self._channels, self._patterns, self._groups)
            for group in table.values()
            for s in group
        ]
        for subscription in subscriptions:
            subscription.closed = True
            subscription.task.cancel()
        tasks = [*self._poppers, *(t for t in (self._reader, self._heartbeat) if t is not None)]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for connection in [*self._popper_connections, self._pubsub]:
            if connection is not None:
                with contextlib.suppress(Exception):
                    await connection.disconnect()
        for request in self._requests.values():
            if not request.done():
                request.cancel()
        self._channels.clear()
        self._patterns.clear()
        self._groups.clear()
        if self.pool is not None:
            with contextlib.suppress(Exception):
                await self.pool.aclose()
        logger.info("Redis connection closed.")

    @property
    def is_connected(self) -> bool:
        return self._connected and not self._closed

    @property
    def is_closed(self) -> bool:
        return self._closed

    @property
    def reconnects(self) -> int:
        return self._reconnects

    def server(self) -> str:
        return self._server

    def redacted_location(self) -> str:
        return redact(self.location)

    def _usable(self, subject: str = "") -> None:
        if self._closed or self.redis is None:
            raise RemoteUnavailable(
                "The Redis connection cannot send now (it is closed).",
                type="transport_unavailable",
                subject=subject or None,
            )

    # Where subjects go

    def _inbox_channel(self, subject: str) -> str | None:
        """The inbox channel of an ``_INBOX.<client>.<n>`` subject (None for others)."""
        if not subject.startswith(INBOX):
            return None
        client, dot, rest = subject[len(INBOX) :].partition(".")
        if not dot or not rest or not client or "*" in client or ">" in client:
            return None
        return f"{self.prefix}i:{client}"

    # Receiving

    def _dispatch(self, response: Any) -> None:
        kind = response[0]
        if kind == b"message":
            channel, envelope = response[1].decode(), response[2]
            waiters = self._wakes.get(channel)
            if waiters is not None:
                for event in waiters:
                    event.set()
                return
            message = unpack(envelope)
            if channel == self.inbox_channel:
                request = self._requests.get(message.subject)
                if request is not None and not request.done():
                    request.set_result(message)
            for subscription in self._channels.get(channel, ()):
                if subject_matches(subscription.subject, message.subject):
                    subscription.offer(copy(message))
        elif kind == b"pmessage":
            pattern, envelope = response[1].decode(), response[3]
            subscriptions = self._patterns.get(pattern, ())
            if subscriptions:
                message = unpack(envelope)
                for subscription in subscriptions:
                    if subject_matches(subscription.subject, message.subject):
                        subscription.offer(copy(message))
        elif kind == b"pong":
            ping = self._pings.pop(response[1].decode(), None)
            if ping is not None and not ping.done():
                ping.set_result(None)

    async def _pop(self, index: int) -> None:
        """Take messages of this transport's groups off their lists, a batch at a time."""
        wake = f"{self.prefix}w:{self.client_id}:{index}"
        connection: AbstractConnection | None = None
        while not self._closed:
            groups = list(self._groups)
            if not groups or not self._connected:
                await self._up.wait() if not self._connected else await self._wait_for_groups()
                continue
            start = next(self._round) % len(groups)
            groups = groups[start:] + groups[:start]  # no group starves the others
            lists = f"{self.prefix}g:{self.client_id}:"
            keys = [wake] + [lists + group for group in groups]
            try:
                if connection is None:
                    connection = self._connection()
                    self._popper_connections.add(connection)
                await connection.send_command(
                    "BLMPOP", 0, len(keys), *keys, "LEFT", "COUNT", self.batch
                )
                response = await connection.read_response(timeout=None)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001  (lost: the reader reconnects, then we do)
                if connection is not None:
                    self._popper_connections.discard(connection)
                    with contextlib.suppress(Exception):
                        await connection.disconnect()
                    connection = None
                await asyncio.sleep(self.reconnect_wait if self._connected else 0)
                if not self._connected:
                    await self._up.wait()
                continue
            if not response:
                continue
            key, envelopes = response[0].decode(), response[1]
            if key == wake:
                continue
            members = self._groups.get(key[len(lists) :])
            if not members:
                continue  # left the group meanwhile: dropped, as NATS drops a pending message
            for envelope in envelopes:
                try:
                    message = unpack(envelope)
                except Exception:  # noqa: BLE001
                    logger.warning("A message on %s could not be read; dropped.", key)
                    continue
                members[0 if len(members) == 1 else random.randrange(len(members))].offer(message)

    async def _wait_for_groups(self) -> None:
        self._groups_changed.clear()
        await self._groups_changed.wait()

    async def _wake_poppers(self) -> None:
        """Make each popper block again on the lists of the groups there are now."""
        self._groups_changed.set()
        if not self._poppers:
            loop = asyncio.get_running_loop()
            self._poppers = [loop.create_task(self._pop(i)) for i in range(self.workers)]
            return
        assert self.redis is not None
        with contextlib.suppress(*UNAVAILABLE):
            async with self.redis.pipeline(transaction=False) as pipeline:
                for index in range(self.workers):
                    wake = f"{self.prefix}w:{self.client_id}:{index}"
                    pipeline.rpush(wake, b"")
                    pipeline.pexpire(wake, int(self.queue_ttl * 1000))
                await pipeline.execute()

    # Messages

    def new_inbox(self) -> str:
        return f"{INBOX}{self.client_id}.{next(self._inboxes)}"

    def _envelope(
        self, subject: str, data: bytes, headers: dict[str, str] | None, reply: str
    ) -> bytes:
        self._usable(subject)
        for name in (subject, reply) if reply else (subject,):
            if not name or any(character.isspace() for character in name):
                raise bad_subject(name)
        if len(data) > self.max_payload:
            raise too_large(subject)
        return pack(subject, data, clean_headers(headers), reply)

    def _command(
        self,
        subject: str,
        envelope: bytes,
        msg_id: str = "",
        mode: str = "publish",
        sizes: tuple[int, int] = (0, 0),
    ) -> tuple[Any, ...]:
        """The command that sends ``envelope`` where ``subject`` goes (and stores it in the
        stream that holds ``subject``, if one does); its reply is how many got it."""
        inbox = self._inbox_channel(subject)
        if inbox is not None and mode == "publish":
            return ("PUBLISH", inbox, envelope)
        ttl = int(self.queue_ttl * 1000)
        return (
            "EVALSHA",
            self._publish_sha,
            0,
            mode,
            self.prefix,
            subject,
            envelope,
            ttl,
            msg_id,
            *sizes,
        )

    async def _call(self, command: tuple[Any, ...], subject: str) -> Any:
        assert self._writer is not None
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await self._writer.send(Command(command, subject, future))
        try:
            return await future
        except UNAVAILABLE as error:
            raise _unavailable(subject, error) from None

    async def stream_call(self, mode: str, stream: str, *arguments: Any) -> Any:
        """Run a command of the stream script (``scripts.STREAM_FUNCTIONS``)."""
        self._usable()
        command = ("EVALSHA", self._publish_sha, 0, mode, self.prefix, stream, *arguments)
        return await self._call(command, stream)

    async def stream_store(
        self, subject: str, envelope: bytes, msg_id: str, sizes: tuple[int, int]
    ) -> Any:
        command = self._command(subject, envelope, msg_id, "store", sizes)
        return await self._call(command, subject)

    def envelope(
        self, subject: str, data: bytes, headers: dict[str, str] | None, reply: str
    ) -> bytes:
        return self._envelope(subject, data, headers, reply)

    @staticmethod
    def unpack(envelope: bytes) -> Received:
        return unpack(envelope)

    async def watch_stream(self, stream: str, event: asyncio.Event) -> None:
        """Set ``event`` whenever ``stream`` changes (its wake-up channel)."""
        channel = f"{self.prefix}xw:{stream}"
        waiters = self._wakes.setdefault(channel, set())
        waiters.add(event)
        if len(waiters) == 1 and self._connected:
            with contextlib.suppress(*UNAVAILABLE):
                async with self._write_lock:
                    assert self._pubsub is not None
                    await self._pubsub.send_command("SUBSCRIBE", channel)
                await self._ping()

    async def unwatch_stream(self, stream: str, event: asyncio.Event) -> None:
        channel = f"{self.prefix}xw:{stream}"
        waiters = self._wakes.get(channel, set())
        waiters.discard(event)
        if waiters or channel not in self._wakes:
            return
        del self._wakes[channel]
        if self._connected and not self._closed:
            with contextlib.suppress(*UNAVAILABLE):
                async with self._write_lock:
                    assert self._pubsub is not None
                    await self._pubsub.send_command("UNSUBSCRIBE", channel)

    async def _route(self, subject: str, envelope: bytes, msg_id: str = "") -> int:
        """Send ``envelope`` where ``subject`` goes; return how many got it."""
        return await self._call(self._command(subject, envelope, msg_id), subject)

    async def publish(
        self,
        subject: str,
        data: bytes,
        *,
        headers: dict[str, str] | None = None,
        reply: str = "",
    ) -> None:
        """Queue the message and return (as nats-py does); it goes out with the next batch."""
        envelope = self._envelope(subject, data, headers, reply)
        writer = self._writer
        assert writer is not None
        then = None
        if reply:

            def then(received: int) -> None:
                if not received:  # as nats-server does, tell the reply subject nobody got it
                    status = pack(reply, b"", {"Status": "503", "Nats-Subject": subject}, "")
                    writer.send_nowait(Command(self._command(reply, status), reply))

        cleaned = clean_headers(headers)
        msg_id = (cleaned or {}).get(MSG_ID, "")
        command = self._command(subject, envelope, msg_id, sizes=(header_size(cleaned), len(data)))
        await writer.send(Command(command, subject, then=then))

    async def request(
        self,
        subject: str,
        data: bytes,
        *,
        headers: dict[str, str] | None = None,
        timeout: float,
    ) -> Received:
        inbox = self.new_inbox()
        envelope = self._envelope(subject, data, headers, inbox)
        reply: asyncio.Future[Received] = asyncio.get_running_loop().create_future()
        self._requests[inbox] = reply
        try:
            if not await self._route(subject, envelope):
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
            self._requests.pop(inbox, None)

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
        """Every reply within ``timeout``. Redis says how many got the request (each group
        once, each connection subscribed once): once that many replied, wait only a moment
        for more (one connection may hold several responders), else until they stall."""

        async def send(inbox: str) -> int:
            return await self._route(subject, self._envelope(subject, data, headers, inbox))

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
    ) -> RedisSubscription:
        self._usable(subject)
        check_subscription(subject, queue, callback)
        inbox = self._inbox_channel(subject)
        if queue:
            kind, key = "group", f"{queue} {subject}"
        elif inbox is not None:
            kind, key = "channel", inbox
        elif "*" in subject or ">" in subject:
            glob = ".".join(
                "*" if token in ("*", ">") else glob_escape(token) for token in subject.split(".")
            )
            kind, key = "pattern", f"{glob_escape(self.prefix)}s:{glob}"
        else:
            kind, key = "channel", f"{self.prefix}s:{subject}"
        subscription = RedisSubscription(
            self,
            subject,
            callback,
            queue=queue,
            key=key,
            kind=kind,
            max_pending=max_pending,
            max_pending_bytes=max_pending_bytes,
        )
        table = {"group": self._groups, "channel": self._channels, "pattern": self._patterns}
        members = table[kind].setdefault(key, [])
        members.append(subscription)
        if len(members) == 1 and key != self.inbox_channel:
            try:
                await self._listen(kind, key)
            except UNAVAILABLE as error:
                # The reader subscribes it again once it has reconnected.
                logger.info("Subscribing to %s waits for Redis (%s).", subject, error)
        return subscription

    async def _listen(self, kind: str, key: str) -> None:
        """Subscribe the pub/sub connection to ``key``, or join the group ``key`` and tell the
        poppers."""
        if not self._connected:
            return
        if kind == "group":
            await self._bind(key)
            await self._wake_poppers()
            return
        async with self._write_lock:
            assert self._pubsub is not None
            command = "PSUBSCRIBE" if kind == "pattern" else "SUBSCRIBE"
            await self._pubsub.send_command(command, key)
        # In effect before subscribe() returns: what this connection publishes next goes out
        # on another Redis connection, and must not overtake it (on NATS one socket orders
        # them).
        await self._ping()

    async def forget(self, subscription: RedisSubscription) -> None:
        """Take ``subscription`` out; the last of its key unsubscribes the connection."""
        table = {"group": self._groups, "channel": self._channels, "pattern": self._patterns}[
            subscription.kind
        ]
        members = table.get(subscription.key, [])
        if subscription in members:
            members.remove(subscription)
        if members or subscription.key == self.inbox_channel:
            return
        table.pop(subscription.key, None)
        if self._closed or not self._connected:
            return
        with contextlib.suppress(*UNAVAILABLE, ConnectionError):
            if subscription.kind == "group":
                await self._leave([subscription.key])
                await self._wake_poppers()
                return
            command = "PUNSUBSCRIBE" if subscription.kind == "pattern" else "UNSUBSCRIBE"
            async with self._write_lock:
                assert self._pubsub is not None
                await self._pubsub.send_command(command, subscription.key)

    async def _ping(self, timeout: float = 5.0) -> None:
        """Return once Redis has done what the pub/sub connection was sent so far."""
        token = uuid.uuid4().hex
        ping: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pings[token] = ping
        try:
            async with self._write_lock:
                assert self._pubsub is not None
                await self._pubsub.send_command("PING", token)
            async with asyncio.timeout(timeout):
                await ping
        finally:
            self._pings.pop(token, None)

    async def flush(self, timeout: float = 5.0) -> None:
        self._usable()
        try:
            async with asyncio.timeout(timeout):
                assert self._writer is not None
                await self._writer.drained()
                if not self._connected:
                    await self._up.wait()
            self._usable()
            await self._ping(timeout)
        except (*UNAVAILABLE, ConnectionError) as error:
            raise _unavailable("", error) from None

    # Durable streams (streams.py, consumer.py)

    async def ensure_stream(self, stream: Stream) -> str:
        return await streams.ensure_stream(self, stream)

    async def compare_stream(self, stream: Stream) -> list[str] | None:
        return await streams.compare_stream(self, stream)

    async def stream_state(self, name: str) -> StreamState | None:
        return await streams.stream_state(self, name)

    async def delete_stream(self, name: str) -> bool:
        return await streams.delete_stream(self, name)

    async def publish_durable(
        self,
        subject: str,
        data: bytes,
        *,
        headers: dict[str, str] | None = None,
        msg_id: str,
        timeout: float = 5.0,
    ) -> int:
        try:
            async with asyncio.timeout(timeout):
                return await streams.publish_durable(
                    self, subject, data, headers=headers, msg_id=msg_id
                )
        except TimeoutError:
            raise RpcTimeout(
                f"Redis did not store the event on {subject} within {timeout:g}s.",
                type="timeout",
                subject=subject,
            ) from None

    async def stored_message(self, stream: str, sequence: int) -> Received | None:
        return await streams.stored_message(self, stream, sequence)

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
    ) -> RedisConsumer:
        self._usable()
        consumer = RedisConsumer(
            self,
            stream,
            name,
            callback,
            filter_subject=filter_subject,
            ack_wait=ack_wait,
            max_in_flight=max_in_flight,
        )
        await consumer.start()
        self._consumers.add(consumer)
        return consumer

    async def consumer_state(self, stream: str, name: str) -> ConsumerState | None:
        return await streams.consumer_state(self, stream, name)

    async def consumers(self, stream: str) -> list[ConsumerState]:
        return await streams.consumers(self, stream)

    async def delete_consumer(self, stream: str, name: str) -> bool:
        return await streams.delete_consumer(self, stream, name)


def _unavailable(subject: str, error: BaseException) -> Exception:
    return RemoteUnavailable(
        f"The Redis connection cannot send now ({type(error).__name__}).",
        type="transport_unavailable",
        subject=subject or None,
    )
