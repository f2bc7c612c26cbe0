"""Names of the NATS headers Cliffracer reads and writes, and a cheap header value type."""

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

# Headers a handler's outgoing calls and events carry onward from the message it handles.
PROPAGATED = (CORRELATION_ID, AUTHORIZATION, TRACEPARENT, TRACESTATE)


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


def clean_header_value(value: str) -> str:
    if type(value) is CleanHeaderValue or "\r" in value or "\n" in value:
        return value
    if value[:1].isspace() or value[-1:].isspace():
        return value
    return CleanHeaderValue(value)
