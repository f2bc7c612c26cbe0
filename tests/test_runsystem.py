"""``manage.py runsystem`` (what ``make run`` runs) as a real process tree."""

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import nats
import pytest
from django.core.management.base import OutputWrapper

from cliffracer_core.core.discovery import request_all
from cliffracer_core.dev.console import is_loopback
from cliffracer_core.management.commands import runsystem as runsystem_command
from cliffracer_core.testing.plugin import database_url, project_root, run_async
from cliffracer_core.transports import connect
from cliffracer_core.transports.nats.embedded import (
    NatsServer,
    free_port,
    is_reachable,
    port_is_free,
)

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


class RunSystem:
    """``manage.py runsystem`` as a real process, its output in a log file."""

    def __init__(self, tmp_path, **environment: str) -> None:
        self.port = free_port("127.0.0.1")
        self.env = dict(os.environ, VAR_DIR=str(tmp_path / "var"), DATABASE_URL=database_url())
        self.env.pop("NATS_URL", None)  # no NATS configured: the embedded server starts
        self.env.update(environment)
        self.log_path = tmp_path / "runsystem.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "manage.py", "runsystem", "--port", str(self.port)],
                cwd=project_root(),
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        return self.log_path.read_text()

    def wait_running(self) -> str:
        """Wait until every service runs; return the output so far."""
        wait_for(
            lambda: (
                len(running_services(self.output())) == len(SERVICES)
                or self.process.poll() is not None
            )
        )
        text = self.output()
        assert "Press Ctrl-C to stop." in text, text
        return text

    def stop(self) -> None:
        if self.process.poll() is None:
            # Stopped as a user would, so that a failed test leaves no process behind.
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def runsystem(tmp_path):
    system = RunSystem(tmp_path)
    yield system
    system.stop()


