"""``manage.py runservice`` as a real process: errors, graceful shutdown, reconnect."""

import asyncio
import json
import os
import subprocess
import sys
import threading
import time

import nats
import pytest

from cliffracer_core import NoResponders, call
from cliffracer_core.testing.plugin import project_root, run_async
from cliffracer_core.transports import connect
from cliffracer_core.transports.nats.embedded import NatsServer

TEST_SETTINGS = {"DJANGO_SETTINGS_MODULE": "tests.settings"}


def run_manage(*arguments: str, **environment: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *arguments],
        cwd=project_root(),
        env=dict(os.environ, **environment),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_unknown_app_is_a_one_line_error(nats_server):
    result = run_manage("runservice", "no_such_app")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "runservice: no installed app with the label 'no_such_app'."
    ]


def test_app_that_is_not_a_service_is_a_one_line_error(nats_server):
    result = run_manage("runservice", "auth")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "not a service app" in result.stderr


async def send_sleeps(url: str, count: int, seconds: float) -> list:
    connection = await connect(url)
    try:
        return await asyncio.gather(
            *(
                connection.request(
                    "rpc.testservice.sleep",
                    json.dumps({"seconds": seconds, "tag": tag}).encode(),
                    timeout=30,
                )
                for tag in range(count)
            ),
            return_exceptions=True,
        )
    finally:
        await connection.close()


def wait_for(condition, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def test_sigterm_answers_every_request_in_flight_and_exits_0(nats_server, runservice_process):
    process = runservice_process("testservice", **TEST_SETTINGS)
    results: list = []
    caller = threading.Thread(
        target=lambda: results.extend(run_async(send_sleeps(nats_server.url, 20, 1.5)))
    )
    caller.start()
    wait_for(lambda: call("testservice.sleeping_now")["count"] == 20)
    process.terminate()
    caller.join(30)
    assert process.wait(30) == 0
    assert len(results) == 20
    assert all(not isinstance(result, Exception) for result in results), results
    assert sorted(json.loads(result.data)["tag"] for result in results) == list(range(20))
    output = process.output()
    assert "stopping; 20 messages in flight" in output
    assert "Service testservice stopped." in output
    # Nobody serves the subject any more.
    with pytest.raises(NoResponders):
        call("testservice.echo", {"text": "anyone?"}, timeout=2)


def test_sigint_stops_the_same_way(nats_server, runservice_process):
    import signal

    process = runservice_process("testservice", **TEST_SETTINGS)
    assert call("testservice.echo", {"text": "hi"}) == {"text": "hi"}
    process.process.send_signal(signal.SIGINT)
    assert process.wait(30) == 0


def test_grace_period_bounds_the_wait(nats_server, runservice_process):
    process = runservice_process("testservice", "--grace-period", "0.5", **TEST_SETTINGS)
    caller = threading.Thread(
        target=lambda: run_async(send_sleeps(nats_server.url, 3, 20)), daemon=True
    )
    caller.start()
    wait_for(lambda: call("testservice.sleeping_now")["count"] == 3)
    started = time.monotonic()
    process.terminate()
    assert process.wait(30) == 0
    assert time.monotonic() - started < 15
    assert "abandoning them" in process.output()


def test_reconnects_after_the_nats_server_restarts(runservice_process, tmp_path):
    server = NatsServer(store_dir=tmp_path / "nats")
    server.start()
    try:
        process = runservice_process("testservice", "--nats-url", server.url, **TEST_SETTINGS)

        async def echo(text: str):
            connection = await nats.connect(server.url)
            try:
                reply = await connection.request(
                    "rpc.testservice.echo", json.dumps({"text": text}).encode(), timeout=2
                )
                return json.loads(reply.data)
            finally:
                await connection.close()

        assert run_async(echo("before")) == {"text": "before"}
        server.restart()

        def answers() -> bool:
            try:
                return run_async(echo("after")) == {"text": "after"}
            except Exception:  # noqa: BLE001
                return False

        wait_for(answers, timeout=20)
        output = process.output()
        assert "Disconnected from NATS" in output
        assert "Reconnected to NATS" in output
    finally:
        server.stop()


def test_waits_for_nats_that_is_not_up_yet(runservice_process, tmp_path):
    server = NatsServer(store_dir=tmp_path / "nats")
    process = runservice_process(
        "testservice",
        "--nats-url",
        f"nats://127.0.0.1:{server.port}",
        wait=False,
        **TEST_SETTINGS,
    )
    try:
        wait_for(lambda: "Cannot connect to NATS" in process.output())
        server.start()
        process.wait_serving()
    finally:
        process.stop()
        server.stop()
