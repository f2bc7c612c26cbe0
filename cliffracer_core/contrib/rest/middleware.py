"""HTTP middleware: the correlation id of a request, and request bodies read whole or refused."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.http import HttpRequest, HttpResponseBase, JsonResponse
from django.utils.deprecation import MiddlewareMixin

from cliffracer_core.core import tracing
from cliffracer_core.core.context import current_headers, new_correlation_id
from cliffracer_core.core.errors import RequestTooLarge, ServiceError
from cliffracer_core.core.headers import (
    AUTHORIZATION,
    CORRELATION_ID,
    TRACEPARENT,
    TRACESTATE,
    accepted_id,
    accepted_trace,
)

# ASGI's callables, as plain as the spec.
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Application = Callable[[dict[str, Any], Receive, Send], Awaitable[None]]


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
        values = self.headers_of(request)
        if tracing.tracer is not None:
            method = request.method or "GET"
            with tracing.http_span(method, request.path, values) as span:
                response = self._respond(request, values)
                tracing.note_response(span, method, _route(request), response.status_code)
            return response
        return self._respond(request, values)

    def _respond(self, request: HttpRequest, values: dict[str, str]) -> Any:
        token = current_headers.set(values)
        try:
            response = self.get_response(request)
        finally:
            current_headers.reset(token)
        response[CORRELATION_ID] = request.correlation_id  # type: ignore[attr-defined]
        return response

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        values = self.headers_of(request)
        if tracing.tracer is not None:
            method = request.method or "GET"
            with tracing.http_span(method, request.path, values) as span:
                response = await self._arespond(request, values)
                tracing.note_response(span, method, _route(request), response.status_code)
            return response
        return await self._arespond(request, values)

    async def _arespond(self, request: HttpRequest, values: dict[str, str]) -> HttpResponseBase:
        get_response: Callable[[HttpRequest], Awaitable[HttpResponseBase]] = self.get_response
        token = current_headers.set(values)
        try:
            response = await get_response(request)
        finally:
            current_headers.reset(token)
        response[CORRELATION_ID] = request.correlation_id  # type: ignore[attr-defined]
        return response

    @staticmethod
    def headers_of(request: HttpRequest) -> dict[str, str]:
        offered = request.headers.get(CORRELATION_ID, "")
        # Ids a client may choose: short, and safe in a header, a log line and a NATS header.
        correlation_id = offered if accepted_id(offered) else new_correlation_id()
        request.correlation_id = correlation_id  # type: ignore[attr-defined]
        values = {CORRELATION_ID: correlation_id}
        # The caller's bearer token travels onward to the services a view calls, as on NATS;
        # other schemes (a Basic password) never leave the web process.
        authorization = request.headers.get(AUTHORIZATION, "")
        if authorization[:7].lower() == "bearer ":
            values[AUTHORIZATION] = authorization
        for name in (TRACEPARENT, TRACESTATE):
            if accepted_trace(value := request.headers.get(name)):
                values[name] = value
        return values


def _route(request: HttpRequest) -> str | None:
    """The URL pattern a request matched (``/api/orders/<str:order_id>/``), low-cardinality."""
    match = request.resolver_match
    return f"/{match.route}" if match is not None and match.route else None


# Request bodies
#
# Django and DRF read a body by its Content-Length. A body without one (chunked, or HTTP/2)
# reads as empty: under WSGI Django cannot read it at all, and under ASGI, where Django has it,
# DRF still takes it for none, so a view would run on `{}`. And DRF parses a JSON body whole,
# however large: Django applies DATA_UPLOAD_MAX_MEMORY_SIZE only to `request.body` and forms.


def body_error(code: int, type: str, message: str) -> dict[str, Any]:
    """The error body of a refused request, in the shape services and the gateway answer."""
    return {"error": ServiceError(message, code=code, type=type).as_dict()}


class RequestBodyMiddleware(MiddlewareMixin):
    """Refuse a body Django would read wrong, before anything reads it.

    A body of unknown length (``Transfer-Encoding`` without ``Content-Length``) is 411; a
    ``Content-Length`` that is no number is 400; a body declared larger than
    ``DATA_UPLOAD_MAX_MEMORY_SIZE`` is 413, except a multipart upload, whose files Django
    streams to disk. Under ASGI, ``BodyLengthMiddleware`` has measured such bodies already.
    """

    def process_request(self, request: HttpRequest) -> HttpResponseBase | None:
        declared = request.META.get("CONTENT_LENGTH", "")
        if not declared:
            if request.META.get("HTTP_TRANSFER_ENCODING"):
                return self.refuse(
                    request,
                    411,
                    "length_required",
                    "A request body needs a Content-Length header here; chunked bodies are "
                    "not read.",
                )
            return None
        if not declared.isascii() or not declared.isdigit():
            return self.refuse(
                request, 400, "invalid_content_length", "Content-Length is not a number."
            )
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        if (
            limit is not None
            and int(declared) > limit
            and not request.content_type.startswith("multipart/")
        ):
            return self.refuse(
                request,
                413,
                RequestTooLarge.type,
                f"The request body is {declared} bytes; the limit is {limit}.",
            )
        return None

    @staticmethod
    def refuse(request: HttpRequest, code: int, type: str, message: str) -> JsonResponse:
        body = body_error(code, type, message)
        if correlation_id := getattr(request, "correlation_id", None):
            body["error"]["correlation_id"] = correlation_id
        return JsonResponse(body, status=code)


class BodyLengthMiddleware:
    """ASGI: measure a body sent without ``Content-Length``, then pass it on with one, or refuse.

    The body is read up to ``DATA_UPLOAD_MAX_MEMORY_SIZE``; a longer one is answered 413 at
    once, and the rest is never read. Wraps the project's HTTP application (settings/asgi.py).
    """

    def __init__(self, application: Application) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or any(
            name == b"content-length" for name, _ in scope["headers"]
        ):
            await self.application(scope, receive, send)
            return
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                await self.application(scope, replay([message], receive), send)
                return
            body += message.get("body", b"")
            if limit is not None and len(body) > limit:
                await self.too_large(send, limit)
                return
            if not message.get("more_body", False):
                break
        whole = {"type": "http.request", "body": bytes(body), "more_body": False}
        chunked = any(name == b"transfer-encoding" for name, _ in scope["headers"])
        if body or chunked:
            headers = [
                (name, value) for name, value in scope["headers"] if name != b"transfer-encoding"
            ]
            headers.append((b"content-length", str(len(body)).encode()))
            scope = {**scope, "headers": headers}
        await self.application(scope, replay([whole], receive), send)

    @staticmethod
    async def too_large(send: Send, limit: int) -> None:
        message = f"The request body is larger than the limit of {limit} bytes."
        content = json.dumps(body_error(413, RequestTooLarge.type, message)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(content)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": content})


def replay(messages: list[dict[str, Any]], receive: Receive) -> Receive:
    """A ``receive`` that gives ``messages`` first, then whatever ``receive`` gives."""
    pending = list(messages)

    async def replayed() -> dict[str, Any]:
        return pending.pop(0) if pending else await receive()

    return replayed
