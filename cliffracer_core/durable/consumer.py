"""Durable event handlers: one JetStream pull consumer per service and handler.

The consumer is named ``<service>-<handler>`` and shared by every instance of the service:
each instance asks it for events (pull requests of up to ``DURABLE_PULL_BATCH``), runs the
handler under the runner's concurrency bound, and then settles the event:

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

import asyncio
import base64
import functools
import json
import logging
import time
from typing import TYPE_CHECKING, Any, NamedTuple

from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from nats.aio.msg import Msg
from nats.js import api

from cliffracer_core.auth.identity import Caller, current_caller
from cliffracer_core.db import run_with_connection_hygiene
from cliffracer_core.durable.idempotency import Delivery, current_delivery
from cliffracer_core.durable.streams import (
    MSG_ID,
    REPLAY_FOR,
    REPLAY_OF,
    StreamError,
    declared_streams,
    ensure_streams,
    jetstream,
    stream_for,
)
from cliffracer_core.errors import InternalError, ServiceError
from cliffracer_core.headers import AUTHORIZATION, CORRELATION_ID
from cliffracer_core.log import current_endpoint
from cliffracer_core.runner import enter_message, event_caller, parse_request
from cliffracer_core.service import Event, Service
from cliffracer_core.settings import cliffracer_settings

if TYPE_CHECKING:
    from cliffracer_core.runner import ServiceRunner

logger = logging.getLogger("cliffracer.durable")

# Seconds a pull request waits on the server for events before it expires (and is renewed).
PULL_EXPIRES = 5.0
# How often each consumer checks that its pull requests are alive (after a reconnect, the
# server has forgotten them).
WATCH_INTERVAL = 1.0
STATUS = "Status"
PENDING_MESSAGES = "Nats-Pending-Messages"


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
    if durable_events and not apps.is_installed("cliffracer_core.durable"):
        raise ImproperlyConfigured(
            f"Service {name} has durable event handlers, but 'cliffracer_core.durable' is not "
            "in INSTALLED_APPS (it keeps their dead letters)."
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

    Raises ``ImproperlyConfigured`` when JetStream refuses a stream or a consumer.
    """
    service_class = runner.service_class
    needed = durable_streams(service_class)
    durable_events = list(needed)
    owned = [name for name in (service_class.streams or {}) if name in declared_streams()]
    if not durable_events and not owned:
        return []
    names = sorted(set(owned) | set(needed.values()))
    try:
        await ensure_streams(runner.connection, names)  # type: ignore[arg-type]
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
                f"Service {runner.name}: JetStream refused the consumer {consumer.name} on "
                f"stream {consumer.stream}: {getattr(error, 'description', None) or error}."
            ) from error
    return consumers


