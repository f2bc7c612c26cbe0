"""Queues left by crashed processes: a connection tags its own broadcast and reply queues with
when it was last seen and refreshes the tag every heartbeat; every connection now and then
sweeps the deployment's queues and deletes those of connections that stopped refreshing, with
their topic subscriptions. A group's queue is never swept: other hosts may consume it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

if TYPE_CHECKING:
    from cliffracer_core.transports.sqs.transport import SqsTransport

logger = logging.getLogger("cliffracer.connection")

SEEN_TAG = "cliffracer-seen"


async def beat(transport: SqsTransport) -> None:
    """Refresh the "last seen" tag of this connection's own queues every ``heartbeat``;
    now and then (first after a random part of a heartbeat, so that connections made
    together do not sweep together) delete the queues of connections that stopped."""
    from cliffracer_core.transports.sqs.transport import UNAVAILABLE  # (it imports this module)

    sweep_every = max(transport.heartbeat, transport.stale_after / 2)
    next_sweep = time.monotonic() + random.uniform(0, transport.heartbeat)
    while not transport.is_closed:
        await asyncio.sleep(min(transport.heartbeat, max(0.0, next_sweep - time.monotonic())))
        try:
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + sweep_every * random.uniform(0.8, 1.2)
                await sweep(transport)
            own = [i for i in transport._inlets.values() if i.name.kind == "b"]
            own += [transport._reply] if transport._reply is not None else []
            seen = {SEEN_TAG: str(int(time.time()))}
            for inlet in own:
                with contextlib.suppress(ClientError):  # deleted meanwhile
                    await transport.sqs.tag_queue(QueueUrl=inlet.url, Tags=seen)
        except asyncio.CancelledError:
            raise
        except UNAVAILABLE as error:
            transport._failures.warning("beat", "Refreshing or sweeping queues failed (%s).", error)


async def sweep(transport: SqsTransport) -> list[str]:
    """Delete the queues (and their topic subscriptions) of connections whose "last seen"
    tag is older than ``stale_after``: a crashed process's broadcast and reply queues,
    which would otherwise take messages, and count as responders, for ever. Return their
    names. A group's queue is never swept (other hosts may consume it)."""
    cutoff = time.time() - transport.stale_after
    own = {inlet.url for inlet in transport._inlets.values()}
    own |= {transport._reply.url} if transport._reply is not None else set()
    stale: list[str] = []
    arguments: dict[str, Any] = {"QueueNamePrefix": f"{transport.prefix}-", "MaxResults": 1000}
    while True:
        page = await transport.sqs.list_queues(**arguments)
        for url in page.get("QueueUrls", []):
            name = url.rsplit("/", 1)[-1]
            kind = name[len(transport.prefix) + 1 : len(transport.prefix) + 2]
            if url in own or kind not in ("b", "r", "B"):
                continue
            try:
                tags = (await transport.sqs.list_queue_tags(QueueUrl=url)).get("Tags", {})
            except ClientError:
                continue
            seen = tags.get(SEEN_TAG, "")
            if seen.isdigit() and int(seen) < cutoff:
                stale.append(url)
        if not page.get("NextToken"):
            break
        arguments["NextToken"] = page["NextToken"]
    if not stale:
        return []
    arns = {}
    for url in stale:
        with contextlib.suppress(ClientError):
            attributes = await transport.sqs.get_queue_attributes(
                QueueUrl=url, AttributeNames=["QueueArn"]
            )
            arns[attributes["Attributes"]["QueueArn"]] = url
    listing: dict[str, Any] = {"TopicArn": transport.topic_arn}
    while True:
        page = await transport.sns.list_subscriptions_by_topic(**listing)
        for subscription in page.get("Subscriptions", []):
            if subscription.get("Endpoint") in arns:
                with contextlib.suppress(ClientError):
                    await transport.sns.unsubscribe(SubscriptionArn=subscription["SubscriptionArn"])
        if not page.get("NextToken"):
            break
        listing["NextToken"] = page["NextToken"]
    transport.queues_changed()
    for url in stale:
        with contextlib.suppress(ClientError):
            await transport.sqs.delete_queue(QueueUrl=url)
    names_swept = [url.rsplit("/", 1)[-1] for url in stale]
    logger.info("Deleted %d queues of stopped connections: %s", len(stale), names_swept)
    return names_swept
