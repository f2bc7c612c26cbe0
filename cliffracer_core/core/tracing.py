"""OpenTelemetry traces across every hop (docs/tracing.md): off unless the environment asks.

Tracing is on when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``)
is set, or ``OTEL_TRACES_EXPORTER`` names an exporter, and ``OTEL_SDK_DISABLED`` is not true;
``configure`` then installs the SDK's tracer provider with a batch span processor and the OTLP
exporter, which read the other standard ``OTEL_*`` variables themselves (sampler, headers,
protocol …). Off, ``tracer`` stays ``None`` and the hot path pays one global lookup: the
OpenTelemetry packages are not even imported.

Context travels in the ``traceparent``/``tracestate`` headers the project already carries
onward. A span that starts for an incoming message rewrites the message's ``traceparent`` to
its own before the runner reads the headers, so every call, publish, outbox row and Celery task
made while handling it is that span's child, with no change to the code that propagates them.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from cliffracer_core.core.errors import CLIENT_ERROR, error_class

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

    from cliffracer_core.core.handling import Finished

# The tracer of this process, or None when tracing is off.
tracer: Tracer | None = None
_provider: Any = None

SYSTEM = "nats"
# Span kinds by operation; request/reply follows the RPC conventions (client/server), events
# the messaging ones (producer/consumer).
CLIENT, SERVER, PRODUCER, CONSUMER = "client", "server", "producer", "consumer"


def trace_id(traceparent: str | None) -> str:
    """The trace id of a W3C ``traceparent`` (``00-<trace id>-<span id>-<flags>``), or ""."""
    if not traceparent:
        return ""
    parts = traceparent.split("-")
    if len(parts) < 4 or len(parts[1]) != 32 or parts[1] == "0" * 32:
        return ""
    try:
        int(parts[1], 16)
    except ValueError:
        return ""
    return parts[1].lower()


def current_trace_id() -> str:
    """The trace id of the message or request being handled (what its traceparent says,
    whether or not this process traces), or ""."""
    from cliffracer_core.core.context import current_headers

    values = current_headers.get()
    return trace_id(values.get("traceparent")) if values else ""


def wanted(environment: MutableMapping[str, str] | None = None) -> bool:
    """Whether the standard ``OTEL_*`` variables ask for traces."""
    environment = os.environ if environment is None else environment
    if environment.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = environment.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    return bool(
        exporter
        or environment.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or environment.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def configure(service_name: str) -> bool:
    """Turn tracing on for this process if the environment asks; True when it is on.

    ``OTEL_SERVICE_NAME`` names the process in traces; by default ``service_name``.
    """
    global tracer, _provider
    if tracer is not None or not wanted():
        return tracer is not None
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    name = os.environ.get("OTEL_SERVICE_NAME") or service_name
    # Resource.create reads OTEL_RESOURCE_ATTRIBUTES; TracerProvider reads OTEL_TRACES_SAMPLER.
    _provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}))
    _provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(_provider)
    tracer = _provider.get_tracer("cliffracer")
    trace_queries()
    return True


# OpenTelemetry's ``db.system`` names of Django's database vendors.
DATABASE_SYSTEMS = {"postgresql": "postgresql", "sqlite": "sqlite", "mysql": "mysql"}


def trace_queries() -> None:
    """Make each database query a client span of the current trace (``query_span``).

    Installed only when tracing is on, on every connection Django opens from now on (and on
    those already open): off, no wrapper exists and a query pays nothing.
    """
    from django.db import connections
    from django.db.backends.signals import connection_created

    connection_created.connect(_wrap_connection, dispatch_uid="cliffracer_trace_queries")
    for connection in connections.all(initialized_only=True):
        _wrap_connection(connection=connection)


def _wrap_connection(sender: Any = None, connection: Any = None, **kwargs: Any) -> None:
    if connection is not None and query_span not in connection.execute_wrappers:
        connection.execute_wrappers.append(query_span)


def query_span(
    execute: Callable[..., Any], sql: str, params: Any, many: bool, context: dict[str, Any]
) -> Any:
    """A ``connection.execute_wrapper``: the query as a client span named ``SELECT orders``
    (operation and database), with the OpenTelemetry database attributes. The text is the
    statement Django sends, with its placeholders: never the parameters' values.

    Only a query made within a recorded span (a handler, a request, a task) gets one: the
    queries of background loops (the outbox relay's polling) would otherwise each start a
    trace of their own, and those of a trace sampled out are not recorded either.
    """
    from opentelemetry.trace import SpanKind, Status, StatusCode, get_current_span

    if tracer is None or not get_current_span().is_recording():
        return execute(sql, params, many, context)

    connection = context["connection"]
    namespace = str(connection.settings_dict.get("NAME") or "")
    if connection.vendor == "sqlite":  # a path: its file name is enough to tell it
        namespace = os.path.basename(namespace)
    operation = sql.split(None, 1)[0].upper() if sql.strip() else "QUERY"
    attributes = {
        "db.system": DATABASE_SYSTEMS.get(connection.vendor, connection.vendor),
        "db.namespace": namespace,
        "db.operation.name": operation,
        "db.query.text": sql,
    }
    if many:
        attributes["db.operation.batch.size"] = len(params) if hasattr(params, "__len__") else 0
    with tracer.start_as_current_span(
        f"{operation} {namespace}".strip(),
        kind=SpanKind.CLIENT,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            return execute(sql, params, many, context)
        except Exception as error:
            span.set_attribute("error.type", type(error).__qualname__)
            span.set_status(Status(StatusCode.ERROR, str(error)[:200]))
            raise


def shutdown() -> None:
    """Send the spans still batched and stop (a stopping process loses none)."""
    global tracer, _provider
    if _provider is not None:
        _provider.shutdown()
        from django.db.backends.signals import connection_created

        connection_created.disconnect(dispatch_uid="cliffracer_trace_queries")
    tracer = _provider = None


def _kind(kind: str) -> Any:
    from opentelemetry.trace import SpanKind

    return {
        CLIENT: SpanKind.CLIENT,
        SERVER: SpanKind.SERVER,
        PRODUCER: SpanKind.PRODUCER,
        CONSUMER: SpanKind.CONSUMER,
    }[kind]


def _attributes(
    operation: str,
    subject: str,
    *,
    template: str | None = None,
    group: str | None = None,
    correlation_id: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "messaging.system": SYSTEM,
        "messaging.operation.name": operation,
        "messaging.operation.type": operation,
        "messaging.destination.name": subject,
        "messaging.destination.template": template or subject,
    }
    if group:
        attributes["messaging.consumer.group.name"] = group
    if correlation_id:
        attributes["messaging.message.conversation_id"] = correlation_id
    if extra:
        attributes.update(extra)
    return attributes


@contextmanager
def outgoing_span(
    kind: str, subject: str, headers: MutableMapping[str, str], **details: Any
) -> Iterator[Span]:
    """A span for a message sent with ``headers``: the child of the context they carry, which
    it then replaces with its own (the receiver's span becomes its child)."""
    from opentelemetry.propagate import extract, inject

    assert tracer is not None
    correlation_id = headers.get("X-Correlation-ID")
    with tracer.start_as_current_span(
        f"send {details.get('template') or subject}",
        context=extract(headers),
        kind=_kind(kind),
        attributes=_attributes("send", subject, correlation_id=correlation_id, **details),
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        inject(headers)
        try:
            yield span
        except BaseException as error:
            note_failure(span, error)
            raise


@contextmanager
def incoming_span(kind: str, message: Any, **details: Any) -> Iterator[Span]:
    """A span for handling ``message``, the child of the context it brought; the message's
    ``traceparent`` becomes the span's, so what the handler sends descends from it."""
    from opentelemetry.propagate import extract, inject

    assert tracer is not None
    received = message.headers
    headers: dict[str, str] = dict(received) if received else {}
    template = details.get("template") or message.subject
    with tracer.start_as_current_span(
        f"process {template}",
        context=extract(headers),
        kind=_kind(kind),
        attributes=_attributes(
            "process",
            message.subject,
            correlation_id=headers.get("X-Correlation-ID"),
            **details,
        ),
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        inject(headers)
        message.headers = headers
        yield span


@contextmanager
def http_span(method: str, path: str, headers: MutableMapping[str, str]) -> Iterator[Span]:
    """A server span for an HTTP request whose propagated ``headers`` (correlation id, trace
    context) travel onward: the child of the context they bring, which becomes its own."""
    from opentelemetry.propagate import extract, inject

    assert tracer is not None
    with tracer.start_as_current_span(
        method,
        context=extract(headers),
        kind=_kind(SERVER),
        attributes={"http.request.method": method, "url.path": path},
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        inject(headers)
        yield span


def note_response(span: Span, method: str, route: str | None, status: int) -> None:
    """Name an HTTP span by its route (``POST /api/orders/``) and note its status; 5xx only
    is an error, as with services."""
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("http.response.status_code", status)
    if route is not None:
        span.set_attribute("http.route", route)
        span.update_name(f"{method} {route}")
    if status >= 500:
        span.set_attribute("error.type", str(status))
        span.set_status(Status(StatusCode.ERROR))


@contextmanager
def timer_span(service: str, timer: str) -> Iterator[Span]:
    """A root span for a timer run: a timer starts a new chain of calls and events."""
    from opentelemetry.trace import SpanKind

    assert tracer is not None
    with tracer.start_as_current_span(
        f"run {service}.{timer}",
        context=None,
        kind=SpanKind.INTERNAL,
        attributes={"cliffracer.timer": timer},
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        yield span


@contextmanager
def frame_span(frame_type: str, path: str) -> Iterator[Span]:
    """A server span for a WebSocket frame handled: a root span (a socket's frames carry no
    trace context), the parent of the calls and publishes the frame makes."""
    from opentelemetry.context import Context

    assert tracer is not None
    with tracer.start_as_current_span(
        f"receive {frame_type}",
        # An empty context: a root whatever task this runs in (the hub's subscription
        # callbacks inherit the context of the frame that subscribed).
        context=Context(),
        kind=_kind(SERVER),
        attributes={"cliffracer.websocket.frame.type": frame_type, "url.path": path},
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        yield span


@contextmanager
def delivery_span(
    subject: str, pattern: str, headers: MutableMapping[str, str] | None, sockets: int
) -> Iterator[Span]:
    """A consumer span for an event handed to a process's sockets: a root span *linked* to
    the event's trace (every web process with subscribers delivers it, long after the
    publisher's work ended), not its child."""
    from opentelemetry.context import Context
    from opentelemetry.propagate import extract
    from opentelemetry.trace import Link, get_current_span

    assert tracer is not None
    event_context = get_current_span(extract(headers or {})).get_span_context()
    with tracer.start_as_current_span(
        f"deliver {pattern}",
        # An empty context: a root whatever task this runs in (the hub's subscription
        # callbacks inherit the context of the frame that subscribed).
        context=Context(),
        kind=_kind(CONSUMER),
        attributes=_attributes(
            "deliver",
            subject,
            template=pattern,
            correlation_id=(headers or {}).get("X-Correlation-ID"),
            extra={"cliffracer.websocket.sockets": sockets},
        ),
        links=[Link(event_context)] if event_context.is_valid else None,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        span.set_attribute("messaging.operation.type", "process")
        yield span


def carry_current(headers: MutableMapping[str, str]) -> None:
    """Put the current span's context in ``headers`` (the headers a timer run carries)."""
    from opentelemetry.propagate import inject

    inject(headers)


def start_task_send_span(name: str, task_id: str, headers: MutableMapping[str, Any]) -> Span:
    """A producer span for sending a Celery task (ended by ``end_task_send_span`` once the
    broker took it): the child of the context ``headers`` carry (the enqueuing code's), which
    it replaces with its own, so the task's run is its child."""
    from opentelemetry import trace
    from opentelemetry.propagate import extract, inject

    assert tracer is not None
    span = tracer.start_span(
        f"send {name}",
        context=extract(headers),
        kind=_kind(PRODUCER),
        attributes={
            "messaging.system": "celery",
            "messaging.operation.name": "send",
            "messaging.operation.type": "send",
            "messaging.destination.name": name,
            "messaging.message.id": task_id,
            "messaging.message.conversation_id": str(headers.get("X-Correlation-ID") or ""),
        },
    )
    inject(headers, context=trace.set_span_in_context(span))
    return span


def start_task_span(name: str, headers: MutableMapping[str, str]) -> Span:
    """A span for a Celery task run (ended by ``end_task_span``): the child of the context
    its message carried, which ``headers`` then carry onward as its own."""
    from opentelemetry import trace
    from opentelemetry.propagate import extract, inject

    assert tracer is not None
    span = tracer.start_span(
        f"process {name}",
        context=extract(headers),
        kind=_kind(CONSUMER),
        attributes={
            "messaging.system": "celery",
            "messaging.operation.name": "process",
            "messaging.operation.type": "process",
            "messaging.destination.name": name,
            "messaging.message.conversation_id": headers.get("X-Correlation-ID", ""),
        },
    )
    inject(headers, context=trace.set_span_in_context(span))
    return span


def end_task_span(span: Span, state: str | None) -> None:
    """End a task's span; a task that raised (``FAILURE``) is an error."""
    from opentelemetry.trace import Status, StatusCode

    if state == "FAILURE":
        span.set_attribute("error.type", "task_failed")
        span.set_status(Status(StatusCode.ERROR))
    span.end()


def note_failure(span: Span, error: BaseException) -> None:
    """Mark ``span`` with ``error.type``; only server errors set an error status (a 4xx
    answer is the service keeping its contract)."""
    from opentelemetry.trace import Status, StatusCode

    code = getattr(error, "code", 500)
    span.set_attribute("error.type", getattr(error, "type", None) or type(error).__qualname__)
    if isinstance(code, int):
        span.set_attribute("cliffracer.error.code", code)
    if not (isinstance(code, int) and error_class(code) == CLIENT_ERROR):
        span.set_status(Status(StatusCode.ERROR, str(error)[:200]))


def note_outcome(finished: Finished) -> None:
    """A finish hook: the outcome of the message being handled, on its span."""
    from opentelemetry import trace

    if finished.error is not None:
        note_failure(trace.get_current_span(), finished.error)


def traced(
    handler: Callable[..., Awaitable[None]],
    kind: str,
    message_of: Callable[..., Any],
    details_of: Callable[..., dict[str, Any]],
) -> Callable[..., Awaitable[None]]:
    """Wrap a message handler (``handle_request``, ``handle_event``, a durable consumer's
    ``handle``) in an incoming span; ``message_of`` and ``details_of`` read its arguments."""

    async def handle(*args: Any) -> None:
        with incoming_span(kind, message_of(*args), **details_of(*args)):
            await handler(*args)

    return handle
