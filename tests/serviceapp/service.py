"""A service for the framework's process-level tests (runservice, shutdown, reconnect)."""

import asyncio

from pydantic import BaseModel

from cliffracer_core import Service, rpc


class Sleep(BaseModel):
    seconds: float
    tag: int = 0


class Slept(BaseModel):
    tag: int


class Text(BaseModel):
    text: str


class Count(BaseModel):
    count: int


class TestService(Service):
    """Endpoints whose timing the tests control."""

    name = "testservice"
    version = "1.2.3"

    def __init__(self) -> None:
        self.sleeping = 0

    @rpc
    async def sleep(self, request: Sleep) -> Slept:
        self.sleeping += 1
        try:
            await asyncio.sleep(request.seconds)
        finally:
            self.sleeping -= 1
        return Slept(tag=request.tag)

    @rpc
    async def sleeping_now(self) -> Count:
        return Count(count=self.sleeping)

    @rpc
    async def echo(self, request: Text) -> Text:
        return request
