"""Durable streams on SNS/SQS: a registry in a FIFO queue, a queue per durable consumer
subscribed to the deployment's topic, an unclaimed and a dead-letter queue per stream.

- The registry: every stream's declaration, incarnation and consumers sit in one JSON message
  of a FIFO queue of their own (``<prefix>-streams.fifo``, one message group). Reading it is a
  receive then making it visible again; changing it is a receive, sending the new version, then
  deleting the old. While a client holds the message, FIFO keeps the group (and so any newer
  version) from everyone else: a change is atomic, and a client that dies holding it hands it
  back after the lease. Versions are numbered, so that a reader that finds two (a writer died
  between sending and deleting) keeps the newer. SQS keeps a message 14 days at most: a read
  of a version older than a day writes it again.
- A durable publish goes to the topic with a ``subject`` and a ``stream`` attribute; each
  durable consumer's queue is subscribed with a filter policy on both (the consumer's filter
  subject, or its tokens before the first wildcard as a prefix, checked exactly when
  delivered), so plain subscribers hear it too and plain publishes never reach a durable
  consumer. When no consumer of the stream takes its subject (as the publisher's copy of the
  registry says, read again after ``REGISTRY_TTL``), it is also sent to the stream's unclaimed
  queue, where the first consumer attached that takes its subject claims it.
- What SQS does not keep (``features.stream_history``): a stream's own numbering and history.
  A sequence is made by the publisher (microseconds and random bits, unique in practice,
  increasing per publisher), ``stored_message`` finds nothing, a consumer made later receives
  only what was unclaimed, the stream's message count is what waits unclaimed. Of the limits,
  ``max_age`` (as queues' retention, 60 s to 14 days) and ``max_msg_size`` hold; SQS has no
  queue length limit, so ``max_msgs``, ``max_bytes`` and ``discard`` are not applied.
  Deduplication by message id is left to the consumer (``contrib.durable``'s idempotency
  records): standard queues deliver at least once.
- An ordered stream (``ordered: true``) goes through FIFO instead: its events are published to
  the deployment's FIFO topic (``<prefix>-events.fifo``) in one message group per stream, with
  the event's ``Nats-Msg-Id`` as the deduplication id, and its unclaimed, dead-letter and
  consumer queues are FIFO queues. SQS then delivers them to each consumer in publish order
  (a message received and not yet acknowledged holds back the ones after it), and drops a
  second publish of the same id within its five minutes. They also go to the standard topic,
  for plain subscribers (which FIFO topics cannot feed), where no durable consumer takes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from cliffracer_core.core.errors import RemoteUnavailable
from cliffracer_core.core.headers import MSG_ID
from cliffracer_core.core.streams import Stream
from cliffracer_core.core.streams import stream_config as jetstream_config
from cliffracer_core.transports.base import ConsumerState, NoStream, StreamError, StreamState
from cliffracer_core.transports.emulated import (
    check_declaration,
    check_size,
    new_incarnation,
    new_sequence,
    stream_of,
)
from cliffracer_core.transports.sqs import names
from cliffracer_core.transports.sqs.envelope import MAX_BODY, pack
from cliffracer_core.transports.subjects import subject_matches

if TYPE_CHECKING:
    from cliffracer_core.transports.sqs.transport import SqsTransport

# How long a client waits for the registry another client holds, and how long it may hold it
# (a client that dies holding it hands it back after that).
REGISTRY_WAIT = 15.0
REGISTRY_LEASE = 30
GROUP = "registry"
# Seconds a publisher trusts its copy of the registry before reading it again.
REGISTRY_TTL = 5.0
# A registry version older than this is written again (SQS keeps a message 14 days at most).
REWRITE_AFTER = 86400.0
# SQS's bounds on a queue's retention, in seconds.
MIN_RETENTION, MAX_RETENTION = 60, 1209600
# The safety net of a consumer's redrive policy, for a message whose consumer's process dies
# on each delivery (``contrib.durable`` records a dead letter well before, at its
# ``max_deliveries``).
DELIVERY_LIMIT = 100


def new_id() -> str:
    return uuid.uuid4().hex[:12]


def stream_config(stream: Stream) -> dict[str, Any]:
    """The declaration as the registry keeps it: JetStream's configuration, and ``ordered``
    when it is set (so that registries written before it compare equal)."""
    config = jetstream_config(stream)
    if stream.options.get("ordered"):
        config["ordered"] = True
    return config


def ordered(found: dict[str, Any]) -> bool:
    return bool(found["config"].get("ordered"))


def fifo_attributes(found: dict[str, Any]) -> dict[str, str]:
    """What makes a queue of ``found``'s a FIFO queue, when the stream is ordered (a
    deduplication id comes with every message: none made from the content)."""
    return {"FifoQueue": "true"} if ordered(found) else {}


def fifo_fields(name: str, msg_id: str, sequence: int) -> dict[str, str]:
    """An ordered stream's event's message group and deduplication id."""
    return {
        "MessageGroupId": names.group_id(name),
        "MessageDeduplicationId": names.deduplication_id(msg_id, sequence),
    }


async def fifo_topic(transport: SqsTransport) -> str:
    """The ARN of the deployment's FIFO topic, made on first use."""
    if not transport.fifo_topic_arn:
        topic = await transport.sns.create_topic(
            Name=names.fifo_topic_name(transport.prefix), Attributes={"FifoTopic": "true"}
        )
        transport.fifo_topic_arn = topic["TopicArn"]
    return transport.fifo_topic_arn


