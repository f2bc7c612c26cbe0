"""pytest fixtures: a real nats-server per test session, services in threads or processes.

Enabled with ``-p cliffracer_core.testing.plugin`` (the project's pytest settings do this).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from cliffracer_core.core.service import Service
from cliffracer_core.testing.services import RunningService
from cliffracer_core.transports.nats.embedded import NatsServer

# The Celery fixtures: a broker of the session's own, a real worker and beat.
pytest_plugins = ["cliffracer_core.testing.workers"]


@pytest.fixture(scope="session", autouse=True)
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """A nats-server with JetStream on a free port, for the whole session.

    ``NATS_URL`` points at it, so every client and service in the tests (and the processes
    they start) use it and never a server that happens to be installed on the machine. It is
    started for every session, before any test: code under test that publishes (an
    ``on_commit`` event, a task) must not reach whatever listens on the default URL.
    """
    from cliffracer_core.core.client import close_sync_transport

    server = NatsServer(store_dir=tmp_path_factory.mktemp("nats"))
    server.start()
    previous = os.environ.get("NATS_URL")
    os.environ["NATS_URL"] = server.url
    _reload_settings()
    # A connection opened before (at import, by another plugin) would still point elsewhere.
    close_sync_transport()
    try:
        yield server
    finally:
        close_sync_transport()
        if previous is None:
            os.environ.pop("NATS_URL", None)
        else:
            os.environ["NATS_URL"] = previous
        _reload_settings()
        server.stop()


def _reload_settings() -> None:
    from cliffracer_core.core.settings import cliffracer_settings

    cliffracer_settings.reload()


@pytest.fixture(autouse=True)
def sync_transport_follows_the_configuration() -> Iterator[None]:
    """After each test, the sync client's connection is to the configured transport: a test
    that pointed this process at another (monkeypatching ``CLIFFRACER_TRANSPORT_URL``) and then
    called, or served a console page, leaves no connection to it behind for the tests after.
    Autouse, so it ends after ``monkeypatch`` has put the environment back."""
    yield
    from cliffracer_core.core.client import background_loop, close_sync_transport
    from cliffracer_core.transports import configured, shared_transport

    loop = background_loop.loop
    transport = shared_transport(loop) if loop is not None else None
    if transport is not None and transport.location != configured()[1]:
        close_sync_transport()


@pytest.fixture
def memory_transport(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run the test on an in-memory broker of its own (``memory://...``), no nats-server.

    Services started with ``start_service``, and every call and publish the test makes
    (``call``, ``acall``, ``publish``), go through it: a service's own tests run in
    milliseconds. It is a real backend held to the transport conformance suite, durable
    streams, acks, retries and dead letters included. What concerns processes, the wire or
    a broker stays on a real nats-server (docs/testing.md).
    """
    from cliffracer_core.core.client import close_sync_transport
    from cliffracer_core.transports import URL_VARIABLE
    from cliffracer_core.transports.memory import drop_broker

    url = f"memory://test-{uuid.uuid4().hex[:12]}"
    # The sync client may hold a transport to the session's nats-server from earlier.
    close_sync_transport()
    monkeypatch.setenv(URL_VARIABLE, url)
    try:
        yield url
    finally:
        close_sync_transport()
        drop_broker(url)


@pytest.fixture
def start_service(nats_server: NatsServer) -> Iterator[Callable[..., RunningService]]:
    """Start a ``Service`` class in-process (its own loop and thread); stopped after the test.

    It runs on the session's nats-server, or on the test's in-memory broker when the test
    uses ``memory_transport``.
    """
    from cliffracer_core.transports import URL_VARIABLE

    running: list[RunningService] = []

    def start(service_class: type[Service], **options: Any) -> RunningService:
        options.setdefault("url", os.environ.get(URL_VARIABLE) or nats_server.url)
        service = RunningService(service_class, **options).start()
        running.append(service)
        return service

    yield start
    for service in reversed(running):
        service.stop()


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[Any]:
    """A three-node nats-server cluster with JetStream (``NatsCluster``), on loopback ports
    of its own; ``nats_cluster.url`` names all three nodes."""
    from cliffracer_core.transports.nats.cluster import NatsCluster

    cluster = NatsCluster(tmp_path / "cluster")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


