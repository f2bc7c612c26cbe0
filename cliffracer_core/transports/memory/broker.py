"""The brokers by location, and how one routes a message to its subscriptions."""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from collections import deque
from typing import TYPE_CHECKING

from cliffracer_core.transports.base import PENDING_BYTES, PENDING_MESSAGES, Callback, Received
from cliffracer_core.transports.memory.loops import call_soon, cancel
from cliffracer_core.transports.memory.streams import Streams
from cliffracer_core.transports.subjects import subject_matches

if TYPE_CHECKING:
    from cliffracer_core.transports.memory.transport import MemoryTransport

logger = logging.getLogger("cliffracer.connection")

_brokers: dict[str, Broker] = {}
_brokers_lock = threading.Lock()


def broker_for(location: str) -> Broker:
    """The broker every transport to ``location`` shares."""
    name = location.strip().partition("://")[2].rstrip("/")
    with _brokers_lock:
        return _brokers.setdefault(name, Broker())


def reset_broker(location: str = "memory://") -> None:
    """Forget every subscription, stream and message of ``location``'s broker (for tests);
    transports connected to it stay connected, to an empty broker."""
    broker_for(location).reset()


def drop_broker(location: str) -> None:
    """Empty ``location``'s broker and forget it (a test's broker, once the test is over)."""
    name = location.strip().partition("://")[2].rstrip("/")
    with _brokers_lock:
        broker = _brokers.pop(name, None)
    if broker is not None:
        broker.reset()


class Broker:
    """The subscriptions and streams of one location."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.subscriptions: list[MemorySubscription] = []
        self.streams = Streams()

    def reset(self) -> None:
        with self.lock:
            subscriptions, self.subscriptions = self.subscriptions, []
        for subscription in subscriptions:
            subscription.closed = True
            cancel(subscription.task)
        self.streams.reset()

    def route(self, message: Received) -> int:
        """Hand ``message`` to every matching subscription without a queue group and to one
        member of each matching group; return how many got it. As nats-server does, tell the
        reply subject of a message that nobody got that there are no responders (503)."""
        with self.lock:
            alone = []
            groups: dict[str, list[MemorySubscription]] = {}
            for subscription in self.subscriptions:
                if subject_matches(subscription.subject, message.subject):
                    if subscription.queue:
                        groups.setdefault(subscription.queue, []).append(subscription)
                    else:
                        alone.append(subscription)
            chosen = alone + [random.choice(members) for members in groups.values()]
            for subscription in chosen:
                if not subscription.offer(message):  # its loop is gone
                    subscription.closed = True
                    self.subscriptions.remove(subscription)
        if not chosen and message.reply:
            self.route(
                Received(message.reply, b"", {"Status": "503", "Nats-Subject": message.subject})
            )
        return len(chosen)

    def remove(self, subscription: MemorySubscription) -> None:
        with self.lock:
            subscription.closed = True
            subscription.pending.clear()
            if subscription in self.subscriptions:
                self.subscriptions.remove(subscription)


class MemorySubscription:
    """A subscription: messages wait in its pending queue for its task, on its loop."""

    def __init__(
        self,
        transport: MemoryTransport,
        subject: str,
        callback: Callback,
        *,
        queue: str,
        max_pending: int | None,
        max_pending_bytes: int | None,
    ) -> None:
        self.transport = transport
        self.broker = transport.broker
        self.subject = subject
        self.callback = callback
        self.queue = queue
        # Limits as nats-py's: 0 for none, None for its defaults.
        self.max_pending = PENDING_MESSAGES if max_pending is None else max_pending
        self.max_pending_bytes = PENDING_BYTES if max_pending_bytes is None else max_pending_bytes
        self.pending: deque[Received] = deque()
        self.pending_bytes = 0
        self.signalled = False
        self.closed = False
        self.loop = asyncio.get_running_loop()
        self.ready = asyncio.Event()
        self.task = self.loop.create_task(self.run())
        self.task.add_done_callback(lambda _: self.broker.remove(self))

    def offer(self, message: Received) -> bool:
        """Queue ``message`` for the callback, or drop it when the queue is full; False when
        the subscription's loop is gone (the broker holds its lock)."""
        size = len(message.data)
        if (0 < self.max_pending <= len(self.pending)) or (
            0 < self.max_pending_bytes <= self.pending_bytes + size
        ):
            return call_soon(self.loop, self.transport.dropped, message.subject)
        headers = dict(message.headers) if message.headers else None  # each its own
        self.pending.append(Received(message.subject, message.data, headers, message.reply))
        self.pending_bytes += size
        if not self.signalled:
            self.signalled = True
            return call_soon(self.loop, self.ready.set)
        return True

    def take(self) -> Received | None:
        with self.broker.lock:
            if not self.pending:
                self.signalled = False
                return None
            message = self.pending.popleft()
            self.pending_bytes -= len(message.data)
            return message

    async def run(self) -> None:
        while not self.closed:
            await self.ready.wait()
            self.ready.clear()
            while (message := self.take()) is not None:
                try:
                    await self.callback(message)
                except Exception:  # noqa: BLE001  (as nats-py: reported, and the next comes)
                    logger.exception("A subscription callback on %s failed.", self.subject)

    async def unsubscribe(self) -> None:
        """Stop at once: messages waiting are dropped, a callback running is cancelled (as
        nats-py's ``unsubscribe``)."""
        self.broker.remove(self)
        cancel(self.task)