def retention(config: dict[str, Any]) -> str:
    seconds = config["max_age"] or MAX_RETENTION
    return str(int(min(MAX_RETENTION, max(MIN_RETENTION, math.ceil(seconds)))))


class Registry:
    """The streams' declarations on one connection: read, change, with a cache for publishes."""

    def __init__(self, transport: SqsTransport) -> None:
        self.transport = transport
        self.url = ""
        self.cached: dict[str, Any] | None = None
        self.read_at = 0.0
        self.lock = asyncio.Lock()

    async def _url(self) -> str:
        if self.url:
            return self.url
        sqs = self.transport.sqs
        name = names.registry_name(self.transport.prefix)
        try:
            self.url = (await sqs.get_queue_url(QueueName=name))["QueueUrl"]
            return self.url
        except ClientError as error:
            if not self.transport.missing(error):
                raise
        attributes = {
            "FifoQueue": "true",
            "MessageRetentionPeriod": str(MAX_RETENTION),
            "VisibilityTimeout": str(REGISTRY_LEASE),
        }
        self.url = (await sqs.create_queue(QueueName=name, Attributes=attributes))["QueueUrl"]
        # The first client writes it; two at once write two versions 0, and readers keep one.
        await self._write({"version": 0, "streams": {}})
        return self.url

    async def _write(self, registry: dict[str, Any]) -> None:
        await self.transport.sqs.send_message(
            QueueUrl=self.url,
            MessageBody=json.dumps(registry, sort_keys=True),
            MessageGroupId=GROUP,
            MessageDeduplicationId=uuid.uuid4().hex,
        )

    async def _take(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Take the registry's message (nobody else can until it is given back); of two
        versions left by a client that died mid-change, the newer, the older deleted."""
        url = await self._url()
        sqs = self.transport.sqs
        deadline = time.monotonic() + REGISTRY_WAIT
        while True:
            answer = await sqs.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=10,
                WaitTimeSeconds=1,
                VisibilityTimeout=REGISTRY_LEASE,
                MessageSystemAttributeNames=["SentTimestamp"],
            )
            messages = answer.get("Messages", [])
            if messages:
                versions = [(json.loads(m["Body"]), m) for m in messages]
                registry, newest = max(versions, key=lambda pair: pair[0].get("version", 0))
                older = [m for _, m in versions if m is not newest]
                if older:
                    await sqs.delete_message_batch(
                        QueueUrl=url,
                        Entries=[
                            {"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]}
                            for n, m in enumerate(older)
                        ],
                    )
                return newest, registry
            if time.monotonic() > deadline:
                raise StreamError(
                    f"The stream registry of SQS ({names.registry_name(self.transport.prefix)}) "
                    f"was held by another client for over {REGISTRY_WAIT:g}s."
                )

    async def _put_back(self, message: dict[str, Any], registry: dict[str, Any]) -> None:
        sent = int(message.get("Attributes", {}).get("SentTimestamp", "0")) / 1000
        if time.time() - sent > REWRITE_AFTER:
            await self._replace(message, registry)
            return
        await self.transport.sqs.change_message_visibility(
            QueueUrl=self.url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
        )

    async def _replace(self, message: dict[str, Any], registry: dict[str, Any]) -> None:
        registry["version"] = registry.get("version", 0) + 1
        await self._write(registry)
        await self.transport.sqs.delete_message(
            QueueUrl=self.url, ReceiptHandle=message["ReceiptHandle"]
        )

    def _keep(self, registry: dict[str, Any]) -> dict[str, Any]:
        self.cached = registry["streams"]
        self.read_at = time.monotonic()
        return self.cached

    async def read(self) -> dict[str, Any]:
        """Every stream: ``{name: {"config", "incarnation", "id", "consumers": {name:
        {"filter", "id", "subscription"}}}}``."""
        async with self.lock:
            message, registry = await self._take()
            await self._put_back(message, registry)
        return self._keep(registry)

    async def streams(self, *, fresh: bool = False) -> dict[str, Any]:
        """The streams as last read (read again when ``fresh``, never read, or stale)."""
        if fresh or self.cached is None or time.monotonic() - self.read_at > REGISTRY_TTL:
            return await self.read()
        return self.cached

    @contextlib.asynccontextmanager
    async def change(self) -> AsyncIterator[dict[str, Any]]:
        """Hold the registry; what the block leaves in the dict it yields is written back."""
        async with self.lock:
            message, registry = await self._take()
            try:
                yield registry["streams"]
            except BaseException:
                with contextlib.suppress(Exception):
                    await self.transport.sqs.change_message_visibility(
                        QueueUrl=self.url,
                        ReceiptHandle=message["ReceiptHandle"],
                        VisibilityTimeout=0,
                    )
                raise
            await self._replace(message, registry)
            self._keep(registry)


# Queues


def unclaimed_name(transport: SqsTransport, name: str, found: dict[str, Any]) -> str:
    return names.durable_name(transport.prefix, "u", found["id"], name, fifo=ordered(found))


def dead_name(transport: SqsTransport, name: str, found: dict[str, Any]) -> str:
    return names.durable_name(transport.prefix, "x", found["id"], name, fifo=ordered(found))


def consumer_name(
    transport: SqsTransport, stream: str, consumer: str, entry: dict[str, Any]
) -> str:
    fifo = bool(entry.get("fifo"))
    return names.durable_name(transport.prefix, "c", entry["id"], stream, consumer, fifo=fifo)


async def queue_url(transport: SqsTransport, name: str) -> str | None:
    """The URL of the queue ``name`` (None when there is none), remembered."""
    if name not in transport.durable_urls:
        try:
            url = (await transport.sqs.get_queue_url(QueueName=name))["QueueUrl"]
        except ClientError as error:
            if not transport.missing(error):
                raise
            return None
        transport.durable_urls[name] = url
    return transport.durable_urls[name]


async def create_queue(
    transport: SqsTransport, name: str, attributes: dict[str, str], tags: dict[str, str]
) -> str:
    url = (await transport.sqs.create_queue(QueueName=name, Attributes=attributes, tags=tags))[
        "QueueUrl"
    ]
    transport.durable_urls[name] = url
    return url


async def delete_queue(transport: SqsTransport, name: str) -> None:
    url = await queue_url(transport, name)
    transport.durable_urls.pop(name, None)
    if url is not None:
        with contextlib.suppress(ClientError):
            await transport.sqs.delete_queue(QueueUrl=url)


async def count(transport: SqsTransport, name: str) -> tuple[int, int]:
    """Messages visible and in flight in the queue ``name`` ((0, 0) when it is missing)."""
    url = await queue_url(transport, name)
    if url is None:
        return 0, 0
    try:
        found = await transport.sqs.get_queue_attributes(
            QueueUrl=url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )
    except ClientError as error:
        if transport.missing(error):
            transport.durable_urls.pop(name, None)
            return 0, 0
        raise
    attributes = found.get("Attributes", {})
    return (
        int(attributes.get("ApproximateNumberOfMessages", 0)),
        int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0)),
    )


# Streams


async def ensure_stream(transport: SqsTransport, stream: Stream) -> str:
    wanted = stream_config(stream)
    async with transport.registry.change() as streams:
        old = check_declaration(streams, stream, wanted)
        if old is not None:
            if old["config"] == wanted:
                return "unchanged"
            if ordered(old) != bool(wanted.get("ordered")):
                raise StreamError(
                    f"Stream {stream.name} (declared in {stream.declared_by}): 'ordered' cannot "
                    "change on SNS/SQS (a queue is FIFO or not for life); delete the stream "
                    "and declare it again."
                )
            old["config"] = wanted
            await update_retention(transport, stream.name, old)
            return "updated"
        found = {
            "config": wanted,
            "incarnation": new_incarnation(),
            "id": new_id(),
            "consumers": {},
        }
        tags = {"cliffracer-kind": "stream", "cliffracer-stream": stream.name}
        fifo = fifo_attributes(found)
        keep = {"MessageRetentionPeriod": retention(wanted), **fifo}
        await create_queue(transport, unclaimed_name(transport, stream.name, found), keep, tags)
        dead = {"MessageRetentionPeriod": str(MAX_RETENTION), **fifo}
        await create_queue(transport, dead_name(transport, stream.name, found), dead, tags)
        streams[stream.name] = found
        return "created"


async def update_retention(transport: SqsTransport, name: str, found: dict[str, Any]) -> None:
    """The stream's ``max_age`` on its unclaimed queue and its consumers' queues."""
    queues = [unclaimed_name(transport, name, found)] + [
        consumer_name(transport, name, consumer, entry)
        for consumer, entry in found["consumers"].items()
    ]
    for queue in queues:
        url = await queue_url(transport, queue)
        if url is not None:
            with contextlib.suppress(ClientError):
                await transport.sqs.set_queue_attributes(
                    QueueUrl=url, Attributes={"MessageRetentionPeriod": retention(found["config"])}
                )


async def compare_stream(transport: SqsTransport, stream: Stream) -> list[str] | None:
    wanted = stream_config(stream)
    existing = (await transport.registry.read()).get(stream.name)
    if existing is None:
        return None
    keys = set(wanted) | set(existing["config"])
    return sorted(key for key in keys if existing["config"].get(key) != wanted.get(key))


async def stream_state(transport: SqsTransport, name: str) -> StreamState | None:
    found = (await transport.registry.read()).get(name)
    if found is None:
        return None
    visible, in_flight = await count(transport, unclaimed_name(transport, name, found))
    return StreamState(
        name=name,
        incarnation=found["incarnation"],
        messages=visible + in_flight,
        subjects=list(found["config"]["subjects"]),
        consumers=len(found["consumers"]),
    )


async def publish_durable(
    transport: SqsTransport,
    subject: str,
    data: bytes,
    *,
    headers: dict[str, str] | None,
    msg_id: str,
) -> int:
    name, found = await stream_of(transport.registry, subject)
    headers = {**(headers or {}), MSG_ID: msg_id}
    check_size(found, subject, data, headers)
    sequence = new_sequence()
    body = pack(subject, data, headers, "", stored=(sequence, time.time()))
    if len(body.encode()) > MAX_BODY:
        raise RemoteUnavailable(
            f"The stream refused the event on {subject}: message size exceeds maximum allowed.",
            type="publish_refused",
            subject=subject,
        )
    fifo = fifo_fields(name, msg_id, sequence) if ordered(found) else {}
    claimed = any(
        subject_matches(entry["filter"], subject) for entry in found["consumers"].values()
    )
    if not claimed and found["config"]["retention"] != "interest":
        url = await queue_url(transport, unclaimed_name(transport, name, found))
        if url is None:  # deleted meanwhile: read the registry again next time
            transport.registry.cached = None
            raise NoStream(subject)
        await transport.sqs.send_message(QueueUrl=url, MessageBody=body, **fifo)
    attributes = {
        "subject": {"DataType": "String", "StringValue": subject},
        "stream": {"DataType": "String", "StringValue": name},
    }
    if fifo:
        # To its consumers in order, once per deduplication id.
        await transport.sns.publish(
            TopicArn=await fifo_topic(transport),
            Message=body,
            MessageAttributes=attributes,
            **fifo,
        )
    # To every consumer that takes it (of a stream not ordered), and to plain subscribers.
    await transport.sns.publish(
        TopicArn=transport.topic_arn, Message=body, MessageAttributes=attributes
    )
    return sequence


# Consumers


def consumer_policy(stream: str, filter_subject: str) -> str:
    policy: dict[str, Any] = names.filter_policy(filter_subject) or {}
    policy["stream"] = [stream]
    return json.dumps(policy)


async def add_consumer(
    transport: SqsTransport, stream: str, found: dict[str, Any], consumer: str, filter_subject: str
) -> dict[str, Any]:
    """The consumer's queue (dead-lettering into the stream's), subscribed to the topic."""
    entry: dict[str, Any] = {"filter": filter_subject, "id": new_id(), "subscription": ""}
    if ordered(found):
        entry["fifo"] = True
    topic = await fifo_topic(transport) if ordered(found) else transport.topic_arn
    dead_url = await queue_url(transport, dead_name(transport, stream, found))
    if dead_url is None:
        raise NoStream(f"Stream {stream} has no dead-letter queue (deleted meanwhile).")
    dead_arn = (
        await transport.sqs.get_queue_attributes(QueueUrl=dead_url, AttributeNames=["QueueArn"])
    )["Attributes"]["QueueArn"]
    attributes = {
        "MessageRetentionPeriod": retention(found["config"]),
        "VisibilityTimeout": "30",
        "Policy": transport.topic_policy(topic),
        **fifo_attributes(found),
        "RedrivePolicy": json.dumps(
            {"deadLetterTargetArn": dead_arn, "maxReceiveCount": DELIVERY_LIMIT}
        ),
    }
    tags = {
        "cliffracer-kind": "consumer",
        "cliffracer-stream": stream,
        "cliffracer-consumer": consumer[: names.MAX_TAG],
    }
    url = await create_queue(
        transport, consumer_name(transport, stream, consumer, entry), attributes, tags
    )
    arn = (await transport.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"]))[
        "Attributes"
    ]["QueueArn"]
    subscribed = await transport.sns.subscribe(
        TopicArn=topic,
        Protocol="sqs",
        Endpoint=arn,
        Attributes={
            "RawMessageDelivery": "true",
            "FilterPolicy": consumer_policy(stream, filter_subject),
        },
        ReturnSubscriptionArn=True,
    )
    entry["subscription"] = subscribed["SubscriptionArn"]
    return entry


async def drop_consumer(
    transport: SqsTransport, stream: str, consumer: str, entry: dict[str, Any]
) -> None:
    if entry.get("subscription"):
        with contextlib.suppress(ClientError):
            await transport.sns.unsubscribe(SubscriptionArn=entry["subscription"])
    await delete_queue(transport, consumer_name(transport, stream, consumer, entry))


async def consumer_state(transport: SqsTransport, stream: str, name: str) -> ConsumerState | None:
    found = (await transport.registry.read()).get(stream)
    if found is None or name not in found["consumers"]:
        return None
    entry = found["consumers"][name]
    visible, in_flight = await count(transport, consumer_name(transport, stream, name, entry))
    held = [
        delivery
        for attachment in transport.attachments
        if (attachment.stream, attachment.name) == (stream, name)
        for delivery in attachment.held
    ]
    return ConsumerState(
        name=name,
        filter_subject=entry["filter"],
        pending=visible,
        # In flight across every attachment (and what waits out a nak's delay).
        ack_pending=in_flight,
        redelivered=sum(1 for delivery in held if delivery.delivered > 1),
    )


async def consumers(transport: SqsTransport, stream: str) -> list[ConsumerState]:
    found = (await transport.registry.read()).get(stream)
    listed = sorted(found["consumers"]) if found else []
    states = [await consumer_state(transport, stream, name) for name in listed]
    return [state for state in states if state is not None]


async def delete_consumer(transport: SqsTransport, stream: str, name: str) -> bool:
    async with transport.registry.change() as streams:
        found = streams.get(stream)
        if found is None or name not in found["consumers"]:
            return False
        entry = found["consumers"].pop(name)
        await drop_consumer(transport, stream, name, entry)
    await transport.restart_attachments(stream, name)
    return True


async def delete_stream(transport: SqsTransport, name: str) -> bool:
    async with transport.registry.change() as streams:
        found = streams.pop(name, None)
        if found is None:
            return False
        for consumer, entry in found["consumers"].items():
            await drop_consumer(transport, name, consumer, entry)
        await delete_queue(transport, unclaimed_name(transport, name, found))
        await delete_queue(transport, dead_name(transport, name, found))
    await transport.restart_attachments(name, None)
    return True
