"""A subscription of the Redis transport: messages wait in its pending queue for its task."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from cliffracer_core.transports.base import Callback, Pending

if TYPE_CHECKING:
    from cliffracer_core.transports.redis.transport import RedisTransport


class RedisSubscription(Pending):
    """One ``subscribe``: a callback run one message at a time in a task of its own.

    ``key`` is where its messages come from: a channel, a channel pattern, or a queue group
    (``<queue> <pattern>``)."""

    def __init__(
        self,
        transport: RedisTransport,
        subject: str,
        callback: Callback,
        *,
        queue: str,
        key: str,
        kind: str,
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
        self.key = key
        # "channel", "pattern" or "group".
        self.kind = kind
        self.start_task()

    async def unsubscribe(self) -> None:
        """Stop at once: messages waiting are dropped, a callback running is cancelled (as
        nats-py's ``unsubscribe``)."""
        if self.closed:
            return
        self.close()
        await self.transport.forget(self)
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
