"""A NATS request with its fixed headers encoded once: the load generator's hot path.

nats-py encodes and checks every header of every message it sends: for a correlation id, a
deadline and a ~1 KB access token that is some 7-11 µs per request on the development machine,
against 0.5 µs for a message without headers, and the largest cost a load generator has of its
own. A prepared request encodes the headers that never change once, and per request only its
own (the correlation id), then waits for the reply through nats-py's request machinery (its
one reply subscription and map of waiting futures, as ``Client.request`` does).

Those parts of nats-py are private, stable since 2.0; where one is missing (another nats-py)
``NatsTransport.prepare_request`` falls back to the plain ``request()``, and while the
connection cannot send now (reconnecting, closing) each call goes through ``request()`` too,
which buffers or refuses as it always does. The errors are the transport's own, as
``request()`` raises them.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from typing import TYPE_CHECKING

from nats.aio.msg import Msg

from cliffracer_core.core.errors import NoResponders, RpcTimeout
from cliffracer_core.transports.base import PreparedRequest, too_large
from cliffracer_core.transports.subjects import valid_subject

if TYPE_CHECKING:
    from cliffracer_core.transports.nats.transport import NatsTransport

# What nats-py checks a header key against, and how it cleans a value (line breaks to spaces).
HEADER_KEY = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
NEWLINES = str.maketrans({"\r": " ", "\n": " "})
HEADER_START = b"NATS/1.0\r\n"
# The parts of nats-py's Client a prepared request uses.
CLIENT_PARTS = (
    "_resp_sub_prefix",
    "_init_request_sub",
    "_resp_map",
    "_send_command",
    "_flush_queue",
    "_flush_pending",
    "_max_payload",
    "stats",
)
# Reply tokens: unique on the connection, and never the 26 characters of nats-py's own.
_tokens = itertools.count(1)


def header_lines(headers: dict[str, str]) -> bytes:
    """``Key: value\\r\\n`` for each header, as nats-py writes them (an empty key skipped)."""
    lines = bytearray()
    for key, value in headers.items():
        key = key.strip()
        if not key:
            continue
        if not HEADER_KEY.fullmatch(key):
            raise ValueError(f"{key!r} is not a valid header name.")
        lines += f"{key}: {value.strip().translate(NEWLINES)}\r\n".encode()
    return bytes(lines)


def usable(client: object, subject: str, headers: dict[str, str]) -> bool:
    """Whether this nats-py has the parts used, and the subject and headers are ones it takes
    (otherwise the plain request() refuses them, at each call, as it always does)."""
    if not all(hasattr(client, part) for part in CLIENT_PARTS) or not valid_subject(subject):
        return False
    try:
        header_lines(headers)
    except ValueError:
        return False
    return True


class PreparedNatsRequest(PreparedRequest):
    def __init__(
        self, transport: NatsTransport, subject: str, *, headers: dict[str, str], timeout: float
    ) -> None:
        super().__init__(transport, subject, headers=headers, timeout=timeout)
        self.nats = transport
        self.fixed = HEADER_START + header_lines(headers)
        self.command = f"HPUB {subject} ".encode()

    async def __call__(self, data: bytes, headers: dict[str, str]) -> Msg:
        client = self.nats.client
        if not client.is_connected or client.is_draining_pubs:
            # Reconnecting, draining or closed: request() buffers or refuses as it always does.
            return await super().__call__(data, headers)
        if len(data) > client._max_payload:
            raise too_large(self.subject)
        if not client._resp_sub_prefix:
            await client._init_request_sub()
        token = f"{next(_tokens):x}"
        inbox = client._resp_sub_prefix + token.encode()
        header = self.fixed + header_lines(headers) + b"\r\n"
        future: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
        client._resp_map[token] = future
        try:
            client.stats["out_msgs"] += 1
            client.stats["out_bytes"] += len(data)
            await client._send_command(
                b"%s%s %d %d\r\n%s%s\r\n"
                % (self.command, inbox, len(header), len(header) + len(data), header, data)
            )
            if client._flush_queue is not None and client._flush_queue.empty():
                await client._flush_pending()
            try:
                async with asyncio.timeout(self.timeout):
                    reply = await future
            except TimeoutError:
                raise RpcTimeout(
                    f"No reply from {self.subject} within {self.timeout:g}s.",
                    type="timeout",
                    subject=self.subject,
                ) from None
        finally:
            client._resp_map.pop(token, None)
        if not reply.data and reply.headers and reply.headers.get("Status") == "503":
            raise NoResponders(
                f"No service is listening on {self.subject}.",
                type="no_responders",
                subject=self.subject,
            )
        return reply
