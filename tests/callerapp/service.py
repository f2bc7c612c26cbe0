"""A service that calls ``flaky`` under call policies (tests/test_resilience_processes.py).

Each relay answers with the outcome of its call (``ok`` or the error's type), so the test sees
what the policy did. Its ``calls`` put a bulkhead on ``flaky.slow``; tests/resilience_settings.py
sets the rest of the policies.
"""

import os

from pydantic import BaseModel

from cliffracer_core import RemoteError, Service, rpc


class Note(BaseModel):
    tag: int


class Sleep(BaseModel):
    seconds: float


class Outcome(BaseModel):
    outcome: str
    code: int = 200


class Pid(BaseModel):
    pid: int


class CallerService(Service):
    """Relays calls to flaky."""

    calls = {"flaky.slow": {"BULKHEAD": {"MAX_IN_FLIGHT": 10, "MAX_WAITING": 10}}}

    async def relay(self, target: str, request: BaseModel) -> Outcome:
        try:
            await self.call(target, request)
        except RemoteError as error:
            return Outcome(outcome=error.type, code=error.code)
        return Outcome(outcome="ok")

    @rpc
    async def relay_record(self, request: Note) -> Outcome:
        return await self.relay("flaky.record", request)

    @rpc
    async def relay_half(self, request: Note) -> Outcome:
        return await self.relay("flaky.half", request)

    @rpc
    async def relay_slow(self, request: Sleep) -> Outcome:
        return await self.relay("flaky.slow", request)

    @rpc
    async def relay_crawl(self, request: Sleep) -> Outcome:
        return await self.relay("flaky.crawl", request)

    @rpc
    async def ping(self) -> Pid:
        return Pid(pid=os.getpid())
