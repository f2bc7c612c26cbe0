#!/usr/bin/env python
"""Events over SNS/SQS: Cliffracer's ``sqs://`` transport beside raw aiobotocore, on moto.

Run from the repository root::

    .venv/bin/python benchmarks/sqs_events.py [--seconds 4] [--warmup 1]

It starts its own ``moto_server`` on a free port (``cliffracer_core/testing/moto.py``). Both
rows publish a ~90-byte event to one SNS topic with a ``subject`` message attribute; a queue
subscribed to it with a filter policy on that attribute and raw delivery is long-polled (ten a
receive, deleted in one batch) by a subscriber in the same process, on a connection of its own:

* **A raw aiobotocore** (the baseline): ``sns.publish`` and ``sqs.receive_message`` by hand;
* **B Cliffracer**: ``transport.publish(subject, body)`` and a ``transport.subscribe(pattern)``
  callback (the queue, filter policy and long polling of ``transports/sqs``);
* **C Cliffracer durable**: ``transport.publish_durable`` to a stream and a durable consumer
  (``transport.consume``, ``max_in_flight`` 50) that acknowledges each delivery: at least once,
  a ``DeleteMessage`` per event and the stream registry read by the publisher every 5 s.

At concurrency 1 each publish waits for its event to arrive (latency, publish to callback); at
concurrency 50, fifty publishers run for the window (throughput of events received). It prints
events/s, p50 and p99 latency and B/A ratios. moto is not AWS: read the ratios, not the
figures. It is a measurement, not a test: it exits 0 whatever the figures.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import harness  # noqa: E402
from benchmarks.brokers import sqs_client  # noqa: E402

HIGH_CONCURRENCY = 50
BODY = {"id": 1, "name": "widget-42", "values": [1.5, 2.25, 0.5]}

# A row: start(on_event) -> (publish(subject, body), close).
Publish = Callable[[str, bytes], Awaitable[None]]


async def raw_row(url: str, name: str, on_event: Callable[[bytes], None]) -> tuple[Publish, Any]:
    sns_context, sqs_context = sqs_client(url, "sns"), sqs_client(url)
    sns, sqs = await sns_context.__aenter__(), await sqs_context.__aenter__()
    topic = (await sns.create_topic(Name=f"{name}-raw"))["TopicArn"]
    queue = (await sqs.create_queue(QueueName=f"{name}-raw"))["QueueUrl"]
    arn = (await sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"]))[
        "Attributes"
    ]["QueueArn"]
    policy = json.dumps({"subject": [{"prefix": "bench."}]})
    await sns.subscribe(
        TopicArn=topic,
        Protocol="sqs",
        Endpoint=arn,
        Attributes={"RawMessageDelivery": "true", "FilterPolicy": policy},
    )

    async def receive() -> None:
        while True:
            answer = await sqs.receive_message(
                QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=10
            )
            messages = answer.get("Messages", [])
            if not messages:
                continue
            entries = [
                {"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(messages)
            ]
            asyncio.get_running_loop().create_task(
                sqs.delete_message_batch(QueueUrl=queue, Entries=entries)
            )
            for message in messages:
                on_event(message["Body"].encode())

    receiver = asyncio.create_task(receive())

    async def publish(subject: str, body: bytes) -> None:
        await sns.publish(
            TopicArn=topic,
            Message=body.decode(),
            MessageAttributes={"subject": {"DataType": "String", "StringValue": subject}},
        )

    async def close() -> None:
        receiver.cancel()
        await asyncio.gather(receiver, return_exceptions=True)
        await sqs.delete_queue(QueueUrl=queue)
        await sns.delete_topic(TopicArn=topic)
        await sqs_context.__aexit__(None, None, None)
        await sns_context.__aexit__(None, None, None)

    return publish, close


async def cliffracer_row(
    url: str, name: str, on_event: Callable[[bytes], None]
) -> tuple[Publish, Any]:
    from cliffracer_core.transports import connect

    location = f"{url}&prefix={name}c"
    subscriber, publisher = await connect(location), await connect(location)

    async def received(message: Any) -> None:
        on_event(message.data)

    await subscriber.subscribe("bench.>", received, queue="bench")

    async def publish(subject: str, body: bytes) -> None:
        await publisher.publish(subject, body)

    async def close() -> None:
        await subscriber.close()
        await publisher.close()

    return publish, close


async def durable_row(
    url: str, name: str, on_event: Callable[[bytes], None]
) -> tuple[Publish, Any]:
    from cliffracer_core.core.streams import STREAM_DEFAULTS, Stream
    from cliffracer_core.transports import connect

    location = f"{url}&prefix={name}d"
    subscriber, publisher = await connect(location), await connect(location)
    await publisher.ensure_stream(Stream("BENCH", {**STREAM_DEFAULTS, "subjects": ["bench.>"]}))

    settling: set[asyncio.Task[None]] = set()

    async def received(delivery: Any) -> None:
        # Settled in a task of its own, as contrib.durable's handlers are.
        task = asyncio.get_running_loop().create_task(delivery.ack())
        settling.add(task)
        task.add_done_callback(settling.discard)
        on_event(delivery.data)

    consumer = await subscriber.consume(
        "BENCH", "bench", received, filter_subject="bench.>", ack_wait=30, max_in_flight=50
    )

    async def publish(subject: str, body: bytes) -> None:
        await publisher.publish_durable(subject, body, msg_id=uuid.uuid4().hex)

    async def close() -> None:
        await consumer.close()
        await subscriber.close()
        await publisher.close()

    return publish, close


async def measure(
    row: Callable[..., Any], url: str, concurrency: int, seconds: float, warmup: float
) -> dict[str, float]:
    waiting: dict[str, asyncio.Future[None]] = {}
    latencies: list[float] = []
    received = 0

    def on_event(body: bytes) -> None:
        nonlocal received
        event = json.loads(body)
        future = waiting.pop(event["token"], None)
        if future is not None and not future.done():
            future.set_result(None)
        received += 1

    publish, close = await row(url, f"bench{uuid.uuid4().hex[:8]}", on_event)
    start = time.perf_counter() + warmup
    end = start + seconds
    counted = 0

    async def publisher() -> None:
        nonlocal counted
        while (began := time.perf_counter()) < end:
            token = uuid.uuid4().hex
            future = asyncio.get_running_loop().create_future()
            waiting[token] = future
            await publish("bench.created", json.dumps({**BODY, "token": token}).encode())
            try:
                await asyncio.wait_for(future, 30)
            except TimeoutError:
                waiting.pop(token, None)
                continue
            done = time.perf_counter()
            if began >= start and done <= end:
                latencies.append(done - began)
                counted += 1

    await asyncio.gather(*(publisher() for _ in range(concurrency)))
    await close()
    latencies.sort()
    return {
        "rate": counted / seconds,
        "p50": statistics.median(latencies) * 1000 if latencies else float("nan"),
        "p99": latencies[int(len(latencies) * 0.99) - 1] * 1000 if latencies else float("nan"),
    }


async def run(url: str, seconds: float, warmup: float) -> None:
    rows = {
        "A raw aiobotocore": raw_row,
        "B Cliffracer": cliffracer_row,
        "C Cliffracer durable": durable_row,
    }
    figures: dict[tuple[str, int], dict[str, float]] = {}
    print(f"{'run':<22}{'c':>4}{'events/s':>11}{'p50 ms':>10}{'p99 ms':>10}")
    for concurrency in (1, HIGH_CONCURRENCY):
        for label, row in rows.items():
            result = await measure(row, url, concurrency, seconds, warmup)
            figures[(label, concurrency)] = result
            print(
                f"{label:<22}{concurrency:>4}{result['rate']:>11.1f}"
                f"{result['p50']:>10.1f}{result['p99']:>10.1f}"
            )
    raw, ours = "A raw aiobotocore", "B Cliffracer"
    print()
    print(
        harness.ratio_line(
            f"Cliffracer/raw events/s at c={HIGH_CONCURRENCY}:",
            figures[(ours, HIGH_CONCURRENCY)]["rate"] / figures[(raw, HIGH_CONCURRENCY)]["rate"],
            None,
        )
    )
    print(
        f"Cliffracer/raw p50 latency at c=1: "
        f"{figures[(ours, 1)]['p50'] / figures[(raw, 1)]['p50']:.3f} (no bar)"
    )
    durable, high = "C Cliffracer durable", HIGH_CONCURRENCY
    print(
        f"durable/raw events/s at c={high}: "
        f"{figures[(durable, high)]['rate'] / figures[(raw, high)]['rate']:.3f} (no bar); "
        f"durable/raw p50 at c=1: {figures[(durable, 1)]['p50'] / figures[(raw, 1)]['p50']:.3f}"
    )


def main() -> int:
    parser = harness.argument_parser(__doc__)
    parser.add_argument("--seconds", type=float, default=4.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per run")
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings.settings")
    import django

    django.setup()
    import logging

    logging.getLogger("cliffracer.connection").setLevel(logging.WARNING)  # no "closed" lines
    from cliffracer_core.testing.moto import CREDENTIALS, REGION, running_moto_server

    os.environ.update(CREDENTIALS)  # moto's test credentials: no real ones go to an emulator
    with (
        tempfile.TemporaryDirectory(prefix="cliffracer-moto-") as directory,
        running_moto_server(Path(directory) / "moto.log") as endpoint,
    ):
        print(f"moto's server at {endpoint}; {args.seconds:g} s per run after {args.warmup:g} s")
        url = f"sqs://?region={REGION}&endpoint_url={endpoint}"
        asyncio.run(run(url, args.seconds, args.warmup))
    return 0


if __name__ == "__main__":
    sys.exit(main())
