"""What the code running for one message knows about it: correlation id, caller, trace."""

from __future__ import annotations

import contextvars
import itertools
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from cliffracer_core.core import headers

# The propagated headers of the message being handled (correlation id, token, trace).
current_headers: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar(
    "cliffracer_current_headers", default=None
)


# The subject of the message being handled (useful to an ``@event("orders.*")`` handler).
current_subject: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "cliffracer_current_subject", default=None
)


# The ``time.monotonic()`` by which the caller of the request being handled stops waiting (from
# its ``Cliffracer-Timeout``); the calls a handler makes wait no longer than that.
current_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "cliffracer_current_deadline", default=None
)


def get_subject() -> str | None:
    """Return the subject of the message being handled, if any."""
    return current_subject.get()


# What this process is: "web" (serves HTTP and WebSocket), "service", or "-" (a command, the
# shell, a script, a test). Logs show it, and only "-" processes act as the system identity
# when a call is made outside any request or message.
process_role = "-"


def set_process_role(role: str) -> None:
    global process_role
    process_role = role


def new_correlation_id() -> str:
    """A new id: 32 hex digits, unique across processes (a random half per process, then a
    count). It says which messages belong together and is no secret; made this way it costs
    half of reading 16 random bytes, and it runs for every call from a plain NATS client."""
    return f"{_id_prefix}{next(_id_numbers):016x}"


def _new_id_prefix() -> None:
    global _id_prefix, _id_numbers
    _id_prefix = os.urandom(8).hex()
    _id_numbers = itertools.count()


_id_prefix = ""
_id_numbers = itertools.count()
_new_id_prefix()
# A forked child (Celery's prefork workers, daphne's) must not repeat its parent's ids.
os.register_at_fork(after_in_child=_new_id_prefix)


def get_correlation_id() -> str | None:
    """Return the correlation id of the message being handled, if any."""
    values = current_headers.get()
    return values.get(headers.CORRELATION_ID) if values else None


def outgoing_headers(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Headers for a call or event made now: the current ones carried onward, plus ``extra``.

    A call made outside any message gets a fresh correlation id, so every exchange has one.
    """
    values: dict[str, str] = {}
    current = current_headers.get()
    if current:
        for name in headers.PROPAGATED:
            if name in current:
                values[name] = current[name]
    if extra:
        values.update(extra)
    if headers.CORRELATION_ID not in values:
        values[headers.CORRELATION_ID] = new_correlation_id()
    return values


@contextmanager
def message_context(values: Mapping[str, str]) -> Iterator[None]:
    """Make ``values`` the current message headers inside the block."""
    token = current_headers.set(values)
    try:
        yield
    finally:
        current_headers.reset(token)
