"""``manage.py runservices`` and its supervisor, over real processes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cliffracer_core import call, publish
from cliffracer_core.core.discovery import request_all
from cliffracer_core.dev.supervisor import backoff_delay, describe_exit, last_error_line
from cliffracer_core.testing.plugin import database_url, project_root, run_async
from cliffracer_core.transports import connect
from tests.test_runservice import send_sleeps

STATUS = re.compile(
    r"^supervisor\s+\| (?P<name>\S+)\s+(?P<state>starting|running|stopping|backoff|failed|stopped)"
    r"\s+pid=(?P<pid>\S+)\s+restarts=(?P<restarts>\d+)\s+uptime=\S+(?P<rest>.*)$",
    re.MULTILINE,
)


@dataclass
class Status:
    name: str
    state: str
    pid: int | None
    restarts: int
    rest: str


def wait_for(condition: Callable[[], object], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def ping(name: str) -> list[dict]:
    async def main() -> list[dict]:
        connection = await connect(os.environ["NATS_URL"])
        try:
            return await request_all(connection, "PING", name, timeout=0.3)
        finally:
            await connection.close()

    return run_async(main())


class Managed:
    """A ``manage.py`` process with the test settings, its output in a log file."""

    def __init__(self, log_path: Path, arguments: tuple[str, ...], environment: dict[str, str]):
        self.log_path = log_path
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "PYTHONUNBUFFERED": "1",
            **environment,
        }
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "manage.py", *arguments],
                cwd=project_root(),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def statuses(self, name: str) -> list[Status]:
        return [
            Status(
                match["name"],
                match["state"],
                None if match["pid"] == "-" else int(match["pid"]),
                int(match["restarts"]),
                match["rest"],
            )
            for match in STATUS.finditer(self.output())
            if match["name"] == name
        ]

    def state(self, name: str) -> str | None:
        statuses = self.statuses(name)
        return statuses[-1].state if statuses else None

    def child_pids(self) -> set[int]:
        return {int(pid) for pid in re.findall(r"pid=(\d+)", self.output())}

    def wait_until(self, condition: Callable[[], object], timeout: float = 30.0) -> None:
        """Wait for ``condition``; fail at once, with the output, if the process exits."""

        def met() -> object:
            if self.process.poll() is not None:
                raise AssertionError(f"exited with {self.process.returncode}:\n{self.output()}")
            return condition()

        try:
            wait_for(met, timeout)
        except AssertionError as error:
            raise AssertionError(f"{error}\n{self.output()[-5000:]}") from None

    def wait_running(self, name: str, *, other_than: set[int] = frozenset()) -> int:
        """Wait until ``name`` runs in a process not in ``other_than``; return its pid."""

        def running() -> int | None:
            statuses = self.statuses(name)
            last = statuses[-1] if statuses else None
            if last and last.state == "running" and last.pid not in other_than:
                return last.pid
            return None

        self.wait_until(running)
        return running()  # type: ignore[return-value]

    def stop(self, number: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(number)
        return self.process.wait(timeout)


@pytest.fixture
def manage(nats_server, tmp_path: Path, transactional_db) -> Iterator[Callable[..., Managed]]:
    """Start ``manage.py <arguments>``; whatever still runs after the test is stopped.

    The processes share the test database (migrated: every service runs an outbox relay).
    """
    started: list[Managed] = []

    def start(*arguments: str, **environment: str) -> Managed:
        environment.setdefault("DATABASE_URL", database_url())
        managed = Managed(tmp_path / f"manage-{len(started)}.log", arguments, environment)
        started.append(managed)
        return managed

    yield start
    for managed in started:
        if managed.process.poll() is None:
            managed.process.send_signal(signal.SIGTERM)
            try:
                managed.process.wait(30)
            except subprocess.TimeoutExpired:
                managed.process.kill()
                managed.process.wait()
        for pid in managed.child_pids():
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


def assert_all_gone(pids: set[int]) -> None:
    assert pids
    for pid in pids:
        wait_for(lambda pid=pid: not pid_alive(pid), timeout=10)


# The pieces


def test_backoff_doubles_from_the_first_delay_up_to_the_cap():
    delays = [backoff_delay(crashes, initial=0.5, maximum=30) for crashes in range(1, 9)]
    assert delays == [0.5, 1, 2, 4, 8, 16, 30, 30]


def test_the_last_error_is_the_exception_that_ended_the_last_traceback():
    output = [
        "INFO starting",
        "Traceback (most recent call last):",
        '  File "x.py", line 1, in <module>',
        "ValueError: first",
        "",
        "During handling of the above exception, another exception occurred:",
        "",
        "Traceback (most recent call last):",
        '  File "x.py", line 3, in <module>',
        "    raise RuntimeError('second')",
        "RuntimeError: second",
    ]
    assert describe_exit(1, output) == "exit code 1: RuntimeError: second"
    assert describe_exit(-9, ["2026-01-01 10:00:00 INFO serving"]) == "killed by SIGKILL"
    assert last_error_line(["runservice: no installed app with the label 'x'."]) == (
        "runservice: no installed app with the label 'x'."
    )


def test_names_that_are_not_service_apps_are_refused(manage):
    for arguments, message in [
        (("no_such_app",), "no installed app with the label 'no_such_app'"),
        (("auth",), "'auth' is not a service app"),
        (("testservice=0",), "must be a whole number of at least 1"),
        (("testservice", "testservice=2"), "named twice"),
    ]:
        managed = manage("runservices", *arguments)
        assert managed.process.wait(30) == 2
        assert message in managed.output()
        assert len(managed.output().strip().splitlines()) == 1


# Running instances


def test_counts_start_that_many_instances_in_the_queue_group(manage):
    supervisor = manage("runservices", "testservice=2")
    supervisor.wait_until(lambda: supervisor.state("testservice.1") == "running")
    supervisor.wait_until(lambda: supervisor.state("testservice.2") == "running")
    assert len({reply["id"] for reply in ping("testservice")}) == 2
    children = supervisor.child_pids()
    assert len(children) == 2
    assert supervisor.stop() == 0
    assert_all_gone(children)
    assert "Stopped." in supervisor.output()


def test_sigterm_drains_every_instance_with_requests_in_flight(manage, nats_server):
    supervisor = manage("runservices", "testservice", "--instances", "2")
    supervisor.wait_running("testservice.1")
    supervisor.wait_running("testservice.2")
    results: list = []
    caller = threading.Thread(
        target=lambda: results.extend(run_async(send_sleeps(nats_server.url, 20, 2.0)))
    )
    caller.start()
    in_flight: dict[int, int] = {}

    def all_in_flight() -> bool:
        reply = call("testservice.in_flight")
        in_flight[reply["pid"]] = reply["count"]
        return len(in_flight) == 2 and sum(in_flight.values()) == 20

    supervisor.wait_until(all_in_flight)
    assert supervisor.stop() == 0
    caller.join(30)
    assert len(results) == 20
    assert all(not isinstance(result, Exception) for result in results), results
    replies = [json.loads(result.data) for result in results]
    assert sorted(reply["tag"] for reply in replies) == list(range(20))
    assert len({reply["pid"] for reply in replies}) == 2
    output = supervisor.output()
    drained = re.findall(r"^testservice\.\d +\| .*stopping; (\d+) messages in flight", output, re.M)
    assert sorted(int(count) for count in drained) == sorted(in_flight.values())
    assert supervisor.state("testservice.1") == supervisor.state("testservice.2") == "stopped"
    assert_all_gone(supervisor.child_pids())


def test_a_crashed_instance_is_restarted_after_a_growing_delay(manage):
    supervisor = manage("runservices", "testservice", "--backoff", "0.2")
    seen = {supervisor.wait_running("testservice.1")}
    for crash, delay in [(lambda: publish("rpc.testservice.crash", {"exit_code": 3}), 0.2),
                         (lambda: publish("rpc.testservice.crash", {"exit_code": 4}), 0.4),
                         (lambda: os.kill(max(seen), signal.SIGKILL), 0.8)]:  # fmt: skip
        crashed_at = time.monotonic()
        crash()
        seen.add(supervisor.wait_running("testservice.1", other_than=seen))
        assert time.monotonic() - crashed_at >= delay
    backoffs = [
        status for status in supervisor.statuses("testservice.1") if status.state == "backoff"
    ]
    assert [status.rest.strip() for status in backoffs] == [
        "retry in 0.2s  last error: exit code 3",
        "retry in 0.4s  last error: exit code 4",
        "retry in 0.8s  last error: killed by SIGKILL",
    ]
    assert supervisor.statuses("testservice.1")[-1].restarts == 3
    assert call("testservice.echo", {"text": "back"}) == {"text": "back"}
    assert supervisor.stop() == 0
    assert_all_gone(seen)


def test_an_instance_that_keeps_crashing_fails_and_the_others_go_on(manage, tmp_path):
    marker = tmp_path / "crash"
    marker.touch()
    supervisor = manage(
        "runservices",
        "testservice",
        "notifications",
        "--backoff",
        "0.05",
        "--max-restarts",
        "2",
        TESTSERVICE_CRASH_IF_EXISTS=str(marker),
    )
    supervisor.wait_until(lambda: supervisor.state("testservice.1") == "failed")
    failed = supervisor.statuses("testservice.1")[-1]
    assert failed.restarts == 2
    assert failed.rest.strip() == (
        f"last error: exit code 1: RuntimeError: crash at start ({marker} exists)"
    )
    supervisor.wait_running("notifications.1")
    assert [reply["name"] for reply in ping("notifications")] == ["notifications"]
    # No more tries: three starts in all, and the supervisor runs on.
    starts = [s for s in supervisor.statuses("testservice.1") if s.state == "starting"]
    assert len(starts) == 3
    assert supervisor.process.poll() is None
    assert supervisor.stop() == 0
    assert supervisor.state("testservice.1") == "failed"
    assert_all_gone(supervisor.child_pids())


def test_without_reload_the_supervisor_ends_when_every_instance_failed(manage, tmp_path):
    marker = tmp_path / "crash"
    marker.touch()
    supervisor = manage(
        "runservices", "testservice", "--max-restarts", "0", TESTSERVICE_CRASH_IF_EXISTS=str(marker)
    )
    assert supervisor.process.wait(30) == 1
    assert "Every instance has ended; failed: testservice.1." in supervisor.output()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses PR_SET_PDEATHSIG")
def test_instances_drain_themselves_when_the_supervisor_is_killed(manage):
    supervisor = manage("runservices", "testservice")
    child = supervisor.wait_running("testservice.1")
    supervisor.stop(signal.SIGKILL)
    # Its output went to the dead supervisor, so only its end can be seen.
    assert_all_gone({child})
