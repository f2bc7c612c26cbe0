"""Errors as values with codes, shared by services (which raise them) and callers.

A service raises a ``ServiceError`` (or a subclass) on purpose; its code, type, message and
details cross the wire. Any other exception becomes a generic 500 whose text stays in the
service's log. A caller receives every error reply as a ``RemoteError`` subclass chosen by code.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

# The two classes of error replies. A 4xx is a refusal the service's contract provides for (a
# bad request, a missing permission, an order out of stock): the service works as designed. Any
# other error code is the service failing (an unexpected exception, an invalid reply, a call of
# its own that timed out, an overload): a 5xx, or a code outside 400-499 that a service in
# another language made up. Every figure and verdict keeps them apart (docs/console.md).
CLIENT_ERROR = "client"
SERVER_ERROR = "server"
ErrorClass = Literal["client", "server"]


def error_class(code: int) -> ErrorClass:
    """``"client"`` for a 4xx error code, ``"server"`` for any other."""
    return CLIENT_ERROR if 400 <= code <= 499 else SERVER_ERROR


class ServiceError(Exception):
    """An error a handler raises on purpose; everything in it is sent to the caller."""

    code: ClassVar[int] = 500
    type: ClassVar[str] = "service_error"
    default_message: ClassVar[str] = "The service could not complete the request."

    def __init__(
        self,
        message: str | None = None,
        *,
        details: Any = None,
        code: int | None = None,
        type: str | None = None,
    ) -> None:
        self.message = message or self.default_message
        self.details = details
        # An instance may carry its own code and type, e.g. to pass a remote error through.
        if code is not None:
            self.code = code  # type: ignore[misc]
        if type is not None:
            self.type = type  # type: ignore[misc]
        super().__init__(self.message)

    @classmethod
    def from_remote(cls, error: RemoteError) -> ServiceError:
        """Pass an error another service replied with on to this handler's caller."""
        return cls(error.message, details=error.details, code=error.code, type=error.type)

    def as_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "type": self.type,
            "message": self.message,
            "details": self.details,
        }


class BadRequest(ServiceError):
    code = 400
    type = "bad_request"
    default_message = "The request is not valid."


class InvalidJson(ServiceError):
    code = 400
    type = "invalid_json"
    default_message = "The request body is not valid JSON."


class NotAuthenticated(ServiceError):
    code = 401
    type = "not_authenticated"
    default_message = "Authentication credentials were not provided or are not valid."


class Forbidden(ServiceError):
    code = 403
    type = "permission_denied"
    default_message = "You do not have permission to perform this action."


class NotFound(ServiceError):
    code = 404
    type = "not_found"
    default_message = "Not found."


class UnknownEndpoint(ServiceError):
    code = 404
    type = "unknown_endpoint"
    default_message = "The service has no such endpoint."


class Conflict(ServiceError):
    code = 409
    type = "conflict"
    default_message = "The request conflicts with the current state."


class RequestTooLarge(ServiceError):
    code = 413
    type = "request_too_large"
    default_message = "The request body is too large."


class HeadersTooLarge(ServiceError):
    code = 431
    type = "headers_too_large"
    default_message = "The message headers are too large."


class InvalidRequest(ServiceError):
    code = 422
    type = "validation_failed"
    default_message = "The request body does not match the endpoint's request model."


class InternalError(ServiceError):
    code = 500
    type = "internal_error"
    default_message = "The service failed to handle the request."


class InvalidReply(ServiceError):
    code = 502
    type = "invalid_reply"
    default_message = "The service produced a reply that does not match its reply model."


class Unavailable(ServiceError):
    code = 503
    type = "unavailable"
    default_message = "The service is not available."


class Overloaded(Unavailable):
    type = "overloaded"
    default_message = "The service is too busy to take the request now; try again later."


class RemoteError(Exception):
    """An error reply from a service, raised in the caller."""

    code: int = 500

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        type: str = "remote_error",
        details: Any = None,
        subject: str | None = None,
        correlation_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.type = type
        self.details = details
        self.subject = subject
        self.correlation_id = correlation_id

    def __str__(self) -> str:
        return f"[{self.code} {self.type}] {self.message}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "type": self.type,
            "message": self.message,
            "details": self.details,
        }


class ValidationFailed(RemoteError):
    """The service rejected the request body (bad JSON or a failed validation)."""

    code = 400


class NotAuthenticatedError(RemoteError):
    code = 401


class PermissionDenied(RemoteError):
    code = 403


class RemoteNotFound(RemoteError):
    code = 404


class RemoteConflict(RemoteError):
    code = 409


class RpcTimeout(RemoteError):
    """No reply came before the timeout."""

    code = 408


class RemoteUnavailable(RemoteError):
    """The service said it cannot serve the request now (503)."""

    code = 503


class NoResponders(RemoteUnavailable):
    """No instance of the service is listening on the subject."""


class TransportRefused(RemoteUnavailable):
    """The broker refused this process's credentials or certificate: retrying cannot help."""


class CircuitOpen(RemoteUnavailable):
    """The call was not sent: the target's circuit breaker is open (docs/resilience.md)."""


class BulkheadFull(RemoteUnavailable):
    """The call was not sent: this process has as many calls to the target in flight and
    waiting as its bulkhead allows (docs/resilience.md)."""


REMOTE_ERRORS_BY_CODE: dict[int, type[RemoteError]] = {
    400: ValidationFailed,
    401: NotAuthenticatedError,
    403: PermissionDenied,
    404: RemoteNotFound,
    408: RpcTimeout,
    409: RemoteConflict,
    413: ValidationFailed,
    422: ValidationFailed,
    431: ValidationFailed,
    503: RemoteUnavailable,
}


def remote_error(
    code: int,
    message: str,
    *,
    type: str = "remote_error",
    details: Any = None,
    subject: str | None = None,
    correlation_id: str | None = None,
) -> RemoteError:
    """Build the ``RemoteError`` subclass that matches ``code``."""
    error_class = REMOTE_ERRORS_BY_CODE.get(code, RemoteError)
    return error_class(
        message,
        code=code,
        type=type,
        details=details,
        subject=subject,
        correlation_id=correlation_id,
    )
