"""Replaying and discarding dead letters (the admin's actions call these).

A replay publishes the event again through the stream, to the same subject, with its original
payload and headers, except:

* ``Authorization`` is the system identity's. The original token was never stored (a secret,
  and expired by now); the person replaying is not the event's author either, and their
  permissions may differ from the service's, so the replay runs as the identity that all
  background work runs as. ``Cliffracer-Replayed-By`` names the person, for logs and audit.
* a new ``Nats-Msg-Id``, so that the stream stores it even within its duplicate window, and
  ``Cliffracer-Replay-Of`` with the original message id: the handler's ``processed_once``
  sees the original id, so a replay of an event that was in fact processed (its
  acknowledgement lost) does nothing twice.
* ``Cliffracer-Replay-For`` names the one consumer that failed; the stream's other durable
  consumers acknowledge the replay without running their handlers.

The correlation id is the original's, so the replay can be followed with the first attempts.
"""

from __future__ import annotations

import base64
import logging

from django.db.models import QuerySet
from django.utils import timezone

from cliffracer_core.contrib.durable.models import DeadLetter
from cliffracer_core.core.headers import (
    AUTHORIZATION,
    MSG_ID,
    REPLAY_FOR,
    REPLAY_OF,
    REPLAYED_BY,
    clean_header_value,
    new_message_id,
)

logger = logging.getLogger("cliffracer.durable")

# Headers a replay does not copy from the original: the token, and JetStream's own.
NOT_REPLAYED = {AUTHORIZATION.lower(), REPLAY_OF.lower(), REPLAY_FOR.lower(), REPLAYED_BY.lower()}


def replay(
    letters: QuerySet[DeadLetter] | list[DeadLetter], *, by: str = ""
) -> tuple[int, list[str]]:
    """Replay pending dead letters; returns how many were replayed and the errors of others.

    Each is claimed first (pending -> replayed in one UPDATE), so two operators clicking at
    once replay it once; one whose publish fails goes back to pending.
    """
    from cliffracer_core.core.auth.tokens import system_identity
    from cliffracer_core.core.client import run_sync

    replayed = 0
    errors: list[str] = []
    for letter in letters:
        replay_id = new_message_id()
        claimed = DeadLetter.objects.filter(pk=letter.pk, status=DeadLetter.Status.PENDING).update(
            status=DeadLetter.Status.REPLAYED,
            resolved_at=timezone.now(),
            resolved_by=by[:150],
            replay_message_id=replay_id,
        )
        if not claimed:
            errors.append(f"#{letter.pk} is {letter.status}, not pending.")
            continue
        headers = {
            name: value
            for name, value in (letter.headers or {}).items()
            if name.lower() not in NOT_REPLAYED and not name.lower().startswith("nats-")
        }
        headers[REPLAY_OF] = letter.message_id
        headers[REPLAY_FOR] = letter.consumer
        if by:
            headers[REPLAYED_BY] = clean_header_value(by)
        if authorization := system_identity.authorization():
            headers[AUTHORIZATION] = authorization
        payload = (
            base64.b64decode(letter.payload)
            if letter.payload_encoding == "base64"
            else letter.payload.encode()
        )

        try:
            if len(payload) < letter.payload_size:
                # The dead letter kept the start of a large event: the stream has all of it.
                payload = run_sync(_stored_payload(letter, len(payload)), timeout=30)
            run_sync(_publish(letter.subject, payload, headers, replay_id), timeout=30)
        except Exception as error:  # noqa: BLE001  (reported to the operator)
            DeadLetter.objects.filter(pk=letter.pk).update(
                status=DeadLetter.Status.PENDING,
                resolved_at=None,
                resolved_by="",
                replay_message_id="",
            )
            errors.append(f"#{letter.pk} could not be published: {error}")
            logger.warning("Replaying dead letter %s failed: %s", letter.pk, error)
            continue
        replayed += 1
        logger.info(
            "Dead letter %s (%s, %s) replayed by %s as %s.",
            letter.pk,
            letter.subject,
            letter.consumer,
            by or "someone",
            replay_id,
        )
    return replayed, errors


def discard(letters: QuerySet[DeadLetter], *, by: str = "") -> int:
    """Mark pending dead letters discarded: nobody will process them. Returns how many."""
    return letters.filter(status=DeadLetter.Status.PENDING).update(
        status=DeadLetter.Status.DISCARDED, resolved_at=timezone.now(), resolved_by=by[:150]
    )


async def _stored_payload(letter: DeadLetter, kept: int) -> bytes:
    """The whole body of a dead letter's event, read from its stream."""
    from cliffracer_core.core.client import shared_transport

    transport = await shared_transport()
    if not transport.features.stream_history:
        raise LookupError(
            f"the dead letter kept only {kept} of the event's {letter.payload_size} bytes, and "
            f"the {transport.display_name} transport keeps no stream history to read the rest "
            "from (features.stream_history): raise DEAD_LETTER_MAX_PAYLOAD_BYTES to keep whole "
            "events on this backend"
        )
    stored = await transport.stored_message(letter.stream, letter.stream_sequence)
    if stored is None:
        raise LookupError(
            f"the dead letter kept only {kept} of the event's {letter.payload_size} bytes, and "
            f"stream {letter.stream} no longer holds message {letter.stream_sequence}"
        )
    stored_headers = stored.headers or {}
    message_id = stored_headers.get(REPLAY_OF) or stored_headers.get(MSG_ID)
    if (
        stored.subject != letter.subject
        or len(stored.data or b"") != letter.payload_size
        or (message_id is not None and message_id != letter.message_id)
    ):
        raise LookupError(
            f"stream {letter.stream} holds another message at {letter.stream_sequence} now "
            "(was the stream created again?); the dead letter kept only the start of its event"
        )
    return stored.data or b""


async def _publish(subject: str, payload: bytes, headers: dict[str, str], msg_id: str) -> None:
    from cliffracer_core.core.client import shared_transport
    from cliffracer_core.core.streams import publish_message

    await publish_message(await shared_transport(), subject, payload, headers, msg_id=msg_id)
