"""Calling services and publishing events, from async and from sync code.

``acall`` and ``apublish`` are for async code (views, consumers, handlers); ``call`` and
``publish`` for sync code (WSGI views, commands, the shell, Celery tasks). The sync forms run
on one background event loop per process with one transport connection, never one per call.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Coroutine
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from pydantic import BaseModel, ValidationError

from cliffracer_core.core import codec, context, tracing
from cliffracer_core.core.auth.identity import current_caller
from cliffracer_core.core.auth.tokens import system_identity
from cliffracer_core.core.context import current_headers, outgoing_headers
from cliffracer_core.core.errors import RemoteError, RemoteUnavailable, remote_error
from cliffracer_core.core.headers import (
    AUTHORIZATION,
    CORRELATION_ID,
    ERROR_CODE,
    ORIGIN_CALLER,
    TIMEOUT,
    clean_header_value,
)
from cliffracer_core.core.resilience import (
    UNKNOWN,
    bounded_wait,
    guard_for,
    guards,
    retrying_guard,
)
from cliffracer_core.core.settings import cliffracer_settings
from cliffracer_core.core.streams import publish_message
from cliffracer_core.transports import get_transport, make_transport
from cliffracer_core.transports.base import Message, Transport

# What a call is wrapped in when tracing is off.
NO_SPAN = contextlib.nullcontext()


class SynchronousCallError(RuntimeError):
    """A sync client function was called from a running event loop."""


def caller_headers(extra: dict[str, str] | None, *, as_system: bool = False) -> dict[str, str]:
    """Headers of an outgoing call or event, with the caller's identity.

    Inside a message or an HTTP request the current caller's token travels onward (or none,
    for an anonymous one). Outside any, in a process that is neither the web server nor a
    service (a script, a command, a test), the call acts as the configured system identity.
    ``as_system=True`` acts as the system identity anywhere: a service doing its own work
    (reserving stock for an order it accepted) rather than its caller's; the caller's name
    travels in ``Cliffracer-Origin-Caller`` for the logs.
    """
    values = outgoing_headers(extra)
    if as_system:
        authorization = system_identity.authorization()
        if authorization is None:
            raise ImproperlyConfigured(
                "as_system=True needs the system identity: this process has neither the JWT "
                "signing key nor CLIFFRACER['SYSTEM_TOKEN'] (manage.py issue_system_token)."
            )
        caller = current_caller.get()
        if caller is not None and caller.username and not caller.is_system:
            values[ORIGIN_CALLER] = clean_header_value(" ".join(caller.username.split())[:150])
        values[AUTHORIZATION] = authorization
    elif (
        AUTHORIZATION not in values
        and current_headers.get() is None
        # A web process never lends the system identity: an anonymous caller stays anonymous,
        # even in code (a consumer, a signal handler) that no request context wraps.
        and context.process_role == "-"
        and (authorization := system_identity.authorization())
    ):
        values[AUTHORIZATION] = authorization
    if (authorization := values.get(AUTHORIZATION)) is not None:
        values[AUTHORIZATION] = clean_header_value(authorization)
    return values


async def shared_transport() -> Transport:
    """This loop's transport; the system being unreachable is a 503 error like any other."""
    try:
        return await get_transport()
    except RemoteUnavailable:
        raise
    except (OSError, TimeoutError) as error:
        raise RemoteUnavailable(
            f"The messaging system is not reachable at "
            f"{make_transport().redacted_location()} ({type(error).__name__}).",
            type="transport_unavailable",
        ) from None


def rpc_subject(target: str) -> str:
    """Turn ``"orders.create_order"`` into the endpoint's subject."""
    service, separator, method = target.partition(".")
    if not separator or not service or not method:
        raise ValueError(f"Call target {target!r} must read 'service.method'.")
    return f"{cliffracer_settings.RPC_SUBJECT_PREFIX}.{target}"


async def acall[Reply: BaseModel](
    target: str,
    data: Any = None,
    *,
    reply: type[Reply] | None = None,
    timeout: float | None = None,
    retries: int | None = None,
    headers: dict[str, str] | None = None,
    transport: Transport | None = None,
    as_system: bool = False,
) -> Any:
    """Call ``"service.method"`` and return its reply.

    ``data`` is the request model or a plain dict. With ``reply`` set the reply is validated
    into that model, otherwise it is returned as plain JSON values. An error reply raises a
    ``RemoteError`` subclass. ``as_system=True`` calls as the system identity instead of the
    current caller (see ``caller_headers``). Inside a request handler the call waits no longer
    than the handler's own caller does. The target's call policy (docs/resilience.md) applies;
    ``timeout`` (seconds per attempt) and ``retries`` (attempts after the first) override it.
    """
    subject = rpc_subject(target)
    message_headers = caller_headers(headers, as_system=as_system)
    body = codec.encode(data if data is not None else {})
    # The common case, a target looked up before, costs one dict lookup (guard_for does it too).
    guard = guards.get(target, UNKNOWN)
    if guard is UNKNOWN:
        guard = guard_for(target)
    # One client span for the call, its retries included (docs/tracing.md); none when off.
    span = (
        tracing.outgoing_span(
            tracing.CLIENT, subject, message_headers, group=target.partition(".")[0]
        )
        if tracing.tracer is not None
        else NO_SPAN
    )
    with span:
        if guard is None and not retries:
            wait = timeout if timeout is not None else cliffracer_settings.RPC_TIMEOUT
            wait = bounded_wait(wait, subject, message_headers)
            reply_body = (await send(subject, body, wait, message_headers, transport)).data
        else:
            reply_body = await (guard or retrying_guard(target)).call(
                send,
                target,
                subject,
                data,
                body,
                message_headers,
                timeout=timeout,
                retries=retries,
                transport=transport,
            )
    if reply is None:
        return codec.decode(reply_body)
    try:
        return reply.model_validate_json(reply_body or b"null")
    except ValidationError as error:
        raise remote_error(
            502,
            f"The reply from {subject} does not match {reply.__name__}.",
            type="invalid_reply",
            details=error.errors(include_url=False, include_context=False),
            subject=subject,
        ) from None


