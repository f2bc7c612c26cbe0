"""``--websocket URL --clients N``: N subscribed WebSocket clients, and the delivery latency
from an event's publish to its frame on each of them.

The clients speak ``/ws/events/`` (docs/websocket.md): each signs in with the run's token
(``--user``), subscribes to the subjects the run publishes on, and reads frames. The generator
publishes each event with a correlation id of its own, which the event frame carries back, so
every frame is matched to its event's planned send time: delivery latency is the frame's arrival
minus that time, for every (event, client) pair. Frames of events the run did not publish
(another publisher on the subject) are counted apart.

A small RFC 6455 client is written here, as the HTTP one is in ``webclient.py``: the project
has no WebSocket client among its runtime dependencies, and this needs only text frames,
ping/pong and close.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import ssl
import struct
from typing import Any
from urllib.parse import urlsplit

from cliffracer_core.dev.loadtest.histogram import Histogram
from cliffracer_core.dev.loadtest.results import latency_figures

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TEXT, BINARY, CLOSE, PING, PONG, CONTINUATION = 0x1, 0x2, 0x8, 0x9, 0xA, 0x0
MAX_FRAME = 16 * 1024 * 1024
MAX_CLIENTS = 10_000
# How long signing in and subscribing may take, per client.
SETUP_WAIT = 15.0


class WebSocketError(Exception):
    """A socket that could not be opened, signed in or subscribed; the message says why."""


class WebSocket:
    """One client connection: text frames out (masked, as a client must), frames in."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.close_code: int | None = None
        self.close_reason = ""

    @classmethod
    async def connect(cls, url: str) -> WebSocket:
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise WebSocketError(f"{url!r} is not a ws:// or wss:// URL.")
        secure = parts.scheme == "wss"
        port = parts.port or (443 if secure else 80)
        context = ssl.create_default_context() if secure else None
        try:
            reader, writer = await asyncio.open_connection(parts.hostname, port, ssl=context)
        except OSError as error:
            raise WebSocketError(f"cannot connect to {url}: {error.strerror or error}.") from None
        key = base64.b64encode(os.urandom(16)).decode()
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = parts.hostname if parts.port is None else f"{parts.hostname}:{port}"
        writer.write(
            (
                f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode("latin-1")
        )
        status = (await reader.readline()).decode("latin-1").split(" ", 2)
        headers: dict[str, str] = {}
        while (line := (await reader.readline()).decode("latin-1").strip()) != "":
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if len(status) < 2 or status[1] != "101":
            writer.close()
            shown = " ".join(status).strip() or "no answer"
            raise WebSocketError(f"{url} did not open a WebSocket ({shown}).")
        accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
        if headers.get("sec-websocket-accept") != accept:
            writer.close()
            raise WebSocketError(f"{url} answered the handshake wrongly.")
        return cls(reader, writer)

    def send(self, text: str, opcode: int = TEXT) -> None:
        payload = text.encode()
        mask = os.urandom(4)
        length = len(payload)
        if length < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
        elif length < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
        self.writer.write(head + mask + _masked(payload, mask))

    async def receive(self) -> str | None:
        """The next text frame; None once the server closed the socket (``close_code``)."""
        parts: list[bytes] = []
        while True:
            first, second = await self.reader.readexactly(2)
            opcode, length = first & 0x0F, second & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
            if length > MAX_FRAME:
                raise WebSocketError(f"a frame of {length} bytes is too large.")
            mask = await self.reader.readexactly(4) if second & 0x80 else None
            payload = await self.reader.readexactly(length)
            if mask:
                payload = _masked(payload, mask)
            if opcode == PING:
                self.writer.write(struct.pack("!BB", 0x80 | PONG, 0x80 | len(payload[:125])))
                self.writer.write(b"\0\0\0\0" + payload[:125])
                continue
            if opcode == PONG:
                continue
            if opcode == CLOSE:
                if len(payload) >= 2:
                    (self.close_code,) = struct.unpack("!H", payload[:2])
                    self.close_reason = payload[2:].decode(errors="replace")
                return None
            parts.append(payload)
            if first & 0x80:
                return b"".join(parts).decode(errors="replace")

    async def receive_json(self) -> dict[str, Any] | None:
        text = await self.receive()
        return None if text is None else json.loads(text)

    def close(self) -> None:
        if not self.writer.is_closing():
            with contextlib.suppress(OSError, RuntimeError):
                self.writer.write(struct.pack("!BB", 0x80 | CLOSE, 0x80 | 2) + b"\0\0\0\0"
                                  + struct.pack("!H", 1000))  # fmt: skip
            self.writer.close()


def _masked(payload: bytes, mask: bytes) -> bytes:
    """XOR with the repeated 4-byte mask, a machine word at a time."""
    if not payload:
        return b""
    repeated = (mask * (len(payload) // 4 + 1))[: len(payload)]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(
        len(payload), "big"
    )


class Listeners:
    """N signed-in, subscribed clients, and what each event's frames took to arrive."""

    def __init__(self, url: str, count: int, subjects: list[str], token: str) -> None:
        self.url = url
        self.count = count
        self.subjects = subjects
        self.token = token
        self.sockets: list[WebSocket] = []
        self.readers: list[asyncio.Task[None]] = []
        self.latency = Histogram()
        self.per_second: dict[int, Histogram] = {}
        self.delivered = 0
        self.foreign = 0  # frames of events the run did not publish
        self.closed: list[str] = []
        self.published: dict[str, float] = {}  # correlation id -> planned send time
        self.warmup = 0.0
        self.clock: Any = None
        self.changed = asyncio.Event()

    async def open(self) -> None:
        """Open, sign in and subscribe every client; WebSocketError on the first that fails."""
        for _ in range(self.count):
            socket = await WebSocket.connect(self.url)
            self.sockets.append(socket)
            try:
                async with asyncio.timeout(SETUP_WAIT):
                    await self.sign_in(socket)
            except TimeoutError:
                raise WebSocketError(f"{self.url} did not answer the client in time.") from None

    async def sign_in(self, socket: WebSocket) -> None:
        socket.send(json.dumps({"type": "auth", "token": self.token}))
        ready = await socket.receive_json()
        if ready is None or ready.get("type") != "ready":
            reason = socket.close_reason or (ready or {}).get("type") or "closed"
            raise WebSocketError(f"the WebSocket refused to sign in ({reason}).")
        for number, subject in enumerate(self.subjects):
            socket.send(json.dumps({"type": "subscribe", "id": number, "subject": subject}))
            answer = await socket.receive_json()
            if answer is None or answer.get("type") != "subscribed":
                error = (answer or {}).get("error") or {}
                shown = error.get("message") or socket.close_reason or "closed"
                raise WebSocketError(f"cannot subscribe to {subject} over the WebSocket: {shown}")

    def start(self, clock: Any, warmup: float) -> None:
        self.clock, self.warmup = clock, warmup
        loop = asyncio.get_running_loop()
        self.readers = [loop.create_task(self.read(socket)) for socket in self.sockets]

    async def read(self, socket: WebSocket) -> None:
        try:
            while (text := await socket.receive()) is not None:
                self.frame(text)
        except (asyncio.IncompleteReadError, OSError, WebSocketError):
            pass
        self.closed.append(f"{socket.close_code} {socket.close_reason}".strip())

    def frame(self, text: str) -> None:
        now = self.clock()
        try:
            frame = json.loads(text)
        except ValueError:
            return
        if frame.get("type") != "event":
            return
        planned = self.published.get(frame.get("correlation_id"))
        if planned is None:
            self.foreign += 1
            return
        self.delivered += 1
        if planned >= self.warmup:
            seconds = max(0.0, now - planned)
            self.latency.record(seconds)
            self.per_second.setdefault(int(planned), Histogram()).record(seconds)
        self.changed.set()

    @property
    def expected(self) -> int:
        return len(self.published) * self.count

    async def wait_delivered(self, timeout: float) -> None:
        """Until every event reached every client, or ``timeout`` passes."""
        async with asyncio.timeout(timeout):
            while self.delivered < self.expected and len(self.closed) < len(self.sockets):
                self.changed.clear()
                await self.changed.wait()

    def close(self) -> None:
        for reader in self.readers:
            reader.cancel()
        for socket in self.sockets:
            socket.close()

    def summary(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "clients": self.count,
            "subjects": self.subjects,
            "events": len(self.published),
            "expected": self.expected,
            "delivered": self.delivered,
            "all_delivered": self.delivered >= self.expected,
            "foreign_frames": self.foreign,
            "closed_early": [reason for reason in self.closed if reason],
            "latency": latency_figures(self.latency),
            "histogram": self.latency.to_json(),
            "timeline": [
                {
                    "second": second,
                    "frames": h.count,
                    "p50": h.percentile(0.5),
                    "p99": h.percentile(0.99),
                    "max": h.maximum / 1e6 if h.count else None,
                }
                for second, h in sorted(self.per_second.items())
            ],
        }
