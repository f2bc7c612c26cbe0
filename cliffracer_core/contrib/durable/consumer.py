"""Durable event handlers: one durable consumer per service and handler, on any transport
with durable streams (``Transport.consume``).

The consumer is named ``<service>-<handler>`` and shared by every instance of the service:
each instance takes up to ``DURABLE_PULL_BATCH`` events at a time from it, runs the handler
under the runner's concurrency bound, and then settles the event:

* the handler returned: acknowledge it;
* it raised: record the failure and ask for a redelivery after the next of
  ``DURABLE_RETRY_DELAYS`` (``nak`` with a delay), until the event has been delivered
  ``max_deliveries`` times; then record it as a dead letter and terminate it;
* its body is not valid for the handler's model: a dead letter at once (no retry can help);
* it has been delivered more than ``max_deliveries`` times without an outcome (its handler's
  process died each time): a dead letter, without running the handler again.

A dead letter is recorded before the event is terminated; if the database cannot take the
record, the event is delivered again later instead of being lost.
"""

from __future__ import annotations

import base64
import functools
import logging
import time
from typing import TYPE_CHECKING, Any

from django.apps import apps
from django.core.exceptions import ImproperlyConfigured

from cliffracer_core.contrib.durable.idempotency import Delivery, current_delivery, idempotent
from cliffracer_core.core import tracing
from cliffracer_core.core.auth.identity import Caller, current_caller
from cliffracer_core.core.errors import InternalError, ServiceError
from cliffracer_core.core.headers import (
    AUTHORIZATION,
    CORRELATION_ID,
    MSG_ID,
    REPLAY_FOR,
    REPLAY_OF,
)
from cliffracer_core.core.log import current_endpoint
from cliffracer_core.core.ratelimit import TokenBucket
from cliffracer_core.core.runner import enter_message, parse_request
from cliffracer_core.core.service import Event, Service
from cliffracer_core.core.settings import cliffracer_settings
from cliffracer_core.core.streams import StreamError, declared_streams, ensure_streams, stream_for

if TYPE_CHECKING:
    from cliffracer_core.core.runner import ServiceRunner
    from cliffracer_core.transports.base import Consumer
    from cliffracer_core.transports.base import Delivery as Delivered

logger = logging.getLogger("cliffracer.durable")


def consumer_name(service: str, handler: str) -> str:
    """The durable consumer of one handler. A handler's name holds no '-', so it is unique."""
    return f"{service}-{handler}"


def durable_streams(service_class: type[Service]) -> dict[Event, str]:
    """The stream of each durable handler of ``service_class``.

    Raises ``ImproperlyConfigured`` when a durable handler's subject is in no declared stream
    or the durable app is not installed: known before connecting, so a service that cannot
    work does not start.
    """
    name = service_class.service_name()
    durable_events = [event for event in service_class.events() if event.durable]
    if durable_events and not apps.is_installed("cliffracer_core.contrib.durable"):
        raise ImproperlyConfigured(
            f"Service {name} has durable event handlers, but 'cliffracer_core.contrib.durable' "
            "is not in INSTALLED_APPS (it keeps their dead letters)."
        )
    needed: dict[Event, str] = {}
    for event in durable_events:
        stream = stream_for(event.subject)
        if stream is None:
            raise ImproperlyConfigured(
                f"{name}.{event.attribute} is a durable handler of {event.subject!r}, but no "
                "declared stream holds that subject. Declare one in CLIFFRACER['STREAMS'] or "
                "in the owning service's `streams` attribute, e.g. "
                f"{{'NAME': {{'subjects': [{event.subject.split('.')[0] + '.>'!r}]}}}}."
            )
        needed[event] = stream
    return needed


async def start_durable_consumers(runner: ServiceRunner) -> list[DurableConsumer]:
    """Create or update the streams the service needs and owns, then start its consumers.

    Raises ``ImproperlyConfigured`` when the transport has no durable streams, or refuses a
    stream or a consumer.
    """
    service_class = runner.service_class
    needed = durable_streams(service_class)
    durable_events = list(needed)
    owned = [name for name in (service_class.streams or {}) if name in declared_streams()]
    if not durable_events and not owned:
        return []
    transport = runner.transport
    assert transport is not None
    if not transport.features.durable:
        if durable_events:
            raise ImproperlyConfigured(
                f"Service {runner.name} has durable event handlers, but the "
                f"{type(transport).__name__} transport has no durable streams."
            )
        return []
    names = sorted(set(owned) | set(needed.values()))
    try:
        await ensure_streams(transport, names)
    except StreamError as error:
        if not durable_events:
            # Streams this service owns but does not consume: a publisher creates them too.
            logger.error("Service %s: %s", runner.name, error)
            return []
        raise ImproperlyConfigured(f"Service {runner.name}: {error}") from None
    consumers = [DurableConsumer(runner, event, stream) for event, stream in needed.items()]
    for consumer in consumers:
        try:
            await consumer.start()
        except Exception as error:
            raise ImproperlyConfigured(
                f"Service {runner.name}: the transport refused the consumer {consumer.name} "
                f"on stream {consumer.stream}: {getattr(error, 'description', None) or error}."
            ) from error
    return consumers


