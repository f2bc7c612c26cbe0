"""A service for the framework's process-level tests (runservice, shutdown, reconnect, supervisor).

``TESTSERVICE_CRASH_IF_EXISTS=<path>`` makes the service crash at start while that file exists.
"""

import asyncio
import os
from pathlib import Path

from pydantic import BaseModel

from cliffracer_core import Service, rpc


class Sleep(BaseModel):
    seconds: float
    tag: int = 0


class Slept(BaseModel):
    tag: int
    pid: int = 0


class Text(BaseModel):
    text: str


class Count(BaseModel):
    count: int


class InFlight(BaseModel):
    pid: int
    count: int


class Crash(BaseModel):
    exit_code: int = 3


class TestService(Service):
    """Endpoints whose timing the tests control."""

    name = "testservice"
    version = "1.2.3"

    def __init__(self) -> None:
        self.sleeping = 0

    def on_start(self) -> None:
        marker = os.environ.get("TESTSERVICE_CRASH_IF_EXISTS")
        if marker and Path(marker).exists():
            raise RuntimeError(f"crash at start ({marker} exists)")

    # sleep and echo are public: the tests call them with plain nats-py clients, as any NATS
    # client in any language may call a public endpoint without a token.
    @rpc(public=True)
    async def sleep(self, request: Sleep) -> Slept:
        self.sleeping += 1
        try:
            await asyncio.sleep(request.seconds)
        finally:
            self.sleeping -= 1
        return Slept(tag=request.tag, pid=os.getpid())

    @rpc
    async def sleeping_now(self) -> Count:
        return Count(count=self.sleeping)

    @rpc
    async def in_flight(self) -> InFlight:
        return InFlight(pid=os.getpid(), count=self.sleeping)

    @rpc(public=True)
    async def echo(self, request: Text) -> Text:
        return request

    @rpc
    def crash(self, request: Crash) -> None:
        os._exit(request.exit_code)
