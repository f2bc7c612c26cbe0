"""The wire format: plain JSON bodies, ADR-32 error replies."""

from __future__ import annotations

from typing import Any

import pydantic_core
from pydantic import BaseModel

from cliffracer_core.core import headers
from cliffracer_core.core.errors import RemoteError, ServiceError, remote_error


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


# Error messages and details often echo what the caller sent (an unknown sku, a name): cut so
# that a huge input cannot make an error reply too large to send, or flood a log or a page.
MAX_ERROR_TEXT = 1000
MAX_ERROR_HEADER_TEXT = 200
MAX_DETAIL_ITEMS = 100
MAX_DETAIL_DEPTH = 8
CUT = "…"


def shortened(text: str, limit: int = MAX_ERROR_TEXT) -> str:
    """``text`` cut to ``limit`` characters, marked where it was cut."""
    return text if len(text) <= limit else text[: limit - 1] + CUT


def bounded(value: Any, depth: int = 0) -> Any:
    """A copy of JSON-like ``value`` with long strings cut and long lists and dicts trimmed."""
    if isinstance(value, str):
        return shortened(value)
    if depth >= MAX_DETAIL_DEPTH:
        return CUT if isinstance(value, dict | list | tuple) else value
    if isinstance(value, dict):
        items = list(value.items())
        kept = {
            shortened(str(key), 200): bounded(item, depth + 1)
            for key, item in items[:MAX_DETAIL_ITEMS]
        }
        if len(items) > MAX_DETAIL_ITEMS:
            kept[CUT] = f"{len(items) - MAX_DETAIL_ITEMS} more"
        return kept
    if isinstance(value, list | tuple):
        kept_items = [bounded(item, depth + 1) for item in value[:MAX_DETAIL_ITEMS]]
        if len(value) > MAX_DETAIL_ITEMS:
            kept_items.append(f"{CUT} {len(value) - MAX_DETAIL_ITEMS} more")
        return kept_items
    return value


def encode_error(error: ServiceError) -> tuple[bytes, dict[str, str]]:
    """Return the body and headers of an ADR-32 error reply, with echoed input cut short."""
    message = shortened(str(error.message))
    payload = {
        "code": error.code,
        "type": shortened(str(error.type), 100),
        "message": message,
        "details": bounded(error.details),
    }
    body = pydantic_core.to_json({"error": payload}, fallback=str)
    # Header values must be one line; the body carries the longer message.
    header = shortened(" ".join(message.split()), MAX_ERROR_HEADER_TEXT)
    return body, {headers.ERROR_CODE: str(error.code), headers.ERROR_MESSAGE: header}


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