class DurableConsumer:
    """Take one durable handler's events from its stream and settle each after the handler."""

    def __init__(self, runner: ServiceRunner, event: Event, stream: str) -> None:
        self.runner = runner
        self.event = event
        self.stream = stream
        self.name = consumer_name(runner.name, event.attribute)
        self.max_deliveries = event.max_deliveries or int(
            cliffracer_settings.DURABLE_MAX_DELIVERIES
        )
        self.delays = [float(delay) for delay in cliffracer_settings.DURABLE_RETRY_DELAYS] or [0.0]
        self.ack_wait = float(cliffracer_settings.DURABLE_ACK_WAIT)
        # Events taken and not yet settled stay within this, so that none waits long in this
        # process (its ack wait runs from delivery); one at a time from an ordered stream, so
        # that its handler runs them in the stream's order.
        self.batch = max(1, min(int(cliffracer_settings.DURABLE_PULL_BATCH), runner.concurrency))
        declared = declared_streams().get(stream)
        if declared is not None and declared.options.get("ordered"):
            self.batch = 1
        self.consumer: Consumer | None = None
        self.stopping = False
        # Outcomes, for inspection and tests.
        self.acknowledged = 0
        self.retried = 0
        self.dead_letters = 0
        self.refused = 0
        self.duplicates = 0
        # Dead-letter rows this consumer may write: a token bucket, so that a flood of events
        # that all fail cannot flood the database (docs/durable.md).
        self.record_budget = TokenBucket(float(cliffracer_settings.DEAD_LETTERS_PER_SECOND))
        if tracing.tracer is not None:
            self.handle = tracing.traced(  # type: ignore[method-assign]
                self.handle, tracing.CONSUMER, lambda delivered: delivered, self._span_details
            )

    def _span_details(self, delivered: Delivered) -> dict[str, Any]:
        """What a durable delivery's span says besides the subject: which attempt it is."""
        return {
            "template": self.event.subject,
            "group": self.name,
            "extra": {"messaging.nats.message.delivery_attempt": delivered.delivered},
        }

    @property
    def incarnation(self) -> str:
        """Which life of the stream the consumer reads (see ``sequence_key``)."""
        return self.consumer.incarnation if self.consumer is not None else ""

    async def start(self) -> None:
        transport = self.runner.transport
        assert transport is not None
        self.consumer = await transport.consume(
            self.stream,
            self.name,
            self.on_delivery,
            filter_subject=self.event.subject,
            ack_wait=self.ack_wait,
            max_in_flight=self.batch,
            description=f"Cliffracer {self.runner.name}.{self.event.attribute}",
        )

    def stop(self) -> None:
        """Take no new events; those still delivered are handed back at once."""
        self.stopping = True
        if self.consumer is not None:
            self.consumer.stop()

    async def close(self) -> None:
        if self.consumer is not None:
            await self.consumer.close()

    async def on_delivery(self, delivered: Delivered) -> None:
        # Waiting here holds back this consumer's next events: the concurrency bound.
        slots = self.runner.slots
        assert slots is not None
        await slots.acquire()
        if self.stopping:
            slots.release()
            await delivered.nak()
            return
        self.runner.handling.spawn(self.handle(delivered))

    # One event

    async def handle(self, delivered: Delivered) -> None:
        """Run the handler on one event and settle it; never raises."""
        try:
            await self._handle(delivered)
        except Exception:  # settled below: a redelivery, never a lost event
            logger.exception("Durable consumer %s failed on an event.", self.name)
            await delivered.nak(self.delays[0])

    async def _handle(self, message: Delivered) -> None:
        runner = self.runner
        event = self.event
        started = time.perf_counter_ns()
        values, _ = enter_message(message)
        headers = message.headers or {}
        current_endpoint.set(event.attribute)
        correlation_id = values[CORRELATION_ID]
        runner.handling.track("event", event.attribute, correlation_id)
        replay_for = headers.get(REPLAY_FOR)
        if replay_for is not None and replay_for != self.name:
            # A dead letter replayed for another consumer of this stream.
            await message.ack()
            return
        try:
            # Its token must have been valid when the stream stored it, however long ago.
            caller = await runner.identify_publisher(
                event, message.headers, values.get(AUTHORIZATION), at=message.stored_at
            )
        except ServiceError as refusal:
            # Not from a publisher this handler takes events from: no retry can change that,
            # and no dead letter keeps what an outsider sent.
            await message.term()
            self.refused += 1
            await runner.refuse_event(event, message.subject, refusal, correlation_id, started)
            return
        current_caller.set(caller)
        attempt = message.delivered
        message_id = (
            headers.get(REPLAY_OF)
            or headers.get(MSG_ID)
            or sequence_key(message.stream, self.incarnation, message.sequence)
        )
        delivery = Delivery(self.name, message_id, attempt)
        current_delivery.set(delivery)
        failure: BaseException | None = None
        error: ServiceError | None = None
        dead = attempt >= self.max_deliveries
        if attempt > self.max_deliveries:
            # Delivered that often without an outcome: the handler's process died each time
            # (or its acknowledgements were lost). Running it again could kill another one.
            failure = RuntimeError(
                f"delivered {attempt} times without being acknowledged (the handler's "
                "process stopped, or its acknowledgement was lost)"
            )
            error = InternalError()
        else:
            try:
                payload = parse_request(event.model, message.data)
            except ServiceError as raised:
                # Not valid for the handler's model: no redelivery can change that.
                failure = error = raised
                dead = True
            else:
                try:
                    handler = getattr(runner.service, event.attribute)
                    if event.idempotent:
                        # Its writes and the processed-message record share a transaction.
                        handler = idempotent(handler)
                    await runner.handling.invoke(handler, event.is_async, payload)
                except ServiceError as raised:
                    failure = error = raised
                    logger.warning(
                        "Durable event on %s rejected by %s.%s (delivery %d of %d): %s",
                        message.subject,
                        runner.name,
                        event.attribute,
                        attempt,
                        self.max_deliveries,
                        raised,
                    )
                except Exception as raised:
                    failure = raised
                    error = InternalError()
                    logger.exception(
                        "Durable handler %s.%s failed on %s (delivery %d of %d)",
                        runner.name,
                        event.attribute,
                        message.subject,
                        attempt,
                        self.max_deliveries,
                    )
        if failure is None:
            await message.ack()
            self.acknowledged += 1
            runner.events_handled += 1
            outcome = "ok"
            if delivery.duplicate:
                # processed_once found its record: a redelivery, or a key seen before. A surge
                # of these is worth seeing (metrics, STATS), each one worth a debug line.
                outcome = "duplicate"
                self.duplicates += 1
                logger.debug(
                    "%s skipped the event on %s as processed already (key %s).",
                    self.name,
                    message.subject,
                    message_id,
                )
            runner.metrics.events[event.attribute][outcome] += 1
            await runner.finish_event(event, message.subject, outcome, started, correlation_id)
            if attempt > 1:
                # It failed before: it is no longer retrying.
                await self._in_thread(forget_failure, self.name, message.stream, message.sequence)
            return
        assert error is not None
        runner.events_failed += 1
        kind = "rejected" if isinstance(failure, ServiceError) else "error"
        runner.metrics.events[event.attribute][kind] += 1
        delay = self.delays[min(attempt, len(self.delays)) - 1]
        if not self.record_budget.take():
            # Over this consumer's budget of rows: a dead event comes back later to be
            # recorded then (nothing is lost); a retrying one is retried unrecorded.
            await message.nak(delay)
            self.retried += 1
            outcome = f"{error.code} {error.type}, not recorded (over the budget), retried"
            await runner.finish_event(event, message.subject, outcome, started, correlation_id)
            return
        record = functools.partial(
            record_failure,
            service=runner.name,
            handler=event.attribute,
            consumer=self.name,
            stream=message.stream,
            sequence=message.sequence,
            attempts=attempt,
            subject=message.subject,
            message_id=message_id,
            payload=message.data,
            headers=headers,
            correlation_id=correlation_id,
            caller=caller,
            failure=failure,
            dead=dead,
        )
        recorded = await self._in_thread(record)
        if dead and recorded:
            await message.term()
            self.dead_letters += 1
            outcome = f"{error.code} {error.type}, dead letter after {attempt} deliveries"
            logger.error(
                "Durable event on %s is a dead letter of %s.%s after %d deliveries: %s: %s",
                message.subject,
                runner.name,
                event.attribute,
                attempt,
                type(failure).__name__,
                failure,
            )
        else:
            await message.nak(delay)
            self.retried += 1
            outcome = f"{error.code} {error.type}, delivery {attempt + 1} in {delay:g}s"
        await runner.finish_event(event, message.subject, outcome, started, correlation_id, error)

    async def _in_thread(self, function: Any, *args: Any) -> bool:
        """Run a database function in the runner's threads; False (logged) if it failed."""
        try:
            await self.runner.handling.in_thread(function, *args)
        except Exception:
            logger.exception("Durable consumer %s: could not record in the database", self.name)
            return False
        return True


