"""Events also put on an Amazon EventBridge bus, so that other AWS consumers can route them.

``CLIFFRACER["EVENTBRIDGE"] = {"BUS": "shop", "SUBJECTS": ["orders.*"]}``: every event
``publish_message`` publishes on a subject one of the patterns matches (a service's
``publish``, and the outbox relay's, so an event published on commit reaches the bus with the
outbox's guarantee: a failed ``PutEvents`` fails the row, which the relay tries again) is put on
the bus after the transport took it, as one entry: ``Source`` the setting's ``SOURCE``
(``cliffracer``), ``DetailType`` the subject, ``Detail`` ``{"subject", "message_id",
"correlation_id", "data"}`` with the event's JSON body as ``data``. A retried row puts its
event again (EventBridge keeps no message-id window): the ``message_id`` tells copies apart.
Region, endpoint and credentials come from the AWS environment unless ``REGION`` and
``ENDPOINT_URL`` say otherwise. The call is boto3's in a worker thread, one client per
process. The system check cliffracer.E046 reports a bad setting.
"""

from __future__ import annotations

import asyncio
import functools
import json
from typing import Any

from cliffracer_core.core.errors import RemoteUnavailable
from cliffracer_core.core.headers import CORRELATION_ID
from cliffracer_core.core.settings import cliffracer_settings
from cliffracer_core.transports.subjects import subject_matches, valid_subject

KEYS = {"BUS", "SUBJECTS", "SOURCE", "REGION", "ENDPOINT_URL"}
SOURCE = "cliffracer"
# EventBridge's limit on one entry.
MAX_ENTRY = 256 * 1024


@functools.cache
def events_client(region: str | None, endpoint_url: str | None) -> Any:
    """One boto3 EventBridge client per region and endpoint in the process (boto3's clients
    are thread-safe; only the SQS transport uses aiobotocore, tests/test_architecture.py)."""
    import boto3

    return boto3.client("events", region_name=region or None, endpoint_url=endpoint_url or None)


def configuration_problems(config: Any) -> list[str]:
    """What is wrong with ``CLIFFRACER["EVENTBRIDGE"]`` (empty when nothing is)."""
    if config is None:
        return []
    if not isinstance(config, dict):
        return ['CLIFFRACER["EVENTBRIDGE"] must be None or a dict with "BUS" and "SUBJECTS".']
    problems = []
    unknown = sorted(set(config) - KEYS)
    if unknown:
        problems.append(
            f'CLIFFRACER["EVENTBRIDGE"] has unknown keys {", ".join(unknown)} '
            f"(known: {', '.join(sorted(KEYS))})."
        )
    if not isinstance(config.get("BUS"), str) or not config["BUS"].strip():
        problems.append('CLIFFRACER["EVENTBRIDGE"]["BUS"] must name an event bus (or its ARN).')
    subjects = config.get("SUBJECTS")
    if (
        not isinstance(subjects, list | tuple)
        or not subjects
        or not all(isinstance(s, str) and valid_subject(s) for s in subjects)
    ):
        problems.append(
            'CLIFFRACER["EVENTBRIDGE"]["SUBJECTS"] must be a non-empty list of NATS subject '
            'patterns, e.g. ["orders.*"].'
        )
    for key in ("SOURCE", "REGION", "ENDPOINT_URL"):
        if key in config and not (isinstance(config[key], str) and config[key].strip()):
            problems.append(f'CLIFFRACER["EVENTBRIDGE"]["{key}"] must be a non-empty string.')
    return problems


def entry(
    config: dict[str, Any],
    subject: str,
    payload: bytes,
    headers: dict[str, str],
    msg_id: str | None,
) -> dict[str, Any]:
    """The ``PutEvents`` entry of one event."""
    try:
        data: Any = json.loads(payload) if payload else None
    except ValueError:
        data = payload.decode(errors="replace")
    detail = {
        "subject": subject,
        "message_id": msg_id,
        "correlation_id": headers.get(CORRELATION_ID),
        "data": data,
    }
    return {
        "Source": config.get("SOURCE") or SOURCE,
        "DetailType": subject,
        "Detail": json.dumps(detail, separators=(",", ":")),
        "EventBusName": config["BUS"],
    }


async def put_on_eventbridge(
    subject: str, payload: bytes, headers: dict[str, str], msg_id: str | None
) -> None:
    """Put the event on the configured bus when a declared pattern matches its subject; a
    failure is ``RemoteUnavailable`` (the publish failed, and is worth trying again)."""
    config = cliffracer_settings.EVENTBRIDGE
    if not config or configuration_problems(config):
        return
    if not any(subject_matches(pattern, subject) for pattern in config["SUBJECTS"]):
        return
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        client = events_client(config.get("REGION"), config.get("ENDPOINT_URL"))
        answer = await asyncio.to_thread(
            client.put_events, Entries=[entry(config, subject, payload, headers, msg_id)]
        )
    except (BotoCoreError, ClientError, OSError) as error:
        raise RemoteUnavailable(
            f"EventBridge did not take the event on {subject} ({str(error)[:300]}).",
            type="transport_unavailable",
            subject=subject,
        ) from None
    if answer.get("FailedEntryCount"):
        failure = answer["Entries"][0]
        raise RemoteUnavailable(
            f"EventBridge refused the event on {subject} ({failure.get('ErrorCode')}: "
            f"{failure.get('ErrorMessage')}).",
            type="transport_unavailable",
            subject=subject,
        )
