"""Sockets of users who are deleted or deactivated close (code 4401), in every web process.

A socket's user is checked when it signs in, again every ``USER_CHECK_INTERVAL`` seconds while
it stays open, and at once when a change of that user is announced on
``USERS_CHANGED_SUBJECT`` (cliffracer_core/core/auth/users.py): each web process holds one NATS
subscription to it, and finds its own sockets of that user here.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Protocol

from channels.db import database_sync_to_async

from cliffracer_core.core.auth.identity import Caller
from cliffracer_core.core.auth.users import (
    USERS_CHANGED_SUBJECT,
    changed_user,
    needs_check,
    require_active,
    user_status,
)
from cliffracer_core.transports import persistent_transport
from cliffracer_core.transports.base import Message as Msg

logger = logging.getLogger("cliffracer.websocket")


class UserSocket(Protocol):
    """What this module needs of a socket: its caller, and a way to check it again."""

    caller: Caller | None

    async def check_user(self) -> None: ...


# The open sockets of each user in this process (a socket leaves when it closes).
_sockets: dict[str, weakref.WeakSet[UserSocket]] = {}
_watching: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task[None]] = (
    weakref.WeakKeyDictionary()
)


async def still_active(caller: Caller) -> Caller:
    """``caller`` if its user still exists and is active; else raise ``NotAuthenticated``."""
    if needs_check(caller):
        return await database_sync_to_async(require_active)(caller)
    return require_active(caller)  # type: ignore[return-value]


def track(socket: UserSocket, user_id: str) -> None:
    """Count ``socket`` among ``user_id``'s, and make sure this process hears of changes."""
    _sockets.setdefault(user_id, weakref.WeakSet()).add(socket)
    loop = asyncio.get_running_loop()
    if loop not in _watching:
        _watching[loop] = loop.create_task(_watch())


def untrack(socket: UserSocket, user_id: str) -> None:
    sockets = _sockets.get(user_id)
    if sockets is not None:
        sockets.discard(socket)
        if not sockets:
            del _sockets[user_id]


async def _watch() -> None:
    try:
        connection = await persistent_transport()
        await connection.subscribe(USERS_CHANGED_SUBJECT, _changed, max_pending=1024)
    except Exception as error:  # sockets are still checked every USER_CHECK_INTERVAL
        logger.warning("Cannot hear of changed users (%s).", type(error).__name__)
        _watching.pop(asyncio.get_running_loop(), None)


async def _changed(message: Msg) -> None:
    user_id = changed_user(message.data)
    if user_id is None:
        return
    user_status.forget(user_id)
    for socket in tuple(_sockets.get(user_id, ())):
        asyncio.ensure_future(socket.check_user())