class ChildProcess:
    """A subprocess of the project's (run from its root) whose output goes to a log file."""

    def __init__(
        self,
        label: str,
        command: list[str],
        *,
        log_path: Path,
        env: dict[str, str],
        start_new_session: bool = False,
    ) -> None:
        self.label = label
        self.log_path = log_path
        self.log_file = open(log_path, "wb")  # noqa: SIM115  (closed in stop())
        self.process = subprocess.Popen(
            command,
            cwd=str(project_root()),
            env=env,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            start_new_session=start_new_session,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 30.0) -> int:
        return self.process.wait(timeout)

    def stop(self, timeout: float = 30.0) -> int:
        self.terminate()
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self.log_file.close()
        return code


class ServiceProcess(ChildProcess):
    """A ``manage.py runservice`` subprocess whose output goes to a log file."""

    def __init__(self, label: str, *, log_path: Path, arguments: list[str], env: dict[str, str]):
        command = [sys.executable, "manage.py", "runservice", label, *arguments]
        super().__init__(label, command, log_path=log_path, env=env)

    def wait_serving(self, timeout: float = 30.0) -> ServiceProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if " serving " in self.output():
                return self
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"runservice {self.label} did not start:\n{self.output()[-4000:]}")


@contextlib.contextmanager
def nats_environment(**variables: str) -> Iterator[None]:
    """Set environment variables of this test process's own NATS connections (``NATS_URL``,
    credentials): the settings are read again and the sync client reconnects; undone after."""
    from cliffracer_core.core.client import close_sync_transport

    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    _reload_settings()
    close_sync_transport()
    try:
        yield
    finally:
        close_sync_transport()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        _reload_settings()


def stop_processes(processes: Sequence[ChildProcess]) -> None:
    """Stop child processes, the last started first."""
    for process in reversed(processes):
        process.stop()


def start_service_processes(
    labels: Sequence[str],
    *,
    nats_server: Any,
    directory: Path,
    environment: Callable[[str], dict[str, str]] = lambda label: {},
) -> list[ServiceProcess]:
    """Start ``manage.py runservice <label>`` for each label at once, on ``nats_server`` (a
    ``NatsServer`` or anything with its ``url``, such as a ``NatsCluster``), each with the
    extra ``environment(label)``, without metrics ports; return them once each serves. The
    caller stops them."""
    processes = [
        ServiceProcess(
            label,
            log_path=directory / f"{label}.log",
            arguments=["--metrics-port", "0"],
            env=child_environment(nats_server, environment(label)),
        )
        for label in labels
    ]
    try:
        for process in processes:
            process.wait_serving()
    except BaseException:
        stop_processes(processes)
        raise
    return processes


def child_environment(nats_server: NatsServer, environment: dict[str, str]) -> dict[str, str]:
    """The environment of a process a test starts: the suite's NATS and database, and extras."""
    env = dict(os.environ)
    env.update(
        NATS_URL=nats_server.url,
        DATABASE_URL=database_url(),
        PYTHONUNBUFFERED="1",
        DJANGO_SETTINGS_MODULE=os.environ.get("DJANGO_SETTINGS_MODULE", "settings.settings"),
    )
    env.update(environment)
    return env


def project_root() -> Path:
    return Path(__file__).resolve().parents[2]


