"""What a busy service takes in: requests waiting for a handler slot, bounded and fair.

While every one of a service's ``CONCURRENCY`` handler slots is busy, new requests wait here
instead of in the NATS client, whose queue is bounded by message count only (a flood of
requests with 100 KB headers once grew a service by a gigabyte). Each endpoint has its own
line, bounded in count (``MAX_WAITING_REQUESTS``), and all lines together are bounded in bytes
(``MAX_WAITING_BYTES``); a request beyond either is refused at once with 503 ``overloaded``,
which tells its caller more, sooner, than a timeout would. Free slots go to the lines in turn,
so a flood of one endpoint cannot starve the others. A request whose caller has stopped
waiting (its ``Cliffracer-Timeout`` has passed since it arrived) is dropped when its turn
comes, without running its handler.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from cliffracer_core.core.errors import HeadersTooLarge
from cliffracer_core.core.headers import TIMEOUT, header_bytes


class Waiting:
    """One request waiting for a slot: the message, its size and when it arrived."""

    __slots__ = ("message", "size", "arrived")

    def __init__(self, message: Any, size: int, arrived: float) -> None:
        self.message = message
        self.size = size
        self.arrived = arrived


class WaitingLines:
    """Per-endpoint lines of waiting requests; ``take`` serves the lines round-robin."""

    def __init__(self, *, per_line: int, max_bytes: int) -> None:
        self.per_line = per_line
        self.max_bytes = max_bytes
        self.lines: dict[str, deque[Waiting]] = {}
        # The lines that hold requests, in the order they are served.
        self.turns: deque[str] = deque()
        self.count = 0
        self.bytes = 0

    def __len__(self) -> int:
        return self.count

    def add(self, line: str, message: Any) -> bool:
        """Queue ``message`` on ``line``; False (and not queued) when that would overflow."""
        waiting = self.lines.get(line)
        if waiting is not None and len(waiting) >= self.per_line:
            return False
        size = len(message.data) + (header_bytes(message.headers) if message.headers else 0)
        if self.bytes + size > self.max_bytes:
            return False
        if waiting is None:
            waiting = self.lines[line] = deque()
        if not waiting:
            self.turns.append(line)
        waiting.append(Waiting(message, size, time.monotonic()))
        self.count += 1
        self.bytes += size
        return True

    def take(self) -> Waiting | None:
        """The first request of the line whose turn it is, or None when all are empty."""
        if not self.turns:
            return None
        line = self.turns.popleft()
        waiting = self.lines[line]
        item = waiting.popleft()
        if waiting:
            self.turns.append(line)
        else:
            del self.lines[line]
        self.count -= 1
        self.bytes -= item.size
        return item


def caller_timeout(headers: dict[str, str] | None) -> float | None:
    """Seconds the caller said it waits for the reply (``Cliffracer-Timeout``), if it said."""
    if not headers:
        return None
    value = headers.get(TIMEOUT)
    if value is None or not value.isdigit() or len(value) > 12:
        return None
    return int(value) / 1000


def oversized_headers(headers: dict[str, str] | None, limit: int) -> HeadersTooLarge | None:
    """The refusal of headers larger than ``limit`` bytes (431), or None if they fit."""
    if headers and (size := header_bytes(headers)) > limit:
        return HeadersTooLarge(f"The headers are {size} bytes; the limit is {limit}.")
    return None