def sequence_key(stream: str, incarnation: str, sequence: int) -> str:
    """The identity of an event published without a ``Nats-Msg-Id``:
    ``<stream>@<incarnation>:<sequence>``, e.g. ``ORDERS@20261206T033812.123456Z:42``."""
    return f"{stream}@{incarnation}:{sequence}"


def record_failure(
    *,
    service: str,
    handler: str,
    consumer: str,
    stream: str,
    sequence: int,
    attempts: int,
    subject: str,
    message_id: str,
    payload: bytes,
    headers: dict[str, str],
    correlation_id: str,
    caller: Caller | None,
    failure: BaseException,
    dead: bool,
) -> None:
    """Record one failed delivery: a row per consumer and event, retrying or dead."""
    from django.db import transaction
    from django.utils import timezone

    from cliffracer_core.contrib.durable.models import DeadLetter

    text, encoding = kept_payload(payload, int(cliffracer_settings.DEAD_LETTER_MAX_PAYLOAD_BYTES))
    now = timezone.now()
    error_type = type(failure).__qualname__
    if type(failure).__module__ not in ("builtins", None):
        error_type = f"{type(failure).__module__}.{error_type}"
    status = DeadLetter.Status.PENDING if dead else DeadLetter.Status.RETRYING
    values = {
        "error_type": error_type[:255],
        "error_message": str(failure)[:10000],
        "attempts": attempts,
        "last_failed_at": now,
    }
    with transaction.atomic():
        letter, created = DeadLetter.objects.select_for_update().get_or_create(
            consumer=consumer,
            stream=stream,
            stream_sequence=sequence,
            defaults={
                **values,
                "service": service,
                "handler": handler,
                "subject": subject[:255],
                "message_id": message_id[:255],
                "payload": text,
                "payload_encoding": encoding,
                "payload_size": len(payload),
                # Never the token: it is a secret, and would have expired by a replay.
                "headers": kept_headers(headers),
                "correlation_id": correlation_id[:128],
                "caller": (caller.username if caller else "")[:150],
                "first_failed_at": now,
                "status": status,
            },
        )
        if not created:
            for name, value in values.items():
                setattr(letter, name, value)
            if letter.status == DeadLetter.Status.RETRYING:
                letter.status = status
            letter.save(update_fields=[*values, "status"])


