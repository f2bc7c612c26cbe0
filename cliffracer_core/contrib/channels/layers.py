"""A Channels layer over NATS: channels and groups across processes, with no extra server.

docs/channel_layers.md describes the subjects, the delivery and capacity semantics, and the
rule that decides which event loop does the layer's NATS work.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Coroutine
from typing import Any

import msgpack
from channels.exceptions import ChannelFull
from channels.layers import BaseChannelLayer

from cliffracer_core.core.client import background_loop
from cliffracer_core.core.errors import NoResponders
from cliffracer_core.transports import get_transport, persistent_transport
from cliffracer_core.transports.base import Message as Msg
from cliffracer_core.transports.base import Subscription, Transport

logger = logging.getLogger("cliffracer.channels")

# A full channel says so in the log at most this often, in seconds.
FULL_WARNING_INTERVAL = 60.0
# Forgotten channels are looked for at most this often (or every ``expiry``, if shorter).
SWEEP_INTERVAL = 10.0
# How long a group_add or group_discard waits for the process that owns the channel.
FORWARD_TIMEOUT = 5.0
# How long flush() waits for NATS to take back the layer's subscriptions.
UNSUBSCRIBE_TIMEOUT = 5.0


def subject_token(name: str) -> str:
    """Return a channel or group name as it appears in a subject.

    Dots stay subject separators ("chat.room1" is watchable as ``group.chat.*``), except in a
    name they would turn into an empty token ("a..b", ".a"): there "~", which no valid name
    holds, stands for each dot, so that two names never share a subject.
    """
    if name.startswith(".") or name.endswith(".") or ".." in name:
        return "~" + name.replace(".", "~")
    return name


def owner_token(channel: str) -> str:
    """The process token of a process-specific channel ("specific.<token>!<random>")."""
    return channel.partition("!")[0].rpartition(".")[2]


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def unpack(data: bytes) -> Any:
    # Channels messages are dicts from any code: allow non-string keys, as pickle would.
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


async def run_on[T](loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, T]) -> T:
    """Await ``coroutine`` on ``loop``, from whichever loop is running."""
    if loop is asyncio.get_running_loop():
        return await coroutine
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, loop))


class LocalChannel:
    """The messages waiting in this process for one channel, and the receivers waiting."""

    __slots__ = ("messages", "waiters", "active_at", "warned_at")

    def __init__(self, now: float) -> None:
        self.messages: deque[tuple[float, Any]] = deque()
        # Receivers may wait on any event loop; a delivery wakes them all and the first to
        # run takes the message, so a receiver cancelled at the wrong moment loses nothing.
        self.waiters: list[asyncio.Future[None]] = []
        self.active_at = now
        self.warned_at = float("-inf")

    def drop_expired(self, oldest: float) -> int:
        dropped = 0
        while self.messages and self.messages[0][0] < oldest:
            self.messages.popleft()
            dropped += 1
        return dropped

    def wake(self) -> None:
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:  # no loop in this thread
            running = None
        for waiter in self.waiters:
            loop = waiter.get_loop()
            if loop is running:
                _set_pending(waiter)
                continue
            # RuntimeError: the receiver's loop has closed, and the receiver with it.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_set_pending, waiter)


def _set_pending(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class LayerSubscription:
    """One NATS subscription of the layer, on the event loop whose connection holds it."""

    __slots__ = ("loop", "ready")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        # A thread-safe future, as callers on other loops may wait for the same subscription.
        self.ready: concurrent.futures.Future[tuple[Subscription, Transport]] = (
            concurrent.futures.Future()
        )

    def confirmed(self) -> bool:
        ready = self.ready
        return ready.done() and not ready.cancelled() and ready.exception() is None


class NatsChannelLayer(BaseChannelLayer):
    """Deliver Channels messages through NATS, so any number of processes share channels.

    Process-specific channels (``new_channel()``) are local queues reached through the owning
    process's subject; named channels (``receive("thumbnails")``) are queue-group
    subscriptions; groups are one subject each, with members recorded in the process that
    owns each member. Nothing is stored in NATS: it delivers at most once, as the server
    sees fit, and messages wait only in the receiving process.
    """

    extensions = ["groups", "flush"]

    def __init__(
        self,
        prefix: str = "_cliffracer.layer",
        expiry: float = 60,
        group_expiry: float = 86400,
        capacity: int = 100,
        channel_capacity: dict[Any, int] | None = None,
    ) -> None:
        super().__init__(expiry=expiry, capacity=capacity)
        if not prefix or any(part in ("", "*", ">") for part in prefix.split(".")):
            raise ValueError(f"Channel layer prefix {prefix!r} is not a subject prefix.")
        if any(character.isspace() for character in prefix):
            raise ValueError(f"Channel layer prefix {prefix!r} holds whitespace.")
        self.prefix = prefix
        self.channel_capacity = self.compile_capacities(channel_capacity or {})
        # Accepted so that a channels_redis configuration works unchanged; not enforced, as a
        # membership lives in the process of its channel and ends with it (see the docs).
        self.group_expiry = group_expiry
        self._start()

    def _start(self) -> None:
        """Begin as a new process: a new token, nothing local, no subscriptions."""
        self._pid = os.getpid()
        self.process_token = uuid.uuid4().hex
        # One lock for the local state: deliveries arrive on the home loop and on the
        # background loop, and receivers may wait on any loop.
        self._lock = threading.Lock()
        self._home: asyncio.AbstractEventLoop | None = None
        self._channels: dict[str, LocalChannel] = {}
        self._groups: dict[str, set[str]] = {}
        self._subscriptions: dict[str, LayerSubscription] = {}
        self._swept_at = time.time()

    # Subjects

    @property
    def process_subject(self) -> str:
        return self._process_subject(self.process_token)

    def _process_subject(self, token: str) -> str:
        return f"{self.prefix}.process.{token}"

    def _named_subject(self, channel: str) -> str:
        return f"{self.prefix}.named.{subject_token(channel)}"

    def _group_subject(self, group: str) -> str:
        return f"{self.prefix}.group.{subject_token(group)}"

    def _owns(self, channel: str) -> bool:
        return owner_token(channel) == self.process_token

    # Which loop talks to NATS
    #
    # The layer is one object per process, called from many event loops: daphne's (every
    # consumer), and under gunicorn or in a Celery task a throwaway loop per
    # ``async_to_sync(layer.group_send)`` call. The rule: the loop of the main thread is home
    # (daphne and uvicorn run their loop there), and the layer's NATS work runs directly on it
    # with its shared connection, the one the WebSocket hub uses. A call from any other
    # thread's loop does its NATS work on the sync client's background loop, which lives as
    # long as the process; so a web process holds one connection, and a loop about to close
    # never holds a subscription. Messages reach receivers on any loop through the locked
    # local queues.

    async def _enter(self) -> asyncio.AbstractEventLoop:
        """Return the caller's loop, making it home if it is the main thread's."""
        loop = asyncio.get_running_loop()
        if self._pid != os.getpid():
            # A forked child (a Celery prefork worker) is another process: it must not answer
            # for its parent's channels, and its parent's loops do not run here.
            self._start()
        if loop is self._home or threading.current_thread() is not threading.main_thread():
            return loop
        with self._lock:
            previous, self._home = self._home, loop
            stale = [
                (subject, entry)
                for subject, entry in self._subscriptions.items()
                if entry.loop is previous
            ]
            for subject, _ in stale:
                del self._subscriptions[subject]
            groups = list(self._groups)
        if stale:
            # The main thread ran another loop before (a script's or a test's asyncio.run):
            # its subscriptions went with its connection. Keep the process reachable.
            logger.debug("Channel layer moved to a new main-thread loop; subscribing again.")
            for _, entry in stale:
                self._release(entry)
            if any(subject == self.process_subject for subject, _ in stale):
                await self._subscribe(loop, self.process_subject)
            for group in groups:
                await self._subscribe(loop, self._group_subject(group))
        return loop

    def _nats_loop(self, loop: asyncio.AbstractEventLoop) -> asyncio.AbstractEventLoop:
        return loop if loop is self._home else background_loop.get_loop()

    async def _connection(self, *, subscribing: bool) -> Transport:
        """The NATS connection of the running loop (home or background)."""
        if subscribing or asyncio.get_running_loop() is self._home:
            # A subscription must survive any outage, so its connection never gives up.
            return await persistent_transport()
        # Publishing from the background loop: the sync client's connection.
        return await get_transport()

    async def _subscribe(
        self, loop: asyncio.AbstractEventLoop, subject: str, queue: str = ""
    ) -> None:
        """Make sure this process listens on ``subject``, once, as the server has confirmed."""
        while True:
            with self._lock:
                entry = self._subscriptions.get(subject)
                if entry is not None and entry.loop.is_closed():
                    # Made on a main-thread loop that has ended since; its connection is gone.
                    del self._subscriptions[subject]
                    entry = None
                if entry is not None and entry.confirmed():
                    return
                creating = entry is None
                if entry is None:
                    entry = self._subscriptions[subject] = LayerSubscription(self._nats_loop(loop))
            if creating:
                try:
                    result = await run_on(entry.loop, self._subscribe_here(subject, queue))
                except BaseException as error:
                    with self._lock:
                        if self._subscriptions.get(subject) is entry:
                            del self._subscriptions[subject]
                    if isinstance(error, asyncio.CancelledError):
                        entry.ready.cancel()
                    else:
                        entry.ready.set_exception(error)
                    raise
                entry.ready.set_result(result)
                return
            try:
                # Shielded: a waiter that is cancelled must not cancel the shared future.
                await asyncio.shield(asyncio.wrap_future(entry.ready))
                return
            except asyncio.CancelledError:
                if not entry.ready.cancelled():
                    raise
                # Its creator was cancelled; try again.

    async def _subscribe_here(self, subject: str, queue: str) -> tuple[Subscription, Transport]:
        connection = await self._connection(subscribing=True)

        async def on_message(message: Msg) -> None:
            await self._on_message(connection, message)

        subscription = await connection.subscribe(subject, on_message, queue=queue)
        try:
            # Once the server has the subscription, a message published after this call
            # returns, from any process, reaches it.
            await connection.flush()
        except BaseException:
            await _unsubscribe(subscription)
            raise
        return subscription, connection

    @staticmethod
    def _release(entry: LayerSubscription) -> concurrent.futures.Future[None]:
        """Unsubscribe ``entry`` on its own loop (once it exists); done when that is done."""
        released: concurrent.futures.Future[None] = concurrent.futures.Future()

        def unsubscribe(ready: concurrent.futures.Future[tuple[Subscription, Transport]]) -> None:
            if ready.cancelled() or ready.exception() is not None or entry.loop.is_closed():
                released.set_result(None)
                return
            subscription, _ = ready.result()
            try:
                future = asyncio.run_coroutine_threadsafe(_unsubscribe(subscription), entry.loop)
            except RuntimeError:  # the loop closed meanwhile, and the connection with it
                released.set_result(None)
                return
            future.add_done_callback(lambda _: released.set_result(None))

        entry.ready.add_done_callback(unsubscribe)
        return released

    async def _publish(self, loop: asyncio.AbstractEventLoop, subject: str, payload: bytes) -> None:
        await run_on(self._nats_loop(loop), self._publish_here(subject, payload))

    async def _publish_here(self, subject: str, payload: bytes) -> None:
        connection = await self._connection(subscribing=False)
        await connection.publish(subject, payload)
        if asyncio.get_running_loop() is not self._home:
            # A sync caller (a task, a view under gunicorn, a script) may exit as soon as this
            # returns: return once the server has the message.
            await connection.flush()

    # Local delivery

    def _local(self, channel: str, now: float) -> LocalChannel:
        local = self._channels.get(channel)
        if local is None:
            local = self._channels[channel] = LocalChannel(now)
        return local

    def _deliver(self, channel: str, sent: float, data: bytes, *, raise_full: bool) -> None:
        """Queue a message for a channel of this process; drop it (or raise) when full."""
        message = unpack(data)
        now = time.time()
        with self._lock:
            local = self._local(channel, now)
            local.drop_expired(now - self.expiry)
            full = len(local.messages) >= self.get_capacity(channel)
            if not full:
                local.messages.append((sent, message))
                local.wake()
            elif raise_full:
                raise ChannelFull(channel)
            warn = full and now - local.warned_at >= FULL_WARNING_INTERVAL
            if warn:
                local.warned_at = now
            self._sweep(now)
        if warn:
            logger.warning(
                "Channel %s is full (%d messages); dropping what arrives for it until it is "
                "read. Said at most once a minute.",
                channel,
                self.get_capacity(channel),
            )

    def _sweep(self, now: float) -> None:
        """Forget channels nobody has received from for ``expiry`` seconds (under the lock).

        A channel's consumer may end without a word to the layer (a closed socket). Its
        entry goes once it is idle and empty; if a message waited for it unreceived past
        ``expiry``, the channel is taken as gone and leaves its groups too, as in Channels'
        in-memory layer. A named channel nobody receives gives up its share of the messages.
        """
        if now - self._swept_at < min(self.expiry, SWEEP_INTERVAL):
            return
        self._swept_at = now
        for name, local in list(self._channels.items()):
            if local.waiters or now - local.active_at < self.expiry:
                continue
            if "!" not in name:
                del self._channels[name]
                if entry := self._subscriptions.pop(self._named_subject(name), None):
                    self._release(entry)
                continue
            if local.drop_expired(now - self.expiry):
                self._leave_groups(name)
            if not local.messages:
                del self._channels[name]

    def _leave_groups(self, channel: str) -> None:
        for group, members in list(self._groups.items()):
            members.discard(channel)
            if not members:
                del self._groups[group]
                if entry := self._subscriptions.pop(self._group_subject(group), None):
                    self._release(entry)

    async def _on_message(self, connection: Transport, message: Msg) -> None:
        """Handle what arrives on one of the layer's subjects."""
        try:
            payload = unpack(message.data)
            operation = payload["op"]
        except Exception:
            logger.warning(
                "Dropped a message on %s that the channel layer cannot read.", message.subject
            )
            return
        if operation == "send":
            self._deliver(payload["channel"], payload["sent"], payload["message"], raise_full=False)
        elif operation == "group_send":
            with self._lock:
                members = tuple(self._groups.get(payload["group"], ()))
            for member in members:
                if "!" in member:
                    self._deliver(member, payload["sent"], payload["message"], raise_full=False)
                else:
                    # A named channel in a group: one of its receivers, in any process.
                    await connection.publish(
                        self._named_subject(member),
                        pack({**payload, "op": "send", "channel": member}),
                    )
        elif operation in ("group_add", "group_discard"):
            # Another process asks for a membership of one of this process's channels.
            loop = asyncio.get_running_loop()
            if operation == "group_add":
                await self._group_add_here(loop, payload["group"], payload["channel"])
            else:
                self._group_discard_here(payload["group"], payload["channel"])
            if message.reply:
                # Through the transport: a message of another backend has no respond().
                await connection.publish(message.reply, b"")

    # The channel layer API

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        """Send ``message`` to ``channel``, in this process or any other."""
        assert isinstance(message, dict), "message is not a dict"
        self.require_valid_channel_name(channel)
        loop = await self._enter()
        data = pack(message)
        sent = time.time()
        if "!" in channel:
            if self._owns(channel):
                self._deliver(channel, sent, data, raise_full=True)
                return
            token = owner_token(channel)
            if not token:
                logger.debug("Dropped a message for %s: no process can own it.", channel)
                return
            subject = self._process_subject(token)
        else:
            subject = self._named_subject(channel)
        payload = pack({"op": "send", "channel": channel, "sent": sent, "message": data})
        await self._publish(loop, subject, payload)

    async def receive(self, channel: str) -> dict[str, Any]:
        """Wait for the next message on ``channel`` and return it.

        A process-specific channel must be this process's; receiving on a named channel
        makes this process one of its receivers.
        """
        self.require_valid_channel_name(channel)
        loop = await self._enter()
        if "!" in channel:
            if not self._owns(channel):
                raise ValueError(f"Channel {channel} belongs to another process.")
            subject, queue = self.process_subject, ""
        else:
            subject, queue = self._named_subject(channel), channel
        while True:
            # Again on each pass: flush() may have dropped the subscription meanwhile.
            await self._subscribe(loop, subject, queue)
            with self._lock:
                now = time.time()
                local = self._local(channel, now)
                local.drop_expired(now - self.expiry)
                local.active_at = now
                if local.messages:
                    return local.messages.popleft()[1]
                waiter: asyncio.Future[None] = loop.create_future()
                local.waiters.append(waiter)
                self._sweep(now)
            try:
                await waiter
            finally:
                with self._lock:
                    if waiter in local.waiters:
                        local.waiters.remove(waiter)
                    local.active_at = time.time()

    async def new_channel(self, prefix: str = "specific") -> str:
        """Return a new process-specific channel name, "<prefix>.<process token>!<random>"."""
        loop = await self._enter()
        await self._subscribe(loop, self.process_subject)
        channel = f"{prefix}.{self.process_token}!{uuid.uuid4().hex}"
        self.require_valid_channel_name(channel)
        with self._lock:
            now = time.time()
            self._local(channel, now)
            self._sweep(now)
        return channel

    async def group_add(self, group: str, channel: str) -> None:
        """Add ``channel`` to ``group``; a ``group_send`` made after this returns reaches it."""
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        loop = await self._enter()
        if "!" in channel and not self._owns(channel):
            await self._forward(loop, "group_add", group, channel)
        else:
            await self._group_add_here(loop, group, channel)

    async def group_discard(self, group: str, channel: str) -> None:
        """Remove ``channel`` from ``group``."""
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        loop = await self._enter()
        if "!" in channel and not self._owns(channel):
            await self._forward(loop, "group_discard", group, channel)
        else:
            self._group_discard_here(group, channel)

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        """Send ``message`` to every member of ``group``, in every process."""
        assert isinstance(message, dict), "message is not a dict"
        self.require_valid_group_name(group)
        loop = await self._enter()
        payload = pack(
            {"op": "group_send", "group": group, "sent": time.time(), "message": pack(message)}
        )
        await self._publish(loop, self._group_subject(group), payload)

    async def flush(self) -> None:
        """Forget this process's channels, waiting messages, groups and subscriptions."""
        await self._enter()
        with self._lock:
            entries = list(self._subscriptions.values())
            self._subscriptions.clear()
            for local in self._channels.values():
                local.wake()  # a waiting receiver starts over on an empty channel
            self._channels.clear()
            self._groups.clear()
        released = [asyncio.wrap_future(self._release(entry)) for entry in entries]
        if released:
            await asyncio.wait(released, timeout=UNSUBSCRIBE_TIMEOUT)

    # Groups, in the process that owns the channel

    async def _group_add_here(
        self, loop: asyncio.AbstractEventLoop, group: str, channel: str
    ) -> None:
        with self._lock:
            self._groups.setdefault(group, set()).add(channel)
        try:
            await self._subscribe(loop, self._group_subject(group))
        except BaseException:
            self._group_discard_here(group, channel)
            raise

    def _group_discard_here(self, group: str, channel: str) -> None:
        with self._lock:
            members = self._groups.get(group)
            if members is None:
                return
            members.discard(channel)
            if members:
                return
            del self._groups[group]
            entry = self._subscriptions.pop(self._group_subject(group), None)
        if entry is not None:
            self._release(entry)

    async def _forward(
        self, loop: asyncio.AbstractEventLoop, operation: str, group: str, channel: str
    ) -> None:
        """Ask the process that owns ``channel`` to change its membership, and wait for it."""
        token = owner_token(channel)
        if not token:
            return
        payload = pack({"op": operation, "group": group, "channel": channel})
        try:
            await run_on(
                self._nats_loop(loop), self._request_here(self._process_subject(token), payload)
            )
        except NoResponders:
            # The channel's process has gone, and its channels with it.
            logger.info("%s(%s, %s): no process owns that channel.", operation, group, channel)

    async def _request_here(self, subject: str, payload: bytes) -> None:
        connection = await self._connection(subscribing=False)
        await connection.request(subject, payload, timeout=FORWARD_TIMEOUT)


async def _unsubscribe(subscription: Subscription) -> None:
    try:
        await subscription.unsubscribe()
    except Exception as error:  # a closed or reconnecting connection: nothing left to undo
        logger.debug("Unsubscribing from %s: %s", subscription.subject, error)
