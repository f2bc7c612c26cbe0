"""A service for the framework's process-level tests (runservice, shutdown, reconnect, supervisor).

``TESTSERVICE_CRASH_IF_EXISTS=<path>`` makes the service crash at start while that file exists.
``TESTSERVICE_TIMER_SECONDS=<seconds>`` runs its quiet timers that often (else once a day).
"""

import asyncio
import logging
import os
from pathlib import Path

from pydantic import BaseModel

from cliffracer_core import Service, ServiceError, rpc, timer

logger = logging.getLogger(__name__)
# The quiet timers' interval: a day unless a test asks, so that other tests never see them run.
TIMER_SECONDS = float(os.environ.get("TESTSERVICE_TIMER_SECONDS") or 86400)


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


class Refusal(BaseModel):
    code: int = 409
    type: str = "refused"


class Crash(BaseModel):
    exit_code: int = 3


class TestService(Service):
    """Endpoints whose timing the tests control."""

    name = "testservice"
    version = "1.2.3"

    def __init__(self) -> None:
        self.sleeping = 0
        self.quiet_runs = 0

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

    @rpc(public=True)
    async def refuse(self, request: Refusal) -> Text:
        """Fail on purpose with the code asked for (the load tests count errors by code)."""
        raise ServiceError("Refused on purpose.", code=request.code, type=request.type)

    @rpc
    def crash(self, request: Crash) -> None:
        os._exit(request.exit_code)

    # Quiet timers: a run that goes well writes no access line, one that fails does.
    @timer(seconds=TIMER_SECONDS, quiet=True)
    async def quiet_tick(self) -> None:
        self.quiet_runs += 1
        logger.info("quiet tick %d", self.quiet_runs)

    @timer(seconds=TIMER_SECONDS, quiet=True)
    async def quiet_failure(self) -> None:
        raise RuntimeError("the quiet timer broke")
