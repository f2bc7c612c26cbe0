"""What a message is on Redis: one msgpack envelope with its subject, reply subject, headers
and body, so that headers and bodies of any bytes cross lists and channels unchanged."""

from __future__ import annotations

import msgpack

from cliffracer_core.transports.base import Received, clean_headers

__all__ = ["clean_headers", "copy", "header_size", "pack", "unpack"]


def header_size(headers: dict[str, str] | None) -> int:
    """The bytes of headers as NATS sends them: "NATS/1.0\\r\\n", a "key: value\\r\\n" line
    each, "\\r\\n" (what a stream counts against its limits)."""
    if not headers:
        return 0
    return 12 + sum(len(key.encode()) + len(value.encode()) + 4 for key, value in headers.items())


def pack(subject: str, data: bytes, headers: dict[str, str] | None, reply: str) -> bytes:
    return msgpack.packb([subject, reply, headers, bytes(data)], use_bin_type=True)


def unpack(envelope: bytes) -> Received:
    subject, reply, headers, data = msgpack.unpackb(envelope, raw=False)
    return Received(subject, data, headers, reply)


def copy(message: Received) -> Received:
    headers = dict(message.headers) if message.headers else None  # each its own
    return Received(message.subject, message.data, headers, message.reply)
