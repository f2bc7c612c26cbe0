"""The raw baselines of ``rpc_overhead.py --transport amqp|redis|sqs``: request/reply written
straight against each broker's client library, in the pattern Cliffracer's backend uses there.

- **amqp** (aio-pika): the responder consumes a queue bound to a topic exchange; the caller
  publishes with publisher confirms and ``mandatory`` (what detects no responders) to that
  exchange, with ``reply_to`` the direct reply-to pseudo-queue and a correlation id, many
  requests in flight on one channel; the reply goes to the default exchange, not mandatory.
- **redis** (redis-py's asyncio client, hiredis): the caller ``RPUSH``es an envelope (its inbox
  channel, a request id, the body) to the service's list; the responder's workers pop up to 64
  at a time (``BLMPOP``) and ``PUBLISH`` each reply to the caller's channel, where one
  subscription per caller hands replies to their futures.
- **sqs** (aiobotocore, on moto's server): the responder long-polls the service's queue, ten
  messages a receive, deletes them in one batch and sends each reply to the caller's reply
  queue named in the JSON body; the caller sends to the service's queue (its URL looked up
  once) and one task long-polls its reply queue, matching replies by id.

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


# SNS/SQS


def sqs_client(url: str, service: str = "sqs") -> Any:
    """An aiobotocore client of ``service`` (an async context manager) for an ``sqs://`` URL's
    region and endpoint."""
    from urllib.parse import parse_qsl, urlsplit

    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    options = dict(parse_qsl(urlsplit(url).query))
    return get_session().create_client(
        service,
        region_name=options.get("region"),
        endpoint_url=options.get("endpoint_url"),
        config=AioConfig(max_pool_connections=64),
    )


async def serve_sqs(url: str, name: str, ready: Callable[[], None], stop: Awaitable[Any]) -> None:
    async with sqs_client(url) as sqs:
        queue = (await sqs.create_queue(QueueName=f"{name}-echo"))["QueueUrl"]

        async def work() -> None:
            while True:
                answer = await sqs.receive_message(
                    QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=10
                )
                messages = answer.get("Messages", [])
                if not messages:
                    continue
                entries = [
                    {"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]}
                    for n, m in enumerate(messages)
                ]
                sends = [sqs.delete_message_batch(QueueUrl=queue, Entries=entries)]
                for message in messages:
                    request = json.loads(message["Body"])
                    reply = request["i"] + "\n" + echo(request["b"].encode()).decode()
                    sends.append(sqs.send_message(QueueUrl=request["r"], MessageBody=reply))
                await asyncio.gather(*sends)

        worker = asyncio.create_task(work())
        ready()
        await stop
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
        await sqs.delete_queue(QueueUrl=queue)


async def sqs_caller(url: str, name: str) -> tuple[Callable[[bytes], Awaitable[bytes]], Any]:
    context = sqs_client(url)
    sqs = await context.__aenter__()
    service = (await sqs.get_queue_url(QueueName=f"{name}-echo"))["QueueUrl"]
    replies = (await sqs.create_queue(QueueName=f"{name}-r-{uuid.uuid4().hex[:12]}"))["QueueUrl"]
    waiting: dict[str, asyncio.Future[bytes]] = {}

    async def read_replies() -> None:
        while True:
            answer = await sqs.receive_message(
                QueueUrl=replies, MaxNumberOfMessages=10, WaitTimeSeconds=10
            )
            messages = answer.get("Messages", [])
            if not messages:
                continue
            entries = [
                {"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(messages)
            ]
            asyncio.get_running_loop().create_task(
                sqs.delete_message_batch(QueueUrl=replies, Entries=entries)
            )
            for message in messages:
                identifier, body = message["Body"].split("\n", 1)
                future = waiting.pop(identifier, None)
                if future is not None and not future.done():
                    future.set_result(body.encode())

    reader = asyncio.create_task(read_replies())

    async def call(body: bytes) -> bytes:
        identifier = uuid.uuid4().hex
        future = asyncio.get_running_loop().create_future()
        waiting[identifier] = future
        request = {"r": replies, "i": identifier, "b": body.decode()}
        await sqs.send_message(QueueUrl=service, MessageBody=json.dumps(request))
        return await future

    async def close() -> None:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await sqs.delete_queue(QueueUrl=replies)
        await context.__aexit__(None, None, None)

    return call, close


SERVERS = {"amqp": serve_amqp, "redis": serve_redis, "sqs": serve_sqs}
CALLERS = {"amqp": amqp_caller, "redis": redis_caller, "sqs": sqs_caller}
