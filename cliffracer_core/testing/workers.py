"""pytest fixtures: a real Celery worker and beat as processes, on a broker of the session's own.

``celery_broker`` (session, autouse) gives the test session a broker no other run shares: the
embedded one in a folder of its own, or, when ``CELERY_BROKER_URL`` names Redis or RabbitMQ,
that broker with a queue of the session's own. The test process and every process the tests
start (services, workers) use it, so a task enqueued by one test run never reaches the worker
of another, nor the one of ``make run``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import current_app, signals

from cliffracer_core.contrib.jobs.broker import broker_transport_options
from cliffracer_core.testing.plugin import ChildProcess, child_environment
from cliffracer_core.transports.nats.embedded import NatsServer

# What the worker and beat log once they answer ADR-32 discovery (cliffracer_core.contrib.jobs).
READY_MARKER = "answers $SRV.PING"
# The environment variables the broker fixture sets (and restores).
BROKER_VARIABLES = ("CELERY_BROKER_URL", "CELERY_TASK_DEFAULT_QUEUE")


@pytest.fixture(scope="session", autouse=True)
def celery_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The broker URL of this test session; ``CELERY_BROKER_URL`` names it to the processes
    the tests start, and the project's Celery app in the test process uses it too."""
    configured = os.environ.get("CELERY_BROKER_URL", "")
    app = current_app._get_current_object()
    saved = {name: os.environ.get(name) for name in BROKER_VARIABLES}
    if not configured or configured.startswith("filesystem:"):
        url = f"filesystem://localhost{tmp_path_factory.mktemp('celery-broker')}"
        changes = {"CELERY_BROKER_URL": url}
    else:
        url = configured
        changes = {"CELERY_TASK_DEFAULT_QUEUE": f"cliffracer-test-{os.getpid()}"}
    os.environ.update(changes)
    app.conf.update(
        broker_url=os.environ["CELERY_BROKER_URL"],
        broker_transport_options=broker_transport_options(
            os.environ["CELERY_BROKER_URL"], Path(str(tmp_path_factory.getbasetemp()))
        ),
        task_default_queue=os.environ.get("CELERY_TASK_DEFAULT_QUEUE") or "celery",
    )
    try:
        yield url
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture
def celery_published() -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """The tasks this process sends to the broker while the test runs: (task name, headers)."""
    sent: list[tuple[str, dict[str, Any]]] = []

    def record(sender: Any = None, headers: dict[str, Any] | None = None, **kwargs: Any) -> None:
        sent.append((str(sender), dict(headers or {})))

    uid = f"celery_published_{id(sent)}"
    signals.after_task_publish.connect(record, weak=False, dispatch_uid=uid)
    try:
        yield sent
    finally:
        signals.after_task_publish.disconnect(dispatch_uid=uid)


class CeleryProcess(ChildProcess):
    """A ``celery worker`` or ``celery beat`` subprocess whose output goes to a log file."""

    def __init__(self, command: list[str], *, log_path: Path, env: dict[str, str]) -> None:
        # A session of its own: stop() kills the worker's pool children with it.
        label = " ".join(command[4:6])
        super().__init__(label, command, log_path=log_path, env=env, start_new_session=True)

    def wait_ready(self, timeout: float = 30.0) -> CeleryProcess:
        """Wait until the process consumes (worker) or schedules (beat) and answers discovery."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if READY_MARKER in self.output():
                return self
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"{self.label} did not start:\n{self.output()[-4000:]}")

    def stop(self, timeout: float = 30.0) -> int:
        """Stop it as runsystem does: SIGTERM to the main process alone (a worker finishes its
        tasks, then stops its pool), SIGKILL to the whole group if it does not stop in time."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            code = None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        if code is None:
            code = self.process.wait()
        self.log_file.close()
        return code


def celery_command(*arguments: str) -> list[str]:
    """``python -m celery --app <the project's app> ARGUMENTS``."""
    return [sys.executable, "-m", "celery", "--app", current_app.main, *arguments]


@pytest.fixture
def celery_worker_process(
    nats_server: NatsServer, celery_broker: str, tmp_path: Path
) -> Iterator[Callable[..., CeleryProcess]]:
    """Start ``celery worker`` as a real process sharing the test database, NATS and broker.

    Extra arguments go to ``celery worker`` (``"--include", "tests.jobs_tasks"``), keywords to
    its environment. It starts with ``--purge``: tasks left in the session's queue by earlier
    tests (emails of the e-commerce tests' orders) are not run. Use it with
    ``transactional_db`` so that it sees what the test writes.
    """
    started: list[CeleryProcess] = []

    def start(*arguments: str, wait: bool = True, **environment: str) -> CeleryProcess:
        command = celery_command(
            "worker",
            "--loglevel",
            "INFO",
            "--hostname",
            f"test{len(started)}-{os.getpid()}@%h",
            "--purge",
            "--concurrency",
            "1",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            *arguments,
        )
        process = CeleryProcess(
            command,
            log_path=tmp_path / f"celery-worker-{len(started)}.log",
            env=child_environment(nats_server, environment),
        )
        started.append(process)
        if wait:
            process.wait_ready()
        return process

    yield start
    for process in reversed(started):
        process.stop()


@pytest.fixture
def celery_beat_process(
    nats_server: NatsServer, celery_broker: str, tmp_path: Path
) -> Iterator[Callable[..., CeleryProcess]]:
    """Start ``celery beat`` (the database scheduler) as a real process; see the worker's."""
    started: list[CeleryProcess] = []

    def start(*arguments: str, wait: bool = True, **environment: str) -> CeleryProcess:
        command = celery_command(
            "beat",
            "--loglevel",
            "INFO",
            *arguments,
        )
        process = CeleryProcess(
            command,
            log_path=tmp_path / f"celery-beat-{len(started)}.log",
            env=child_environment(nats_server, environment),
        )
        started.append(process)
        if wait:
            process.wait_ready()
        return process

    yield start
    for process in reversed(started):
        process.stop()
