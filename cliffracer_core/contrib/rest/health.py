"""Health endpoints for load balancers and orchestrators: ``/healthz`` and ``/readyz``.

``/healthz`` says the process is alive and serving requests; it checks nothing else, so that
a database or NATS outage never gets a healthy web process restarted. ``/readyz`` says the
process can do its work: the database answers ``SELECT 1`` and NATS answers a round trip on
the process's shared connection (the one the sync client and so every view uses). It answers
503 when a check fails, within about ``CHECK_TIMEOUT`` seconds.

Neither needs credentials, and neither says more than which check failed and what kind of
error it was: no host names, no messages, no tracebacks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from django.db import connections
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from cliffracer_core.core.client import run_sync, shared_transport
from cliffracer_core.core.errors import RemoteError

logger = logging.getLogger("cliffracer.health")

# Seconds a check may take before it counts as failed.
CHECK_TIMEOUT = 1.0


@never_cache
@require_safe
def healthz(request: HttpRequest) -> JsonResponse:
    """200 while the process serves requests."""
    return JsonResponse({"status": "ok"})


@never_cache
@require_safe
def readyz(request: HttpRequest) -> JsonResponse:
    """200 when the database and NATS answer, 503 naming the check that failed otherwise."""
    checks = {"database": run_check(check_database), "nats": run_check(check_nats)}
    ready = all(check["ok"] for check in checks.values())
    return JsonResponse(
        {"status": "ok" if ready else "fail", "checks": checks}, status=200 if ready else 503
    )


def run_check(check: Callable[[], None]) -> dict[str, Any]:
    """Run one check; report whether it passed, a safe word on why not, and how long it took."""
    started = time.perf_counter()
    try:
        check()
    except Exception as error:  # noqa: BLE001  (any failure is a failed check, never a 500)
        logger.warning("Readiness check %s failed: %r", check.__name__, error)
        ok, detail = False, describe(error)
    else:
        ok, detail = True, "ok"
    return {"ok": ok, "detail": detail, "ms": round((time.perf_counter() - started) * 1000, 1)}


def describe(error: BaseException) -> str:
    """What went wrong, without the message (it may name hosts, users or paths)."""
    if isinstance(error, TimeoutError):
        return f"no answer within {CHECK_TIMEOUT:g}s"
    if isinstance(error, RemoteError):
        return f"unreachable ({error.type})"
    return f"failed ({type(error).__name__})"


def check_database() -> None:
    """``SELECT 1`` on the default database."""
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


def check_nats() -> None:
    """A PING/PONG round trip on the process's shared NATS connection."""
    run_sync(nats_round_trip(CHECK_TIMEOUT), timeout=CHECK_TIMEOUT + 1)


async def nats_round_trip(timeout: float) -> None:
    async def round_trip() -> None:
        client = await shared_transport()
        await client.flush(timeout=timeout)

    # One deadline for connecting and the round trip, so that an unreachable server (which
    # the client would retry a few times) fails the check quickly.
    await asyncio.wait_for(round_trip(), timeout)
