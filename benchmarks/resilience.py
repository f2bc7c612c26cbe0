"""What call policies cost a call: an open breaker's fast failure, and a closed breaker's call.

All in one process, on one event loop. The calls that get through go to ``Instant``, a
transport whose ``request`` returns a prepared reply at once: a round trip through any real
transport (even the in-memory one, hundreds of µs on a busy machine) would bury the few µs
being measured in its noise. So what differs between rows is the client's own work:

- **local refusal** (baseline of the fast failure): an ``async def`` that raises a
  ``RemoteError``, awaited and caught: a local function call that fails.
- **open breaker, whole call**: ``acall()`` to a target whose breaker is open, caught: the
  client builds the call (headers, correlation id, body) and the guard refuses it.
- **open breaker, the guard alone**: ``Guard.attempt()`` refusing, caught: the breaker's part.
- **no policy** (baseline of the closed breaker): ``acall()`` of a target no policy names.
- **closed breaker**: ``acall()`` of a target with a breaker, a bulkhead, retries, a timeout.

Rows alternate in rounds (reversed every other one) so that noise from other work on the
machine falls on all of them; each figure is the median of the rounds. The closed breaker's
extra cost is also given in local refusals, which keeps its meaning on a loaded machine. Run:
``.venv/bin/python benchmarks/resilience.py [--calls 20000] [--rounds 7]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings.settings")
os.environ["CLIFFRACER_TRANSPORT_URL"] = f"memory://bench-{uuid.uuid4().hex[:8]}"

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402

from benchmarks import harness  # noqa: E402
from cliffracer_core import RemoteError, acall  # noqa: E402
from cliffracer_core.core import resilience  # noqa: E402
from cliffracer_core.core.client import caller_headers, send, shared_transport  # noqa: E402
from cliffracer_core.core.settings import cliffracer_settings  # noqa: E402
from cliffracer_core.transports.base import Received  # noqa: E402

OPEN = "benchopen"
GUARDED = "benchguarded"
PLAIN = "benchplain"
POLICIES = {
    OPEN: {"BREAKER": {"MIN_CALLS": 1, "FAILURE_RATIO": 1.0, "OPEN_SECONDS": 3600}},
    GUARDED: {
        "TIMEOUT": 5.0,
        "RETRIES": 2,
        "BREAKER": True,
        "BULKHEAD": {"MAX_IN_FLIGHT": 100, "MAX_WAITING": 100},
    },
}
# What a closed breaker may add to a call, in local refusals: "a few microseconds" where a
# local refusal costs about 1 µs (an idle machine), and a bar that does not move with the load
# of a shared one. The factor within which a fast failure is "a local function call's order
# of magnitude".
CLOSED_BAR_LOCAL_CALLS = 5.0
ORDER_OF_MAGNITUDE = 10.0


async def local_refusal() -> None:
    raise RemoteError("refused", code=503, type="local")


class Instant:
    """A transport that answers every request at once with the same reply."""

    def __init__(self, data: bytes) -> None:
        self.reply = Received(subject="_INBOX.reply", data=data, headers=None, reply="")

    async def request(self, subject: str, data: bytes, *, headers=None, timeout: float):
        return self.reply


async def measure(operation: Callable[[], Awaitable[object]], calls: int) -> float:
    """Microseconds per call of ``operation`` (which may raise a ``RemoteError``)."""
    started = time.perf_counter_ns()
    for _ in range(calls):
        with contextlib.suppress(RemoteError):
            await operation()
    return (time.perf_counter_ns() - started) / calls / 1000


async def main(calls: int, rounds: int) -> None:
    settings.CLIFFRACER = {**settings.CLIFFRACER, "CALLS": POLICIES}
    cliffracer_settings.reload()
    resilience.forget_policies()
    transport = await shared_transport()
    body = {"id": 1, "name": "widget-42"}
    instant = Instant(b'{"id": 1, "name": "widget-42"}')
    with contextlib.suppress(RemoteError):
        await acall(f"{OPEN}.echo", body, timeout=0.05)  # no responders: the breaker opens
    guard = resilience.guard_for(f"{OPEN}.echo")
    assert guard is not None and guard.scope.state == "open"
    headers = caller_headers(None)
    rows: dict[str, Callable[[], Awaitable[object]]] = {
        "local refusal": local_refusal,
        "open breaker, whole call": lambda: acall(f"{OPEN}.echo", body),
        "open breaker, the guard alone": lambda: guard.attempt(
            send, f"rpc.{OPEN}.echo", b"{}", 1.0, headers, transport
        ),
        "no policy": lambda: acall(f"{PLAIN}.echo", body, transport=instant),
        "closed breaker": lambda: acall(f"{GUARDED}.echo", body, transport=instant),
    }
    for operation in rows.values():  # warm up
        await measure(operation, calls // 10)
    figures: dict[str, list[float]] = {name: [] for name in rows}
    for number in range(rounds):
        for name in harness.alternate(list(rows), number):
            figures[name].append(await measure(rows[name], calls))
    median = {name: statistics.median(values) for name, values in figures.items()}
    print(f"{calls} calls per row and round, {rounds} rounds; median µs per call:")
    for name, value in median.items():
        print(f"  {name:32} {value:9.2f} µs")
    local = median["local refusal"]
    print(
        harness.ratio_line(
            "open breaker, whole call / local refusal:",
            median["open breaker, whole call"] / local,
            ORDER_OF_MAGNITUDE,
            at_most=True,
            per_repeat=[
                a / b
                for a, b in zip(
                    figures["open breaker, whole call"], figures["local refusal"], strict=True
                )
            ],  # noqa: E501
        )
    )
    print(
        harness.ratio_line(
            "open breaker, the guard alone / local refusal:",
            median["open breaker, the guard alone"] / local,
            ORDER_OF_MAGNITUDE,
            at_most=True,
        )
    )
    print(
        harness.ratio_line(
            "closed breaker / no policy:",
            median["closed breaker"] / median["no policy"],
            None,
        )
    )
    extra = median["closed breaker"] - median["no policy"]
    # In local refusals: the same figure on a machine of any speed or load.
    relative = extra / local
    print(
        f"closed breaker adds {extra:+.2f} µs per call = {relative:.2f} local refusals "
        f"(bar <= {CLOSED_BAR_LOCAL_CALLS:.0f})  "
        f"{harness.verdict(relative, CLOSED_BAR_LOCAL_CALLS, at_most=True)}"
    )


if __name__ == "__main__":
    parser = harness.argument_parser(__doc__ or "")
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=7)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.calls, arguments.rounds))
