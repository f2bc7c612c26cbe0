"""Names of the NATS headers Cliffracer reads and writes, what their values may hold, and a
cheap header value type."""

import os
import re
from collections.abc import Mapping
from typing import Any

# ADR-32 error headers.
ERROR_CODE = "Nats-Service-Error-Code"
ERROR_MESSAGE = "Nats-Service-Error"

# The same name as on HTTP, so one id can be followed from a browser to the last service.
CORRELATION_ID = "X-Correlation-ID"
# The caller's identity, "Bearer <access token>" as on HTTP.
AUTHORIZATION = "Authorization"
# W3C trace context.
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

# How long the caller waits for the reply, in whole milliseconds. A service drops a request
# that waited longer than this for a handler (nobody would read the reply), and the calls a
# handler makes get at most what is left of it.
TIMEOUT = "Cliffracer-Timeout"
# Which attempt of a call this is, from 1; a retried call keeps its correlation id
# (docs/resilience.md).
ATTEMPT = "Cliffracer-Attempt"
# Who caused a message sent under another identity (the outbox relay, a call made as the
# system identity): for logs and audit, never for authorization.
ORIGIN_CALLER = "Cliffracer-Origin-Caller"

# Headers of durable events. Nats-Msg-Id is JetStream's, and every transport keeps its
# meaning: the stream stores a message once per id within its duplicate window, and durable
# handlers use it as the message's identity.
MSG_ID = "Nats-Msg-Id"
# A replayed dead letter names the message it replays (its identity for processed_once, so a
# replay of an event that was in fact processed is not processed twice) and the one consumer
# it is for (the stream's other consumers have handled the original and skip it).
REPLAY_OF = "Cliffracer-Replay-Of"
REPLAY_FOR = "Cliffracer-Replay-For"
# Who replayed it: for logs and audit, never for authorization.
REPLAYED_BY = "Cliffracer-Replayed-By"

# Headers a handler's outgoing calls and events carry onward from the message it handles.
PROPAGATED = (CORRELATION_ID, AUTHORIZATION, TRACEPARENT, TRACESTATE)

# What a correlation id or trace context from outside may hold before it is trusted into logs
# and onward headers: short ids safe in a header and a log line, and printable ASCII.
ACCEPTED_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
ACCEPTED_TRACE = re.compile(r"[\x21-\x7e][\x20-\x7e]{0,511}")


def accepted_id(value: Any) -> bool:
    """Whether ``value`` may be used as a correlation id as it is."""
    return isinstance(value, str) and ACCEPTED_ID.fullmatch(value) is not None


def accepted_trace(value: Any) -> bool:
    """Whether ``value`` may travel on as W3C trace context as it is."""
    return isinstance(value, str) and ACCEPTED_TRACE.fullmatch(value) is not None


def header_bytes(values: Mapping[str, str]) -> int:
    """The size of headers as they travel: names and values, without the separators."""
    return sum(len(name) + len(value) for name, value in values.items())


class CleanHeaderValue(str):
    """A header value already known to hold no CR or LF.

    nats-py strips and translates every header value on every publish to remove line breaks,
    which for a 1 KB access token costs more than the rest of the call; a value checked once
    here skips that work. Where nats-py changes how it sanitises, it stays a plain ``str``.
    """

    __slots__ = ()

    def strip(self, chars: str | None = None) -> str:
        return self if chars is None else str.strip(self, chars)

    def translate(self, table: Any) -> str:
        return self


def new_message_id() -> str:
    """A fresh Nats-Msg-Id (as random as a UUID, and safe to make in any thread)."""
    return CleanHeaderValue(os.urandom(16).hex())


def clean_header_value(value: str) -> str:
    if type(value) is CleanHeaderValue or "\r" in value or "\n" in value:
        return value
    if value[:1].isspace() or value[-1:].isspace():
        return value
    return CleanHeaderValue(value)
