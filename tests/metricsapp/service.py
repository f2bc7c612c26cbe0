"""A service with every kind of handler and every outcome, for the metrics tests.

Installed only by ``tests.metrics_settings``, which the processes of tests/test_metrics.py use.
"""

import asyncio

from pydantic import BaseModel

from cliffracer_core import Service, event, rpc, timer


class Text(BaseModel):
    text: str


class Sleep(BaseModel):
    seconds: float


class Ping(BaseModel):
    fail: bool = False


class Count(BaseModel):
    count: int


class MeteredService(Service):
    """Public endpoints that succeed, fail and wait; an event handler; two timers."""

    name = "metered"
    version = "2.0.0"
    # A policy on its own echo, so that the process has call-policy figures to export.
    calls = {"metered.echo": {"RETRIES": 1}}

    @rpc(public=True)
    async def echo(self, request: Text) -> Text:
        return request

    @rpc(public=True)
    async def relay(self, request: Text) -> Text:
        """Echo, through a call to ``echo`` under the policy above."""
        return await self.call("metered.echo", request, reply=Text)

    @rpc(public=True)
    async def fail(self) -> None:
        raise RuntimeError("the handler failed on purpose")

    @rpc(public=True)
    def count_users(self) -> Count:
        """A plain handler that queries the database (its query spans are the handler's)."""
        from django.contrib.auth.models import User

        return Count(count=User.objects.count())

    @rpc(public=True)
    async def sleep(self, request: Sleep) -> None:
        await asyncio.sleep(request.seconds)

    @event("metered.ping")
    async def on_ping(self, ping: Ping) -> None:
        if ping.fail:
            raise RuntimeError("the event handler failed on purpose")

    @timer(seconds=0.2, immediate=True)
    async def tick(self) -> None:
        pass

    @timer(seconds=0.5, immediate=True)
    def broken(self) -> None:
        raise RuntimeError("the timer failed on purpose")
