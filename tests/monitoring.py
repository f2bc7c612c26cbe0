"""Services and helpers shared by the monitor's and the console's tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from cliffracer_core import Conflict, Service, event, rpc, timer
from cliffracer_core.client import shared_connection
from cliffracer_core.monitor import sampling
from cliffracer_core.monitor.service import MonitorService
from cliffracer_core.testing.plugin import run_async
from tests.models import Add, Happened, Total

SECRET = "the secret sauce is 42"


def make_shop(service_name: str) -> type[Service]:
    """A service with endpoints that succeed, fail, refuse; an event handler and a timer."""

    class Shop(Service):
        """Sells things to the tests."""

        name = service_name
        version = "2.3.4"

        @rpc(public=True)
        async def add(self, request: Add) -> Total:
            """Add two numbers."""
            return Total(total=request.a + request.b)

        @rpc(permission="auth.view_user")
        async def guarded(self, request: Add) -> Total:
            return Total(total=request.a * request.b)

        @rpc(public=True)
        async def fail(self, request: Add) -> Total:
            raise RuntimeError(SECRET)

        @rpc(public=True)
        async def clash(self) -> Total:
            raise Conflict("Already there.")

        @event(f"{service_name}.happened")
        async def on_happened(self, happened: Happened) -> None:
            if happened.number < 0:
                raise RuntimeError(SECRET)

        @timer(seconds=3600)
        async def hourly(self) -> None:
            pass

    return Shop


def make_fast_monitor(service_name: str, seconds: float = 0.3) -> type[Service]:
    """The monitor, sampling every ``seconds`` under a name of its own."""

    class FastMonitor(MonitorService):
        name = service_name

        @timer(seconds=seconds, immediate=True)
        async def sample(self) -> None:
            await super().sample()

    return FastMonitor


def sample(*, now: datetime | None = None, window: float = 0.3) -> int:
    """One round of the monitor's sampling, from this thread (discovery, then the database)."""

    async def discover() -> list[sampling.InstanceReport]:
        return await sampling.discover(await shared_connection(), window=window)

    return sampling.record(run_async(discover()), now=now)


def wait_until(condition: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.05)
    return condition()
