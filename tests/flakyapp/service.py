"""A dependency that is down, failing or slow on demand (tests/test_resilience_processes.py).

``FLAKY_DIR`` names a directory: ``record`` appends one line per request it handles to
``records`` there (a side effect a duplicate would show), and ``half`` fails every second call
while a file ``sick`` exists there.
"""

import asyncio
import os
from pathlib import Path

from pydantic import BaseModel

from cliffracer_core import Service, rpc


class Note(BaseModel):
    tag: int


class Count(BaseModel):
    count: int


class Sleep(BaseModel):
    seconds: float


def directory() -> Path:
    return Path(os.environ["FLAKY_DIR"])


class FlakyService(Service):
    """Down, failing or slow on demand."""

    half_calls = 0
    slow_in_flight = 0

    @rpc
    def record(self, request: Note) -> Count:
        """Not idempotent: each request it handles adds a line."""
        with open(directory() / "records", "a") as records:
            records.write(f"{request.tag}\n")
        return Count(count=request.tag)

    @rpc(idempotent=True)
    async def half(self, request: Note) -> Count:
        """Fails every second call while the directory holds ``sick``."""
        type(self).half_calls += 1
        if (directory() / "sick").exists() and type(self).half_calls % 2:
            raise RuntimeError("sick")
        return Count(count=type(self).half_calls)

    @rpc
    async def half_calls_so_far(self) -> Count:
        return Count(count=type(self).half_calls)

    @rpc
    async def slow(self, request: Sleep) -> Count:
        type(self).slow_in_flight += 1
        try:
            await asyncio.sleep(request.seconds)
        finally:
            type(self).slow_in_flight -= 1
        return Count(count=0)

    @rpc
    async def crawl(self, request: Sleep) -> Count:
        await asyncio.sleep(request.seconds)
        return Count(count=0)

    @rpc
    async def slow_in_flight_now(self) -> Count:
        return Count(count=type(self).slow_in_flight)
