"""Publishing in batches: what a connection sends goes out in order, many commands a round trip.

A Redis command waits for its reply, and a responder that awaited each reply's ``PUBLISH``
could answer no faster than one round trip per request (about 2,700 requests a second at
concurrency 50 where NATS, whose publish only fills a buffer, does 22,900). So a transport
queues its publishes and requests here, and one task sends everything queued so far as one
pipeline: a publish returns at once (as nats-py's does), a request waits for its count of
receivers, and both keep their order on the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from redis.exceptions import NoScriptError, RedisError

from cliffracer_core.core.log import RateLimitedLog

if TYPE_CHECKING:
    import redis.asyncio as aioredis

logger = logging.getLogger("cliffracer.connection")

# Commands queued beyond this make publishers wait for the queue to go out.
HIGH_WATER = 10_000


@dataclass(slots=True)
class Command:
    arguments: tuple[Any, ...]
    subject: str
    # Set with the reply (or the error) when someone waits for it.
    future: asyncio.Future[Any] | None = None
    # Called with the reply when nobody waits for it.
    then: Callable[[Any], None] | None = None


class Writer:
    """Send queued commands in order, as pipelines, from one task."""

    def __init__(self, redis: aioredis.Redis, scripts: dict[str, str]) -> None:
        self.redis = redis
        # The Lua scripts by SHA1, loaded again when Redis has forgotten them (a restart).
        self.scripts = scripts
        self.queue: list[Command] = []
        self.pending = asyncio.Event()
        self.idle = asyncio.Event()
        self.idle.set()
        self.failures = RateLimitedLog(logger)
        self.task = asyncio.get_running_loop().create_task(self.run())

    async def send(self, command: Command) -> None:
        if len(self.queue) >= HIGH_WATER:
            await self.idle.wait()
        self.queue.append(command)
        self.idle.clear()
        self.pending.set()

    def send_nowait(self, command: Command) -> None:
        self.queue.append(command)
        self.idle.clear()
        self.pending.set()

    async def drained(self) -> None:
        """Return once everything queued so far has gone out."""
        await self.idle.wait()

    async def run(self) -> None:
        while True:
            await self.pending.wait()
            self.pending.clear()
            while self.queue:
                batch, self.queue = self.queue, []
                await self.execute(batch)
            self.idle.set()

    async def execute(self, batch: list[Command]) -> None:
        try:
            replies = await self.pipeline(batch)
            if any(isinstance(reply, NoScriptError) for reply in replies):
                for script in self.scripts.values():
                    await self.redis.script_load(script)
                again = [c for c, r in zip(batch, replies, strict=True) if _no_script(r)]
                retried = iter(await self.pipeline(again))
                replies = [next(retried) if _no_script(r) else r for r in replies]
        except (RedisError, OSError, TimeoutError) as error:
            replies = [error] * len(batch)
        for command, reply in zip(batch, replies, strict=True):
            if command.future is not None:
                if not command.future.done():
                    if isinstance(reply, BaseException):
                        command.future.set_exception(reply)
                    else:
                        command.future.set_result(reply)
            elif isinstance(reply, BaseException):
                self.failures.warning(
                    "lost",
                    "A message to %s was not sent (%s: %s).",
                    command.subject[:200],
                    type(reply).__name__,
                    reply,
                )
            elif command.then is not None:
                command.then(reply)

    async def pipeline(self, batch: list[Command]) -> list[Any]:
        async with self.redis.pipeline(transaction=False) as pipeline:
            for command in batch:
                pipeline.execute_command(*command.arguments)
            return await pipeline.execute(raise_on_error=False)

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        for command in self.queue:
            if command.future is not None and not command.future.done():
                command.future.cancel()
        self.queue.clear()


def _no_script(reply: Any) -> bool:
    return isinstance(reply, NoScriptError)
