"""A task carries the correlation id of the code that enqueued it, and acts as the system identity.

When a task is published (``delay``, ``delay_on_commit``, ``apply_async``, beat), the current
correlation id and W3C trace context go into the task message's headers. When the worker runs
the task, they become the current message headers again, with the system identity's token as
the caller: calls and events the task makes carry the id and act as the system identity, and
every log line the task writes shows the id. Nobody's own token ever goes into a task message:
a broker is no place for credentials, and a task may run long after such a token expired.
"""

from __future__ import annotations

import threading
from contextvars import Token
from typing import Any

from celery import signals

from cliffracer_core.core import tracing
from cliffracer_core.core.auth.identity import current_caller
from cliffracer_core.core.auth.tokens import system_identity, verifier
from cliffracer_core.core.context import current_headers, new_correlation_id
from cliffracer_core.core.errors import NotAuthenticated
from cliffracer_core.core.headers import (
    AUTHORIZATION,
    CORRELATION_ID,
    TRACEPARENT,
    TRACESTATE,
    accepted_id,
    accepted_trace,
)
from cliffracer_core.core.log import current_endpoint

# The headers a task message carries from the code that enqueued it.
TASK_HEADERS = (CORRELATION_ID, TRACEPARENT, TRACESTATE)

# The tokens of the context a task replaced, and its span (None when tracing is off).
_Tokens = tuple[Token[Any], Token[Any], Token[Any], Any]
# The context each running task replaced, by task id, to be restored when it ends. Prerun and
# postrun run in the same thread, so each task's own entry is touched by one thread only.
_entered: dict[str, _Tokens] = {}
_lock = threading.Lock()


# The send spans of tasks being published (tracing on), by task id: opened before the
# message goes to the broker, ended once it went. A publish that raised never says so: past
# this many, the oldest span is ended as it is, so failed publishes cannot pile up.
_sending: dict[str, Any] = {}
MAX_SENDING = 1000


def before_task_publish(
    sender: Any = None, headers: dict[str, Any] | None = None, **kwargs: Any
) -> None:
    """Put the current correlation id and trace context in the message of a task being sent;
    with tracing on, open its send span, whose context the message carries instead."""
    if headers is None:
        return
    values = current_headers.get()
    for name in TASK_HEADERS:
        value = values.get(name) if values else None
        if value and name not in headers:
            headers[name] = value
    task_id = headers.get("id")
    if tracing.tracer is not None and task_id:
        span = tracing.start_task_send_span(str(headers.get("task") or sender), task_id, headers)
        with _lock:
            _sending[task_id] = span
            stale = _sending.pop(next(iter(_sending))) if len(_sending) > MAX_SENDING else None
        if stale is not None:
            stale.end()


def after_task_publish(headers: dict[str, Any] | None = None, **kwargs: Any) -> None:
    """End the send span of the task the broker just took."""
    task_id = (headers or {}).get("id")
    if not task_id or not _sending:
        return
    with _lock:
        span = _sending.pop(task_id, None)
    if span is not None:
        span.end()


def headers_of_task(request: Any) -> dict[str, str]:
    """The message headers a task runs with: the ones it carried (a fresh correlation id when it
    carried none, or one not fit to log), and the system identity's token.

    A task run eagerly (``apply()``, ``task_always_eager``) was never published: it carries
    the headers of the code that runs it.
    """
    if getattr(request, "is_eager", False):
        current = current_headers.get() or {}
        carried = {name: current.get(name) for name in TASK_HEADERS}
    else:
        carried = {name: getattr(request, name, None) for name in TASK_HEADERS}
    correlation_id = carried[CORRELATION_ID]
    # What a header from the broker may hold before it is trusted into logs and NATS headers:
    # the same as from NATS or HTTP (cliffracer_core.core.headers).
    values = {
        CORRELATION_ID: correlation_id if accepted_id(correlation_id) else new_correlation_id()
    }
    for name in (TRACEPARENT, TRACESTATE):
        value = carried[name]
        if accepted_trace(value):
            values[name] = value
    if authorization := system_identity.authorization():
        values[AUTHORIZATION] = authorization
    return values


def task_prerun(task_id: str | None = None, task: Any = None, **kwargs: Any) -> None:
    """Make the task's headers the current ones, and the system identity the caller."""
    if task_id is None or task is None:
        return
    values = headers_of_task(task.request)
    caller = None
    if authorization := values.get(AUTHORIZATION):
        try:
            caller = verifier.caller(authorization)
        except NotAuthenticated:
            caller = None
    # The task's span (tracing on) becomes the parent of what it calls and publishes.
    span = tracing.start_task_span(task.name, values) if tracing.tracer is not None else None
    tokens = (
        current_headers.set(values),
        current_caller.set(caller),
        current_endpoint.set(task.name),
        span,
    )
    with _lock:
        _entered[task_id] = tokens


def task_postrun(task_id: str | None = None, **kwargs: Any) -> None:
    """Restore the context the task's prerun replaced."""
    with _lock:
        tokens = _entered.pop(task_id, None) if task_id is not None else None
    if tokens is None:
        return
    headers_token, caller_token, endpoint_token, span = tokens
    if span is not None:
        tracing.end_task_span(span, kwargs.get("state"))
    current_endpoint.reset(endpoint_token)
    current_caller.reset(caller_token)
    current_headers.reset(headers_token)


def connect() -> None:
    signals.before_task_publish.connect(
        before_task_publish, weak=False, dispatch_uid="cliffracer_jobs_before_task_publish"
    )
    signals.after_task_publish.connect(
        after_task_publish, weak=False, dispatch_uid="cliffracer_jobs_after_task_publish"
    )
    signals.task_prerun.connect(task_prerun, weak=False, dispatch_uid="cliffracer_jobs_prerun")
    signals.task_postrun.connect(task_postrun, weak=False, dispatch_uid="cliffracer_jobs_postrun")
