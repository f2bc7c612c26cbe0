"""What a message is on SQS: one JSON body with its subject, reply subject, headers, body
(base64: SQS takes text only) and, for a request, when its caller stops waiting.

SQS allows ten message attributes and SNS filters on them; the envelope carries every header
whatever their number, and the ``subject`` attribute is set only on what goes through SNS.
"""

from __future__ import annotations

import base64
import json
import time

from cliffracer_core.transports.base import Received

# The most an SQS message or SNS notification takes.
MAX_BODY = 256 * 1024


def pack(
    subject: str,
    data: bytes,
    headers: dict[str, str] | None,
    reply: str,
    expires: float | None = None,
    stored: tuple[int, float] | None = None,
) -> str:
    """The envelope's JSON; ``stored`` is a durable message's (sequence, stored at)."""
    envelope: dict[str, object] = {"s": subject, "d": base64.b64encode(data).decode()}
    if reply:
        envelope["r"] = reply
    if headers:
        envelope["h"] = headers
    if expires is not None:
        envelope["e"] = round(expires, 3)
    if stored is not None:
        envelope["n"], envelope["t"] = stored[0], round(stored[1], 6)
    return json.dumps(envelope, separators=(",", ":"), ensure_ascii=False)


def unpack(body: str) -> tuple[Received, float | None]:
    """The message, and when its caller stops waiting for a reply (None if never)."""
    envelope = json.loads(body)
    headers = envelope.get("h")
    message = Received(
        str(envelope["s"]),
        base64.b64decode(envelope.get("d", "")),
        {str(k): str(v) for k, v in headers.items()} if headers else None,
        str(envelope.get("r", "")),
    )
    return message, envelope.get("e")


def unpack_stored(body: str) -> tuple[Received, int, float]:
    """A durable message, its sequence and when it was stored (0 for a message without)."""
    message, _ = unpack(body)
    envelope = json.loads(body)
    return message, int(envelope.get("n") or 0), float(envelope.get("t") or 0.0)


def expired(expires: float | None) -> bool:
    """Whether nobody waits for the reply to this request any more (its caller timed out): a
    service that was down when it was sent must not act on it when it comes back."""
    return expires is not None and time.time() > expires
