"""Call policies across real runservice processes on a real nats-server.

``caller`` calls ``flaky`` under the policies of tests/resilience_settings.py and its own
``calls``: a dependency that is down and comes back, one that fails half its calls, and one that
is slow.
"""

import asyncio
import json
import os
import subprocess
import sys
import threading

import pytest

from cliffracer_core import acall, call
from cliffracer_core.core.client import shared_transport
from cliffracer_core.testing.plugin import project_root, run_async
from cliffracer_core.testing.polling import wait_for

SETTINGS = {"DJANGO_SETTINGS_MODULE": "tests.resilience_settings"}


@pytest.fixture
def flaky_dir(tmp_path):
    directory = tmp_path / "flaky"
    directory.mkdir()
    return directory


def start(runservice_process, label: str, flaky_dir, **options):
    return runservice_process(label, **SETTINGS, FLAKY_DIR=str(flaky_dir), **options)


def caller_calls() -> dict:
    """The ``calls`` figures of caller's $SRV.STATS, by breaker scope."""

    async def stats() -> dict:
        transport = await shared_transport()
        reply = await transport.request("$SRV.STATS.caller", b"", timeout=2)
        return json.loads(json.loads(reply.data)["metadata"].get("calls") or "{}")

    return run_async(stats())


def test_a_target_that_is_down_then_back_gets_the_call_once(runservice_process, flaky_dir):
    start(runservice_process, "caller", flaky_dir)
    results: list = []
    relay = threading.Thread(
        target=lambda: results.append(call("caller.relay_record", {"tag": 7}, timeout=30))
    )
    relay.start()
    # The caller retries "no responders" until flaky is up.
    wait_for(lambda: caller_calls().get("flaky.record", {}).get("retries", 0) >= 2, 15)
    start(runservice_process, "flaky", flaky_dir)
    relay.join(30)
    assert results == [{"outcome": "ok", "code": 200}]
    # Not idempotent, and handled once: the retries were only of requests nobody received.
    assert (flaky_dir / "records").read_text() == "7\n"


def test_a_target_failing_half_its_calls_opens_the_breaker_then_it_closes(
    runservice_process, flaky_dir
):
    (flaky_dir / "sick").touch()
    start(runservice_process, "flaky", flaky_dir)
    start(runservice_process, "caller", flaky_dir)
    # Every second call fails; the breaker opens at the first failure after MIN_CALLS (10).
    outcomes = [call("caller.relay_half", {"tag": n})["outcome"] for n in range(11)]
    assert outcomes.count("internal_error") == 6
    assert caller_calls()["flaky.half"]["state"] == "open"
    reached = call("flaky.half_calls_so_far")["count"]
    # Open: callers fail at once, and flaky hears nothing of it.
    assert [call("caller.relay_half", {"tag": n})["outcome"] for n in range(10)] == [
        "circuit_open"
    ] * 10
    assert call("flaky.half_calls_so_far")["count"] == reached
    (flaky_dir / "sick").unlink()
    # After OPEN_SECONDS one trial goes through; it succeeds, and the breaker closes.
    wait_for(lambda: call("caller.relay_half", {"tag": 0})["outcome"] == "ok", 15)
    assert caller_calls()["flaky.half"]["state"] == "closed"
    assert [call("caller.relay_half", {"tag": n})["outcome"] for n in range(5)] == ["ok"] * 5


def test_a_slow_target_times_out_and_its_bulkhead_keeps_the_caller_answering(
    runservice_process, flaky_dir
):
    start(runservice_process, "flaky", flaky_dir)
    caller = start(runservice_process, "caller", flaky_dir)
    # TIMEOUT of flaky.crawl (0.5 s) is honoured: the relay answers before this call's 3 s.
    assert call("caller.relay_crawl", {"seconds": 10}, timeout=3) == {
        "outcome": "timeout",
        "code": 408,
    }

    async def relay_many() -> list:
        return await asyncio.gather(
            *(acall("caller.relay_slow", {"seconds": 4}, timeout=30) for _ in range(200)),
            return_exceptions=True,
        )

    results: list = []
    relays = threading.Thread(target=lambda: results.extend(run_async(relay_many())))
    relays.start()
    wait_for(lambda: call("flaky.slow_in_flight_now")["count"] == 10, 15)
    # 10 calls stuck on flaky, 10 waiting for the bulkhead, 180 refused at once: caller still
    # has free handler slots and answers its other endpoints.
    assert call("caller.ping", timeout=2)["pid"] == caller.pid
    relays.join(60)
    outcomes = [result["outcome"] for result in results]
    assert outcomes.count("bulkhead_full") == 180
    assert outcomes.count("ok") == 20


def test_bad_policies_are_check_errors_and_runservice_refuses_them(nats_server):
    def manage(*arguments: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "manage.py", *arguments],
            cwd=project_root(),
            env=dict(os.environ, DJANGO_SETTINGS_MODULE="tests.bad_calls_settings"),
            capture_output=True,
            text=True,
            timeout=60,
        )

    checked = manage("check")
    assert checked.returncode == 1
    assert "cliffracer.E025" in checked.stderr
    assert "['FAILURE_RATIO'] must be above 0 and at most 1" in checked.stderr
    served = manage("runservice", "testservice")
    assert served.returncode == 2
    assert "cliffracer.E025" in served.stderr
    assert "CLIFFRACER['CALLS']['inventory']['RETRIES'] must be an integer" in served.stderr
    assert "Traceback" not in served.stderr