# Headers a dead letter keeps, and characters of each value.
MAX_KEPT_HEADERS = 32
MAX_KEPT_HEADER_VALUE = 1000


def kept_payload(payload: bytes, limit: int) -> tuple[str, str]:
    """What a dead letter stores of ``payload``: its first ``limit`` bytes, as text when they
    are UTF-8 (cut at a whole character) and as base64 when they are not; and the encoding."""
    kept = payload[:limit]
    try:
        return kept.decode(), "utf-8"
    except UnicodeDecodeError as error:
        if len(kept) < len(payload) and error.start >= len(kept) - 3:
            # Cut in the middle of a character: keep the whole ones before it.
            try:
                return kept[: error.start].decode(), "utf-8"
            except UnicodeDecodeError:
                pass
        return base64.b64encode(kept).decode(), "base64"


def kept_headers(headers: dict[str, str]) -> dict[str, str]:
    """The headers a dead letter stores: never the token, and no more than a few, short."""
    kept: dict[str, str] = {}
    for name, value in headers.items():
        if name == AUTHORIZATION:
            continue
        if len(kept) >= MAX_KEPT_HEADERS:
            break
        kept[name[:200]] = value[:MAX_KEPT_HEADER_VALUE]
    return kept


def forget_failure(consumer: str, stream: str, sequence: int) -> None:
    """An event that failed before has now been handled: it is no longer retrying."""
    from cliffracer_core.contrib.durable.models import DeadLetter

    DeadLetter.objects.filter(
        consumer=consumer,
        stream=stream,
        stream_sequence=sequence,
        status=DeadLetter.Status.RETRYING,
    ).delete()