def database_url() -> str:
    """A URL for the database the tests use, for processes the tests start."""
    from django.db import connection

    settings = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{settings['NAME']}"
    if connection.vendor == "postgresql":
        user = settings.get("USER") or ""
        password = f":{settings['PASSWORD']}" if settings.get("PASSWORD") else ""
        credentials = f"{user}{password}@" if user else ""
        host = settings.get("HOST") or "127.0.0.1"
        port = settings.get("PORT") or 5432
        return f"postgres://{credentials}{host}:{port}/{settings['NAME']}"
    raise RuntimeError(f"No URL form for the {connection.vendor} database.")


@pytest.fixture
def runservice_process(
    nats_server: NatsServer, tmp_path: Path
) -> Iterator[Callable[..., ServiceProcess]]:
    """Start ``manage.py runservice <label>`` as a real process sharing the test database.

    Use it with ``transactional_db`` so the process sees what the test writes and vice versa.
    """
    started: list[ServiceProcess] = []

    def start(label: str, *arguments: str, wait: bool = True, **environment: str) -> ServiceProcess:
        env = child_environment(nats_server, environment)
        log_path = tmp_path / f"{label}-{len(started)}.log"
        process = ServiceProcess(label, log_path=log_path, arguments=list(arguments), env=env)
        started.append(process)
        if wait:
            process.wait_serving()
        return process

    yield start
    for process in reversed(started):
        process.stop()


class WebProcess(ChildProcess):
    """A daphne process serving the project's ASGI application on a free loopback port."""

    def __init__(self, label: str, *, log_path: Path, env: dict[str, str]) -> None:
        from cliffracer_core.transports.nats.embedded import free_port

        self.port = free_port("127.0.0.1")
        command = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port)]
        super().__init__(label, [*command, "settings.asgi:application"], log_path=log_path, env=env)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def wait_listening(self, timeout: float = 30.0) -> WebProcess:
        import socket

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            except OSError:
                time.sleep(0.05)
            else:
                return self
        raise RuntimeError(f"daphne {self.label} did not start:\n{self.output()[-4000:]}")


@pytest.fixture
def web_process(nats_server: NatsServer, tmp_path: Path) -> Iterator[Callable[..., WebProcess]]:
    """Start the project's ASGI application under daphne, sharing the test database and NATS.

    Call it once per web process wanted (``web_process("web1")``); each gets its own port.
    Use it with ``transactional_db`` so the process sees what the test writes.
    """
    started: list[WebProcess] = []

    def start(label: str = "web", **environment: str) -> WebProcess:
        env = child_environment(nats_server, environment)
        process = WebProcess(label, log_path=tmp_path / f"{label}-{len(started)}.log", env=env)
        started.append(process)
        return process.wait_listening()

    yield start
    for process in reversed(started):
        process.stop()


def run_async(coroutine: Any) -> Any:
    """Run ``coroutine`` on a fresh loop, closing that loop's shared NATS connection after."""
    from cliffracer_core.transports import close_transport

    async def main() -> Any:
        try:
            return await coroutine
        finally:
            await close_transport()

    return asyncio.run(main())


# Fixtures through which a test reaches the database (pytest-django's, and what needs them).
DATABASE_FIXTURES = frozenset(
    {
        "db",
        "transactional_db",
        "django_db_reset_sequences",
        "django_db_serialized_rollback",
        "live_server",
        "admin_user",
        "admin_client",
        "django_user_model",
    }
)


def uses_database(item: pytest.Item) -> bool:
    """Whether ``item`` reaches the database: a ``django_db`` mark or a fixture that does."""
    if item.get_closest_marker("django_db") is not None:
        return True
    return bool(DATABASE_FIXTURES & set(getattr(item, "fixturenames", ())))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # CLIFFRACER_TESTS=database keeps the tests that reach the database: CI runs them again
    # on PostgreSQL, where the others would only repeat what the SQLite run showed.
    if os.environ.get("CLIFFRACER_TESTS") != "database":
        return
    kept = [item for item in items if uses_database(item)]
    deselected = [item for item in items if not uses_database(item)]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept
