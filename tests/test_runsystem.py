"""``manage.py runsystem`` (what ``make run`` runs) as a real process tree."""

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from cliffracer_core.connection import connect
from cliffracer_core.discovery import request_all
from cliffracer_core.embedded import free_port, port_is_free
from cliffracer_core.testing.plugin import database_url, project_root, run_async

# The example services, and the monitor behind the console in the admin (docs/console.md).
SERVICES = {"inventory", "monitor", "notifications", "orders", "payments"}
# What runsystem starts besides them (docs/celery.md).
CELERY = {"celery-worker", "celery-beat"}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def running_services(text: str) -> dict[str, int]:
    """The process id of each service instance the supervisor reported running."""
    return {
        name: int(pid)
        for name, pid in re.findall(
            r"^supervisor\s+\| (\S+)\s+running\s+pid=(\d+)", text, re.MULTILINE
        )
    }


def wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.1)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_runsystem_starts_everything_and_stops_cleanly(tmp_path, stop_signal):
    port = free_port("127.0.0.1")
    env = dict(os.environ, VAR_DIR=str(tmp_path / "var"), DATABASE_URL=database_url())
    env.pop("NATS_URL", None)  # no NATS configured: the embedded server starts
    log_path = tmp_path / "runsystem.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "runsystem", "--port", str(port)],
            cwd=project_root(),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    output = log_path.read_text
    try:
        wait_for(
            lambda: len(running_services(output())) == len(SERVICES) or process.poll() is not None
        )
        text = output()
        assert "Press Ctrl-C to stop." in text, text
        nats_url = re.search(r"Started the embedded nats-server at (nats://\S+)\.", text)[1]
        pids = [int(match) for match in re.findall(r"^\s+\S+\s+(\d+)\s", text, re.MULTILINE)]
        # NATS, the services' supervisor, the web server, the Celery worker and beat.
        assert len(pids) == 5
        assert re.search(r"^\s+worker\s+\d+\s+celery worker, broker filesystem://", text, re.M)
        services_row = re.search(r"^\s+services\s+\d+\s+runservices --reload: (.*)$", text, re.M)
        assert sorted(services_row[1].split(", ")) == sorted(SERVICES)
        # One process per service, each run by the supervisor.
        service_pids = running_services(text)
        assert set(service_pids) == {f"{name}.1" for name in SERVICES}
        assert len(set(service_pids.values())) == len(SERVICES)
        pids += service_pids.values()

        async def ping():
            connection = await connect(nats_url)
            try:
                return await request_all(connection, "PING", timeout=0.5)
            finally:
                await connection.close()

        # The Celery worker and beat answer discovery as the services do.
        wait_for(lambda: {reply["name"] for reply in run_async(ping())} >= CELERY)
        assert {reply["name"] for reply in run_async(ping())} == SERVICES | CELERY
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/admin/login/", timeout=10) as page:
            assert page.status == 200
        assert (tmp_path / "var" / "nats").is_dir()

        process.send_signal(stop_signal)
        assert process.wait(60) == 0
        for pid in pids:
            wait_for(lambda pid=pid: not pid_alive(pid), timeout=10)
        assert port_is_free("127.0.0.1", port)
        nats_port = int(nats_url.rsplit(":", 1)[1])
        assert port_is_free("127.0.0.1", nats_port)
        assert "Stopped." in output()
    finally:
        if process.poll() is None:
            # Stopped as a user would, so that a failed test leaves no process behind.
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
