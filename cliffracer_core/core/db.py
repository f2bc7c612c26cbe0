"""Database-connection hygiene around each message, as Django's request cycle has.

A plain ``def`` handler runs in a worker thread between two ``close_old_connections()`` calls
(as ``channels.db.DatabaseSyncToAsync`` does). An ``async def`` handler's ORM calls run in
asgiref's thread-sensitive thread; when a message opened a connection there, it is cleaned up
after the message, and a periodic sweep catches connections left open between messages.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Any

from asgiref.sync import sync_to_async
from django.db import close_old_connections
from django.db.backends.signals import connection_created


class MessageState:
    """What the code of one message did that needs cleaning up after it."""

    __slots__ = ("database_used",)

    def __init__(self) -> None:
        self.database_used = False


message_state: contextvars.ContextVar[MessageState | None] = contextvars.ContextVar(
    "cliffracer_message_state", default=None
)


def mark_database_used(**kwargs: Any) -> None:
    # asgiref runs sync code in a copy of the caller's context, so the state object seen here
    # is the one of the message that triggered the connection.
    state = message_state.get()
    if state is not None:
        state.database_used = True


connection_created.connect(mark_database_used, dispatch_uid="cliffracer_mark_database_used")


def run_with_connection_hygiene(function: Callable[..., Any], *args: Any) -> Any:
    """Run a sync handler between two ``close_old_connections()`` calls (in its thread)."""
    close_old_connections()
    try:
        return function(*args)
    finally:
        close_old_connections()


aclose_old_connections = sync_to_async(close_old_connections, thread_sensitive=True)