def embedded_nats_url(text: str) -> str:
    return re.search(r"Started the embedded nats-server at (nats://\S+)\.", text)[1]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_runsystem_starts_everything_and_stops_cleanly(tmp_path, runsystem, stop_signal):
    process, output, port = runsystem.process, runsystem.output, runsystem.port
    text = runsystem.wait_running()
    nats_url = embedded_nats_url(text)
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
    # The address runsystem prints is a page that says what runs (DEBUG is on).
    assert root_lists_every_service(port)
    assert (tmp_path / "var" / "nats").is_dir()

    # Where NATS runs is recorded, and a second terminal's tool without NATS_URL finds it.
    record = json.loads((tmp_path / "var" / "runsystem.json").read_text())
    assert (record["url"], record["pid"]) == (nats_url, process.pid)
    listed = subprocess.run(
        [sys.executable, "manage.py", "services", "--wait", "1"],
        cwd=project_root(),
        env=runsystem.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    assert f"Using {nats_url}: NATS_URL is not set, and `runsystem` (pid {process.pid})" in (
        listed.stderr
    )
    assert f"on {nats_url}" in listed.stdout

    process.send_signal(stop_signal)
    assert process.wait(60) == 0
    for pid in pids:
        wait_for(lambda pid=pid: not pid_alive(pid), timeout=10)
    assert port_is_free("127.0.0.1", port)
    nats_port = int(nats_url.rsplit(":", 1)[1])
    assert port_is_free("127.0.0.1", nats_port)
    assert "Stopped." in output()
    assert not (tmp_path / "var" / "runsystem.json").exists()


def root_lists_every_service(port: int) -> bool:
    """Whether the site root of the web process on ``port`` lists one instance of each of the
    example's services (found through the transport's discovery)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as page:
            root = page.read().decode()
    except OSError:
        return False
    return all(re.search(rf"<td>{name}</td>\s*<td>1</td>", root) for name in SERVICES)


def console_lists_every_service() -> bool:
    """Whether the console's monitor has sampled an instance of each of the example's services
    (what the operations console lists)."""
    from cliffracer_core.contrib.monitor.models import InstanceSnapshot
    from tests.test_ecommerce_flow import SERVICES as EXAMPLE

    return set(EXAMPLE) <= set(InstanceSnapshot.objects.values_list("service", flat=True))


def run_the_example_on(tmp_path, url: str) -> None:
    """``make run`` with ``CLIFFRACER_TRANSPORT_URL=url`` (a broker's): no embedded nats-server,
    the example's services on that broker, an operator's ``manage.py call`` answered, and the
    site root (through discovery) and the console (through the monitor's samples) listing
    them. The tests of each broker's transport call it."""
    system = RunSystem(tmp_path, CLIFFRACER_TRANSPORT_URL=url)
    try:
        text = system.wait_running()
        assert "(CLIFFRACER_TRANSPORT_URL)" in text, text
        assert "Started the embedded nats-server" not in text
        called = call_stock(system, url)
        assert called.returncode == 0, called.stderr
        wait_for(lambda: root_lists_every_service(system.port))
        wait_for(console_lists_every_service)
    finally:
        system.stop()


def call_stock(runsystem: RunSystem, nats_url: str) -> subprocess.CompletedProcess:
    """``manage.py call inventory.get_stock`` as the system identity, as an operator would."""
    return subprocess.run(
        [sys.executable, "manage.py", "call", "inventory.get_stock", "{}"]
        + ["--nats-url", nats_url, "--timeout", "2"],
        cwd=project_root(),
        env=runsystem.env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(240)
def test_runsystem_restarts_the_embedded_nats_server_when_it_dies(tmp_path, runsystem):
    text = runsystem.wait_running()
    nats_url = embedded_nats_url(text)
    nats_pid = int(re.search(r"^\s+NATS\s+(\d+)\s", text, re.MULTILINE)[1])
    service_pids = running_services(text)
    before = call_stock(runsystem, nats_url)
    assert before.returncode == 0, before.stderr

    os.kill(nats_pid, signal.SIGKILL)
    restarted = re.compile(
        rf"The embedded nats-server is back at {re.escape(nats_url)} \(pid (\d+)\)"
    )
    wait_for(lambda: restarted.search(runsystem.output()) or runsystem.process.poll() is not None)
    output = runsystem.output()
    assert runsystem.process.poll() is None, output
    assert "(killed by SIGKILL); restarting it" in output
    new_pid = int(restarted.search(output)[1])
    assert new_pid != nats_pid and pid_alive(new_pid)
    assert is_reachable(nats_url)
    assert (tmp_path / "var" / "nats").is_dir()  # the same store

    # The services reconnect by themselves and answer again; none was restarted.
    def answers() -> bool:
        return call_stock(runsystem, nats_url).returncode == 0

    wait_for(answers, timeout=60)
    assert running_services(runsystem.output()) == service_pids
    assert runsystem.process.poll() is None

    runsystem.process.send_signal(signal.SIGTERM)
    assert runsystem.process.wait(60) == 0
    assert not pid_alive(new_pid)


class Written(OutputWrapper):
    """A command's output stream in a test: a line per write, read back with ``text()``."""

    def __init__(self) -> None:
        self.buffer = io.StringIO()
        super().__init__(self.buffer)

    def text(self) -> str:
        return self.buffer.getvalue()


@pytest.fixture
def embedded_server(tmp_path):
    server = NatsServer(store_dir=tmp_path / "nats", start_new_session=True)
    server.start()
    yield server
    server.stop()


def kill_nats(server: NatsServer) -> int:
    pid = server.pid
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not server.is_running(), timeout=10)
    return pid


def test_the_keeper_restarts_a_killed_nats_server_on_its_port_with_its_store(embedded_server):
    async def add_stream() -> list[str]:
        connection = await nats.connect(embedded_server.url)
        try:
            jetstream = connection.jetstream()
            await jetstream.add_stream(name="KEPT", subjects=["kept.>"])
            return [info.config.name for info in await jetstream.streams_info()]
        finally:
            await connection.close()

    assert run_async(add_stream()) == ["KEPT"]
    out, err = Written(), Written()
    keeper = runsystem_command.NatsKeeper(embedded_server, threading.Event(), out=out, err=err)
    assert keeper.keep_running()  # it runs: nothing to do
    port = embedded_server.port
    killed = kill_nats(embedded_server)
    assert keeper.keep_running()
    assert embedded_server.is_running() and embedded_server.pid != killed
    assert embedded_server.port == port
    assert "exited (killed by SIGKILL); restarting it on" in err.text()
    assert f"back at nats://127.0.0.1:{port}" in out.text()
    assert run_async(add_stream()) == ["KEPT"]  # the same store: the stream is still there


def test_the_keeper_gives_up_on_a_nats_server_that_keeps_exiting(embedded_server, monkeypatch):
    monkeypatch.setattr(runsystem_command, "NATS_BACKOFF", 0.01)
    monkeypatch.setattr(runsystem_command, "NATS_MAX_BACKOFF", 0.01)
    err = Written()
    keeper = runsystem_command.NatsKeeper(
        embedded_server, threading.Event(), out=Written(), err=err
    )
    kill_nats(embedded_server)
    # Something else took its port: every restart fails.
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", embedded_server.port))
        taken.listen()
        assert not keeper.keep_running()
    lines = err.text().splitlines()
    restarts = [line for line in lines if "restarting it on" in line]
    assert len(restarts) == runsystem_command.NATS_MAX_RESTARTS
    assert "did not start again" in err.text()
    assert lines[-1].startswith(
        f"The embedded nats-server exited (did not start) {runsystem_command.NATS_MAX_RESTARTS + 1}"
        " times in a row; stopping everything."
    )


def test_a_stop_during_the_nats_backoff_ends_the_wait(embedded_server):
    stop = threading.Event()
    keeper = runsystem_command.NatsKeeper(embedded_server, stop, out=Written(), err=Written())
    kill_nats(embedded_server)
    stop.set()
    assert keeper.keep_running()  # no failure: runsystem then stops as asked
    assert not embedded_server.is_running()


def runsystem_once(tmp_path, *arguments: str, **environment: str) -> subprocess.CompletedProcess:
    """Run ``manage.py runsystem`` when it is expected to refuse to start."""
    env = dict(os.environ, VAR_DIR=str(tmp_path / "var"), DATABASE_URL=database_url())
    env.update(environment)
    return subprocess.run(
        [sys.executable, "manage.py", "runsystem", *arguments],
        cwd=project_root(),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def taken_port():
    """A port something listens on, on every address: runsystem refuses it before it starts
    anything, so a check that must come first is seen without starting the system."""
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        yield str(taken.getsockname()[1])


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_runsystem_refuses_debug_on_an_address_others_reach(tmp_path, taken_port, host):
    # Django's debug page shows settings and code to anyone who reaches the web server.
    result = runsystem_once(tmp_path, "--host", host, "--port", taken_port, DEBUG="1")
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"DEBUG is on and --host {host} is not a loopback address" in result.stderr
    assert "--host 127.0.0.1" in result.stderr and "DEBUG=0" in result.stderr


@pytest.mark.django_db(transaction=True)
def test_runsystem_with_debug_off_may_bind_any_address(tmp_path, taken_port):
    # Past the DEBUG check, it stops at the next one: the port is taken.
    result = runsystem_once(tmp_path, "--host", "0.0.0.0", "--port", taken_port, DEBUG="0")
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"0.0.0.0:{taken_port} is in use" in result.stderr
    assert "DEBUG" not in result.stderr


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.0.2.10", False),
        ("example.com", False),
        ("", False),
    ],
)
def test_loopback_addresses_are_told_apart(host, loopback):
    assert is_loopback(host) is loopback


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(240)
def test_runsystem_picks_up_a_new_service_app_and_restarts_the_web_server(tmp_path):
    """``startservice`` while ``make run`` runs: the service starts, the web server learns it."""
    from django.core.management import call_command

    project = tmp_path / "project"
    apps = project / "treeapps"
    apps.mkdir(parents=True)
    call_command("startservice", "alpha", directory=apps)
    port = free_port("127.0.0.1")
    env = dict(
        os.environ,
        VAR_DIR=str(tmp_path / "var"),
        DATABASE_URL=database_url(),
        DJANGO_SETTINGS_MODULE="tests.apps_tree_settings",
        TEST_APPS_DIR=str(apps),
        PYTHONPATH=os.pathsep.join([str(project), str(project_root())]),
    )
    env.pop("NATS_URL", None)
    log_path = tmp_path / "runsystem.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "runsystem", "--port", str(port)]
            + ["--reload-dir", str(project)],
            cwd=project_root(),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def output() -> str:
        return log_path.read_text(errors="replace")

    def hello(name: str, nats_url: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "manage.py", "call", f"{name}.hello", '{"name": "Ada"}']
            + ["--nats-url", nats_url, "--timeout", "5"],
            cwd=project_root(),
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def web_answers() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/admin/login/", timeout=10):
                return True
        except OSError:  # the web server is restarting
            return False

    try:
        wait_for(lambda: "alpha.1" in running_services(output()) or process.poll() is not None)
        text = output()
        assert "Press Ctrl-C to stop." in text, text
        web = int(re.search(r"^\s+web\s+(\d+)\s", text, re.M)[1])
        nats_url = embedded_nats_url(text)

        call_command("startservice", "beta", directory=apps)
        wait_for(lambda: "beta.1" in running_services(output()), timeout=60)
        answer = hello("beta", nats_url)
        assert answer.returncode == 0, answer.stderr
        assert json.loads(answer.stdout) == {"message": "Hello, Ada!"}
        wait_for(lambda: "web started again" in output(), timeout=60)
        text = output()
        assert "Service app beta added; restarting web to load the apps again." in text
        new_web = int(re.search(r"^web started again \(pid (\d+)\)\.", text, re.M)[1])
        assert new_web != web and not pid_alive(web)
        wait_for(web_answers, timeout=60)
        # alpha's code did not change: it was not reloaded.
        assert len(re.findall(r"^supervisor\s+\| alpha\.1\s+running", output(), re.M)) == 1
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, output()


@pytest.mark.django_db(transaction=True)
def test_runsystem_runs_on_the_transport_the_environment_names(tmp_path, nats_server):
    # A broker of the user's own (here the suite's nats-server): no embedded server starts.
    system = RunSystem(tmp_path, CLIFFRACER_TRANSPORT_URL=nats_server.url)
    try:
        text = system.wait_running()
        assert f"Using the transport at {nats_server.url} (CLIFFRACER_TRANSPORT_URL)." in text
        assert "embedded" not in text.split("Cliffracer is running:")[0]
        assert re.search(rf"^\s+NATS\s+-\s+{re.escape(nats_server.url)} \(external\)", text, re.M)
        called = call_stock(system, nats_server.url)
        assert called.returncode == 0, called.stderr
        record = json.loads((tmp_path / "var" / "runsystem.json").read_text())
        assert record["url"] == nats_server.url
    finally:
        system.stop()


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("memory://", "a memory transport lives in one process"),
        ("nats://127.0.0.1:1", "cannot be used"),
        ("carrier-pigeon://coop", "No transport serves 'carrier-pigeon' URLs"),
    ],
)
def test_runsystem_refuses_a_transport_it_cannot_run_on(tmp_path, url, reason):
    system = RunSystem(tmp_path, CLIFFRACER_TRANSPORT_URL=url)
    assert system.process.wait(60) != 0
    text = system.output()
    assert reason in text, text
    assert "Traceback" not in text
    assert "Started the embedded nats-server" not in text
