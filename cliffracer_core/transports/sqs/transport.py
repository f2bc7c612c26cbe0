"""The SNS/SQS transport: aiobotocore behind the seam, with NATS's semantics where SQS allows.

``sqs://`` with options in the query: ``prefix`` (the deployment's, ``cliffracer`` by
default), ``region`` and ``endpoint_url``; without them the standard AWS environment decides
(``AWS_REGION``, ``AWS_ENDPOINT_URL``, profiles), as it does for credentials, which never go in
the URL. How messages travel (``names.py`` says what things are called):

- Every subscription consumes an SQS queue whose name says what it is for: a queue group's
  queue (``<group>``, ``<pattern>``), shared by its members on every host, or a queue of one
  connection for a subscription without a group, deleted when it unsubscribes. Each queue is
  long-polled by one task of the connection that consumes it; what it receives is deleted at
  once (at most once, as NATS core) and waits in the subscription's pending queue. A group's
  poller is never cancelled while its receive waits in SQS (what that receive took would be
  hidden for the visibility timeout): it ends with it and hands back what it took.
- A plain publish (an event) goes to the deployment's SNS topic with a ``subject`` message
  attribute; each queue is subscribed to the topic with a filter policy on it (the subject, or
  the tokens before its first wildcard as a prefix) and raw delivery. ``*`` and ``>`` beyond
  what a filter policy says are checked again here with the NATS matcher.
- A request (and a publish with a reply subject) is sent straight to the queues whose pattern
  matches its subject, found in the connection's list of the deployment's queues: each group
  once, each subscription without a group once, as on NATS. The list is read again after
  ``queue_list_ttl`` seconds, when this connection makes or deletes a queue, and at once when
  it finds no queue for a subject or only queues deleted meanwhile (a service that just
  started is never missed). No queue: ``NoResponders`` at once. A group's
  queue outlives its members (another host may still consume it, and SQS refuses a queue
  created again within 60 s of its deletion), so a request to a service that stopped times out
  instead; it carries its caller's deadline and is dropped unanswered once that has passed.
- Replies go to the caller's reply queue, made on first use and deleted on close; inboxes are
  ``_INBOX.<client>.<n>`` and a reply is matched to its request by inbox.
- Bodies, headers and reply subjects travel in a JSON envelope (``envelope.py``).
- A connection's own queues carry a "last seen" tag it refreshes; a sweep now and then deletes
  those of connections that stopped refreshing (crashed processes) and their subscriptions.

Durable streams (``streams.py``, ``consumer.py``): a queue per durable consumer subscribed to
the topic, an unclaimed and a dead-letter queue per stream, their registry in a FIFO queue; an
ordered stream's through a FIFO topic and FIFO queues.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from cliffracer_core.core.errors import NoResponders, RemoteError, RemoteUnavailable, RpcTimeout
from cliffracer_core.core.log import RateLimitedLog
from cliffracer_core.core.settings import cliffracer_settings
from cliffracer_core.transports.base import (
    Callback,
    ConsumerState,
    Features,
    Pending,
    Received,
    StreamError,
    StreamState,
    Transport,
    bad_subject,
    check_subscription,
    clean_headers,
    too_large,
)
from cliffracer_core.transports.sqs import names, streams
from cliffracer_core.transports.sqs import sweep as sweeping
from cliffracer_core.transports.sqs.consumer import SqsAttachment
from cliffracer_core.transports.sqs.envelope import MAX_BODY, expired, pack, unpack
from cliffracer_core.transports.sqs.sweep import SEEN_TAG
from cliffracer_core.transports.subjects import subject_matches

logger = logging.getLogger("cliffracer.connection")

PREFIX = "cliffracer"
INBOX = "_INBOX."
# Seconds a receive waits for a message (SQS's long polling takes 20 at most): also the most
# close() waits for a group's receive under way to end (and hand back what it took). Each
# idle queue costs a receive per POLL_WAIT.
POLL_WAIT = 5
# The HTTP connections a transport may hold: one per queue it long-polls, and its sends.
MAX_CONNECTIONS = 256
# Seconds a connection trusts its list of the deployment's queues (``ListQueues``, most of a
# request's cost) before listing them again. A request that finds no queue for its subject, or
# only deleted ones, lists them again at once; a queue another process made is missed for at
# most this long only by a subject that another queue already matches (discovery's $SRV.*).
QUEUE_LIST_TTL = 2.0
# Seconds SQS keeps a message nobody received (its least), and hides one received whose
# deletion was lost, before another member of the group gets it.
RETENTION = 60
VISIBILITY = 10
# Seconds between the refreshes of the "last seen" tag of a connection's own queues, and after
# how long without one a queue is taken for a crashed process's and deleted by a sweep.
HEARTBEAT = 60.0
STALE_AFTER = 600.0
# What SQS answers when a queue is not there.
MISSING_QUEUE = ("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist")
# What SQS answers when a queue of that name exists with other attributes.
EXISTS = ("QueueAlreadyExists", "QueueNameExists", "AWS.SimpleQueueService.QueueNameExists")
UNAVAILABLE = (BotoCoreError, ClientError, OSError, asyncio.TimeoutError)


class SqsFeatures(Features):
    # Nothing listens where no queue matches; a group's queue outlives its members, so a
    # request to a stopped service times out (docs/transports.md).
    no_responders = True
    wildcards = True
    queue_groups = True
    broadcast = True
    discovery = True
    # A queue per durable consumer: delete = ack, visibility timeout = nak(delay) and
    # in_progress, redrive and a dead-letter queue (streams.py, consumer.py).
    durable = True
    delayed_nak = True
    # At the consumer (contrib.durable's idempotency records): standard queues, no FIFO.
    deduplication = False
    # Queues keep no stream numbering or history (streams.py).
    stream_history = False


def split_location(location: str) -> dict[str, str]:
    """The options of an ``sqs://`` URL's query; ``ValueError`` for anything else in it."""
    parts = urlsplit(location.strip())
    if parts.scheme.lower() != "sqs":
        raise ValueError(f"{location!r} is not an sqs:// URL.")
    if parts.netloc or parts.path.strip("/"):
        raise ValueError(
            "An sqs:// URL names no host: region, endpoint and credentials come from the AWS "
            "environment, or ?region=…&endpoint_url=… (and ?prefix=… for the deployment)."
        )
    options = dict(parse_qsl(parts.query))
    unknown = set(options) - {"prefix", "region", "endpoint_url"}
    if unknown:
        raise ValueError(f"Unknown sqs:// options: {', '.join(sorted(unknown))}.")
    return options