async def send(
    subject: str,
    body: bytes,
    wait: float,
    message_headers: dict[str, str],
    transport: Transport | None,
) -> Message:
    """Send one request and return its reply; an error reply raises its ``RemoteError``."""
    message_headers[TIMEOUT] = str(max(1, int(wait * 1000)))
    client = transport or await shared_transport()
    try:
        message = await client.request(subject, body, timeout=wait, headers=message_headers)
    except RemoteError as error:
        # The transport's own refusals (no responders, timeout, too large) name no call.
        error.correlation_id = message_headers[CORRELATION_ID]
        raise
    reply_headers = message.headers
    if reply_headers and ERROR_CODE in reply_headers:
        raise codec.decode_error(reply_headers, message.data, subject=subject)
    return message


async def apublish(
    subject: str,
    data: Any,
    *,
    headers: dict[str, str] | None = None,
    msg_id: str | None = None,
    transport: Transport | None = None,
    as_system: bool = False,
) -> None:
    """Publish an event (a model or a plain dict) on ``subject``.

    On a subject a declared stream holds (docs/durable.md) the event goes through JetStream:
    this waits for the server's acknowledgement, and ``msg_id`` (default: a new one) is its
    ``Nats-Msg-Id``, so a publish retried with the same id is stored once. Elsewhere it is a
    plain NATS publish. ``as_system=True`` publishes as the system identity (see
    ``caller_headers``), as handlers declared ``from_system=True`` require.
    """
    message_headers = caller_headers(headers, as_system=as_system)
    client = transport or await shared_transport()
    await publish_message(client, subject, codec.encode(data), message_headers, msg_id=msg_id)


class BackgroundLoop:
    """An event loop in a daemon thread that runs the sync client's coroutines."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self.pid = 0
        self.lock = threading.Lock()

    def get_loop(self) -> asyncio.AbstractEventLoop:
        # A forked child (a Celery prefork worker) inherits no threads: start a new loop there.
        if self.loop is None or self.pid != os.getpid():
            with self.lock:
                if self.loop is None or self.pid != os.getpid():
                    ready = threading.Event()
                    self.loop = asyncio.new_event_loop()
                    self.pid = os.getpid()
                    self.thread = threading.Thread(
                        target=self._run,
                        args=(self.loop, ready),
                        name="cliffracer-client",
                        daemon=True,
                    )
                    self.thread.start()
                    ready.wait()
        return self.loop

    @staticmethod
    def _run(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(ready.set)
        loop.run_forever()


background_loop = BackgroundLoop()
# A running service registers its own loop so that sync calls from its ``def`` handlers use
# the service's connection instead of opening another.
service_loop: asyncio.AbstractEventLoop | None = None


def run_sync(coroutine: Coroutine[Any, Any, Any], *, timeout: float | None = None) -> Any:
    """Run ``coroutine`` on the process's client loop and wait for its result."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        coroutine.close()
        raise SynchronousCallError(
            "The sync client cannot be used inside a running event loop; await acall() or "
            "apublish() instead."
        )
    loop = service_loop if service_loop is not None and service_loop.is_running() else None
    loop = loop or background_loop.get_loop()
    future = asyncio.run_coroutine_threadsafe(coroutine, loop)
    return future.result(timeout)


def call[Reply: BaseModel](
    target: str,
    data: Any = None,
    *,
    reply: type[Reply] | None = None,
    timeout: float | None = None,
    retries: int | None = None,
    headers: dict[str, str] | None = None,
    as_system: bool = False,
) -> Any:
    """Call ``"service.method"`` from sync code; see ``acall``."""
    guard = guard_for(target)
    if guard is None and not retries:
        longest = timeout if timeout is not None else cliffracer_settings.RPC_TIMEOUT
    else:
        longest = (guard or retrying_guard(target)).longest(timeout, retries)
    return run_sync(
        acall(
            target,
            data,
            reply=reply,
            timeout=timeout,
            retries=retries,
            headers=headers,
            as_system=as_system,
        ),
        timeout=longest + 5,
    )


def publish(
    subject: str,
    data: Any,
    *,
    headers: dict[str, str] | None = None,
    msg_id: str | None = None,
    as_system: bool = False,
) -> None:
    """Publish an event from sync code; see ``apublish``."""
    run_sync(
        apublish(subject, data, headers=headers, msg_id=msg_id, as_system=as_system), timeout=30
    )


def close_sync_transport(timeout: float = 5.0) -> None:
    """Close the sync client's transport (tests, and processes that are about to exit)."""
    from cliffracer_core.transports import close_transport

    loop = background_loop.loop
    if loop is not None and background_loop.pid == os.getpid() and loop.is_running():
        asyncio.run_coroutine_threadsafe(close_transport(), loop).result(timeout)
