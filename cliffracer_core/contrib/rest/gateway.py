"""The RPC gateway: ``POST /api/rpc/<service>/<method>`` calls any RPC over HTTP.

The request's JSON body is the RPC's request, the reply's JSON is the response body, and the
caller's access token travels to the service, which checks it and the endpoint's permission
itself: the gateway lets every caller through to the service and adds no rule of its own. Errors
are mapped once, by ``cliffracer_core.contrib.rest.errors``; an unknown service is told apart from a
known one that is down through ADR-32 discovery.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from django.http import HttpResponse
from rest_framework import exceptions, status
from rest_framework.parsers import JSONParser
from rest_framework.permissions import AllowAny
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework_simplejwt.tokens import Token

from cliffracer_core.contrib.rest.errors import error_body, http_status_of
from cliffracer_core.contrib.rest.schema import gateway_schema
from cliffracer_core.core.auth.tokens import session_access_token
from cliffracer_core.core.client import call, run_sync, shared_transport
from cliffracer_core.core.discovery import is_name, request_all
from cliffracer_core.core.errors import (
    BadRequest,
    InternalError,
    NoResponders,
    NotFound,
    RemoteError,
    RequestTooLarge,
    ServiceError,
)
from cliffracer_core.core.headers import AUTHORIZATION
from cliffracer_core.core.settings import cliffracer_settings

logger = logging.getLogger("cliffracer.gateway")

# How long one $SRV.INFO round gathers replies, how long its result is reused, and how long a
# service seen once is still "known" (and so 503 when down rather than 404).
DISCOVERY_WINDOW = 0.25
DISCOVERY_TTL = 5.0
KNOWN_FOR = 600.0


class UnknownService(NotFound):
    type = "unknown_service"
    default_message = "No such service."


class ServiceDirectory:
    """Which services exist, as far as this process can tell.

    A service is known when it is a service app of this project, when it answered a call made
    here, or when it answered ``$SRV.INFO`` recently. Discovery runs only when a call found no
    responders, at most once per ``DISCOVERY_TTL``, so a working call costs nothing extra.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: dict[str, float] = {}
        self.discovered_at = 0.0

    def clear(self) -> None:
        with self.lock:
            self.seen.clear()
            self.discovered_at = 0.0

    def saw(self, name: str) -> None:
        self.seen[name] = time.monotonic()

    def knows(self, name: str) -> bool:
        if name in installed_services():
            return True
        with self.lock:
            now = time.monotonic()
            if now - self.discovered_at > DISCOVERY_TTL:
                self.discovered_at = now
                for running in self.discover():
                    self.seen[running] = now
            return now - self.seen.get(name, float("-inf")) < KNOWN_FOR

    @staticmethod
    def discover() -> set[str]:
        """Names of the services that answer ``$SRV.INFO`` now (empty when NATS is down)."""
        try:
            replies = run_sync(discover_infos(), timeout=DISCOVERY_WINDOW + 5)
        except Exception as error:  # noqa: BLE001  (no discovery is no news, not a failure)
            logger.warning("Service discovery failed: %s", error)
            return set()
        return {reply["name"] for reply in replies if isinstance(reply.get("name"), str)}


async def discover_infos(window: float = DISCOVERY_WINDOW) -> list[dict[str, Any]]:
    """Every running instance's ``$SRV.INFO`` reply, over this loop's shared connection."""
    return await request_all(await shared_transport(), "INFO", timeout=window)


def installed_services() -> set[str]:
    from cliffracer_core.core.apps import service_app_configs

    return {
        config.service_class.service_name()
        for config in service_app_configs()
        if config.service_class is not None
    }


directory = ServiceDirectory()


