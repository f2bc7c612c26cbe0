"""Calling services and publishing events, from async and from sync code.

``acall`` and ``apublish`` are for async code (views, consumers, handlers); ``call`` and
``publish`` for sync code (WSGI views, commands, the shell, Celery tasks). The sync forms run
on one background event loop per process with one NATS connection, never one per call.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine
from typing import Any

import nats.errors
from nats.aio.client import Client as NatsClient
from pydantic import BaseModel, ValidationError

from cliffracer_core import codec, context
from cliffracer_core.auth.tokens import system_identity
from cliffracer_core.connection import get_connection, redact
from cliffracer_core.context import current_headers, outgoing_headers
from cliffracer_core.durable.streams import publish_message
from cliffracer_core.errors import NoResponders, RemoteUnavailable, RpcTimeout, remote_error
from cliffracer_core.headers import AUTHORIZATION, CORRELATION_ID, ERROR_CODE, clean_header_value
from cliffracer_core.settings import cliffracer_settings


class SynchronousCallError(RuntimeError):
    """A sync client function was called from a running event loop."""


def caller_headers(extra: dict[str, str] | None) -> dict[str, str]:
    """Headers of an outgoing call or event, with the caller's identity.

    Inside a message or an HTTP request the current caller's token travels onward (or none,
    for an anonymous one). Outside any, in a process that is neither the web server nor a
    service (a script, a command, a test), the call acts as the configured system identity.
    """
    values = outgoing_headers(extra)
    if (
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


async def shared_connection() -> NatsClient:
    """This loop's connection; NATS being unreachable is a 503 error like any other."""
    try:
        return await get_connection()
    except (OSError, nats.errors.Error, TimeoutError) as error:
        raise RemoteUnavailable(
            f"NATS is not reachable at {redact(str(cliffracer_settings.NATS_URL))} "
            f"({type(error).__name__}).",
            type="nats_unavailable",
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
    headers: dict[str, str] | None = None,
    connection: NatsClient | None = None,
) -> Any:
    """Call ``"service.method"`` and return its reply.

    ``data`` is the request model or a plain dict. With ``reply`` set the reply is validated
    into that model, otherwise it is returned as plain JSON values. An error reply raises a
    ``RemoteError`` subclass.
    """
    subject = rpc_subject(target)
    message_headers = caller_headers(headers)
    client = connection or await shared_connection()
    wait = timeout if timeout is not None else cliffracer_settings.RPC_TIMEOUT
    try:
        message = await client.request(
            subject,
            codec.encode(data if data is not None else {}),
            timeout=wait,
            headers=message_headers,
        )
    except nats.errors.NoRespondersError:
        raise NoResponders(
            f"No service is listening on {subject}.",
            type="no_responders",
            subject=subject,
            correlation_id=message_headers[CORRELATION_ID],
        ) from None
    except nats.errors.TimeoutError:
        raise RpcTimeout(
            f"No reply from {subject} within {wait:g}s.",
            type="timeout",
            subject=subject,
            correlation_id=message_headers[CORRELATION_ID],
        ) from None
    reply_headers = message.headers
    if reply_headers and ERROR_CODE in reply_headers:
        raise codec.decode_error(reply_headers, message.data, subject=subject)
    if reply is None:
        return codec.decode(message.data)
    try:
        return reply.model_validate_json(message.data or b"null")
    except ValidationError as error:
        raise remote_error(
            502,
            f"The reply from {subject} does not match {reply.__name__}.",
            type="invalid_reply",
            details=error.errors(include_url=False, include_context=False),
            subject=subject,
        ) from None


async def apublish(
    subject: str,
    data: Any,
    *,
    headers: dict[str, str] | None = None,
    msg_id: str | None = None,
    connection: NatsClient | None = None,
) -> None:
    """Publish an event (a model or a plain dict) on ``subject``.

    On a subject a declared stream holds (docs/durable.md) the event goes through JetStream:
    this waits for the server's acknowledgement, and ``msg_id`` (default: a new one) is its
    ``Nats-Msg-Id``, so a publish retried with the same id is stored once. Elsewhere it is a
    plain NATS publish.
    """
    client = connection or await shared_connection()
    await publish_message(
        client, subject, codec.encode(data), caller_headers(headers), msg_id=msg_id
    )


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
    headers: dict[str, str] | None = None,
) -> Any:
    """Call ``"service.method"`` from sync code; see ``acall``."""
    wait = timeout if timeout is not None else cliffracer_settings.RPC_TIMEOUT
    return run_sync(
        acall(target, data, reply=reply, timeout=wait, headers=headers), timeout=wait + 5
    )


def publish(
    subject: str, data: Any, *, headers: dict[str, str] | None = None, msg_id: str | None = None
) -> None:
    """Publish an event from sync code; see ``apublish``."""
    run_sync(apublish(subject, data, headers=headers, msg_id=msg_id), timeout=30)


def close_sync_connection(timeout: float = 5.0) -> None:
    """Close the sync client's connection (tests, and processes that are about to exit)."""
    from cliffracer_core.connection import close_connection

    loop = background_loop.loop
    if loop is not None and background_loop.pid == os.getpid() and loop.is_running():
        asyncio.run_coroutine_threadsafe(close_connection(), loop).result(timeout)
