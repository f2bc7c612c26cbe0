"""Celery in a Cliffracer system (``cliffracer_core.contrib.jobs``): real worker and beat processes,
real NATS, the session's broker (the embedded one, or Redis when CELERY_BROKER_URL names it).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
import urllib.request
from io import StringIO
from typing import Any

import pytest
from celery import current_app
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import transaction
from django_celery_beat.models import IntervalSchedule, PeriodicTask
from django_celery_results.models import TaskResult
from pydantic import BaseModel

from cliffracer_core import Conflict, Service, call, event, get_correlation_id, rpc
from cliffracer_core.contrib.jobs import context as job_context
from cliffracer_core.contrib.jobs.metrics import TaskCounts
from cliffracer_core.core.auth.identity import Caller
from cliffracer_core.core.auth.tokens import session_access_token
from cliffracer_core.core.context import current_headers, message_context
from cliffracer_core.core.discovery import request_all
from cliffracer_core.core.errors import RemoteConflict
from cliffracer_core.core.headers import AUTHORIZATION, CORRELATION_ID, TRACEPARENT, TRACESTATE
from cliffracer_core.testing.plugin import run_async
from cliffracer_core.transports import connect
from tests import jobs_tasks

TIMEOUT = 20.0
TASKS = "tests.jobs_tasks"


def wait_until(condition: Any, timeout: float = TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            return result
        time.sleep(0.05)
    return result


class Text(BaseModel):
    text: str


class Enqueue(BaseModel):
    roll_back: bool = False


class Queued(BaseModel):
    queued: bool


def seen(caller: Caller | None) -> dict[str, Any]:
    return {
        "correlation_id": get_correlation_id(),
        "username": caller.username if caller else None,
        "is_system": bool(caller and caller.is_system),
    }


def make_probe(service_name: str) -> type[Service]:
    """A service whose handler enqueues ``call_and_publish``, and which records what the task's
    call and event carry when they reach it."""

    class Probe(Service):
        name = service_name

        def __init__(self) -> None:
            self.enqueued_by: list[str | None] = []
            self.calls: list[dict[str, Any]] = []
            self.events: list[dict[str, Any]] = []

        @rpc
        def enqueue(self, request: Enqueue) -> Queued:
            self.enqueued_by.append(self.caller.username if self.caller else None)
            with transaction.atomic():
                jobs_tasks.call_and_publish.delay_on_commit(service_name)
                if request.roll_back:
                    raise Conflict("Rolled back, as asked.")
            return Queued(queued=True)

        @rpc
        def echo(self, request: Text) -> Text:
            self.calls.append(seen(self.caller))
            return request

        @event(f"{service_name}.done")
        def on_done(self, payload: Text) -> None:
            self.events.append(seen(self.caller))

    return Probe


def discover(nats_url: str, verb: str, name: str) -> list[dict[str, Any]]:
    async def ask() -> list[dict[str, Any]]:
        connection = await connect(nats_url)
        try:
            return await request_all(connection, verb, name, timeout=0.5)
        finally:
            await connection.close()

    return run_async(ask())


def replies_of(nats_url: str, verb: str, name: str, pid: int) -> dict[str, Any] | None:
    """The reply of the process ``pid`` among the instances of ``name``, if it answered."""
    replies = discover(nats_url, verb, name)
    return next((r for r in replies if r["metadata"].get("pid") == str(pid)), None)


# In a real worker


def test_a_task_carries_the_correlation_id_of_the_handler_that_enqueued_it(
    transactional_db, start_service, unique_name, celery_worker_process
):
    worker = celery_worker_process("--include", TASKS)
    probe = start_service(make_probe(unique_name)).service
    customer = User.objects.create_user("ada", "ada@example.com")
    correlation_id = f"celery-fault-{unique_name}-{time.monotonic_ns()}"

    call(
        f"{unique_name}.enqueue",
        {},
        headers={
            AUTHORIZATION: f"Bearer {session_access_token(customer)}",
            CORRELATION_ID: correlation_id,
        },
    )

    assert wait_until(lambda: probe.calls and probe.events), worker.output()[-3000:]
    assert probe.enqueued_by == ["ada"]
    # The service the task calls sees the enqueuing request's correlation id, and the system
    # identity as the caller: not the customer whose request enqueued the task.
    expected = {"correlation_id": correlation_id, "username": "system", "is_system": True}
    assert probe.calls == [expected]
    # So does the event the task publishes.
    assert probe.events == [expected]

    # And the task's log lines carry the id (cliffracer_core.core.log.ContextFilter).
    def lines() -> list[str]:
        return [line for line in worker.output().splitlines() if correlation_id in line]

    assert wait_until(lambda: any("succeeded" in line for line in lines())), lines()
    assert any(f"{TASKS}.call_and_publish" in line and "Calling" in line for line in lines())


def test_delay_on_commit_enqueues_nothing_when_the_transaction_rolls_back(
    transactional_db, start_service, unique_name, celery_published
):
    start_service(make_probe(unique_name))

    with pytest.raises(RemoteConflict):
        call(f"{unique_name}.enqueue", {"roll_back": True}, headers={CORRELATION_ID: "undone"})
    assert celery_published == []

    call(f"{unique_name}.enqueue", {}, headers={CORRELATION_ID: "committed"})
    assert [(name, headers.get(CORRELATION_ID)) for name, headers in celery_published] == [
        (f"{TASKS}.call_and_publish", "committed")
    ]
    # No one's token goes into a task message.
    assert AUTHORIZATION not in celery_published[0][1]


def test_the_worker_answers_discovery_and_serves_task_metrics(
    transactional_db, nats_server, celery_worker_process
):
    worker = celery_worker_process("--include", TASKS)
    with message_context({CORRELATION_ID: "metrics-run"}):
        result = jobs_tasks.context_of_task.delay()
    assert result.get(timeout=TIMEOUT) == {
        "correlation_id": "metrics-run",
        "caller": "system",
        "is_system": True,
    }

    ping = replies_of(nats_server.url, "PING", "celery-worker", worker.pid)
    assert ping is not None, worker.output()[-3000:]
    info = replies_of(nats_server.url, "INFO", "celery-worker", worker.pid)
    assert info["id"] == ping["id"]
    assert info["endpoints"] == []
    assert f"{TASKS}.context_of_task" in json.loads(info["metadata"]["tasks"])
    assert info["metadata"]["pool"] == "prefork"
    task = f"{TASKS}.context_of_task"
    # The pool process that ran the task and the worker's own process count into one array.
    stats = wait_until(
        lambda: (
            (found := replies_of(nats_server.url, "STATS", "celery-worker", worker.pid))
            and json.loads(found["metadata"]["tasks_by_state"]).get(task, {}).get("success")
            and found
        )
    )
    assert json.loads(stats["metadata"]["tasks_by_state"])[task] == {
        "received": 1,
        "started": 1,
        "success": 1,
    }
    # The Prometheus scrape of the worker's port, advertised as a service's is.
    with urllib.request.urlopen(info["metadata"]["metrics"], timeout=5) as response:
        scraped = response.read().decode()
    for state in ("received", "started", "success"):
        assert f'cliffracer_celery_tasks_total{{state="{state}",task="{task}"}} 1.0' in scraped
    assert f'cliffracer_celery_tasks_total{{state="failure",task="{task}"}} 0.0' in scraped
    assert f'cliffracer_celery_task_duration_seconds_count{{task="{task}"}} 1.0' in scraped
    # And `manage.py services` lists it beside the services.
    output = StringIO()
    call_command("services", "--nats-url", nats_server.url, stdout=output)
    assert "celery-worker" in output.getvalue()


def test_beat_answers_discovery_as_celery_beat(transactional_db, nats_server, celery_beat_process):
    beat = celery_beat_process()

    info = replies_of(nats_server.url, "INFO", "celery-beat", beat.pid)

    assert info is not None, beat.output()[-3000:]
    assert info["endpoints"] == []
    assert info["metadata"]["scheduler"] == "django_celery_beat.schedulers:DatabaseScheduler"


def test_the_session_uses_the_broker_celery_broker_url_names(celery_broker):
    # The tests above ran their tasks through it: a Redis (or RabbitMQ) broker named by
    # CELERY_BROKER_URL, on a queue of this session's own, or else a filesystem broker of the
    # session's own.
    scheme = celery_broker.partition("://")[0]
    with current_app.connection_for_write() as connection:
        assert connection.transport.driver_type == scheme
    if scheme == "filesystem":
        assert celery_broker != "filesystem://localhost/"
    else:
        assert current_app.conf.task_default_queue == f"cliffracer-test-{os.getpid()}"


# In this process


def test_publishing_puts_the_current_correlation_id_in_the_task_headers():
    headers: dict[str, Any] = {}
    job_context.before_task_publish(headers=headers)
    assert headers == {}

    with message_context({CORRELATION_ID: "abc", AUTHORIZATION: "Bearer secret"}):
        job_context.before_task_publish(headers=headers)

    assert headers == {CORRELATION_ID: "abc"}


def test_a_task_run_eagerly_keeps_the_correlation_id_and_restores_the_context(db):
    outer = {CORRELATION_ID: "outer", AUTHORIZATION: "Bearer someone"}
    with message_context(outer):
        result = jobs_tasks.context_of_task.apply().get()
        assert current_headers.get() is outer

    assert result == {"correlation_id": "outer", "caller": "system", "is_system": True}
    assert current_headers.get() is None


def test_a_correlation_id_not_fit_for_logs_is_replaced():
    class Request:
        is_eager = False

    request = Request()
    setattr(request, CORRELATION_ID, "evil\nINFO forged log line")

    values = job_context.headers_of_task(request)

    assert values[CORRELATION_ID] != getattr(request, CORRELATION_ID)
    assert len(values[CORRELATION_ID]) == 32


def test_a_header_with_a_trailing_newline_is_not_trusted():
    # "$" matches before a final newline: a pattern check must cover the whole value.
    class Request:
        is_eager = False

    request = Request()
    setattr(request, CORRELATION_ID, "job-1\n")
    setattr(request, TRACEPARENT, "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\n")
    setattr(request, TRACESTATE, None)

    values = job_context.headers_of_task(request)

    assert values[CORRELATION_ID] != "job-1\n"
    assert TRACEPARENT not in values


def _count_in_child(counts: TaskCounts) -> None:
    counts.count("a", "started")
    counts.finish("a", "success", 3_000_000)


# The child only adds to the shared array; the test process's threads do not matter to it.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_task_counts_are_shared_with_forked_processes():
    counts = TaskCounts(["a", "b"])
    counts.count("a", "received")
    child = multiprocessing.get_context("fork").Process(target=_count_in_child, args=(counts,))
    child.start()
    child.join(10)
    counts.count("unknown", "received")

    snapshot = counts.snapshot()
    states, buckets, total_ns = snapshot["a"]
    assert (states["received"], states["started"], states["success"]) == (1, 1, 1)
    assert sum(buckets) == 1 and total_ns == 3_000_000
    assert snapshot["(other)"][0]["received"] == 1
    assert counts.by_state() == {
        "a": {"received": 1, "started": 1, "success": 1},
        "(other)": {"received": 1},
    }


def test_the_admin_shows_task_outcomes_and_periodic_schedules(admin_client):
    TaskResult.objects.create(
        task_id="8d3c0f0e-0001", task_name=f"{TASKS}.context_of_task", status="SUCCESS"
    )
    every_minute = IntervalSchedule.objects.create(every=1, period=IntervalSchedule.MINUTES)
    periodic = PeriodicTask.objects.create(
        name="Say hello", task=f"{TASKS}.context_of_task", interval=every_minute
    )

    results = admin_client.get("/admin/django_celery_results/taskresult/")
    schedules = admin_client.get("/admin/django_celery_beat/periodictask/")
    change = admin_client.get(f"/admin/django_celery_beat/periodictask/{periodic.pk}/change/")

    assert results.status_code == 200
    assert f"{TASKS}.context_of_task" in results.text
    assert schedules.status_code == 200
    assert "Say hello" in schedules.text
    assert change.status_code == 200