def authorization_of(request: Request) -> str | None:
    """The ``Authorization`` value to send to the service for this request, or None.

    A JWT-authenticated request sends its own token. A session (a person logged in to the
    admin, using the API docs) sends a short-lived access token minted for that user, with the
    same claims as one from the token endpoint. Any other credentials are refused here rather
    than passed on: a password in a Basic header must not travel to a service.
    """
    if isinstance(request.auth, Token):
        # The header as sent: str(token) would sign it again.
        return request.headers[AUTHORIZATION].strip()
    user = request.user
    if user is not None and user.is_authenticated:
        return f"Bearer {session_access_token(user)}"
    if request.headers.get(AUTHORIZATION, "").strip():
        raise exceptions.AuthenticationFailed(
            "The Authorization header must read 'Bearer <access token>'.",
            code="bad_authorization_header",
        )
    return None


def gateway_exception_handler(exception: Exception, context: dict[str, Any]) -> Response | None:
    """Every gateway error, DRF's own included, in the one shape services use."""
    if isinstance(exception, RemoteError | ServiceError):
        return Response(error_body(exception), status=http_status_of(exception))
    if isinstance(exception, exceptions.APIException):
        headers = {}
        if auth_header := getattr(exception, "auth_header", None):
            headers["WWW-Authenticate"] = auth_header
        if wait := getattr(exception, "wait", None):
            headers["Retry-After"] = f"{wait:.0f}"
        codes = exception.get_codes()
        return Response(
            {
                "error": {
                    "code": exception.status_code,
                    "type": codes if isinstance(codes, str) else exception.default_code,
                    "message": _message_of(exception.detail),
                    "details": None,
                }
            },
            status=exception.status_code,
            headers=headers,
        )
    # Anything else is the gateway's own failure: logged with its traceback (and the request's
    # correlation id), answered in the same shape, never as Django's error page.
    logger.error("The gateway failed.", exc_info=exception)
    body = error_body(InternalError("The gateway failed."))
    request = context.get("request")
    if correlation_id := getattr(request, "correlation_id", None):
        body["error"]["correlation_id"] = correlation_id
    return Response(body, status=status.HTTP_500_INTERNAL_SERVER_ERROR)


def _message_of(detail: Any) -> str:
    # simplejwt puts {"detail": ..., "messages": [...]} here; the first line is enough.
    if isinstance(detail, dict):
        detail = detail.get("detail", "")
    if isinstance(detail, list):
        detail = detail[0] if detail else ""
    return str(detail)


class RpcGatewayView(APIView):
    """Call the RPC ``<method>`` of ``<service>`` with the JSON body and the caller's token."""

    permission_classes = [AllowAny]  # the service checks the caller, not the gateway
    parser_classes = [JSONParser]
    renderer_classes = [JSONRenderer]

    def get_exception_handler(self) -> Any:
        return gateway_exception_handler

    @gateway_schema
    def post(self, request: Request, service: str, method: str) -> HttpResponse:
        if not is_name(service):
            raise UnknownService("A service name is 1 to 64 letters, digits, '_' or '-'.")
        if not is_name(method):
            raise NotFound(
                "A method name is 1 to 64 letters, digits, '_' or '-'.", type="unknown_endpoint"
            )
        limit = cliffracer_settings.MAX_REQUEST_BYTES
        length = request.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > limit:
            raise RequestTooLarge(f"The request body is {length} bytes; the limit is {limit}.")
        data = request.data
        if not isinstance(data, dict):
            raise BadRequest("The request body must be a JSON object.", type="invalid_body")
        headers = {}
        if authorization := authorization_of(request):
            headers[AUTHORIZATION] = authorization
        try:
            reply = call(f"{service}.{method}", data, headers=headers)
        except NoResponders as error:
            if not directory.knows(service):
                raise UnknownService(f"There is no service {service!r}.") from None
            raise error from None
        except RemoteError as error:
            # Any reply, an error reply too, shows that the service exists.
            if error.type not in LOCAL_ERRORS:
                directory.saw(service)
            raise error from None
        directory.saw(service)
        if reply is None:
            # DRF renders None as an empty body; the RPC's reply is JSON null.
            return HttpResponse(b"null", content_type="application/json")
        return Response(reply, status=status.HTTP_200_OK)


# Errors the client raises on its own side, which prove nothing about the service.
LOCAL_ERRORS = {
    "timeout",
    "transport_unavailable",
    "no_responders",
    "circuit_open",
    "bulkhead_full",
}