def _environment_region() -> str | None:
    """The region of the environment (``AWS_REGION``, which this transport reads itself, or
    what botocore finds: ``AWS_DEFAULT_REGION``, the profile, its config file)."""
    from botocore.session import get_session as botocore_session

    return os.environ.get("AWS_REGION") or botocore_session().get_config_variable("region")


def _missing(error: BaseException) -> bool:
    return isinstance(error, ClientError) and (
        error.response.get("Error", {}).get("Code") in MISSING_QUEUE
    )


def _unavailable(subject: str, error: BaseException) -> RemoteUnavailable:
    detail = str(error) or type(error).__name__
    return RemoteUnavailable(
        f"SQS/SNS cannot be reached or refused the call now ({detail[:300]}).",
        type="transport_unavailable",
        subject=subject or None,
    )


class Inlet:
    """One queue this connection consumes, and the subscriptions it feeds."""

    def __init__(self, name: names.QueueName, url: str, subscription_arn: str) -> None:
        self.name = name
        self.url = url
        self.subscription_arn = subscription_arn
        self.subscriptions: list[SqsSubscription] = []
        self.task: asyncio.Task[None] | None = None
        # Set when nobody here consumes it any more: its poller ends after the receive under
        # way, handing back what that takes.
        self.leaving = False


