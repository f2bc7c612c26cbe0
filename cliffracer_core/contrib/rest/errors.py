"""DRF's exception handler, plus service errors mapped to HTTP; never a traceback."""

from __future__ import annotations

from typing import Any

from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from cliffracer_core.core.errors import NoResponders, RemoteError, RpcTimeout, ServiceError

# How a service's error code reads over HTTP.
HTTP_STATUS_BY_CODE = {
    400: status.HTTP_400_BAD_REQUEST,
    401: status.HTTP_401_UNAUTHORIZED,
    403: status.HTTP_403_FORBIDDEN,
    404: status.HTTP_404_NOT_FOUND,
    409: status.HTTP_409_CONFLICT,
    413: status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
    422: status.HTTP_400_BAD_REQUEST,
}


def http_status_of(error: RemoteError | ServiceError) -> int:
    """400, 401, 403, 404, 409, 413 as they are, 422 as 400; 503, 504 timeout, 502 else."""
    if isinstance(error, NoResponders):
        return status.HTTP_503_SERVICE_UNAVAILABLE
    if isinstance(error, RpcTimeout) or error.code == 408:
        return status.HTTP_504_GATEWAY_TIMEOUT
    if error.code == 503:
        return status.HTTP_503_SERVICE_UNAVAILABLE
    return HTTP_STATUS_BY_CODE.get(error.code, status.HTTP_502_BAD_GATEWAY)


def error_body(error: RemoteError | ServiceError) -> dict[str, Any]:
    body = {"error": error.as_dict()}
    correlation_id = getattr(error, "correlation_id", None)
    if correlation_id:
        body["error"]["correlation_id"] = correlation_id
    return body


def exception_handler(exception: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exception, RemoteError | ServiceError):
        return Response(error_body(exception), status=http_status_of(exception))
    return drf_exception_handler(exception, context)
