"""NATS connections: how Cliffracer opens them, and the one each event loop shares."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import weakref
from typing import Any

from nats.aio.client import Client as NatsClient

from cliffracer_core.settings import cliffracer_settings

logger = logging.getLogger("cliffracer.connection")

# One connection per event loop: a service's loop, an ASGI server's loop, the sync client's
# background loop. Keyed weakly so a finished loop (asyncio.run in a script) drops its entry.
_connections: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, NatsClient] = (
    weakref.WeakKeyDictionary()
)
_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


# Attempts a shared client connection makes to (re)connect before it gives up.
CLIENT_RECONNECT_ATTEMPTS = 3


def connection_name(role: str) -> str:
    return f"{cliffracer_settings.CONNECTION_NAME}:{role}@{socket.gethostname()}:{os.getpid()}"


def redact(url: str) -> str:
    """Hide credentials in a NATS URL before it is logged."""
    parts = []
    for server in url.split(","):
        scheme, separator, rest = server.strip().partition("://")
        if "@" in rest:
            rest = "***@" + rest.split("@", 1)[1]
        parts.append(f"{scheme}{separator}{rest}")
    return ",".join(parts)


async def connect(url: str | None = None, *, role: str = "client", **options: Any) -> NatsClient:
    """Open a NATS connection that reconnects forever and logs each disconnect and reconnect."""
    url = url or str(cliffracer_settings.NATS_URL)
    servers = [server.strip() for server in url.split(",") if server.strip()]
    client = NatsClient()
    state = {"connected": False}

    async def disconnected() -> None:
        if client.is_closed:  # a deliberate close, not a lost connection
            return
        logger.warning("Disconnected from NATS (%s); reconnecting.", redact(url))

    async def reconnected() -> None:
        logger.warning("Reconnected to NATS at %s.", redact(str(client.connected_url.netloc)))

    async def error(exception: Exception) -> None:
        # nats-py reports every failed (re)connect attempt here; one line each, no traceback.
        if not state["connected"]:
            logger.warning(
                "Cannot connect to NATS at %s (%s: %s); retrying.",
                redact(url),
                type(exception).__name__,
                exception,
            )
        else:
            logger.info("NATS connection: %s: %s", type(exception).__name__, exception)

    async def closed() -> None:
        logger.info("NATS connection closed.")

    settings: dict[str, Any] = {
        "servers": servers,
        "name": connection_name(role),
        "allow_reconnect": True,
        "max_reconnect_attempts": cliffracer_settings.MAX_RECONNECT_ATTEMPTS,
        "reconnect_time_wait": cliffracer_settings.RECONNECT_WAIT,
        "connect_timeout": 2,
        "disconnected_cb": disconnected,
        "reconnected_cb": reconnected,
        "error_cb": error,
        "closed_cb": closed,
    }
    settings.update(options)
    await client.connect(**settings)
    state["connected"] = True
    return client


async def get_connection() -> NatsClient:
    """Return this event loop's shared connection, opening it on first use."""
    loop = asyncio.get_running_loop()
    client = _connections.get(loop)
    if client is not None and not client.is_closed:
        return client
    lock = _locks.setdefault(loop, asyncio.Lock())
    async with lock:
        client = _connections.get(loop)
        if client is None or client.is_closed:
            # A caller should hear at once that NATS is down, not wait forever; a connection
            # that gives up after an outage is replaced by the next call.
            client = await connect(role="client", max_reconnect_attempts=CLIENT_RECONNECT_ATTEMPTS)
            _connections[loop] = client
        return client


async def persistent_connection(role: str = "web") -> NatsClient:
    """Return this loop's shared connection, made to reconnect forever.

    For a long-lived loop that holds subscriptions (a web process's WebSocket hub and channel
    layer): a connection that gave up after an outage would lose them, so this one never
    gives up, and it replaces a give-up-after-a-few-attempts one that ``get_connection``
    opened earlier on the same loop.
    """
    loop = asyncio.get_running_loop()
    client = _connections.get(loop)
    if client is not None and not client.is_closed and client in _persistent:
        return client
    lock = _locks.setdefault(loop, asyncio.Lock())
    async with lock:
        client = _connections.get(loop)
        if client is None or client.is_closed or client not in _persistent:
            replaced = client
            client = await connect(role=role)
            _persistent.add(client)
            _connections[loop] = client
            if replaced is not None and not replaced.is_closed:
                # Callers may still wait on it for a reply; close it once they cannot be.
                delay = float(cliffracer_settings.RPC_TIMEOUT) + 1
                loop.call_later(delay, lambda: loop.create_task(replaced.close()))
        return client


# Connections opened by persistent_connection (they reconnect forever).
_persistent: weakref.WeakSet[NatsClient] = weakref.WeakSet()


def set_connection(client: NatsClient, loop: asyncio.AbstractEventLoop | None = None) -> None:
    """Make ``client`` the shared connection of ``loop`` (a service shares its own)."""
    _connections[loop or asyncio.get_running_loop()] = client


def forget_connection(loop: asyncio.AbstractEventLoop | None = None) -> None:
    _connections.pop(loop or asyncio.get_running_loop(), None)


async def close_connection() -> None:
    """Drain and close this event loop's shared connection, if it has one."""
    client = _connections.pop(asyncio.get_running_loop(), None)
    if client is not None and not client.is_closed:
        await client.drain()
