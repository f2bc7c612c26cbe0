"""One subscription per subscribed subject pattern, shared by every socket of the process.

A thousand browsers watching ``orders.*`` cost the web process one subscription, and each
event is turned into a frame once; the hub hands that frame to every socket that subscribed.
The last socket to leave a pattern drops its subscription.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Protocol

from cliffracer_core.contrib.channels import metrics
from cliffracer_core.contrib.channels.protocol import event_frame
from cliffracer_core.core import tracing
from cliffracer_core.core.headers import CORRELATION_ID
from cliffracer_core.transports import persistent_transport
from cliffracer_core.transports.base import Message as Msg
from cliffracer_core.transports.base import Subscription

logger = logging.getLogger("cliffracer.websocket")

# How long to wait for the server to confirm a new subscription before answering the socket.
SUBSCRIBE_TIMEOUT = 5.0


class Listener(Protocol):
    """What the hub needs of a socket: somewhere to put an event frame, without waiting."""

    def deliver(self, frame: str) -> None: ...


class Pattern:
    """The sockets listening to one subject pattern, and its NATS subscription."""

    def __init__(self, subject: str) -> None:
        self.subject = subject
        self.listeners: set[Listener] = set()
        self.subscription: Subscription | None = None

    async def on_message(self, message: Msg) -> None:
        if tracing.tracer is None:
            self.hand_out(message)
            return
        with tracing.delivery_span(
            message.subject, self.subject, message.headers, len(self.listeners)
        ):
            self.hand_out(message)

    def hand_out(self, message: Msg) -> None:
        """Turn the event into a frame once and give it to every listening socket."""
        headers = message.headers
        frame = event_frame(
            message.subject, message.data, headers.get(CORRELATION_ID) if headers else None
        )
        listeners = tuple(self.listeners)
        for listener in listeners:
            try:
                listener.deliver(frame)
            except Exception:  # one broken socket must not stop the others' events
                logger.exception("Delivering an event on %s to a socket failed.", message.subject)
        metrics.events_out.inc(len(listeners))


class Hub:
    """The process's (the event loop's) shared subscriptions."""

    def __init__(self) -> None:
        self.patterns: dict[str, Pattern] = {}
        self.lock = asyncio.Lock()

    async def join(self, subject: str, listener: Listener) -> None:
        """Deliver events on ``subject`` to ``listener``; raises if NATS cannot confirm it."""
        async with self.lock:
            pattern = self.patterns.get(subject)
            if pattern is None:
                connection = await persistent_transport()
                pattern = Pattern(subject)
                pattern.subscription = await connection.subscribe(subject, pattern.on_message)
                try:
                    # Once the server has the subscription, an event published after the
                    # socket hears "subscribed" reaches it.
                    await connection.flush(timeout=SUBSCRIBE_TIMEOUT)
                except Exception:
                    await _unsubscribe(pattern)
                    raise
                self.patterns[subject] = pattern
                metrics.subscriptions.inc()
            pattern.listeners.add(listener)

    async def leave(self, subject: str, listener: Listener) -> None:
        async with self.lock:
            pattern = self.patterns.get(subject)
            if pattern is None:
                return
            pattern.listeners.discard(listener)
            if not pattern.listeners:
                del self.patterns[subject]
                metrics.subscriptions.dec()
                await _unsubscribe(pattern)

    def subscription_count(self) -> int:
        return len(self.patterns)


async def _unsubscribe(pattern: Pattern) -> None:
    if pattern.subscription is None:
        return
    try:
        await pattern.subscription.unsubscribe()
    except Exception as error:  # a closed or reconnecting connection: nothing left to undo
        logger.info("Unsubscribing from %s: %s", pattern.subject, error)


_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Hub] = weakref.WeakKeyDictionary()


def get_hub() -> Hub:
    """The hub of the running event loop (daphne runs one loop per process)."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None:
        hub = _hubs[loop] = Hub()
    return hub
