"""Services and helpers shared by the monitor's and the console's tests."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import nats

from cliffracer_core import Conflict, Service, event, rpc, timer
from cliffracer_core.contrib.monitor import sampling
from cliffracer_core.contrib.monitor.service import MonitorService
from cliffracer_core.core.client import shared_transport
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
        return await sampling.discover(await shared_transport(), window=window)

    return sampling.record(run_async(discover()), now=now)


def wait_until(condition: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.05)
    return condition()


class FakeService:
    """A plain nats-py client that answers ``$SRV.PING``, ``INFO`` and ``STATS`` (for all, by
    name and by id) with whatever JSON it is given: a service written by someone else.

    ``replies`` maps each verb to the body sent: a value (encoded as JSON, NaN and Infinity
    allowed) or bytes sent as they are. Change it at any time; the next request gets it.
    """

    def __init__(self, nats_url: str, name: str, instance_id: str) -> None:
        self.nats_url = nats_url
        self.name = name
        self.id = instance_id
        identity = {"name": name, "id": instance_id, "version": "1.0.0"}
        self.replies: dict[str, Any] = {
            "PING": {**identity, "type": "io.nats.micro.v1.ping_response"},
            "INFO": {**identity, "type": "io.nats.micro.v1.info_response", "endpoints": []},
            "STATS": {**identity, "type": "io.nats.micro.v1.stats_response", "endpoints": []},
        }
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.connection: Any = None

    def body(self, verb: str) -> bytes:
        reply = self.replies[verb]
        return reply if isinstance(reply, bytes) else json.dumps(reply).encode()

    def start(self) -> FakeService:
        async def subscribe() -> None:
            self.connection = await nats.connect(self.nats_url)
            for verb in ("PING", "INFO", "STATS"):

                async def answer(message: Any, verb: str = verb) -> None:
                    await message.respond(self.body(verb))

                for subject in (
                    f"$SRV.{verb}",
                    f"$SRV.{verb}.{self.name}",
                    f"$SRV.{verb}.{self.name}.{self.id}",
                ):
                    await self.connection.subscribe(subject, cb=answer)
            await self.connection.flush()

        self.thread.start()
        asyncio.run_coroutine_threadsafe(subscribe(), self.loop).result(10)
        return self

    def stop(self) -> None:
        if self.connection is not None:
            asyncio.run_coroutine_threadsafe(self.connection.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
