"""The transactional outbox: publish an event if, and once, the transaction commits.

``publish_on_commit`` writes the event to the outbox table in the current transaction. A
rolled-back transaction leaves nothing to publish; a committed one leaves a row that a relay
publishes to JetStream (``Nats-Msg-Id`` = the row's message id) even if this process dies
the moment after the commit::

    with transaction.atomic():
        order = Order.objects.create(...)
        publish_on_commit("orders.created", OrderCreated(order_id=order.pk, ...))

The row keeps the correlation id and trace context, never the caller's token (it would be a
secret at rest, and could expire before the relay runs): the relay publishes as the system
identity, and names the original caller in ``Cliffracer-Origin-Caller``, for logs only.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

from django.db import transaction

from cliffracer_core.core import codec
from cliffracer_core.core.auth.identity import current_caller
from cliffracer_core.core.context import outgoing_headers
from cliffracer_core.core.headers import AUTHORIZATION
from cliffracer_core.core.settings import cliffracer_settings

logger = logging.getLogger("cliffracer.durable")

# Relays in other processes listen here (in one queue group) to wake at once after a commit.
WAKE_SUBJECT = "cliffracer.outbox.wake"


def relay_mode() -> bool | str:
    """``OUTBOX_RELAY`` as True, False or "own" (the environment gives it as a word); None when
    the value is none of them (cliffracer.E022)."""
    value = cliffracer_settings.OUTBOX_RELAY
    if isinstance(value, str):
        word = value.strip().lower()
        if word == "own":
            return "own"
        if word in ("1", "true", "yes", "on"):
            return True
        if word in ("0", "false", "no", "off", ""):
            return False
        return None  # type: ignore[return-value]
    return value if isinstance(value, bool) else None  # type: ignore[return-value]


def publish_on_commit(
    subject: str,
    data: Any,
    *,
    headers: dict[str, str] | None = None,
    msg_id: str | None = None,
    using: str | None = None,
) -> Any:
    """Write ``data`` (a pydantic model or plain JSON values) to the outbox, to be published
    on ``subject`` once the current transaction commits. Returns the ``OutboxMessage``.

    ``msg_id`` (default: a new one) becomes the event's ``Nats-Msg-Id``. Outside
    ``transaction.atomic()`` the row commits at once, and is published as soon as possible.
    """
    from cliffracer_core.contrib.durable.models import OutboxMessage

    if not subject or any(character.isspace() for character in subject) or "*" in subject:
        raise ValueError(f"Cannot publish on {subject!r}.")
    values = outgoing_headers(headers)
    authorization = values.pop(AUTHORIZATION, None)
    fields: dict[str, Any] = {
        "subject": subject,
        "payload": codec.encode(data).decode(),
        "headers": values,
        "caller": _caller_name(authorization),
    }
    if msg_id is not None:
        fields["message_id"] = msg_id
    message = OutboxMessage.objects.using(using).create(**fields)
    transaction.on_commit(nudge, using=using)
    return message


def _caller_name(authorization: str | None) -> str:
    caller = current_caller.get()
    if caller is None and authorization:
        from cliffracer_core.core.auth.tokens import verifier
        from cliffracer_core.core.errors import NotAuthenticated

        try:
            caller = verifier.caller(authorization)
        except NotAuthenticated:
            return ""
    return caller.username[:150] if caller is not None else ""


class Nudger:
    """Wake a relay after a commit: this process's own, or one elsewhere over NATS.

    Commits in a burst share one wake-up message: one is sent after the last commit that
    found none waiting to be sent, and the relay reads every row committed before it.
    """

    # Seconds without wake-ups after one failed (NATS down): the relay's polling goes on.
    QUIET_AFTER_FAILURE = 5.0

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pending = False
        self.quiet_until = 0.0

    def __call__(self) -> None:
        from cliffracer_core.contrib.durable.relay import running_relays

        relays = list(running_relays)
        if relays:
            for relay in relays:
                relay.wake()
            return
        with self.lock:
            if self.pending or time.monotonic() < self.quiet_until:
                return
            self.pending = True
        try:
            self._schedule()
        except Exception:  # noqa: BLE001  (the relay's polling finds the row anyway)
            self.pending = False
            logger.debug("Could not wake an outbox relay", exc_info=True)

    def _schedule(self) -> None:
        from cliffracer_core.core import client

        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None:
            loop.create_task(self._send())
            return
        service_loop = client.service_loop
        if service_loop is not None and service_loop.is_running():
            target = service_loop
        else:
            target = client.background_loop.get_loop()
        asyncio.run_coroutine_threadsafe(self._send(), target)

    async def _send(self) -> None:
        from cliffracer_core.core.client import shared_transport

        with self.lock:
            self.pending = False
        try:
            await (await shared_transport()).publish(WAKE_SUBJECT, b"")
        except Exception:  # noqa: BLE001
            self.quiet_until = time.monotonic() + self.QUIET_AFTER_FAILURE
            logger.debug("Could not wake an outbox relay", exc_info=True)


nudge = Nudger()
