"""Runs one service: subscribes its endpoints, events and timers on NATS and serves them.

For each request: read headers, set the correlation id in context, validate the body into the
request model, run the handler (concurrently with others, up to a bound), validate and encode
the reply, record statistics. Errors become ADR-32 error replies; no traceback crosses the wire.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pydantic_core
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.nuid import NUID
from pydantic import BaseModel, ValidationError

from cliffracer_core import client as client_module
from cliffracer_core import codec, discovery
from cliffracer_core.auth.identity import Caller, current_caller
from cliffracer_core.auth.tokens import system_identity, verifier
from cliffracer_core.connection import connect, forget_connection, redact, set_connection
from cliffracer_core.context import current_headers, current_subject, new_correlation_id
from cliffracer_core.db import (
    MessageState,
    aclose_old_connections,
    message_state,
    run_with_connection_hygiene,
)
from cliffracer_core.durable.streams import REPLAY_FOR
from cliffracer_core.error_records import ErrorReporter
from cliffracer_core.errors import (
    Forbidden,
    InternalError,
    InvalidJson,
    InvalidReply,
    InvalidRequest,
    NotAuthenticated,
    RequestTooLarge,
    ServiceError,
    UnknownEndpoint,
)
from cliffracer_core.headers import AUTHORIZATION, CORRELATION_ID, PROPAGATED
from cliffracer_core.log import current_endpoint, current_service
from cliffracer_core.metrics.recorder import SUCCESS_CODE, ServiceMetrics
from cliffracer_core.service import Event, Rpc, Service, Timer
from cliffracer_core.settings import cliffracer_settings

logger = logging.getLogger("cliffracer.runner")
# One line per RPC, event and timer run, with duration and outcome; an operator can silence
# or route it apart from the rest, as web servers do with their access logs.
access_logger = logging.getLogger("cliffracer.access")

# How often idle database connections of async handlers are checked (seconds).
DATABASE_SWEEP_INTERVAL = 5.0


class ServiceRunner:
    """Serve one ``Service`` class on a NATS connection until ``stop()``."""

    def __init__(
        self,
        service_class: type[Service],
        *,
        nats_url: str | None = None,
        concurrency: int | None = None,
        grace_period: float | None = None,
        threads: int | None = None,
        relay: bool | None = None,
    ) -> None:
        self.service_class = service_class
        self.service = service_class()
        self.nats_url = nats_url or str(cliffracer_settings.NATS_URL)
        self.concurrency = concurrency or cliffracer_settings.CONCURRENCY
        self.grace_period = (
            grace_period if grace_period is not None else cliffracer_settings.GRACE_PERIOD
        )
        self.name = service_class.service_name()
        self.prefix = f"{cliffracer_settings.RPC_SUBJECT_PREFIX}.{self.name}."
        self.max_request_bytes = cliffracer_settings.MAX_REQUEST_BYTES
        self.identity = discovery.Identity(
            id=NUID().next().decode(),
            name=self.name,
            version=service_class.service_version(),
            description=service_class.service_description(),
        )
        self.metadata = discovery.service_metadata(
            service_class, cliffracer_settings.RPC_SUBJECT_PREFIX
        )
        self.rpcs: dict[str, Rpc] = service_class.rpcs()
        self.endpoints = [(rpc, self.prefix + rpc.name, self.name) for rpc in self.rpcs.values()]
        self.counters = {name: discovery.Counters() for name in self.rpcs}
        # Prometheus metrics (docs/metrics.md), recorded beside the ADR-32 counters.
        self.metrics = ServiceMetrics(
            service=self.name,
            version=self.identity.version,
            instance_id=self.identity.id,
            endpoints=self.rpcs,
            events=[(event.attribute, event.subject) for event in service_class.events()],
            timers=[timer.attribute for timer in service_class.timers()],
            in_flight=self.rpcs_in_flight,
            reconnects=self.nats_reconnects,
        )
        default_public = cliffracer_settings.DEFAULT_RPC_ACCESS == "public"
        self.public = {
            name: rpc.public or (default_public and not rpc.permissions)
            for name, rpc in self.rpcs.items()
        }
        self.unknown_requests = 0
        self.events_handled = 0
        self.events_failed = 0
        self.timer_runs = 0
        self.timer_failures = 0
        # Error records for the monitor (docs/console.md), published on failures only.
        self.error_reporter = ErrorReporter(
            service=self.name,
            instance_id=self.identity.id,
            rate=cliffracer_settings.MONITOR["ERRORS_PER_SECOND"],
        )
        self.connection: NatsClient | None = None
        self.executor = ThreadPoolExecutor(
            max_workers=min(threads or cliffracer_settings.THREADS, self.concurrency),
            thread_name_prefix=f"cliffracer-{self.name}",
        )
        self.subscriptions: list[Subscription] = []
        self.control_subscriptions: list[Subscription] = []
        self.in_flight: set[asyncio.Task[Any]] = set()
        # What each in-flight task handles (kind, name, correlation id, start), for inspection.
        self.handling: dict[asyncio.Task[Any], tuple[str, str, str, float]] = {}
        self.background: list[asyncio.Task[Any]] = []
        self.slots: asyncio.Semaphore | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stopping: asyncio.Event | None = None
        self.started = False
        # Durable handlers' JetStream consumers, and the outbox relay: by default (None) a
        # runservice process runs one when OUTBOX_RELAY is on (docs/durable.md).
        self.durable_consumers: list[Any] = []
        self.relay_wanted = relay
        self.relay: Any = None
        from cliffracer_core.durable.consumer import durable_streams

        durable_streams(service_class)  # a durable handler outside every stream: no start

    # Starting and stopping

    async def start(self, *, connect_attempts: int = 0) -> None:
        """Connect (retrying while NATS is not up), subscribe and start timers."""
        self.loop = asyncio.get_running_loop()
        # Everything started from here on (the connection's tasks, handlers, timers) inherits
        # this, so each log line says which service and instance wrote it.
        current_service.set((self.name, self.identity.id))
        self.slots = asyncio.Semaphore(self.concurrency)
        self.stopping = asyncio.Event()
        self.connection = await self._connect(connect_attempts)
        set_connection(self.connection, self.loop)
        client_module.service_loop = self.loop
        await self.service_started()
        connection = self.connection
        self.subscriptions.append(
            await connection.subscribe(self.prefix + ">", queue=self.name, cb=self.on_request)
        )
        for event in self.service_class.events():
            if event.durable:
                continue
            queue = "" if event.broadcast else f"{self.name}.{event.attribute}"
            self.subscriptions.append(
                await connection.subscribe(
                    event.subject, queue=queue, cb=self._event_callback(event)
                )
            )
        from cliffracer_core.durable.consumer import start_durable_consumers
        from cliffracer_core.durable.relay import start_relay

        self.durable_consumers = await start_durable_consumers(self)
        for verb, subject in discovery.control_subjects(self.name, self.identity.id):
            self.control_subscriptions.append(
                await connection.subscribe(subject, cb=self._control_callback(verb.value))
            )
        await connection.flush()
        for timer in self.service_class.timers():
            self.background.append(asyncio.create_task(self._run_timer(timer)))
        self.background.append(asyncio.create_task(self._sweep_database_connections()))
        self.relay = await start_relay(self, self.relay_wanted)
        self.started = True
        logger.info(
            "Service %s %s (instance %s) serving %d endpoints, %d event handlers and %d timers "
            "on %s.",
            self.name,
            self.identity.version,
            self.identity.id,
            len(self.rpcs),
            len(self.service_class.events()),
            len(self.service_class.timers()),
            redact(self.nats_url),
        )

    async def _connect(self, attempts: int) -> NatsClient:
        attempt = 0
        delay = 0.5
        while True:
            attempt += 1
            try:
                return await connect(self.nats_url, role=f"service:{self.name}")
            except Exception as error:  # noqa: BLE001  (any failure to connect is retried)
                if attempts and attempt >= attempts:
                    raise
                logger.warning(
                    "Cannot connect to NATS at %s (%s); retrying in %.1fs.",
                    redact(self.nats_url),
                    error or type(error).__name__,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def service_started(self) -> None:
        hook = getattr(self.service, "on_start", None)
        if hook is not None:
            await _invoke(hook, self.executor)

    async def stop(self) -> None:
        """Stop taking messages, let in-flight handlers finish and reply, then disconnect."""
        if self.stopping is None or self.stopping.is_set():
            return
        self.stopping.set()
        logger.info("Service %s stopping; %d messages in flight.", self.name, len(self.in_flight))
        for consumer in self.durable_consumers:
            consumer.stop()
        for subscription in self.subscriptions:
            # Unsubscribing stops new deliveries at once; messages already delivered to this
            # process are still handled below.
            try:
                await subscription.unsubscribe()
            except Exception:  # noqa: BLE001
                logger.debug("Unsubscribe failed", exc_info=True)
        for task in self.background:
            task.cancel()
        await asyncio.gather(*self.background, return_exceptions=True)
        if self.in_flight:
            done, pending = await asyncio.wait(set(self.in_flight), timeout=self.grace_period)
            if pending:
                logger.warning(
                    "Service %s: %d handlers still running after the %.1fs grace period; "
                    "abandoning them.",
                    self.name,
                    len(pending),
                    self.grace_period,
                )
                for task in pending:
                    task.cancel()
        hook = getattr(self.service, "on_stop", None)
        if hook is not None:
            try:
                await _invoke(hook, self.executor)
            except Exception:
                logger.exception("Service %s: on_stop failed.", self.name)
        for subscription in self.control_subscriptions:
            try:
                await subscription.unsubscribe()
            except Exception:  # noqa: BLE001
                logger.debug("Unsubscribe failed", exc_info=True)
        if self.connection is not None and not self.connection.is_closed:
            try:
                await self.connection.flush(timeout=2)
            except Exception:  # noqa: BLE001
                logger.debug("Flush failed", exc_info=True)
            await self.connection.close()
        if client_module.service_loop is self.loop:
            client_module.service_loop = None
        forget_connection(self.loop)
        self.executor.shutdown(wait=False, cancel_futures=True)
        logger.info("Service %s stopped.", self.name)

    async def run(self, stop: asyncio.Event) -> None:
        """Start, serve until ``stop`` is set, then stop gracefully."""
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()

    # Dispatch

    def _spawn(self, coroutine: Any) -> None:
        # Started eagerly: a handler that never suspends finishes here, without a trip
        # through the event loop; one that awaits I/O goes on as an ordinary task.
        task = asyncio.eager_task_factory(self.loop, coroutine)
        self.in_flight.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self.in_flight.discard(task)
        self.handling.pop(task, None)
        self.slots.release()  # type: ignore[union-attr]

    async def on_request(self, message: Msg) -> None:
        # Waiting for a slot here holds back this subscription's deliveries: that is the bound.
        await self.slots.acquire()  # type: ignore[union-attr]
        self._spawn(self.handle_request(message))

    def _event_callback(self, event: Event) -> Any:
        async def on_event(message: Msg) -> None:
            if message.headers and REPLAY_FOR in message.headers:
                return  # a dead letter replayed for one durable handler (docs/durable.md)
            await self.slots.acquire()  # type: ignore[union-attr]
            self._spawn(self.handle_event(event, message))

        return on_event

    def _control_callback(self, verb: str) -> Any:
        async def on_control(message: Msg) -> None:
            # Which server this instance is on now (it may change on a reconnect).
            self.metadata["nats_server"] = discovery.nats_server_of(self.connection)
            if verb == "PING":
                body = discovery.ping(self.identity, self.metadata)
            elif verb == "INFO":
                body = discovery.info(self.identity, self.metadata, self.endpoints)
            else:
                body = discovery.stats(
                    self.identity,
                    self.metadata,
                    self.endpoints,
                    self.counters,
                    discovery.latency_data(self.metrics.endpoints),
                )
            if message.reply:
                await message.respond(pydantic_core.to_json(body))

        return on_control

    async def handle_request(self, message: Msg) -> None:
        """Answer one RPC request; never raises."""
        started = time.perf_counter_ns()
        values, caller_correlation_id = enter_message(message)
        correlation_id = values[CORRELATION_ID]
        name = message.subject[len(self.prefix) :]
        current_endpoint.set(name)
        self._track("rpc", name, correlation_id)
        rpc = self.rpcs.get(name)
        error: ServiceError | None = None
        body = b""
        try:
            if rpc is None:
                raise UnknownEndpoint(f"Service {self.name!r} has no endpoint {name!r}.")
            # Who is calling, and may they? Before the body is even read.
            current_caller.set(self.authorize(rpc, values.get(AUTHORIZATION)))
            data = message.data
            if len(data) > self.max_request_bytes:
                raise RequestTooLarge(
                    f"The request body is {len(data)} bytes; the limit is {self.max_request_bytes}."
                )
            request = parse_request(rpc.request_model, data)
            result = await self._invoke_handler(rpc.attribute, rpc.is_async, request)
            body = encode_reply(rpc.reply_model, result)
        except ServiceError as raised:
            error = raised
        except Exception:
            logger.exception("Unhandled error in %s.%s", self.name, name)
            error = InternalError()
        elapsed = time.perf_counter_ns() - started
        if rpc is not None:
            self.counters[rpc.name].record(
                elapsed, None if error is None else f"{error.code}:{error.message}"
            )
            self.metrics.endpoints[rpc.name].record(
                elapsed, SUCCESS_CODE if error is None else error.code
            )
        else:
            self.unknown_requests += 1
            self.metrics.unknown_endpoint += 1
        self._log_access(
            "rpc", name, "ok" if error is None else f"{error.code} {error.type}", started
        )
        if error is not None:
            await self._report_error("rpc", name, message.subject, error, correlation_id)
        if not message.reply:
            return
        # A caller that sent a correlation id knows it, and a reply without headers is cheaper
        # to encode and to parse; error replies, and callers that sent none, get it back.
        reply_headers: dict[str, str] | None = (
            None if caller_correlation_id and error is None else {CORRELATION_ID: correlation_id}
        )
        if error is not None:
            body, extra = codec.encode_error(error)
            reply_headers.update(extra)  # type: ignore[union-attr]
        try:
            await self.connection.publish(message.reply, body, headers=reply_headers)  # type: ignore[union-attr]
        except Exception:  # noqa: BLE001  (a reply lost to a dropped connection is logged)
            logger.warning(
                "Could not reply to %s.%s [correlation_id=%s]",
                self.name,
                name,
                correlation_id,
                exc_info=True,
            )

    def authorize(self, rpc: Rpc, authorization: str | None) -> Caller | None:
        """Return the caller of ``rpc``; 401 without a valid token, 403 without permission."""
        if self.public[rpc.name]:
            # A public endpoint needs no token, but a token that is sent must be valid.
            return verifier.caller(authorization) if authorization else None
        caller = verifier.caller(authorization)
        if rpc.permissions and not caller.has_perms(rpc.permissions):
            missing = [p for p in rpc.permissions if not caller.has_perm(p)]
            raise Forbidden(
                f"{caller.username or 'The caller'} may not call {self.name}.{rpc.name}.",
                details={"missing_permissions": missing},
            )
        return caller

    async def handle_event(self, event: Event, message: Msg) -> None:
        """Run one event handler; failures are logged and counted, never raised."""
        started = time.perf_counter_ns()
        values, _ = enter_message(message)
        current_endpoint.set(event.attribute)
        current_caller.set(event_caller(values.get(AUTHORIZATION)))
        self._track("event", event.attribute, values[CORRELATION_ID])
        outcome = "ok"
        failure: ServiceError | None = None
        try:
            payload = parse_request(event.model, message.data)
            await self._invoke_handler(event.attribute, event.is_async, payload)
            self.events_handled += 1
            self.metrics.events[event.attribute]["ok"] += 1
        except ServiceError as error:
            self.events_failed += 1
            self.metrics.events[event.attribute]["rejected"] += 1
            outcome = f"{error.code} {error.type}"
            failure = error
            logger.warning(
                "Event on %s rejected by %s.%s: %s",
                message.subject,
                self.name,
                event.attribute,
                error,
            )
        except Exception:
            self.events_failed += 1
            self.metrics.events[event.attribute]["error"] += 1
            outcome = "500 internal_error"
            failure = InternalError()
            logger.exception(
                "Event handler %s.%s failed on %s", self.name, event.attribute, message.subject
            )
        self._log_access("event", event.attribute, outcome, started, subject=message.subject)
        if failure is not None:
            await self._report_error(
                "event", event.attribute, message.subject, failure, values[CORRELATION_ID]
            )

    async def _invoke_handler(self, attribute: str, is_async: bool, argument: Any) -> Any:
        handler = getattr(self.service, attribute)
        arguments = () if argument is _NO_ARGUMENT else (argument,)
        if not is_async:
            context = contextvars.copy_context()
            return await self.loop.run_in_executor(  # type: ignore[union-attr]
                self.executor, context.run, run_with_connection_hygiene, handler, *arguments
            )
        state = MessageState()
        message_state.set(state)
        try:
            return await handler(*arguments)
        finally:
            if state.database_used:
                await aclose_old_connections()

    # Timers

    async def _run_timer(self, timer: Timer) -> None:
        loop = asyncio.get_running_loop()
        interval = timer.seconds
        next_run = loop.time() + (0.0 if timer.immediate else interval)
        while not self.stopping.is_set():  # type: ignore[union-attr]
            delay = next_run - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await self.slots.acquire()  # type: ignore[union-attr]
            run = loop.create_task(self._timer_tick(timer))
            self.in_flight.add(run)
            run.add_done_callback(self._finished)
            # Awaited here so runs of one timer never overlap; shielded so that stopping the
            # timer loop lets a run in progress finish within the grace period.
            await asyncio.shield(run)
            # Next tick on the original grid; ticks missed while a run overran are skipped.
            next_run += interval
            now = loop.time()
            if next_run <= now:
                next_run += ((now - next_run) // interval + 1) * interval

    async def _timer_tick(self, timer: Timer) -> None:
        started = time.perf_counter_ns()
        # A timer tick is an edge: it starts a new chain of calls and events.
        correlation_id = new_correlation_id()
        values = {CORRELATION_ID: correlation_id}
        # A timer acts as the configured system identity, for itself and the calls it makes.
        if authorization := system_identity.authorization():
            values[AUTHORIZATION] = authorization
        current_headers.set(values)
        current_caller.set(event_caller(authorization))
        current_endpoint.set(timer.attribute)
        self._track("timer", timer.attribute, correlation_id)
        outcome = "ok"
        try:
            await self._invoke_handler(timer.attribute, timer.is_async, _NO_ARGUMENT)
            self.timer_runs += 1
            self.metrics.timers[timer.attribute]["ok"] += 1
        except Exception:
            self.timer_failures += 1
            self.metrics.timers[timer.attribute]["error"] += 1
            outcome = "500 internal_error"
            logger.exception("Timer %s.%s failed", self.name, timer.attribute)
        self._log_access("timer", timer.attribute, outcome, started)
        if outcome != "ok":
            await self._report_error("timer", timer.attribute, "", InternalError(), correlation_id)

    async def _report_error(
        self, kind: str, name: str, subject: str, error: ServiceError, correlation_id: str
    ) -> None:
        """Publish an error record for the monitor (docs/console.md); rate-limited."""
        await self.error_reporter.publish(
            self.connection,
            kind=kind,
            endpoint=name,
            subject=subject,
            error=error,
            correlation_id=correlation_id,
        )

    def _track(self, kind: str, name: str, correlation_id: str) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.handling[task] = (kind, name, correlation_id, time.monotonic())

    def rpcs_in_flight(self) -> int:
        """RPC requests being handled now; safe to call from another thread (the exporter)."""
        # dict.copy() runs without releasing the GIL, so the loop thread cannot change the
        # dict halfway through it, as it could during a Python-level iteration.
        return sum(1 for kind, *_ in self.handling.copy().values() if kind == "rpc")

    def nats_reconnects(self) -> int:
        """Times the NATS connection was re-established (nats-py counts them)."""
        return self.connection.stats["reconnects"] if self.connection is not None else 0

    def in_flight_handlers(self) -> list[tuple[str, str, str, float]]:
        """(kind, name, correlation id, monotonic start) of every handler running now."""
        return [self.handling[task] for task in list(self.in_flight) if task in self.handling]

    def _log_access(
        self, kind: str, name: str, outcome: str, started: int, *, subject: str | None = None
    ) -> None:
        if not access_logger.isEnabledFor(logging.INFO):
            return
        elapsed_ms = (time.perf_counter_ns() - started) / 1e6
        extra: dict[str, Any] = {"duration_ms": round(elapsed_ms, 3), "outcome": outcome}
        if subject is None:
            access_logger.info(
                "%s %s.%s %s in %.2f ms", kind, self.name, name, outcome, elapsed_ms, extra=extra
            )
        else:
            extra["subject"] = subject
            access_logger.info(
                "%s %s on %s by %s.%s in %.2f ms",
                kind,
                outcome,
                subject,
                self.name,
                name,
                elapsed_ms,
                extra=extra,
            )

    async def _sweep_database_connections(self) -> None:
        while True:
            await asyncio.sleep(DATABASE_SWEEP_INTERVAL)
            try:
                await aclose_old_connections()
            except Exception:  # noqa: BLE001
                logger.warning("Closing old database connections failed", exc_info=True)


def enter_message(message: Msg) -> tuple[dict[str, str], str | None]:
    """Make ``message`` the current one: its propagated headers (with a correlation id, made
    when it brought none) and its subject. Returns the headers and the id the sender chose."""
    received = message.headers
    values = {name: received[name] for name in PROPAGATED if name in received} if received else {}
    sent_correlation_id = values.get(CORRELATION_ID)
    values[CORRELATION_ID] = sent_correlation_id or new_correlation_id()
    current_headers.set(values)
    current_subject.set(message.subject)
    return values, sent_correlation_id


def event_caller(authorization: str | None) -> Caller | None:
    """The caller an event or timer carries, if its token is valid; events are not guarded."""
    if not authorization:
        return None
    try:
        return verifier.caller(authorization)
    except NotAuthenticated:
        return None


class _NoArgument:
    pass


_NO_ARGUMENT: Any = _NoArgument()


def parse_request(model: type[BaseModel] | None, data: bytes) -> Any:
    """Validate a body into ``model``: 400 for bad JSON, 422 for a failed validation."""
    if model is None:
        return _NO_ARGUMENT
    try:
        return model.model_validate_json(data or b"{}")
    except ValidationError as error:
        errors = error.errors(include_url=False, include_context=False, include_input=False)
        if any(item["type"] == "json_invalid" for item in errors):
            raise InvalidJson(details=[item["msg"] for item in errors]) from None
        raise InvalidRequest(details=_json_safe(errors)) from None


def encode_reply(model: type[BaseModel] | None, result: Any) -> bytes:
    """Validate and encode a handler's result as its reply model's JSON."""
    if model is None:
        if isinstance(result, BaseModel):
            return codec.encode(result)
        try:
            return codec.encode(result)
        except pydantic_core.PydanticSerializationError:
            raise InvalidReply(details=["The reply is not JSON-serialisable."]) from None
    if type(result) is not model:
        try:
            result = model.model_validate(
                result.model_dump() if isinstance(result, BaseModel) else result
            )
        except ValidationError as error:
            raise InvalidReply(
                details=_json_safe(
                    error.errors(include_url=False, include_context=False, include_input=False)
                )
            ) from None
    return codec.encode(result)


def _json_safe(errors: list[Any]) -> list[dict[str, Any]]:
    return [
        {key: value for key, value in item.items() if key in ("type", "loc", "msg")}
        for item in errors
    ]


async def _invoke(function: Any, executor: ThreadPoolExecutor) -> Any:
    if asyncio.iscoroutinefunction(function):
        return await function()
    return await asyncio.get_running_loop().run_in_executor(executor, function)
