"""Runs one service: subscribes its endpoints, events and timers on the transport and serves them.

For each request: read headers, set the correlation id in context, validate the body into the
request model, run the handler (concurrently with others, up to a bound), validate and encode
the reply, record statistics. Errors become ADR-32 error replies; no traceback crosses the wire.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import pydantic_core
from django.core.exceptions import ImproperlyConfigured
from pydantic import BaseModel, ValidationError

from cliffracer_core.core import client as client_module
from cliffracer_core.core import codec, discovery, tracing
from cliffracer_core.core.admission import WaitingLines, caller_timeout, oversized_headers
from cliffracer_core.core.auth.identity import Caller, current_caller
from cliffracer_core.core.auth.tokens import system_identity, verifier
from cliffracer_core.core.auth.users import (
    USERS_CHANGED_SUBJECT,
    changed_user,
    needs_check,
    require_active,
    user_status,
)
from cliffracer_core.core.context import (
    current_deadline,
    current_headers,
    current_subject,
    new_correlation_id,
)
from cliffracer_core.core.db import aclose_old_connections
from cliffracer_core.core.errors import (
    Forbidden,
    InternalError,
    InvalidJson,
    InvalidReply,
    InvalidRequest,
    NotAuthenticated,
    Overloaded,
    RequestTooLarge,
    ServiceError,
    TransportRefused,
    UnknownEndpoint,
)
from cliffracer_core.core.extensions import RunnerExtension, runner_extensions
from cliffracer_core.core.figures import SUCCESS_CODE, ServiceMetrics
from cliffracer_core.core.handling import NO_ARGUMENT, Finished, Handling, Slots
from cliffracer_core.core.headers import (
    AUTHORIZATION,
    CORRELATION_ID,
    PROPAGATED,
    REPLAY_FOR,
    TIMEOUT,
    TRACEPARENT,
    TRACESTATE,
    accepted_id,
    accepted_trace,
)
from cliffracer_core.core.log import RateLimitedLog, current_endpoint, current_service
from cliffracer_core.core.policies import policy_errors
from cliffracer_core.core.resilience import call_figures, declare_calls, scopes
from cliffracer_core.core.service import Event, Rpc, Service, Timer
from cliffracer_core.core.settings import cliffracer_settings
from cliffracer_core.transports import forget_transport, make_transport, set_transport
from cliffracer_core.transports.base import Message as Msg
from cliffracer_core.transports.base import Subscription, Transport

logger = logging.getLogger("cliffracer.runner")

# How often idle database connections of async handlers are checked (seconds).
DATABASE_SWEEP_INTERVAL = 5.0
# Requests the request subscription hands to handlers in a row before it gives the event loop a
# turn. One read from the socket can hold hundreds of requests, and handlers that never suspend
# run one after another without a pause: without a turn, no reply is sent and nothing else (the
# read loop, timers, heartbeats) runs until the whole burst is handled. With one, the replies so
# far go out at once, so that on another CPU their callers send the next requests while this
# burst is still being handled. benchmarks/README.md: a plain caller at c=50 got 0.80-0.85 of a
# raw nats-py responder's throughput without turns, 0.97-0.99 with one every 32 or 64 requests;
# each turn sends a smaller batch, which costs the server CPU (per request: 6 µs without, 8 at
# 64, 10 at 32, 12 at 16, where throughput fell back to 0.90).
REQUESTS_PER_TURN = 64


class ServiceRunner:
    """Serve one ``Service`` class on a transport connection until ``stop()``.

    ``options`` are for the runner's extensions (``RUNNER_EXTENSIONS``), e.g. ``relay=True``
    runs the outbox relay in a process that is not ``runservice``.
    """

    def __init__(
        self,
        service_class: type[Service],
        *,
        url: str | None = None,
        concurrency: int | None = None,
        grace_period: float | None = None,
        threads: int | None = None,
        **options: Any,
    ) -> None:
        self.service_class = service_class
        # runservice runs no system checks (as runworker); bad call policies would otherwise
        # surface only when a call is made.
        problems = policy_errors(cliffracer_settings.CALLS, "CLIFFRACER['CALLS']")
        problems += policy_errors(service_class.calls, f"{service_class.__name__}.calls")
        if problems:
            raise ImproperlyConfigured(
                "bad call policies (cliffracer.E025, docs/resilience.md): " + " ".join(problems)
            )
        self.service = service_class()
        # The transport's URL; None: the configured one (transports.configured).
        self.url = url
        self.concurrency = concurrency or cliffracer_settings.CONCURRENCY
        self.grace_period = (
            grace_period if grace_period is not None else cliffracer_settings.GRACE_PERIOD
        )
        self.name = service_class.service_name()
        self.prefix = f"{cliffracer_settings.RPC_SUBJECT_PREFIX}.{self.name}."
        self.max_request_bytes = cliffracer_settings.MAX_REQUEST_BYTES
        self.max_header_bytes = int(cliffracer_settings.MAX_HEADER_BYTES)
        # Requests waiting for a handler slot (cliffracer_core/core/admission.py).
        per_line = cliffracer_settings.MAX_WAITING_REQUESTS or max(100, 4 * self.concurrency)
        self.waiting = WaitingLines(
            per_line=int(per_line), max_bytes=int(cliffracer_settings.MAX_WAITING_BYTES)
        )
        self.draining: asyncio.Task[None] | None = None
        # What one subscription may hold in the transport's client before it drops messages. The
        # request callback never waits (requests wait in the lines above), so what it holds is
        # at most what the client read from its socket in one go (~128 KiB); the count only
        # has to be larger than the smallest messages that fit in that. An event callback
        # waits for a slot, so there the limits bound memory (NATS's client counts bodies only
        # in its byte limit, and headers are refused above MAX_HEADER_BYTES before the wait).
        self.request_limits = {
            "max_pending": 65536,
            "max_pending_bytes": int(cliffracer_settings.MAX_WAITING_BYTES),
        }
        self.event_limits = {
            "max_pending": max(256, 4 * self.concurrency),
            "max_pending_bytes": 8 * 1024 * 1024,
        }
        self.identity = discovery.Identity(
            id=discovery.new_instance_id(),
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
            reconnects=self.reconnects,
        )
        default_public = cliffracer_settings.DEFAULT_RPC_ACCESS == "public"
        self.public = {
            name: rpc.public or (default_public and not rpc.permissions)
            for name, rpc in self.rpcs.items()
        }
        default_event_public = cliffracer_settings.DEFAULT_EVENT_ACCESS == "public"
        self.public_events = {
            event.attribute: event.public
            or (default_event_public and not event.permissions and not event.from_system)
            for event in service_class.events()
        }
        self.unknown_requests = 0
        # Requests handed to handlers since the request subscription last gave the loop a turn.
        self.in_a_row = 0
        # Requests dropped unanswered because their callers had stopped waiting, requests
        # answered 503 at once because their endpoint's waiting line was full, and requests
        # the NATS client dropped because they came faster than even a refusal, by endpoint.
        self.expired: dict[str, int] = {}
        self.shed: dict[str, int] = {}
        self.overflowed: dict[str, int] = {}
        self.refusals = RateLimitedLog(logger)
        self.events_handled = 0
        self.events_failed = 0
        self.timer_runs = 0
        self.timer_failures = 0
        self.transport: Transport | None = None
        # Slots, tasks, threads and finish hooks (cliffracer_core/core/handling.py).
        self.handling = Handling(
            service=self.name,
            concurrency=self.concurrency,
            threads=threads or cliffracer_settings.THREADS,
            instance=self.identity.id,
        )
        self.subscriptions: list[Subscription] = []
        self.control_subscriptions: list[Subscription] = []
        self.background: list[asyncio.Task[Any]] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stopping: asyncio.Event | None = None
        self.started = False
        # What runs beside the service (RUNNER_EXTENSIONS: durable handlers, the outbox
        # relay, the monitor's error records). Each checks now that the service can run, so
        # that one that cannot does not start.
        self.options = options
        self.extensions: list[RunnerExtension] = runner_extensions(self)

    @property
    def slots(self) -> Slots | None:
        return self.handling.slots

    @property
    def executor(self) -> Any:
        return self.handling.executor

    def extension(self, kind: type[RunnerExtension]) -> Any:
        """This runner's extension of ``kind``, if it has one."""
        return next((found for found in self.extensions if isinstance(found, kind)), None)

    # Starting and stopping

    async def start(self, *, connect_attempts: int = 0) -> None:
        """Connect (retrying while the system is not up), subscribe, start the extensions and
        the timers."""
        self.loop = asyncio.get_running_loop()
        # Everything started from here on (the connection's tasks, handlers, timers) inherits
        # this, so each log line says which service and instance wrote it.
        current_service.set((self.name, self.identity.id))
        self.handling.bind(self.loop)
        self.stopping = asyncio.Event()
        self.transport = await self._connect(connect_attempts)
        self.check_features(self.transport)
        set_transport(self.transport, self.loop)
        client_module.service_loop = self.loop
        if self.service_class.calls:
            declare_calls(self.service_class.calls)
        await self.service_started()
        transport = self.transport
        self.subscriptions.append(
            await transport.subscribe(
                self.prefix + ">", self.on_request, queue=self.name, **self.request_limits
            )
        )
        for event in self.service_class.events():
            if event.durable:
                continue
            queue = "" if event.broadcast else f"{self.name}.{event.attribute}"
            self.subscriptions.append(
                await transport.subscribe(
                    event.subject, self._event_callback(event), queue=queue, **self.event_limits
                )
            )
        # Every instance hears of saved and deleted users (cliffracer_core/core/auth/users.py).
        self.control_subscriptions.append(
            await transport.subscribe(USERS_CHANGED_SUBJECT, self.on_user_changed, max_pending=1024)
        )
        for verb, subject in discovery.control_subjects(self.name, self.identity.id):
            self.control_subscriptions.append(
                await transport.subscribe(
                    subject, self._control_callback(verb.value), max_pending=1024
                )
            )
        await transport.flush()
        for extension in self.extensions:
            await extension.start()
        for timer in self.service_class.timers():
            self.background.append(asyncio.create_task(self._run_timer(timer)))
        self.background.append(asyncio.create_task(self._sweep_database_connections()))
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
            transport.redacted_location(),
        )

    async def _connect(self, attempts: int) -> Transport:
        attempt = 0
        delay = 0.5
        while True:
            attempt += 1
            transport = make_transport(self.url, role=f"service:{self.name}")
            # What the transport could not take in: a request it dropped (admission.py).
            transport.on_dropped = self._overflowed
            try:
                await transport.connect()
                return transport
            except (TransportRefused, ImproperlyConfigured):
                raise  # the same credentials or settings would fail the same way
            except Exception as error:  # noqa: BLE001  (any other failure to connect is retried)
                if attempts and attempt >= attempts:
                    raise
                logger.warning(
                    "Cannot connect to %s at %s (%s); retrying in %.1fs.",
                    transport.display_name,
                    transport.redacted_location(),
                    error or type(error).__name__,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def needed_features(self) -> dict[str, str]:
        """The transport features this service and its extensions need, each with why."""
        needed = self.service_class.needed_features()
        for extension in self.extensions:
            needed.update(extension.needed_features())
        return needed

    def check_features(self, transport: Transport) -> None:
        """Refuse to serve on a transport that lacks what the service needs, naming it."""
        needed = self.needed_features()
        missing = transport.features.missing(needed)
        if missing:
            raise ImproperlyConfigured(
                f"Service {self.name} cannot run on the {type(transport).__name__} transport: "
                + "; ".join(f"it lacks {name} ({needed[name]})" for name in missing)
                + "."
            )

    async def service_started(self) -> None:
        hook = getattr(self.service, "on_start", None)
        if hook is not None:
            await _invoke(hook, self.executor)

    async def stop(self) -> None:
        """Stop taking messages, let in-flight handlers finish and reply, then disconnect."""
        if self.stopping is None or self.stopping.is_set():
            return
        self.stopping.set()
        logger.info(
            "Service %s stopping; %d messages in flight.", self.name, len(self.handling.in_flight)
        )
        for extension in self.extensions:
            extension.stop_taking()
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
        if self.draining is not None:
            # Requests still waiting for a slot are left unanswered: their callers time out,
            # or another instance had them (their subscription is gone).
            self.draining.cancel()
            await asyncio.gather(self.draining, return_exceptions=True)
        abandoned = await self.handling.drain(self.grace_period)
        if abandoned:
            logger.warning(
                "Service %s: %d handlers still running after the %.1fs grace period; "
                "abandoning them.",
                self.name,
                abandoned,
                self.grace_period,
            )
        hook = getattr(self.service, "on_stop", None)
        if hook is not None:
            try:
                await _invoke(hook, self.executor)
            except Exception:
                logger.exception("Service %s: on_stop failed.", self.name)
        for extension in reversed(self.extensions):
            # Their handlers have settled what they took: let go.
            try:
                await extension.close()
            except Exception:
                logger.exception("Service %s: closing %s failed.", self.name, extension)
        for subscription in self.control_subscriptions:
            try:
                await subscription.unsubscribe()
            except Exception:  # noqa: BLE001
                logger.debug("Unsubscribe failed", exc_info=True)
        if self.transport is not None and not self.transport.is_closed:
            await self.transport.close()
        if client_module.service_loop is self.loop:
            client_module.service_loop = None
        forget_transport(self.loop)
        self.handling.close()
        logger.info("Service %s stopped.", self.name)

    async def run(self, stop: asyncio.Event) -> None:
        """Start, serve until ``stop`` is set, then stop gracefully."""
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()

    # Dispatch

    async def on_request(self, message: Msg) -> None:
        if refusal := oversized_headers(message.headers, self.max_header_bytes):
            # Refused before it can wait anywhere: big headers are how a flood takes memory.
            await self._refuse(message, refusal)
            return
        if self.handling.slots.take():  # type: ignore[union-attr]
            self.handling.spawn(self.handle_request(message))
            self.in_a_row += 1
            if self.in_a_row >= REQUESTS_PER_TURN:
                self.in_a_row = 0
                await asyncio.sleep(0)  # the event loop's turn: see REQUESTS_PER_TURN
            return
        # Every slot is busy: the request waits in its endpoint's line, or is refused at once.
        name = message.subject[len(self.prefix) :]
        line = name if name in self.rpcs else ""
        if not self.waiting.add(line, message):
            if name in self.rpcs:
                self.shed[name] = self.shed.get(name, 0) + 1
            self.refusals.warning(
                "overloaded",
                "Service %s is overloaded: requests to %s refused (503) while its waiting "
                "line is full.",
                self.name,
                name if name in self.rpcs else "unknown endpoints",
            )
            await self._refuse(message, Overloaded())
            return
        if self.draining is None:
            self.draining = asyncio.create_task(self._drain_waiting())

    async def _drain_waiting(self) -> None:
        """Give each slot that frees up to the next waiting request, endpoint by endpoint."""
        slots = self.slots
        assert slots is not None
        try:
            while self.waiting:
                await slots.acquire()
                waiting = self.waiting.take()
                if waiting is None:
                    slots.release()
                    break
                self.handling.spawn(self.handle_request(waiting.message, waiting.arrived))
        finally:
            self.draining = None

    async def _refuse(self, message: Msg, error: ServiceError) -> None:
        """Answer a request with ``error`` at once, without a slot: it is counted, but no
        handler runs, nothing is logged per request and no error record is published."""
        name = message.subject[len(self.prefix) :]
        if name in self.rpcs:
            self.counters[name].record(0, f"{error.code}:{error.type}")
            self.metrics.endpoints[name].record(0, error.code)
        else:
            self.unknown_requests += 1
            self.metrics.unknown_endpoint += 1
        if not message.reply:
            return
        body, headers = codec.encode_error(error)
        received = message.headers
        if received and accepted_id(received.get(CORRELATION_ID)):
            headers[CORRELATION_ID] = received[CORRELATION_ID]
        try:
            await self.transport.publish(message.reply, body, headers=headers)  # type: ignore[union-attr]
        except Exception:  # noqa: BLE001
            logger.debug("Could not refuse a request", exc_info=True)

    def _event_callback(self, event: Event) -> Any:
        async def on_event(message: Msg) -> None:
            received = message.headers
            if received and REPLAY_FOR in received:
                return  # a dead letter replayed for one durable handler (docs/durable.md)
            if refusal := oversized_headers(received, self.max_header_bytes):
                # Refused before it waits for a slot, holding its headers in memory.
                await self.refuse_event(
                    event, message.subject, refusal, "-", time.perf_counter_ns()
                )
                return
            # Waiting for a slot holds back this subscription's deliveries: the bound, with
            # the subscription's pending limits (events are not answered; an overflow drops).
            await self.slots.acquire()  # type: ignore[union-attr]
            self.handling.spawn(self.handle_event(event, message))

        return on_event

    def _control_callback(self, verb: str) -> Any:
        async def on_control(message: Msg) -> None:
            # Which server this instance is on now (it may change on a reconnect).
            self.metadata["nats_server"] = self.transport.server()  # type: ignore[union-attr]
            if verb == "PING":
                body = discovery.ping(self.identity, self.metadata)
            elif verb == "INFO":
                body = discovery.info(self.identity, self.metadata, self.endpoints)
            else:
                body = discovery.stats(
                    self.identity,
                    # Events are no ADR-32 endpoints: their outcomes travel as metadata, JSON
                    # text as ADR-32 wants metadata values (ok, rejected, error, refused and
                    # duplicate by handler).
                    # The calls this process makes, by breaker scope (docs/resilience.md).
                    {
                        **self.metadata,
                        "event_outcomes": json.dumps(self.metrics.events),
                        **({"calls": json.dumps(call_figures())} if scopes else {}),
                    },
                    self.endpoints,
                    self.counters,
                    self.stats_data(),
                )
            if message.reply:
                await self.transport.publish(message.reply, pydantic_core.to_json(body))  # type: ignore[union-attr]

        return on_control

    def stats_data(self) -> dict[str, dict[str, Any]]:
        """Per-endpoint STATS ``data``: the latency histogram; ADR-32's ``num_errors`` split
        into ``client_errors`` (4xx, refusals the contract provides for) and
        ``server_errors`` (every other code: the service failed); the requests dropped
        because their callers had stopped waiting (``expired``), refused at once because the
        endpoint's waiting line was full (``shed``, also counted as 503 errors), and dropped
        by the NATS client because they came faster than the service could even refuse them
        (``overflowed``; their callers time out)."""
        data = discovery.latency_data(self.metrics.endpoints)
        for name, values in data.items():
            values["client_errors"], values["server_errors"] = self.metrics.endpoints[
                name
            ].error_counts()
            values["expired"] = self.expired.get(name, 0)
            values["shed"] = self.shed.get(name, 0)
            values["overflowed"] = self.overflowed.get(name, 0)
        return data

    async def handle_request(self, message: Msg, arrived: float = 0.0) -> None:
        """Answer one RPC request; never raises.

        ``arrived`` is when a request that waited for its slot came in (0: it did not wait).
        """
        started = time.perf_counter_ns()
        received = message.headers
        name = message.subject[len(self.prefix) :]
        if received and TIMEOUT in received and (timeout := caller_timeout(received)):
            now = time.monotonic()
            if arrived and now - arrived > timeout:
                # Its caller has stopped waiting: nobody would read the reply.
                self._expire(name)
                return
            current_deadline.set((arrived or now) + timeout)
        values, caller_correlation_id = enter_message(message)
        correlation_id = values[CORRELATION_ID]
        current_endpoint.set(name)
        self.handling.track("rpc", name, correlation_id)
        rpc = self.rpcs.get(name)
        error: ServiceError | None = None
        body = b""
        try:
            if rpc is None:
                raise UnknownEndpoint(
                    f"Service {self.name!r} has no endpoint {codec.shortened(name, 100)!r}."
                )
            # Who is calling, and may they? Before the body is even read.
            caller = self.authorize(rpc, values.get(AUTHORIZATION))
            if caller is not None:
                await self.require_active(caller)
            if caller is not None or current_caller.get() is not None:
                # A request's task starts from the subscription's context, where no caller is
                # set: an anonymous call needs no set (0.15 µs of every plain request).
                current_caller.set(caller)
            data = message.data
            if len(data) > self.max_request_bytes:
                raise RequestTooLarge(
                    f"The request body is {len(data)} bytes; the limit is {self.max_request_bytes}."
                )
            request = parse_request(rpc.request_model, data)
            result = await self.handling.invoke(
                getattr(self.service, rpc.attribute), rpc.is_async, request
            )
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
        handling = self.handling
        if error is None and not handling.finish_hooks:
            # What went well, with nothing but the access log to hear of it: no Finished.
            if handling.access.enabled():
                handling.access.note(
                    "rpc", self.name, name, "ok", started, correlation_id, message.subject
                )
        else:
            # It failed, or a hook listens: ``handling.listening`` is true either way.
            await handling.finished(
                Finished(
                    kind="rpc",
                    service=self.name,
                    name=name,
                    outcome="ok" if error is None else f"{error.code} {error.type}",
                    started=started,
                    correlation_id=correlation_id,
                    subject=message.subject,
                    error=error,
                )
            )
        if not message.reply:
            return
        # A successful reply has no headers (cheaper to encode and to parse: nats-py takes
        # about 4 µs more to send one with a header) when the caller knows the correlation
        # id, having sent it, or did not ask, having sent none (as plain NATS clients do; the
        # id is in the service's access line). Error replies carry it, and so does the reply
        # to a caller whose id was refused and replaced.
        reply_headers: dict[str, str] | None = None
        if error is not None or (
            caller_correlation_id is None and received and CORRELATION_ID in received
        ):
            reply_headers = {CORRELATION_ID: correlation_id}
        if error is not None:
            body, extra = codec.encode_error(error)
            reply_headers.update(extra)  # type: ignore[union-attr]
        try:
            await self.transport.publish(message.reply, body, headers=reply_headers)  # type: ignore[union-attr]
        except Exception:  # noqa: BLE001  (a reply lost to a dropped connection is logged)
            logger.warning(
                "Could not reply to %s.%s [correlation_id=%s]",
                self.name,
                name,
                correlation_id,
                exc_info=True,
            )

    def _overflowed(self, subject: str) -> None:
        """The transport had no room for a message of ours: count a request it dropped."""
        name = subject[len(self.prefix) :] if subject.startswith(self.prefix) else ""
        if name in self.rpcs:
            self.overflowed[name] = self.overflowed.get(name, 0) + 1
            self.metrics.endpoints[name].overflowed += 1

    def _expire(self, name: str) -> None:
        if name in self.rpcs:
            self.expired[name] = self.expired.get(name, 0) + 1
            self.metrics.endpoints[name].expired += 1
        self.refusals.warning(
            "expired",
            "Service %s dropped requests to %s whose callers had stopped waiting.",
            self.name,
            name if name in self.rpcs else "unknown endpoints",
        )

    async def on_user_changed(self, message: Msg) -> None:
        """A user was saved or deleted somewhere: ask the database again next time."""
        if (user_id := changed_user(message.data)) is not None:
            user_status.forget(user_id)

    async def require_active(self, caller: Caller | None) -> None:
        """Raise 401 if ``caller``'s user was deleted or deactivated; the database is asked
        in a handler thread, once per USER_CHECK_INTERVAL and user."""
        if needs_check(caller):
            await self.handling.in_thread(require_active, caller)
        else:
            require_active(caller)

    def authorize(self, rpc: Rpc, authorization: str | None) -> Caller | None:
        """Return the caller of ``rpc``; 401 without a valid token, 403 without permission."""
        if self.public[rpc.name]:
            # A public endpoint needs no token, but a token that is sent must be valid.
            return verifier.caller(authorization) if authorization else None
        caller = verifier.caller(authorization)
        if rpc.permissions and not caller.has_perms(rpc.permissions):
            missing = [p for p in rpc.permissions if not caller.has_perm(p)]
            raise Forbidden(
                f"The caller may not call {self.name}.{rpc.name}.",
                details={"missing_permissions": missing},
            )
        return caller

    async def handle_event(self, event: Event, message: Msg) -> None:
        """Run one event handler; failures are logged and counted, never raised."""
        started = time.perf_counter_ns()
        values, _ = enter_message(message)
        current_endpoint.set(event.attribute)
        self.handling.track("event", event.attribute, values[CORRELATION_ID])
        try:
            caller = await self.identify_publisher(
                event, message.headers, values.get(AUTHORIZATION)
            )
        except ServiceError as refusal:
            await self.refuse_event(
                event, message.subject, refusal, values[CORRELATION_ID], started
            )
            return
        current_caller.set(caller)
        outcome = "ok"
        failure: ServiceError | None = None
        try:
            payload = parse_request(event.model, message.data)
            await self.handling.invoke(
                getattr(self.service, event.attribute), event.is_async, payload
            )
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
        await self.finish_event(
            event, message.subject, outcome, started, values[CORRELATION_ID], failure
        )

    async def finish_event(
        self,
        event: Event,
        subject: str,
        outcome: str,
        started: int,
        correlation_id: str,
        error: ServiceError | None = None,
    ) -> None:
        """Tell the access log and the finish hooks how an event ended (plain or durable);
        nothing is built when nobody listens."""
        if self.handling.listening(error):
            await self.handling.finished(
                Finished(
                    kind="event",
                    service=self.name,
                    name=event.attribute,
                    outcome=outcome,
                    started=started,
                    correlation_id=correlation_id,
                    subject=subject,
                    error=error,
                )
            )

    async def identify_publisher(
        self,
        event: Event,
        received: dict[str, str] | None,
        authorization: str | None,
        *,
        at: float | None = None,
    ) -> Caller | None:
        """Who published an event, if ``event``'s handler takes events from them; else raise
        401 (no valid token) or 403 (not the system identity, or missing a permission).

        ``at`` is when a durable event was stored: its token must have been valid then.
        """
        if refusal := oversized_headers(received, self.max_header_bytes):
            raise refusal
        if self.public_events[event.attribute]:
            caller = event_caller(authorization, at=at)
        else:
            caller = verifier.caller(authorization, at=at)
            if event.from_system and not caller.is_system:
                raise Forbidden(
                    f"Only the system identity may publish to {self.name}.{event.attribute}."
                )
            if event.permissions and not caller.has_perms(event.permissions):
                missing = [p for p in event.permissions if not caller.has_perm(p)]
                raise Forbidden(
                    f"The publisher may not publish to {self.name}.{event.attribute}.",
                    details={"missing_permissions": missing},
                )
        await self.require_active(caller)
        return caller

    async def refuse_event(
        self,
        event: Event,
        subject: str,
        refusal: ServiceError,
        correlation_id: str,
        started: int,
    ) -> None:
        """Count, log (rate-limited) and record an event its handler does not take."""
        self.metrics.events[event.attribute]["refused"] += 1
        self.refusals.warning(
            f"event:{event.attribute}",
            "Refused an event on %s for %s.%s: %s %s: %s",
            codec.shortened(subject, 200),
            self.name,
            event.attribute,
            refusal.code,
            refusal.type,
            refusal.message,
        )
        await self.finish_event(
            event, subject, f"{refusal.code} {refusal.type}", started, correlation_id, refusal
        )

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
            run = self.handling.spawn(self._timer_tick(timer))
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
        if tracing.tracer is not None:
            tracing.carry_current(values)
        current_headers.set(values)
        current_caller.set(event_caller(authorization))
        current_endpoint.set(timer.attribute)
        self.handling.track("timer", timer.attribute, correlation_id)
        outcome = "ok"
        try:
            await self.handling.invoke(
                getattr(self.service, timer.attribute), timer.is_async, NO_ARGUMENT
            )
            self.timer_runs += 1
            self.metrics.timers[timer.attribute]["ok"] += 1
        except Exception:
            self.timer_failures += 1
            self.metrics.timers[timer.attribute]["error"] += 1
            outcome = "500 internal_error"
            logger.exception("Timer %s.%s failed", self.name, timer.attribute)
        await self.handling.finished(
            Finished(
                kind="timer",
                service=self.name,
                name=timer.attribute,
                outcome=outcome,
                started=started,
                correlation_id=correlation_id,
                error=None if outcome == "ok" else InternalError(),
                quiet=timer.quiet,
            )
        )

    def enable_tracing(self) -> None:
        """Give every request and event a span (``tracing.configure`` turned tracing on); with
        tracing off nothing here runs and the handlers are the plain methods."""
        prefix = self.prefix

        def rpc_details(message: Msg, *_: Any) -> dict[str, Any]:
            # Unknown endpoints share one template, as they share one metrics series.
            known = message.subject[len(prefix) :] in self.rpcs
            return {"template": message.subject if known else f"{prefix}*", "group": self.name}

        def event_details(event: Event, message: Msg) -> dict[str, Any]:
            group = "" if event.broadcast else f"{self.name}.{event.attribute}"
            return {"template": event.subject, "group": group}

        self.handle_request = tracing.traced(  # type: ignore[method-assign]
            self.handle_request, tracing.SERVER, lambda message, *_: message, rpc_details
        )
        self.handle_event = tracing.traced(  # type: ignore[method-assign]
            self.handle_event, tracing.CONSUMER, lambda event, message: message, event_details
        )
        tick = self._timer_tick

        async def traced_tick(timer: Timer) -> None:
            with tracing.timer_span(self.name, timer.attribute):
                await tick(timer)

        self._timer_tick = traced_tick  # type: ignore[method-assign]
        self.handling.finish_hooks.append(tracing.note_outcome)

    def rpcs_in_flight(self) -> int:
        """RPC requests being handled now; safe to call from another thread (the exporter)."""
        return self.handling.rpcs_in_flight()

    def reconnects(self) -> int:
        """Times the transport's connection was made again after a loss."""
        return self.transport.reconnects if self.transport is not None else 0

    def in_flight_handlers(self) -> list[tuple[str, str, str, float]]:
        """(kind, name, correlation id, monotonic start) of every handler running now."""
        return self.handling.in_flight_handlers()

    async def _sweep_database_connections(self) -> None:
        while True:
            await asyncio.sleep(DATABASE_SWEEP_INTERVAL)
            try:
                await aclose_old_connections()
            except Exception:  # noqa: BLE001
                logger.warning("Closing old database connections failed", exc_info=True)


def enter_message(message: Msg) -> tuple[dict[str, str], str | None]:
    """Make ``message`` the current one: its propagated headers (with a correlation id, made
    when it brought none or one not fit to log) and its subject. Returns the headers and the
    id the sender chose."""
    received = message.headers
    if not received:
        # A plain NATS client's request: nothing to carry or to check.
        values = {CORRELATION_ID: new_correlation_id()}
        current_headers.set(values)
        current_subject.set(message.subject)
        return values, None
    values = {name: received[name] for name in PROPAGATED if name in received}
    sent_correlation_id = values.get(CORRELATION_ID)
    if sent_correlation_id is not None and not accepted_id(sent_correlation_id):
        sent_correlation_id = None
    values[CORRELATION_ID] = sent_correlation_id or new_correlation_id()
    for name in (TRACEPARENT, TRACESTATE):
        if name in values and not accepted_trace(values[name]):
            del values[name]
    current_headers.set(values)
    current_subject.set(message.subject)
    return values, sent_correlation_id


def event_caller(authorization: str | None, *, at: float | None = None) -> Caller | None:
    """The caller a public event or a timer carries, if its token is valid."""
    if not authorization:
        return None
    try:
        return verifier.caller(authorization, at=at)
    except NotAuthenticated:
        return None


def parse_request(model: type[BaseModel] | None, data: bytes) -> Any:
    """Validate a body into ``model``: 400 for bad JSON, 422 for a failed validation."""
    if model is None:
        return NO_ARGUMENT
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


async def _invoke(function: Any, executor: Any) -> Any:
    if asyncio.iscoroutinefunction(function):
        return await function()
    return await asyncio.get_running_loop().run_in_executor(executor, function)
