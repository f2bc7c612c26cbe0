"""The streams of a RabbitMQ transport: their declarations, kept on the broker itself.

RabbitMQ has no place to keep a stream's declaration that a client can read (queue and exchange
arguments cannot be read back without the management plugin), so every stream's declaration,
incarnation and consumers sit in one JSON message in a durable queue of its own
(``<exchange>.streams``, at most one message). Reading it is ``basic.get`` then a requeue;
changing it is ``basic.get``, publishing the new version with a confirm, then acknowledging the
old one: while a client holds the message nobody else can take it, so a change is atomic, and a
client that dies holding it hands it back. A client that died between publishing a version and
acknowledging the one before hands back the older: the queue keeps one message (``x-max-length``
1, ``drop-head``), and versions are numbered, so that a reader that ever finds both keeps the
newer (``tests/test_amqp.py`` kills such a writer).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import aio_pika
import aiormq.exceptions

from cliffracer_core.transports.base import StreamError

if TYPE_CHECKING:
    from cliffracer_core.transports.amqp.transport import AmqpTransport

# How long a client waits for the registry another client holds, and between attempts.
REGISTRY_WAIT = 10.0
REGISTRY_PAUSE = 0.01


class Registry:
    """The streams' declarations on one connection: read, change, with a cache for publishes."""

    def __init__(self, transport: AmqpTransport) -> None:
        self.transport = transport
        self.queue_name = f"{transport.exchange_name}.streams"
        self.queue: Any = None
        self.channel: Any = None
        self.cached: dict[str, Any] | None = None
        self.lock = asyncio.Lock()

    async def _queue(self) -> Any:
        if self.queue is not None and not self.channel.is_closed:
            return self.queue
        # A channel of its own: an error on another (a publish to a stream deleted meanwhile)
        # closes that channel, and would hand back the registry held on it mid-change.
        self.channel = channel = await self.transport.new_channel(self.channel)
        arguments = {"x-max-length": 1, "x-overflow": "drop-head"}
        existed = True
        try:
            async with self.transport.probe() as probing:
                await probing.declare_queue(self.queue_name, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            existed = False
        self.queue = await channel.declare_queue(self.queue_name, durable=True, arguments=arguments)
        if not existed:
            # The first client to use the registry writes it; two at once write the same.
            await self._write({"version": 0, "streams": {}})
        return self.queue

    async def _write(self, registry: dict[str, Any]) -> None:
        message = aio_pika.Message(
            json.dumps(registry, sort_keys=True).encode(),
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            content_type="application/json",
        )
        await self.channel.default_exchange.publish(message, routing_key=self.queue_name)

    async def _take(self) -> tuple[Any, dict[str, Any]]:
        """Take the registry's message (nobody else can until it is given back); of two
        versions left by a client that died mid-change, the newer, the older acknowledged."""
        queue = await self._queue()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + REGISTRY_WAIT
        while True:
            incoming = await queue.get(no_ack=False, fail=False)
            if incoming is not None:
                newest, registry = incoming, json.loads(incoming.body)
                while (other := await queue.get(no_ack=False, fail=False)) is not None:
                    version = json.loads(other.body)
                    if version.get("version", 0) > registry.get("version", 0):
                        await newest.ack()
                        newest, registry = other, version
                    else:
                        await other.ack()
                return newest, registry
            if loop.time() > deadline:
                raise StreamError(
                    f"The stream registry of RabbitMQ ({self.queue_name}) was held by another "
                    f"client for over {REGISTRY_WAIT:g}s, or is missing."
                )
            await asyncio.sleep(REGISTRY_PAUSE)

    async def read(self) -> dict[str, Any]:
        """Every stream: ``{name: {"config", "incarnation", "consumers": {name: filter}}}``."""
        async with self.lock:
            incoming, registry = await self._take()
            await incoming.reject(requeue=True)
        self.cached = registry["streams"]
        return self.cached

    async def streams(self, *, fresh: bool = False) -> dict[str, Any]:
        """The streams as last read (read now when ``fresh`` or never read)."""
        if fresh or self.cached is None:
            return await self.read()
        return self.cached

    @contextlib.asynccontextmanager
    async def change(self) -> AsyncIterator[dict[str, Any]]:
        """Hold the registry; what the block leaves in the dict it yields is written back."""
        async with self.lock:
            incoming, registry = await self._take()
            try:
                yield registry["streams"]
            except BaseException:
                with contextlib.suppress(Exception):
                    await incoming.reject(requeue=True)
                raise
            registry["version"] = registry.get("version", 0) + 1
            await self._write(registry)
            await incoming.ack()
            self.cached = registry["streams"]