class SqsSubscription(Pending):
    """One ``subscribe``: a callback run one message at a time in a task of its own."""

    def __init__(
        self,
        transport: SqsTransport,
        subject: str,
        callback: Callback,
        *,
        queue: str,
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
        self.inlet: Inlet | None = None
        self.start_task()

    async def unsubscribe(self) -> None:
        """Stop at once: messages waiting are dropped, a callback running is cancelled."""
        if self.closed:
            return
        self.close()
        await self.transport.forget(self)
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task


class SqsTransport(Transport):
    """A connection to SQS and SNS: a client of each, and a long-polling task per queue."""

    features = SqsFeatures()
    schemes = ("sqs",)
    display_name = "SNS/SQS"

    def __init__(
        self, location: str, options: dict[str, Any] | None = None, *, role: str = "client"
    ) -> None:
        super().__init__(location, options, role=role)
        try:
            query = split_location(location)
        except ValueError:
            query = {}  # connect() reports it
        self.prefix = str(self.options.pop("prefix", None) or query.get("prefix") or PREFIX)
        self.region = (
            self.options.pop("region", None)
            or query.get("region")
            or os.environ.get("AWS_REGION")
            or os.environ.get("AWS_DEFAULT_REGION")
        )
        self.endpoint_url = self.options.pop("endpoint_url", None) or query.get("endpoint_url")
        self.poll_wait = int(self.options.pop("poll_wait", POLL_WAIT))
        self.max_connections = int(self.options.pop("max_connections", MAX_CONNECTIONS))
        self.heartbeat = float(self.options.pop("heartbeat", HEARTBEAT))
        self.stale_after = float(self.options.pop("stale_after", STALE_AFTER))
        self.queue_list_ttl = float(self.options.pop("queue_list_ttl", QUEUE_LIST_TTL))
        self._beating: asyncio.Task[None] | None = None
        # Taken for the tools that pass them to any transport: HTTP calls need no reconnection
        # (botocore retries a failed call).
        for name in ("quiet", "max_reconnect_attempts", "reconnect_wait"):
            self.options.pop(name, None)
        self.client_id = uuid.uuid4().hex[:12]
        self._inboxes = itertools.count()
        self._drops = RateLimitedLog(logger)
        self._failures = RateLimitedLog(logger)
        self._stack = contextlib.AsyncExitStack()
        self.sqs: Any = None
        self.sns: Any = None
        self.topic_arn = ""
        # The FIFO topic of ordered streams (streams.py), made on first use.
        self.fifo_topic_arn = ""
        self._connected = False
        self._closed = False
        self._inlets: dict[names.QueueName, Inlet] = {}
        self._creating = asyncio.Lock()
        # This connection's reply queue (made on first use), the requests waiting on it, and
        # subscriptions to its own inboxes.
        self._reply: Inlet | None = None
        self._requests: dict[str, asyncio.Future[Received]] = {}
        self._inbox_subscriptions: dict[str, list[SqsSubscription]] = {}
        # Reply queues of other connections by client id, and what hashed names stand for.
        self._reply_urls: dict[str, str | None] = {}
        self._hashed: dict[str, names.QueueName | None] = {}
        # The deployment's queues as last listed (when, what), the listing under way that
        # callers share, and a count of this connection's changes to the queues (a listing
        # that began before one is not kept).
        self._listed: tuple[float, list[tuple[str, names.QueueName]]] | None = None
        self._listing: asyncio.Task[list[tuple[str, names.QueueName]]] | None = None
        self._queue_changes = 0
        # Deletions of received messages under way, and pollers of groups left here ending
        # their last receive (awaited before the clients close).
        self._settling: set[asyncio.Task[None]] = set()
        self._leaving: set[asyncio.Task[None]] = set()
        # Durable streams: their registry, this connection's attachments, queue URLs by name.
        self.registry = streams.Registry(self)
        self.attachments: set[SqsAttachment] = set()
        self.durable_urls: dict[str, str] = {}
        self.unavailable = UNAVAILABLE
        self.failures = self._failures

    @classmethod
    def check(cls) -> list[tuple[str, str]]:
        from cliffracer_core.transports import configured

        _, location, options = configured()
        try:
            query = split_location(location)
        except ValueError as error:
            return [(str(error), "Write it as sqs://?prefix=shop&region=eu-west-1.")]
        problems = []
        prefix = str(options.get("prefix") or query.get("prefix") or PREFIX)
        if not names.PREFIX.match(prefix):
            problems.append(
                (
                    f"The SQS prefix {prefix!r} is not 1 to 32 letters, digits or '_'.",
                    "Choose a prefix without '-' or dots, e.g. ?prefix=shop_prod.",
                )
            )
        if not (options.get("region") or query.get("region") or _environment_region()):
            problems.append(
                (
                    "No AWS region for the SNS/SQS transport.",
                    "Set AWS_REGION (or a profile's region), or ?region=eu-west-1 in the URL.",
                )
            )
        return problems

    # Connecting

    async def connect(self) -> None:
        try:
            split_location(self.location)
        except ValueError as error:
            raise RemoteUnavailable(str(error), type="transport_unavailable") from None
        if not names.PREFIX.match(self.prefix):
            raise RemoteUnavailable(
                f"The SQS prefix {self.prefix!r} is not 1 to 32 letters, digits or '_'.",
                type="transport_unavailable",
            )
        config = AioConfig(
            max_pool_connections=self.max_connections,
            connect_timeout=5,
            read_timeout=self.poll_wait + 20,
            retries={"max_attempts": 3, "mode": "standard"},
        )
        session = get_session()
        kwargs: dict[str, Any] = {"config": config}
        if self.region:
            kwargs["region_name"] = self.region
        if self.endpoint_url:
            kwargs["endpoint_url"] = self.endpoint_url
        try:
            self.sqs = await self._stack.enter_async_context(session.create_client("sqs", **kwargs))
            self.sns = await self._stack.enter_async_context(session.create_client("sns", **kwargs))
            topic = await self.sns.create_topic(Name=names.topic_name(self.prefix))
        except UNAVAILABLE as error:
            await self._stack.aclose()
            raise RemoteUnavailable(
                f"SNS/SQS ({self.server() or 'the AWS environment'}) cannot be used "
                f"({str(error)[:300] or type(error).__name__}).",
                type="transport_unavailable",
            ) from None
        self.topic_arn = topic["TopicArn"]
        self._connected = True
        self._beating = asyncio.get_running_loop().create_task(sweeping.beat(self))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._connected = False
        inlets = list(self._inlets.values())
        self._inlets.clear()
        subscriptions = [s for inlet in inlets for s in inlet.subscriptions]
        subscriptions += [s for group in self._inbox_subscriptions.values() for s in group]
        for subscription in subscriptions:
            subscription.close()
            if subscription.task is not None:
                subscription.task.cancel()
        reply, self._reply = self._reply, None
        for attachment in list(self.attachments):
            with contextlib.suppress(Exception):
                await attachment.close()
        # A group's poller ends with the receive under way (within poll_wait), handing back
        # what it takes; the queues of this connection's own are deleted, their pollers cancelled.
        groups = {i.task for i in inlets if i.name.kind == "g" and i.task is not None}
        groups |= self._leaving
        for inlet in inlets:
            inlet.leaving = True
        if groups:
            await asyncio.wait(groups, timeout=self.poll_wait + 5)
        tasks = [i.task for i in [*inlets, reply] if i is not None and i.task is not None]
        tasks += [self._beating] if self._beating is not None else []
        tasks += list(self._leaving)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for request in self._requests.values():
            if not request.done():
                request.cancel()
        if self._settling:
            await asyncio.wait(set(self._settling), timeout=5)
        # A group's queue stays for its other members; this connection's own queues go.
        own = [i for i in inlets if i.name.kind == "b"] + ([reply] if reply else [])
        with contextlib.suppress(Exception):
            async with asyncio.timeout(10):
                await asyncio.gather(*(self._delete(i) for i in own), return_exceptions=True)
        await self._stack.aclose()
        logger.info("SNS/SQS connection closed.")

    @property
    def is_connected(self) -> bool:
        return self._connected and not self._closed

    @property
    def is_closed(self) -> bool:
        return self._closed

    def server(self) -> str:
        if self.endpoint_url:
            return self.endpoint_url
        if self.sqs is not None:
            return str(self.sqs.meta.endpoint_url)
        return f"sqs.{self.region}.amazonaws.com" if self.region else ""

    def missing(self, error: BaseException) -> bool:
        """Whether ``error`` is SQS saying a queue is not there."""
        return _missing(error)

    def keep_until_closed(self, task: asyncio.Task[None]) -> None:
        """A poller ending its last receive by itself: close() waits for it."""
        self._leaving.add(task)
        task.add_done_callback(self._leaving.discard)

    def topic_policy(self, topic_arn: str = "") -> str:
        """Who may send to a subscribed queue: the deployment's topic, or ``topic_arn`` (AWS
        checks it; moto does not)."""
        return json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"Service": "sns.amazonaws.com"},
                        "Action": "sqs:SendMessage",
                        "Resource": "*",
                        "Condition": {"ArnEquals": {"aws:SourceArn": topic_arn or self.topic_arn}},
                    }
                ],
            }
        )

    def _usable(self, subject: str = "") -> None:
        if self._closed or self.sqs is None:
            raise RemoteUnavailable(
                "The SNS/SQS connection cannot send now (it is closed).",
                type="transport_unavailable",
                subject=subject or None,
            )

    # Queues

    async def _create(self, queue: names.QueueName) -> tuple[str, str]:
        """Create ``queue`` (or find it) subscribed to the topic; its URL and subscription."""
        name, tags = names.queue_name(self.prefix, queue)
        attributes = {
            "MessageRetentionPeriod": str(RETENTION),
            "VisibilityTimeout": str(VISIBILITY),
            "ReceiveMessageWaitTimeSeconds": str(self.poll_wait),
        }
        if queue.kind != "r":
            attributes["Policy"] = self.topic_policy()
        tags = {**tags, "cliffracer-kind": queue.kind}
        if queue.kind != "g":
            tags[SEEN_TAG] = str(int(time.time()))
        try:
            created = await self.sqs.create_queue(QueueName=name, Attributes=attributes, tags=tags)
            url = created["QueueUrl"]
        except ClientError as error:
            # A group's queue made by an instance with other settings (another poll_wait, an
            # older release): consume it as it is.
            if error.response.get("Error", {}).get("Code") not in EXISTS:
                raise
            url = (await self.sqs.get_queue_url(QueueName=name))["QueueUrl"]
        if queue.kind == "r":
            return url, ""
        self.queues_changed()
        arn = (await self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"]))[
            "Attributes"
        ]["QueueArn"]
        subscription_attributes = {"RawMessageDelivery": "true"}
        policy = names.filter_policy(queue.pattern)
        if policy is not None:
            subscription_attributes["FilterPolicy"] = json.dumps(policy)
        subscribed = await self.sns.subscribe(
            TopicArn=self.topic_arn,
            Protocol="sqs",
            Endpoint=arn,
            Attributes=subscription_attributes,
            ReturnSubscriptionArn=True,
        )
        return url, subscribed["SubscriptionArn"]

    async def _delete(self, inlet: Inlet) -> None:
        self.queues_changed()
        with contextlib.suppress(*UNAVAILABLE):
            if inlet.subscription_arn:
                await self.sns.unsubscribe(SubscriptionArn=inlet.subscription_arn)
            await self.sqs.delete_queue(QueueUrl=inlet.url)

    async def _ensure_reply_queue(self) -> None:
        if self._reply is not None:
            return
        async with self._creating:
            if self._reply is not None:
                return
            queue = names.QueueName("r", self.client_id)
            try:
                url, _ = await self._create(queue)
            except UNAVAILABLE as error:
                raise _unavailable("", error) from None
            inlet = Inlet(queue, url, "")
            inlet.task = asyncio.get_running_loop().create_task(self._poll(inlet))
            self._reply = inlet

    def queues_changed(self) -> None:
        """This connection made or deleted a queue: its list of them is read again."""
        self._queue_changes += 1
        self._listed = None

    async def _queues(
        self, *, fresh: bool = False
    ) -> tuple[list[tuple[str, names.QueueName]], bool]:
        """The deployment's queues that subscriptions consume, and what each is for, as
        listed at most ``queue_list_ttl`` ago (or now, when ``fresh``); and whether this
        call listed them (a listing under way that it joined may have begun before a queue
        it must see was made)."""
        listed = self._listed
        if not fresh and listed is not None and time.monotonic() - listed[0] < self.queue_list_ttl:
            return listed[1], False
        if not fresh and self._listing is not None:
            # Shared by the calls that come meanwhile; one caller cancelled stops nobody's.
            return await asyncio.shield(self._listing), False
        task = asyncio.get_running_loop().create_task(self._list_queues())
        task.add_done_callback(self._listed_now)
        if not fresh:
            self._listing = task
        return await asyncio.shield(task), True

    def _listed_now(self, task: asyncio.Task[Any]) -> None:
        if self._listing is task:
            self._listing = None
        if not task.cancelled():
            task.exception()  # retrieved: the callers that awaited it got it

    async def _list_queues(self) -> list[tuple[str, names.QueueName]]:
        changes, started = self._queue_changes, time.monotonic()
        found: list[tuple[str, names.QueueName]] = []
        arguments: dict[str, Any] = {"QueueNamePrefix": f"{self.prefix}-", "MaxResults": 1000}
        while True:
            page = await self.sqs.list_queues(**arguments)
            for url in page.get("QueueUrls", []):
                name = url.rsplit("/", 1)[-1]
                queue = names.parse(self.prefix, name)
                if queue is None and names.is_hashed(self.prefix, name):
                    queue = await self._hashed_queue(name, url)
                if queue is not None and queue.kind != "r":
                    found.append((url, queue))
            if not page.get("NextToken"):
                break
            arguments["NextToken"] = page["NextToken"]
        if changes == self._queue_changes:  # else a queue made meanwhile may be missing
            self._listed = (started, found)
        return found

    async def _hashed_queue(self, name: str, url: str) -> names.QueueName | None:
        """What a queue with a hashed name is for, from its tags (read once: a name stands
        for one group and pattern for ever)."""
        if name not in self._hashed:
            try:
                tags = (await self.sqs.list_queue_tags(QueueUrl=url)).get("Tags", {})
            except ClientError as error:
                if _missing(error):
                    return None
                raise
            self._hashed[name] = names.from_tags(name, self.prefix, tags)
        return self._hashed[name]

    async def _deliver(self, subject: str, body: str, *, fresh: bool = False) -> int:
        """Send ``body`` to the queues a message on ``subject`` goes to (each matching
        group's once, each matching subscription's without a group once); how many took it.
        The queues as last listed first (unless ``fresh``); when none matches, or every one
        that does was deleted meanwhile, as listed again now."""
        for listing_fresh in (fresh, True):
            queues, listed_now = await self._queues(fresh=listing_fresh)
            targets = [url for url, queue in queues if subject_matches(queue.pattern, subject)]
            sent = await self._send(targets, body, subject) if targets else 0
            if sent < len(targets):
                self.queues_changed()  # some were deleted: the list is stale
            if sent or listed_now:
                return sent
        return 0

    async def _reply_url(self, subject: str) -> str | None:
        """The reply queue of the connection that made the inbox ``subject`` (None if gone)."""
        client = subject[len(INBOX) :].partition(".")[0]
        if not (client.isascii() and client.isalnum()):
            return None  # no connection of ours made it (a client id is hex)
        if client == self.client_id and self._reply is not None:
            return self._reply.url
        if client not in self._reply_urls:
            name, _ = names.queue_name(self.prefix, names.QueueName("r", client))
            try:
                self._reply_urls[client] = (await self.sqs.get_queue_url(QueueName=name))[
                    "QueueUrl"
                ]
            except ClientError as error:
                if not _missing(error):
                    raise
                return None  # the caller is gone: dropped, as NATS drops it
        return self._reply_urls[client]

    # Queues of crashed processes (sweep.py)

    async def sweep(self) -> list[str]:
        """Delete the queues of connections that stopped (``sweep.py``); their names."""
        return await sweeping.sweep(self)

    # Receiving

    async def _poll(self, inlet: Inlet) -> None:
        """Long-poll ``inlet``'s queue until it is no longer consumed here."""
        while not self._closed and not inlet.leaving:
            try:
                answer = await self.sqs.receive_message(
                    QueueUrl=inlet.url, MaxNumberOfMessages=10, WaitTimeSeconds=self.poll_wait
                )
            except asyncio.CancelledError:
                raise
            except UNAVAILABLE as error:
                if self._closed:
                    return
                if _missing(error):
                    logger.warning("The queue %s was deleted; it is no longer consumed.", inlet.url)
                    return
                self._failures.warning(
                    inlet.url, "Receiving from %s failed (%s); trying again.", inlet.url, error
                )
                await asyncio.sleep(1.0)
                continue
            messages = answer.get("Messages", [])
            if not messages:
                continue
            entries = [
                {"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(messages)
            ]
            if inlet.leaving or self._closed:
                # Taken by a receive that was waiting when the last member here left: visible
                # again at once for the group's other members (SQS has no way to call a
                # waiting receive off, and cancelling it would hide them for the visibility
                # timeout).
                with contextlib.suppress(*UNAVAILABLE):
                    await self.sqs.change_message_visibility_batch(
                        QueueUrl=inlet.url,
                        Entries=[{**entry, "VisibilityTimeout": 0} for entry in entries],
                    )
                return
            # At most once, as NATS core: taken off the queue before it is handled.
            settling = asyncio.get_running_loop().create_task(self._settle(inlet.url, entries))
            self._settling.add(settling)
            settling.add_done_callback(self._settling.discard)
            for item in messages:
                try:
                    message, expires = unpack(item["Body"])
                except (ValueError, KeyError, TypeError):
                    self._failures.warning("unreadable", "A message on %s is not ours.", inlet.url)
                    continue
                if expired(expires):
                    continue
                self._dispatch(inlet, message)

    async def _settle(self, url: str, entries: list[dict[str, str]]) -> None:
        with contextlib.suppress(*UNAVAILABLE):
            await self.sqs.delete_message_batch(QueueUrl=url, Entries=entries)

    def _dispatch(self, inlet: Inlet, message: Received) -> None:
        if inlet.name.kind == "r":
            request = self._requests.get(message.subject)
            if request is not None and not request.done():
                request.set_result(message)
            for subscription in self._inbox_subscriptions.get(message.subject, ()):
                subscription.offer(_copy(message))
            return
        members = [s for s in inlet.subscriptions if subject_matches(s.subject, message.subject)]
        if not members:
            return
        if inlet.name.kind == "g":
            random.choice(members).offer(message)
            return
        for subscription in members:
            subscription.offer(_copy(message))

    # Messages

    def new_inbox(self) -> str:
        return f"{INBOX}{self.client_id}.{next(self._inboxes)}"

    def _body(
        self,
        subject: str,
        data: bytes,
        headers: dict[str, str] | None,
        reply: str,
        expires: float | None = None,
    ) -> str:
        self._usable(subject)
        for name in (subject, reply) if reply else (subject,):
            if not name or any(character.isspace() for character in name):
                raise bad_subject(name)
        body = pack(subject, data, clean_headers(headers), reply, expires)
        if len(body.encode()) > MAX_BODY:
            raise too_large(subject)
        return body

    async def _send(self, urls: list[str], body: str, subject: str) -> int:
        """Send ``body`` to each queue of ``urls``; how many were still there."""

        async def send(url: str) -> bool:
            try:
                await self.sqs.send_message(QueueUrl=url, MessageBody=body)
            except ClientError as error:
                if not _missing(error):  # a queue deleted meanwhile: as if it never was
                    raise
                return False
            return True

        try:
            return sum(await asyncio.gather(*(send(url) for url in urls)))
        except UNAVAILABLE as error:
            raise _unavailable(subject, error) from None

    async def publish(
        self,
        subject: str,
        data: bytes,
        *,
        headers: dict[str, str] | None = None,
        reply: str = "",
    ) -> None:
        """An event goes to the topic; a reply to its caller's reply queue; a message with a
        reply subject straight to the queues that match (a 503 status to the reply subject
        when none does, as nats-server sends)."""
        body = self._body(subject, data, headers, reply)
        try:
            if subject.startswith(INBOX):
                url = await self._reply_url(subject)
                if url is not None:
                    await self._send([url], body, subject)
                return
            if reply:
                if not await self._deliver(subject, body):
                    status = {"Status": "503", "Nats-Subject": subject}
                    await self.publish(reply, b"", headers=status)
                return
            await self.sns.publish(
                TopicArn=self.topic_arn,
                Message=body,
                MessageAttributes={"subject": {"DataType": "String", "StringValue": subject}},
            )
        except RemoteError:
            raise
        except UNAVAILABLE as error:
            raise _unavailable(subject, error) from None

    async def request(
        self,
        subject: str,
        data: bytes,
        *,
        headers: dict[str, str] | None = None,
        timeout: float,
    ) -> Received:
        """Send to the queues that match and wait for the first reply. No queue matches:
        ``NoResponders`` at once; a queue with nobody consuming it: ``RpcTimeout``."""
        self._usable(subject)
        # The caller's deadline, counted from now (making the reply queue takes a call).
        started, expires = time.monotonic(), time.time() + timeout
        await self._ensure_reply_queue()
        inbox = self.new_inbox()
        body = self._body(subject, data, headers, inbox, expires)
        reply: asyncio.Future[Received] = asyncio.get_running_loop().create_future()
        self._requests[inbox] = reply
        try:
            try:
                sent = await self._deliver(subject, body)
            except UNAVAILABLE as error:
                raise _unavailable(subject, error) from None
            if not sent:
                raise NoResponders(
                    f"No service is listening on {subject} (no SQS queue matches it).",
                    type="no_responders",
                    subject=subject,
                )
            async with asyncio.timeout(max(0.0, timeout - (time.monotonic() - started))):
                return await reply
        except TimeoutError:
            raise RpcTimeout(
                f"No reply from {subject} within {timeout:g}s (its SQS queue exists; is any "
                "instance of the service running?).",
                type="timeout",
                subject=subject,
            ) from None
        finally:
            self._requests.pop(inbox, None)

    async def request_many(
        self,
        subject: str,
        data: bytes = b"",
        *,
        headers: dict[str, str] | None = None,
        timeout: float,
        stall: float | None = None,
        limit: int | None = None,
    ) -> list[Received]:
        """Every reply within ``timeout``: once as many came as queues got the request, wait
        only a moment for more (one connection may hold several responders)."""
        self._usable(subject)
        deadline, expires = time.monotonic() + timeout, time.time() + timeout
        await self._ensure_reply_queue()

        async def send(inbox: str) -> int:
            body = self._body(subject, data, headers, inbox, expires)
            try:
                # Listed now: discovery must see an instance that started a moment ago.
                return await self._deliver(subject, body, fresh=True)
            except UNAVAILABLE as error:
                raise _unavailable(subject, error) from None

        return await self.replies_on_inbox(send, deadline=deadline, stall=stall, limit=limit)

    async def subscribe(
        self,
        subject: str,
        callback: Callback,
        *,
        queue: str = "",
        max_pending: int | None = None,
        max_pending_bytes: int | None = None,
    ) -> SqsSubscription:
        self._usable(subject)
        check_subscription(subject, queue, callback)
        if len(subject) > names.MAX_TAG or len(queue) > names.MAX_TAG:
            raise bad_subject(subject)
        subscription = SqsSubscription(
            self,
            subject,
            callback,
            queue=queue,
            max_pending=max_pending,
            max_pending_bytes=max_pending_bytes,
        )
        if subject.startswith(f"{INBOX}{self.client_id}.") and not queue:
            await self._ensure_reply_queue()
            self._inbox_subscriptions.setdefault(subject, []).append(subscription)
            return subscription
        name = (
            names.QueueName("g", queue, subject)
            if queue
            else names.QueueName("b", self.client_id, subject)
        )
        try:
            async with self._creating:
                inlet = self._inlets.get(name)
                if inlet is None:
                    url, arn = await self._create(name)
                    inlet = Inlet(name, url, arn)
                    inlet.task = asyncio.get_running_loop().create_task(self._poll(inlet))
                    self._inlets[name] = inlet
                inlet.subscriptions.append(subscription)
                subscription.inlet = inlet
        except UNAVAILABLE as error:
            subscription.close()
            if subscription.task is not None:
                subscription.task.cancel()
            raise _unavailable(subject, error) from None
        return subscription

    async def forget(self, subscription: SqsSubscription) -> None:
        """Take ``subscription`` out; the last of its queue here stops consuming it (and
        deletes it, when it was this connection's own)."""
        inboxes = self._inbox_subscriptions.get(subscription.subject, [])
        if subscription in inboxes:
            inboxes.remove(subscription)
            if not inboxes:
                self._inbox_subscriptions.pop(subscription.subject, None)
            return
        inlet = subscription.inlet
        if inlet is None or subscription not in inlet.subscriptions:
            return
        inlet.subscriptions.remove(subscription)
        if inlet.subscriptions or self._closed:
            return
        self._inlets.pop(inlet.name, None)
        if inlet.name.kind == "g":
            # The receive under way ends by itself within poll_wait and hands back what it
            # took (``_poll``); close() waits for it.
            inlet.leaving = True
            if inlet.task is not None:
                self._leaving.add(inlet.task)
                inlet.task.add_done_callback(self._leaving.discard)
            return
        if inlet.task is not None:
            inlet.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await inlet.task
        await self._delete(inlet)

    async def flush(self, timeout: float = 5.0) -> None:
        """Every call here returns once SQS or SNS has done it: nothing waits to be sent."""
        self._usable()

    # Durable streams (streams.py, consumer.py)

    async def restart_attachments(self, stream: str, name: str | None) -> None:
        """Attach again the attachments of a consumer (or a stream) deleted under them."""
        for attachment in list(self.attachments):
            if attachment.stream == stream and name in (None, attachment.name):
                await attachment.restart()

    async def _durably(self, subject: str, call: Any) -> Any:
        """Run a durable operation, in the project's errors when SQS cannot be used."""
        try:
            self._usable(subject)
            async with asyncio.timeout(float(cliffracer_settings.PUBLISH_TIMEOUT) + 20):
                return await call
        except TimeoutError as error:
            raise _unavailable(subject, error) from None
        except (StreamError, RemoteError):
            raise
        except UNAVAILABLE as error:
            raise _unavailable(subject, error) from None
        finally:
            call.close()  # (a coroutine not awaited, when the connection was closed)

    async def ensure_stream(self, stream: Any) -> str:
        return await self._durably("", streams.ensure_stream(self, stream))

    async def compare_stream(self, stream: Any) -> list[str] | None:
        return await self._durably("", streams.compare_stream(self, stream))

    async def stream_state(self, name: str) -> StreamState | None:
        return await self._durably("", streams.stream_state(self, name))

    async def delete_stream(self, name: str) -> bool:
        return await self._durably("", streams.delete_stream(self, name))

    async def publish_durable(
        self,
        subject: str,
        data: bytes,
        *,
        headers: dict[str, str] | None = None,
        msg_id: str,
        timeout: float = 5.0,
    ) -> int:
        self._usable(subject)
        if not subject or any(character.isspace() for character in subject):
            raise bad_subject(subject)
        try:
            async with asyncio.timeout(timeout):
                return await streams.publish_durable(
                    self, subject, data, headers=clean_headers(headers), msg_id=msg_id
                )
        except TimeoutError:
            raise RpcTimeout(
                f"The stream did not confirm the event on {subject} within {timeout:g}s.",
                type="timeout",
                subject=subject,
            ) from None
        except (StreamError, RemoteError):
            raise
        except UNAVAILABLE as error:
            raise _unavailable(subject, error) from None

    async def stored_message(self, stream: str, sequence: int) -> None:
        """None: SQS keeps no stream history to read by sequence (features.stream_history)."""
        return None

    async def consume(
        self,
        stream: str,
        name: str,
        callback: Callable[[Any], Awaitable[None]],
        *,
        filter_subject: str,
        ack_wait: float,
        max_in_flight: int,
        description: str = "",
    ) -> SqsAttachment:
        attachment = SqsAttachment(
            self,
            stream,
            name,
            callback,
            filter_subject=filter_subject,
            ack_wait=ack_wait,
            max_in_flight=max_in_flight,
        )
        await self._durably("", attachment.start())
        self.attachments.add(attachment)
        return attachment

    async def consumer_state(self, stream: str, name: str) -> ConsumerState | None:
        return await self._durably("", streams.consumer_state(self, stream, name))

    async def consumers(self, stream: str) -> list[ConsumerState]:
        return await self._durably("", streams.consumers(self, stream))

    async def delete_consumer(self, stream: str, name: str) -> bool:
        return await self._durably("", streams.delete_consumer(self, stream, name))


def _copy(message: Received) -> Received:
    headers = dict(message.headers) if message.headers else None  # each its own
    return Received(message.subject, message.data, headers, message.reply)
