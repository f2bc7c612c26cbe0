"""What a busy service takes in (cliffracer_core/core/admission.py), under real floods.

An attack run grew a service from 108 MB to 1,230 MB with requests carrying 100 KB headers,
and had 50,000 requests that nobody waited for any more run for minutes while a probe of the
same service timed out. Each test here floods a real ``runservice`` process over real NATS with
plain nats-py publishes (fire and forget, as a flood is) and looks at the process from outside:
its peak memory in /proc, its ``$SRV.STATS``, its answers to other callers meanwhile.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import nats
import pytest

from cliffracer_core import Service, call, rpc
from cliffracer_core.core.context import current_deadline
from cliffracer_core.testing import wait_for
from cliffracer_core.testing.plugin import run_async
from tests.models import Tagged, Wait

TEST_SETTINGS = {"DJANGO_SETTINGS_MODULE": "tests.settings"}
# The most a flood may add to a service's peak memory with the default limits: 32 MiB of waiting
# requests, the NATS client's own buffers and Python's overheads (docs/security.md).
MEMORY_BUDGET = 200 * 1024 * 1024


def memory(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak) of a process, in bytes."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0]) * 1024
    return values


async def flood(
    url: str,
    subject: str,
    count: int,
    *,
    body: bytes,
    headers: dict[str, str] | None = None,
) -> None:
    """Publish ``count`` requests with a reply subject nobody reads, as fast as NATS takes them."""
    connection = await nats.connect(url, max_outstanding_pings=100)
    try:
        inbox = connection.new_inbox()
        for number in range(count):
            await connection.publish(subject, body, reply=f"{inbox}.{number}", headers=headers)
            if number % 200 == 199:
                await connection.flush(timeout=30)
        await connection.flush(timeout=30)
    finally:
        await connection.close()


async def stats_of(url: str, name: str) -> dict:
    connection = await nats.connect(url)
    try:
        reply = await connection.request(f"$SRV.STATS.{name}", b"", timeout=5)
        return json.loads(reply.data)
    finally:
        await connection.close()


def endpoint_stats(url: str, name: str, endpoint: str) -> dict:
    stats = run_async(stats_of(url, name))
    return next(item for item in stats["endpoints"] if item["name"] == endpoint)


@pytest.fixture
def testservice(transactional_db, nats_server, runservice_process):
    return runservice_process("testservice", **TEST_SETTINGS)


def test_a_flood_of_big_headers_stays_within_the_memory_budget(nats_server, testservice):
    before = memory(testservice.pid)["VmRSS"]
    big = {"X-Padding": "x" * 100_000}
    # Slow requests fill the handler slots first, so that the flood meets a busy service.
    body = json.dumps({"seconds": 2.0}).encode()
    run_async(flood(nats_server.url, "rpc.testservice.sleep", 200, body=body))
    run_async(flood(nats_server.url, "rpc.testservice.sleep", 3000, body=body, headers=big))
    # Big bodies (no big headers) to a busy endpoint: they wait, within the byte budget.
    big_body = json.dumps({"seconds": 2.0, "tag": 1, "padding": "y" * 200_000}).encode()
    run_async(flood(nats_server.url, "rpc.testservice.sleep", 1000, body=big_body))
    assert call("testservice.echo", {"text": "still here"}, timeout=10) == {"text": "still here"}
    peak = memory(testservice.pid)["VmHWM"]
    print(f"RSS before {before / 2**20:.0f} MiB, peak {peak / 2**20:.0f} MiB")
    assert peak - before < MEMORY_BUDGET, (before, peak)
    stats = endpoint_stats(nats_server.url, "testservice", "sleep")
    # Every big-header request was refused with 431, none ran.
    assert "431" in stats["last_error"] or stats["data"]["shed"] > 0
    assert testservice.process.poll() is None


def test_requests_nobody_waits_for_are_dropped_and_other_endpoints_keep_answering(
    nats_server, testservice
):
    body = json.dumps({"seconds": 0.5}).encode()
    # The callers say they wait one second: after that, nobody reads the reply.
    headers = {"Cliffracer-Timeout": "1000"}
    started = time.monotonic()
    flooding = threading.Thread(
        target=run_async,
        args=(flood(nats_server.url, "rpc.testservice.sleep", 20_000, body=body, headers=headers),),
    )
    flooding.start()
    # While the flood goes on, another endpoint answers its callers within their timeout.
    probes = []
    time.sleep(0.3)
    while flooding.is_alive() or len(probes) < 5:
        began = time.monotonic()
        reply = call("testservice.echo", {"text": f"probe {len(probes)}"}, timeout=2)
        probes.append((reply, time.monotonic() - began))
        time.sleep(0.1)
    flooding.join()
    flood_seconds = time.monotonic() - started
    print("probe seconds:", [round(seconds, 3) for _, seconds in probes])
    assert [reply for reply, _ in probes] == [
        {"text": f"probe {number}"} for number in range(len(probes))
    ]

    def settled() -> dict | None:
        stats = endpoint_stats(nats_server.url, "testservice", "sleep")
        data = stats["data"]
        handled = stats["num_requests"] - data["shed"]
        accounted = handled + data["shed"] + data["expired"] + data["overflowed"]
        return stats if accounted == 20_000 else None

    stats = wait_for(settled, timeout=60, what="every flooded request accounted for")
    data = stats["data"]
    handled = stats["num_requests"] - data["shed"]
    print(
        f"flood of 20,000 in {flood_seconds:.1f}s: handled {handled}, expired "
        f"{data['expired']}, shed {data['shed']}, overflowed {data['overflowed']}"
    )
    # 100 slots x 0.5 s each is 200 a second: most of the flood never ran its handler.
    assert handled < 20_000 / 2
    assert data["expired"] + data["shed"] + data["overflowed"] > 20_000 / 2
    assert testservice.process.poll() is None


def test_calls_made_by_a_handler_wait_no_longer_than_its_caller(start_service, unique_name):
    seen: list[float] = []

    class Deadlines(Service):
        name = unique_name

        @rpc
        async def outer(self, request: Wait) -> Tagged:
            # Asks for 30 s, but its own caller waits 1 s.
            return await self.call(f"{unique_name}.inner", request, reply=Tagged, timeout=30)

        @rpc
        async def inner(self, request: Wait) -> Tagged:
            seen.append(current_deadline.get() - time.monotonic())
            return Tagged(tag=request.tag)

    start_service(Deadlines)
    assert call(f"{unique_name}.outer", {"tag": 3}, timeout=1.0) == {
        "tag": 3,
        "instance": "",
        "correlation_id": None,
    }
    assert len(seen) == 1
    assert 0 < seen[0] <= 1.0