class DurableConsumer:
    """Pull one durable handler's events from JetStream and settle each after the handler."""

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
        # Events asked for and events being handled stay within this, so that none waits
        # long in this process (its ack wait runs from delivery); asked for again once a
        # quarter of it is free.
        self.batch = max(1, min(int(cliffracer_settings.DURABLE_PULL_BATCH), runner.concurrency))
        self.pull_threshold = max(1, self.batch // 4)
        self.next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{self.name}"
        self.inbox = ""
        # Events asked for and not yet taken (some may wait in the subscription's queue), and
        # events whose handlers run.
        self.requested = 0
        self.active = 0
        # The events whose handlers run, and since when we last said so to JetStream.
        self.working: dict[int, tuple[Msg, float]] = {}
        self.pulled_at = 0.0
        self.heard_at = 0.0
        self.waiting_for_slot = False
        self.reconnects = 0
        self.lost = False
        self.stopping = False
        self.subscription: Any = None
        self.watcher: asyncio.Task[None] | None = None
        # Outcomes, for inspection and tests.
        self.acknowledged = 0
        self.retried = 0
        self.dead_letters = 0

    def config(self) -> api.ConsumerConfig:
        return api.ConsumerConfig(
            name=self.name,
            durable_name=self.name,
            description=f"Cliffracer {self.runner.name}.{self.event.attribute}",
            filter_subject=self.event.subject,
            deliver_policy=api.DeliverPolicy.ALL,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait,
            # Cliffracer counts deliveries itself, so that the last one becomes a dead letter
            # (the server would only drop it).
            max_deliver=-1,
        )

    # Running

    async def start(self) -> None:
        connection = self.runner.connection
        assert connection is not None
        await jetstream(connection).add_consumer(self.stream, self.config())
        self.inbox = connection.new_inbox()
        self.subscription = await connection.subscribe(self.inbox, cb=self.on_message)
        self.reconnects = connection.stats["reconnects"]
        self.heard_at = asyncio.get_running_loop().time()
        self.watcher = asyncio.create_task(self.watch())
        self.runner.background.append(self.watcher)
        await self.pull()

    async def keep_alive(self) -> None:
        """Say "still working" (+WPI) for every event whose handler has run half an ack wait
        since it started or was last said, so that JetStream does not deliver it again."""
        if not self.working:
            return
        now = time.monotonic()
        due = now - self.ack_wait / 2
        for key, (message, since) in list(self.working.items()):
            if since <= due and key in self.working:
                self.working[key] = (message, now)
                await settle(message.in_progress)

    def stop(self) -> None:
        """Take no new events; those the server still sends are handed back at once."""
        self.stopping = True

    async def pull(self) -> None:
        count = self.batch - self.requested - self.active
        if count <= 0 or self.stopping or (count < self.pull_threshold and self.requested):
            return
        connection = self.runner.connection
        assert connection is not None
        self.requested += count
        self.pulled_at = asyncio.get_running_loop().time()
        request = {"batch": count, "expires": int(PULL_EXPIRES * 1e9)}
        try:
            await connection.publish(self.next_subject, json.dumps(request).encode(), self.inbox)
        except Exception:  # noqa: BLE001  (the watcher asks again)
            self.requested -= count
            logger.debug("Pull request of %s failed", self.name, exc_info=True)

    async def watch(self) -> None:
        """Renew lost pull requests (a reconnect, a restarted server) and a lost consumer;
        tell JetStream about handlers that run long."""
        loop = asyncio.get_running_loop()
        connection = self.runner.connection
        assert connection is not None
        interval = min(WATCH_INTERVAL, self.ack_wait / 4)
        while True:
            await asyncio.sleep(interval)
            if not connection.is_connected:
                continue
            await self.keep_alive()
            if self.stopping:
                continue
            reconnects = connection.stats["reconnects"]
            # A pull request ends with events or, at its expiry, a status; hearing neither
            # means the server no longer has it.
            silent = (
                self.requested > 0
                and not self.waiting_for_slot
                and loop.time() - max(self.heard_at, self.pulled_at) > PULL_EXPIRES + 2
            )
            if reconnects != self.reconnects or self.lost or silent:
                try:
                    # After a restart the server may hold the consumer, or may have lost it.
                    await jetstream(connection).add_consumer(self.stream, self.config())
                except Exception as error:  # noqa: BLE001  (tried again on the next round)
                    logger.warning(
                        "Durable consumer %s on stream %s: %s; retrying.",
                        self.name,
                        self.stream,
                        getattr(error, "description", None) or type(error).__name__,
                    )
                    continue
                self.reconnects = reconnects
                self.lost = False
                self.requested = 0
                self.heard_at = loop.time()
            await self.pull()

    async def on_message(self, message: Msg) -> None:
        self.heard_at = asyncio.get_running_loop().time()
        if not message.reply:
            # A status from the server about a pull request: expired (408) or ended (409).
            headers = message.headers or {}
            status = headers.get(STATUS)
            if status in ("408", "409"):
                try:
                    unmet = int(headers.get(PENDING_MESSAGES) or 0)
                except ValueError:
                    unmet = 0
                self.requested = max(0, self.requested - unmet)
                if status == "409" and "deleted" in str(headers.get("Description", "")).lower():
                    self.lost = True
                    self.requested = 0
            if not self.lost:
                await self.pull()
            return
        if self.stopping:
            self.requested = max(0, self.requested - 1)
            await settle(message.nak)
            return
        # Waiting here holds back this consumer's next events: the concurrency bound.
        slots = self.runner.slots
        assert slots is not None
        self.waiting_for_slot = True
        await slots.acquire()
        self.waiting_for_slot = False
        self.requested = max(0, self.requested - 1)
        if self.stopping:
            slots.release()
            await settle(message.nak)
            return
        self.active += 1
        self.runner._spawn(self.handle(message))
        await self.pull()

    # One event

    async def handle(self, message: Msg) -> None:
        """Run the handler on one event and settle it; never raises."""
        try:
            await self._handle(message)
        finally:
            self.active -= 1
            await self.pull()

    async def _handle(self, message: Msg) -> None:
        runner = self.runner
        event = self.event
        started = time.perf_counter_ns()
        values, _ = enter_message(message)
        headers = message.headers or {}
        current_endpoint.set(event.attribute)
        caller = event_caller(values.get(AUTHORIZATION))
        current_caller.set(caller)
        correlation_id = values[CORRELATION_ID]
        runner._track("event", event.attribute, correlation_id)
        replay_for = headers.get(REPLAY_FOR)
        if replay_for is not None and replay_for != self.name:
            # A dead letter replayed for another consumer of this stream.
            await settle(message.ack)
            return
        position = Position.of(message)
        attempt = position.delivered
        message_id = (
            headers.get(REPLAY_OF)
            or headers.get(MSG_ID)
            or f"{position.stream}:{position.sequence}"
        )
        current_delivery.set(Delivery(self.name, message_id, attempt))
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
                key = id(message)
                self.working[key] = (message, time.monotonic())
                try:
                    await runner._invoke_handler(event.attribute, event.is_async, payload)
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
                finally:
                    del self.working[key]
        if failure is None:
            await settle(message.ack)
            self.acknowledged += 1
            runner.events_handled += 1
            runner.metrics.events[event.attribute]["ok"] += 1
            runner._log_access("event", event.attribute, "ok", started, subject=message.subject)
            if attempt > 1:
                # It failed before: it is no longer retrying.
                await self._in_thread(forget_failure, self.name, position)
            return
        assert error is not None
        runner.events_failed += 1
        kind = "rejected" if isinstance(failure, ServiceError) else "error"
        runner.metrics.events[event.attribute][kind] += 1
        record = functools.partial(
            record_failure,
            service=runner.name,
            handler=event.attribute,
            consumer=self.name,
            position=position,
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
            await settle(message.term)
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
            delay = self.delays[min(attempt, len(self.delays)) - 1]
            await settle(message.nak, delay)
            self.retried += 1
            outcome = f"{error.code} {error.type}, delivery {attempt + 1} in {delay:g}s"
        runner._log_access("event", event.attribute, outcome, started, subject=message.subject)
        await runner._report_error("event", event.attribute, message.subject, error, correlation_id)

    async def _in_thread(self, function: Any, *args: Any) -> bool:
        """Run a database function in the runner's threads; False (logged) if it failed."""
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(
                self.runner.executor, run_with_connection_hygiene, function, *args
            )
        except Exception:
            logger.exception("Durable consumer %s: could not record in the database", self.name)
            return False
        return True


class Position(NamedTuple):
    """Where a delivered event is: its stream and sequence, and which delivery this is."""

    stream: str
    sequence: int
    delivered: int

    @classmethod
    def of(cls, message: Msg) -> Position:
        # The reply subject says it: $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>...
        # (read here without the date nats-py's ``metadata`` also builds), or, with a domain
        # and account, $JS.ACK.<domain>.<account>.<stream>.<consumer>.<delivered>.<seq>...
        tokens = (message.reply or "").split(".")
        if len(tokens) == 9:
            return cls(tokens[2], int(tokens[5]), int(tokens[4]))
        metadata = message.metadata
        return cls(metadata.stream, metadata.sequence.stream, metadata.num_delivered)


async def settle(action: Any, *args: Any) -> None:
    """Acknowledge, nak or terminate; one lost on the way means a redelivery, no more."""
    try:
        await action(*args)
    except Exception:  # noqa: BLE001
        logger.debug("Could not settle a durable event", exc_info=True)


def record_failure(
    *,
    service: str,
    handler: str,
    consumer: str,
    position: Position,
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

    from cliffracer_core.durable.models import DeadLetter

    try:
        text, encoding = payload.decode(), "utf-8"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(payload).decode(), "base64"
    now = timezone.now()
    error_type = type(failure).__qualname__
    if type(failure).__module__ not in ("builtins", None):
        error_type = f"{type(failure).__module__}.{error_type}"
    status = DeadLetter.Status.PENDING if dead else DeadLetter.Status.RETRYING
    values = {
        "error_type": error_type[:255],
        "error_message": str(failure)[:10000],
        "attempts": position.delivered,
        "last_failed_at": now,
    }
    with transaction.atomic():
        letter, created = DeadLetter.objects.select_for_update().get_or_create(
            consumer=consumer,
            stream=position.stream,
            stream_sequence=position.sequence,
            defaults={
                **values,
                "service": service,
                "handler": handler,
                "subject": subject[:255],
                "message_id": message_id[:255],
                "payload": text,
                "payload_encoding": encoding,
                # Never the token: it is a secret, and would have expired by a replay.
                "headers": {
                    name: value for name, value in headers.items() if name != AUTHORIZATION
                },
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


def forget_failure(consumer: str, position: Position) -> None:
    """An event that failed before has now been handled: it is no longer retrying."""
    from cliffracer_core.durable.models import DeadLetter

    DeadLetter.objects.filter(
        consumer=consumer,
        stream=position.stream,
        stream_sequence=position.sequence,
        status=DeadLetter.Status.RETRYING,
    ).delete()
