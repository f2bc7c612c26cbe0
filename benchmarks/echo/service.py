"""The echo service: its public contract and its endpoints, nothing else.

``benchmarks/rpc_overhead.py`` runs it twice: under ``manage.py runservice echo`` with the
project's default settings (``benchmarks/rpc_settings.py`` installs this app), and, as the
service ``bench``, in a process of its own that leaves the access log out.
"""

from __future__ import annotations

from pydantic import BaseModel

from cliffracer_core import Service, rpc


class EchoRequest(BaseModel):
    id: int
    name: str
    values: list[float]


class EchoReply(BaseModel):
    id: int
    name: str
    values: list[float]


class EchoService(Service):
    """Benchmark-only service: echoes its request."""

    # Public, as the raw responder is: the comparison is of the RPC exchange itself.
    @rpc(public=True)
    async def echo(self, req: EchoRequest) -> EchoReply:
        return EchoReply(id=req.id, name=req.name, values=req.values)

    # The same behind a token (--auth): what identity checks add to a call.
    @rpc
    async def echo_authenticated(self, req: EchoRequest) -> EchoReply:
        return EchoReply(id=req.id, name=req.name, values=req.values)
