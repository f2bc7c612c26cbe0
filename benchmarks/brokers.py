"""The raw baselines of ``rpc_overhead.py --transport amqp|redis``: request/reply written
straight against each broker's client library, in the pattern Cliffracer's backend uses there.

- **amqp** (aio-pika): the responder consumes a queue bound to a topic exchange; the caller
  publishes with publisher confirms and ``mandatory`` (what detects no responders) to that
  exchange, with ``reply_to`` the direct reply-to pseudo-queue and a correlation id, many
  requests in flight on one channel; the reply goes to the default exchange, not mandatory.
- **redis** (redis-py's asyncio client, hiredis): the caller ``RPUSH``es an envelope (its inbox
  channel, a request id, the body) to the service's list; the responder's workers pop up to 64
  at a time (``BLMPOP``) and ``PUBLISH`` each reply to the caller's channel, where one
  subscription per caller hands replies to their futures.

These are the measured patterns of ``TRANSPORTS.md`` (its raw table), so the figures can be set
beside it. Both use keys and names of their own run (``name``), and delete them at the end.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

# Requests a Redis responder worker takes at once, and how many workers pop in parallel.
REDIS_BATCH = 64
REDIS_WORKERS = 4


def echo(body: bytes) -> bytes:
    request = json.loads(body)
    reply = {"id": request["id"], "name": request["name"], "values": request["values"]}
    return json.dumps(reply).encode()


# RabbitMQ


async def serve_amqp(url: str, name: str, ready: Callable[[], None], stop: Awaitable[Any]) -> None:
    import aio_pika

    connection = await aio_pika.connect(url)
    channel = await connection.channel(publisher_confirms=False)
    await channel.set_qos(prefetch_count=256)
    exchange = await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC, auto_delete=True)
    queue = await channel.declare_queue(f"{name}.echo", auto_delete=True)
    await queue.bind(exchange, routing_key=f"{name}.echo")
    replies = channel.default_exchange

    async def on_message(message: Any) -> None:
        await replies.publish(
            aio_pika.Message(echo(message.body), correlation_id=message.correlation_id),
            routing_key=message.reply_to,
        )

    await queue.consume(on_message, no_ack=True)
    ready()
    await stop
    await connection.close()


async def amqp_caller(url: str, name: str) -> tuple[Callable[[bytes], Awaitable[bytes]], Any]:
    """A ``call(body) -> reply`` over direct reply-to, and a coroutine function that closes."""
    import aio_pika

    connection = await aio_pika.connect(url)
    channel = await connection.channel(publisher_confirms=True)
    exchange = await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC, auto_delete=True)
    waiting: dict[str, asyncio.Future[bytes]] = {}

    async def on_reply(message: Any) -> None:
        future = waiting.pop(message.correlation_id, None)
        if future is not None and not future.done():
            future.set_result(message.body)

    replies = await channel.get_queue("amq.rabbitmq.reply-to", ensure=False)
    await replies.consume(on_reply, no_ack=True)

    async def call(body: bytes) -> bytes:
        identifier = uuid.uuid4().hex
        future = asyncio.get_running_loop().create_future()
        waiting[identifier] = future
        await exchange.publish(
            aio_pika.Message(body, correlation_id=identifier, reply_to="amq.rabbitmq.reply-to"),
            routing_key=f"{name}.echo",
            mandatory=True,
        )
        return await future

    return call, connection.close


# Redis


async def serve_redis(url: str, name: str, ready: Callable[[], None], stop: Awaitable[Any]) -> None:
    import redis.asyncio as redis

    clients = [redis.from_url(url) for _ in range(REDIS_WORKERS)]
    publisher = redis.from_url(url)
    key = f"{name}:echo"

    async def work(client: Any) -> None:
        while True:
            popped = await client.blmpop(1, 1, key, direction="LEFT", count=REDIS_BATCH)
            if not popped:
                continue
            pipeline = publisher.pipeline(transaction=False)
            for item in popped[1]:
                inbox, identifier, body = item.split(b"\n", 2)
                pipeline.publish(inbox, identifier + b"\n" + echo(body))
            await pipeline.execute()

    workers = [asyncio.create_task(work(client)) for client in clients]
    ready()
    await stop
    for worker in workers:
        worker.cancel()
    await asyncio.gather(*workers, return_exceptions=True)
    await publisher.delete(key)
    for client in [*clients, publisher]:
        await client.aclose()


async def redis_caller(url: str, name: str) -> tuple[Callable[[bytes], Awaitable[bytes]], Any]:
    import redis.asyncio as redis

    client = redis.from_url(url)
    listener = redis.from_url(url)
    inbox = f"{name}:inbox:{uuid.uuid4().hex}"
    waiting: dict[bytes, asyncio.Future[bytes]] = {}
    pubsub = listener.pubsub()
    await pubsub.subscribe(inbox)

    async def read_replies() -> None:
        async for message in pubsub.listen():
            if message["type"] != "message":
                continue
            identifier, body = message["data"].split(b"\n", 1)
            future = waiting.pop(identifier, None)
            if future is not None and not future.done():
                future.set_result(body)

    reader = asyncio.create_task(read_replies())
    key = f"{name}:echo"
    prefix = inbox.encode() + b"\n"

    async def call(body: bytes) -> bytes:
        identifier = uuid.uuid4().hex.encode()
        future = asyncio.get_running_loop().create_future()
        waiting[identifier] = future
        await client.rpush(key, prefix + identifier + b"\n" + body)
        return await future

    async def close() -> None:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await pubsub.aclose()
        await listener.aclose()
        await client.aclose()

    return call, close


SERVERS = {"amqp": serve_amqp, "redis": serve_redis}
CALLERS = {"amqp": amqp_caller, "redis": redis_caller}
