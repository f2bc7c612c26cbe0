"""Process each message once: a record of processed message ids beside the handler's writes.

JetStream delivers at least once: an event whose acknowledgement was lost (a crash, a
reconnect) comes again. ``processed_once`` makes the side effects happen once anyway::

    @event("orders.created", durable=True)
    def on_order_created(self, order: OrderCreated) -> None:
        with processed_once() as first:
            if first:
                Shipment.objects.create(order_id=order.order_id)

or, for a handler whose whole body is the side effect, ``@event(..., idempotent=True)``.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone


@dataclass(slots=True)
class Delivery:
    """The durable event being handled: who consumes it, its identity, which delivery, and
    whether ``processed_once`` found it processed already (the consumer counts those)."""

    consumer: str
    message_id: str
    attempt: int
    duplicate: bool = False


current_delivery: contextvars.ContextVar[Delivery | None] = contextvars.ContextVar(
    "cliffracer_current_delivery", default=None
)


def get_message_id() -> str | None:
    """Return the id of the durable event being handled (its Nats-Msg-Id), if any."""
    delivery = current_delivery.get()
    return delivery.message_id if delivery else None


@contextmanager
def processed_once(
    message_id: str | None = None, *, consumer: str | None = None, using: str | None = None
) -> Iterator[bool]:
    """Open a transaction and record the message as processed; yield whether it was new.

    Inside a durable handler both ids default to the event being handled. The record commits
    with the block's writes, or rolls back with them if the block raises (and the event is
    then retried). Two deliveries of one message at once cannot both see ``True``: the
    second waits for the first's transaction and then finds its record.
    """
    delivery = current_delivery.get()
    if message_id is None:
        if delivery is None:
            raise RuntimeError(
                "processed_once() needs a message id outside a durable event handler."
            )
        message_id = delivery.message_id
    if consumer is None:
        consumer = delivery.consumer if delivery is not None else ""
    with transaction.atomic(using=using):
        first = _record(consumer, message_id, using)
        if not first and delivery is not None and delivery.message_id == message_id:
            delivery.duplicate = True
        yield first


def _record(consumer: str, message_id: str, using: str | None) -> bool:
    from cliffracer_core.contrib.durable.models import ProcessedMessage

    try:
        # A savepoint, so that a duplicate leaves the outer transaction usable.
        with transaction.atomic(using=using):
            ProcessedMessage.objects.using(using).create(
                consumer=consumer, message_id=message_id, processed_at=timezone.now()
            )
    except IntegrityError:
        return False
    return True


def idempotent(function: Callable[..., Any]) -> Callable[..., Any]:
    """Run a plain ``def`` handler inside ``processed_once``, and not at all for a message
    it has processed before (what ``@event(..., idempotent=True)`` does)."""

    @functools.wraps(function)
    def handler(*args: Any, **kwargs: Any) -> Any:
        with processed_once() as first:
            if first:
                return function(*args, **kwargs)
        return None

    return handler
