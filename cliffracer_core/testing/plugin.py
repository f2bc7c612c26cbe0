"""pytest fixtures: a real nats-server per test session, services in threads or processes.

Enabled with ``-p cliffracer_core.testing.plugin`` (the project's pytest settings do this).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cliffracer_core.embedded import NatsServer
from cliffracer_core.service import Service
from cliffracer_core.testing.services import RunningService

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
    from cliffracer_core.client import close_sync_connection

    server = NatsServer(store_dir=tmp_path_factory.mktemp("nats"))
    server.start()
    previous = os.environ.get("NATS_URL")
    os.environ["NATS_URL"] = server.url
    _reload_settings()
    # A connection opened before (at import, by another plugin) would still point elsewhere.
    close_sync_connection()
    try:
        yield server
    finally:
        close_sync_connection()
        if previous is None:
            os.environ.pop("NATS_URL", None)
        else:
            os.environ["NATS_URL"] = previous
        _reload_settings()
        server.stop()


def _reload_settings() -> None:
    from cliffracer_core.settings import cliffracer_settings

    cliffracer_settings.reload()


@pytest.fixture
def start_service(nats_server: NatsServer) -> Iterator[Callable[..., RunningService]]:
    """Start a ``Service`` class in-process (its own loop and thread); stopped after the test."""
    running: list[RunningService] = []

    def start(service_class: type[Service], **options: Any) -> RunningService:
        options.setdefault("nats_url", nats_server.url)
        service = RunningService(service_class, **options).start()
        running.append(service)
        return service

    yield start
    for service in reversed(running):
        service.stop()


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
        from cliffracer_core.embedded import free_port

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
    from cliffracer_core.connection import close_connection

    async def main() -> Any:
        try:
            return await coroutine
        finally:
            await close_connection()

    return asyncio.run(main())
