"""HTTP middleware: the correlation id of a request, from ``X-Correlation-ID`` or new."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponseBase

from cliffracer_core.context import current_headers, new_correlation_id
from cliffracer_core.headers import AUTHORIZATION, CORRELATION_ID, TRACEPARENT, TRACESTATE

# Ids a client may choose: short, and safe in a header, a log line and a NATS header.
ACCEPTED_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class CorrelationIdMiddleware:
    """Give every request a correlation id and return it as ``X-Correlation-ID``.

    The id is taken from the request's ``X-Correlation-ID`` header when it looks like one,
    otherwise created. Services called and events published while the request is handled
    carry it (and the W3C trace context) onward, and every log line shows it.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self.__acall__(request)
        token = current_headers.set(self.headers_of(request))
        try:
            response = self.get_response(request)
        finally:
            current_headers.reset(token)
        response[CORRELATION_ID] = request.correlation_id  # type: ignore[attr-defined]
        return response

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        get_response: Callable[[HttpRequest], Awaitable[HttpResponseBase]] = self.get_response
        token = current_headers.set(self.headers_of(request))
        try:
            response = await get_response(request)
        finally:
            current_headers.reset(token)
        response[CORRELATION_ID] = request.correlation_id  # type: ignore[attr-defined]
        return response

    @staticmethod
    def headers_of(request: HttpRequest) -> dict[str, str]:
        offered = request.headers.get(CORRELATION_ID, "")
        correlation_id = offered if ACCEPTED_ID.match(offered) else new_correlation_id()
        request.correlation_id = correlation_id  # type: ignore[attr-defined]
        values = {CORRELATION_ID: correlation_id}
        # The caller's bearer token travels onward to the services a view calls, as on NATS;
        # other schemes (a Basic password) never leave the web process.
        authorization = request.headers.get(AUTHORIZATION, "")
        if authorization[:7].lower() == "bearer ":
            values[AUTHORIZATION] = authorization
        for name in (TRACEPARENT, TRACESTATE):
            if value := request.headers.get(name):
                values[name] = value
        return values
