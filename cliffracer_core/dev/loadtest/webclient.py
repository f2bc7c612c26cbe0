"""A minimal HTTP/1.1 client for HTTP targets: keep-alive connections from a pool.

The project depends on no async HTTP client, and a load generator needs little of one: send a
request on a kept-alive connection, read the status, the headers and a body sized by
``Content-Length`` or chunks. A connection is taken from the pool for one request and given
back after a whole response, so each connection carries one request at a time; the closed
model's N users hold at most N connections, the open model as many as it has in flight.
"""

from __future__ import annotations

import asyncio
import ssl
from urllib.parse import urlsplit

MAX_HEADER_LINES = 200


class HttpError(Exception):
    """A response that cannot be read as HTTP/1.1."""


class Endpoint:
    """Where requests go (scheme, host, port, path) and the pool of connections to it."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r} is not an http:// or https:// URL.")
        self.secure = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.secure else 80)
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        default_port = self.port == (443 if self.secure else 80)
        self.host_header = self.host if default_port else f"{self.host}:{self.port}"
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def request(
        self, method: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, str, bytes]:
        """Send one request; (status, reason, body). A connection that fails is dropped."""
        reader, writer = self.idle.pop() if self.idle else await self.open()
        try:
            lines = [f"{method} {self.path} HTTP/1.1", f"Host: {self.host_header}"]
            lines += [f"{name}: {value}" for name, value in headers.items()]
            if body or method in ("POST", "PUT", "PATCH"):
                lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
            status, reason, content, keep = await read_response(reader, method)
        except BaseException:
            writer.close()
            raise
        if keep:
            self.idle.append((reader, writer))
        else:
            writer.close()
        return status, reason, content

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        context = ssl.create_default_context() if self.secure else None
        return await asyncio.open_connection(self.host, self.port, ssl=context)

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


async def read_response(reader: asyncio.StreamReader, method: str) -> tuple[int, str, bytes, bool]:
    """Read a response: (status, reason, body, whether the connection may be reused)."""
    status_line = await reader.readline()
    if not status_line:
        raise HttpError("the server closed the connection")
    try:
        version, code, *reason = status_line.decode("latin-1").rstrip("\r\n").split(" ", 2)
        status = int(code)
    except ValueError:
        raise HttpError(f"not an HTTP status line: {status_line[:80]!r}") from None
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADER_LINES):
        line = (await reader.readline()).decode("latin-1").rstrip("\r\n")
        if not line:
            break
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    keep = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return status, " ".join(reason), b"", keep
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = await read_chunks(reader)
    elif "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    else:
        body, keep = await reader.read(), False
    return status, " ".join(reason), body, keep


async def read_chunks(reader: asyncio.StreamReader) -> bytes:
    parts = []
    while True:
        size = int((await reader.readline()).split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readline()
