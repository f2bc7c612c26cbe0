"""The wire format: plain JSON bodies, ADR-32 error replies."""

from __future__ import annotations

from typing import Any

import pydantic_core
from pydantic import BaseModel

from cliffracer_core import headers
from cliffracer_core.errors import RemoteError, ServiceError, remote_error


def encode(value: Any) -> bytes:
    """Encode a model, a dict or None as the plain JSON body of a message."""
    if isinstance(value, BaseModel):
        return value.__pydantic_serializer__.to_json(value)
    return pydantic_core.to_json(value)


def decode(body: bytes) -> Any:
    """Decode a JSON body into plain Python values (None for an empty body)."""
    if not body:
        return None
    return pydantic_core.from_json(body)


def encode_error(error: ServiceError) -> tuple[bytes, dict[str, str]]:
    """Return the body and headers of an ADR-32 error reply."""
    body = pydantic_core.to_json({"error": error.as_dict()}, fallback=str)
    # Header values must be one line; the body carries the full message.
    message = " ".join(error.message.split())
    return body, {headers.ERROR_CODE: str(error.code), headers.ERROR_MESSAGE: message}


def decode_error(
    message_headers: dict[str, str], body: bytes, *, subject: str | None = None
) -> RemoteError:
    """Turn an ADR-32 error reply into a ``RemoteError`` subclass."""
    try:
        code = int(message_headers.get(headers.ERROR_CODE, "500"))
    except ValueError:
        code = 500
    message = message_headers.get(headers.ERROR_MESSAGE, "") or "The service returned an error."
    error_type = "remote_error"
    details = None
    try:
        payload = pydantic_core.from_json(body) if body else None
    except ValueError:
        payload = None
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        error = payload["error"]
        message = str(error.get("message") or message)
        error_type = str(error.get("type") or error_type)
        details = error.get("details")
    return remote_error(
        code,
        message,
        type=error_type,
        details=details,
        subject=subject,
        correlation_id=message_headers.get(headers.CORRELATION_ID),
    )
