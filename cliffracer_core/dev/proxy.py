"""``services``: RPC endpoints as attributes, for the shell and notebooks.

::

    services.orders.create_order({...})      # call("orders.create_order", {...})
    services["my-service"].do_it({...})      # a name that is not an identifier
    services.call("orders.get_order", {"order_id": 1})
    services                                 # <services: inventory, orders, ...>

Every call goes through the sync client (``cliffracer_core.call``) and takes the same
arguments. ``dir()`` and ``repr()`` ask the NATS system which services run (ADR-32
discovery), so tab completion offers what is live, not what is installed here.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel

from cliffracer_core.core.client import call, run_sync
from cliffracer_core.core.discovery import request_all
from cliffracer_core.transports import get_transport

# Seconds to collect discovery answers, and to remember them (tab completion asks often).
DISCOVERY_WAIT = 0.25
DISCOVERY_CACHE = 5.0


class ServicesProxy:
    """Reach every service on the NATS system: ``services.<service>.<method>(data)``."""

    def __init__(self) -> None:
        self._discovered: dict[tuple[str, str | None], tuple[float, list[dict[str, Any]]]] = {}

    def call[Reply: BaseModel](
        self,
        target: str,
        data: Any = None,
        *,
        reply: type[Reply] | None = None,
        timeout: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """Call ``"service.method"``; the same as ``cliffracer_core.call``."""
        return call(target, data, reply=reply, timeout=timeout, headers=headers)

    def __getattr__(self, name: str) -> ServiceProxy:
        # Private and special names (IPython and pickle probe for them) are never services.
        if name.startswith("_"):
            raise AttributeError(name)
        return ServiceProxy(self, name)

    def __getitem__(self, name: str) -> ServiceProxy:
        return ServiceProxy(self, name)

    def __dir__(self) -> list[str]:
        return ["call", *(name for name in self._names() if name.isidentifier())]

    def __repr__(self) -> str:
        names = self._names()
        return f"<services: {', '.join(names) if names else 'none answering'}>"

    def _names(self) -> list[str]:
        return sorted({str(reply.get("name")) for reply in self._discover("PING")})

    def _discover(self, verb: str, name: str | None = None) -> list[dict[str, Any]]:
        """ADR-32 replies, or none when NATS cannot be asked: a listing must never raise."""
        key = (verb, name)
        cached = self._discovered.get(key)
        if cached is not None and time.monotonic() - cached[0] < DISCOVERY_CACHE:
            return cached[1]

        async def ask() -> list[dict[str, Any]]:
            return await request_all(await get_transport(), verb, name, timeout=DISCOVERY_WAIT)

        try:
            replies = run_sync(ask(), timeout=DISCOVERY_WAIT + 5)
        except Exception:  # noqa: BLE001
            return []
        self._discovered[key] = (time.monotonic(), replies)
        return replies


class ServiceProxy:
    """One service: ``services.orders.create_order(data)`` calls its endpoint."""

    def __init__(self, services: ServicesProxy, name: str) -> None:
        self._services = services
        self._name = name

    def __getattr__(self, method: str) -> EndpointProxy:
        if method.startswith("_"):
            raise AttributeError(method)
        return EndpointProxy(f"{self._name}.{method}")

    def __getitem__(self, method: str) -> EndpointProxy:
        return EndpointProxy(f"{self._name}.{method}")

    def __dir__(self) -> list[str]:
        return [method for method in self._endpoints() if method.isidentifier()]

    def __repr__(self) -> str:
        endpoints = self._endpoints()
        listed = ", ".join(endpoints) if endpoints else "not answering"
        return f"<service {self._name}: {listed}>"

    def _endpoints(self) -> list[str]:
        return sorted(
            {
                str(endpoint.get("name"))
                for info in self._services._discover("INFO", self._name)
                for endpoint in info.get("endpoints") or []
            }
        )


class EndpointProxy:
    """One endpoint; calling it is ``call("<service>.<method>", data, ...)``."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __call__[Reply: BaseModel](
        self,
        data: Any = None,
        *,
        reply: type[Reply] | None = None,
        timeout: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        return call(self.target, data, reply=reply, timeout=timeout, headers=headers)

    def __repr__(self) -> str:
        return f"<endpoint {self.target}>"


services = ServicesProxy()
