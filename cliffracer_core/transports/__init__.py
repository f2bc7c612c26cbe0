"""Messaging backends chosen by settings, and the one connection each event loop shares.

As Django chooses cache and channel-layer backends::

    CLIFFRACER = {"TRANSPORT": {"BACKEND": "cliffracer_core.transports.nats.NatsTransport",
                                "LOCATION": "nats://nats-1:4222,nats://nats-2:4222",
                                "OPTIONS": {}}}

or by a URL, whose scheme picks the backend: ``CLIFFRACER_TRANSPORT_URL`` in the environment,
else ``TRANSPORT["LOCATION"]``, else ``NATS_URL`` (``nats://``, ``tls://``, ``memory://``).

One transport per event loop is shared (a service's loop, an ASGI server's, the sync client's
background loop), keyed weakly so that a finished loop drops its entry.
"""

from __future__ import annotations

import asyncio
import os
import weakref
from typing import Any

from django.utils.module_loading import import_string

from cliffracer_core.core.settings import cliffracer_settings
from cliffracer_core.transports.base import Features, Transport

__all__ = [
    "Features",
    "Transport",
    "close_transport",
    "configured",
    "connect",
    "forget_transport",
    "get_transport",
    "make_transport",
    "persistent_transport",
    "redact",
    "set_transport",
    "shared_transport",
]

# The backend of each URL scheme.
BACKENDS = {
    "nats": "cliffracer_core.transports.nats.NatsTransport",
    "tls": "cliffracer_core.transports.nats.NatsTransport",
    "ws": "cliffracer_core.transports.nats.NatsTransport",
    "wss": "cliffracer_core.transports.nats.NatsTransport",
    "memory": "cliffracer_core.transports.memory.MemoryTransport",
    "amqp": "cliffracer_core.transports.amqp.AmqpTransport",
    "amqps": "cliffracer_core.transports.amqp.AmqpTransport",
    "redis": "cliffracer_core.transports.redis.RedisTransport",
    "rediss": "cliffracer_core.transports.redis.RedisTransport",
    "sqs": "cliffracer_core.transports.sqs.SqsTransport",
}
URL_VARIABLE = "CLIFFRACER_TRANSPORT_URL"
# Attempts a shared client connection makes to (re)connect before it gives up.
CLIENT_RECONNECT_ATTEMPTS = 3


def redact(url: str) -> str:
    """Hide credentials in a transport URL (several, comma-separated) before it is logged."""
    parts = []
    for server in url.split(","):
        scheme, separator, rest = server.strip().partition("://")
        if "@" in rest:
            rest = "***@" + rest.split("@", 1)[1]
        parts.append(f"{scheme}{separator}{rest}")
    return ",".join(parts)


def scheme_of(url: str) -> str:
    return url.split(",")[0].strip().partition("://")[0].lower()


def backend_for(url: str) -> str:
    """The dotted path of the backend that serves ``url``; ``ValueError`` if none does."""
    scheme = scheme_of(url)
    try:
        return BACKENDS[scheme]
    except KeyError:
        raise ValueError(
            f"No transport serves {scheme!r} URLs (known: {', '.join(sorted(BACKENDS))})."
        ) from None


def configured(url: str | None = None) -> tuple[str, str, dict[str, Any]]:
    """(backend path, location, options) of the configured transport, or of ``url``."""
    config = cliffracer_settings.TRANSPORT or {}
    location = (
        url
        or os.environ.get(URL_VARIABLE)
        or config.get("LOCATION")
        or str(cliffracer_settings.NATS_URL)
    )
    chosen_by_url = url is not None or bool(os.environ.get(URL_VARIABLE))
    backend = (None if chosen_by_url else config.get("BACKEND")) or backend_for(location)
    return backend, location, dict(config.get("OPTIONS") or {})


def transport_class(url: str | None = None) -> type[Transport]:
    return import_string(configured(url)[0])


def features(url: str | None = None) -> Features:
    """What the configured transport (or ``url``'s) can do, without connecting."""
    return transport_class(url).features


def make_transport(url: str | None = None, *, role: str = "client", **options: Any) -> Transport:
    """A transport of the configured backend (or ``url``'s), not connected yet."""
    backend, location, configured_options = configured(url)
    return import_string(backend)(location, {**configured_options, **options}, role=role)


async def connect(url: str | None = None, *, role: str = "client", **options: Any) -> Transport:
    """A connected transport of the configured backend (or ``url``'s)."""
    transport = make_transport(url, role=role, **options)
    await transport.connect()
    return transport


# One transport per event loop.
_transports: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Transport] = (
    weakref.WeakKeyDictionary()
)
_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)
# Transports opened by persistent_transport (they reconnect forever).
_persistent: weakref.WeakSet[Transport] = weakref.WeakSet()


async def get_transport() -> Transport:
    """This event loop's shared transport, opened on first use.

    A caller should hear at once that the system is down, not wait forever: the transport
    opened here gives up after a few reconnect attempts, and the next call opens another.
    """
    loop = asyncio.get_running_loop()
    transport = _transports.get(loop)
    if transport is not None and not transport.is_closed:
        return transport
    lock = _locks.setdefault(loop, asyncio.Lock())
    async with lock:
        transport = _transports.get(loop)
        if transport is None or transport.is_closed:
            transport = await connect(
                role="client", max_reconnect_attempts=CLIENT_RECONNECT_ATTEMPTS
            )
            _transports[loop] = transport
        return transport


async def persistent_transport(role: str = "web") -> Transport:
    """This loop's shared transport, made to reconnect forever.

    For a long-lived loop that holds subscriptions (a web process's WebSocket hub and channel
    layer): a transport that gave up after an outage would lose them. It replaces one that
    ``get_transport`` opened earlier on the same loop.
    """
    loop = asyncio.get_running_loop()
    transport = _transports.get(loop)
    if transport is not None and not transport.is_closed and transport in _persistent:
        return transport
    lock = _locks.setdefault(loop, asyncio.Lock())
    async with lock:
        transport = _transports.get(loop)
        if transport is None or transport.is_closed or transport not in _persistent:
            replaced = transport
            transport = await connect(role=role)
            _persistent.add(transport)
            _transports[loop] = transport
            if replaced is not None and not replaced.is_closed:
                # Callers may still wait on it for a reply; close it once they cannot be.
                delay = float(cliffracer_settings.RPC_TIMEOUT) + 1
                loop.call_later(delay, lambda: loop.create_task(replaced.close()))
        return transport


def set_transport(transport: Transport, loop: asyncio.AbstractEventLoop | None = None) -> None:
    """Make ``transport`` the shared one of ``loop`` (a service shares its own)."""
    _transports[loop or asyncio.get_running_loop()] = transport


def shared_transport(loop: asyncio.AbstractEventLoop) -> Transport | None:
    """The shared connection of ``loop``, if it has one (without connecting)."""
    return _transports.get(loop)


def forget_transport(loop: asyncio.AbstractEventLoop | None = None) -> None:
    _transports.pop(loop or asyncio.get_running_loop(), None)


async def close_transport() -> None:
    """Close this event loop's shared transport, if it has one."""
    transport = _transports.pop(asyncio.get_running_loop(), None)
    if transport is not None and not transport.is_closed:
        await transport.close()
