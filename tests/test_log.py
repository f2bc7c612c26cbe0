"""Logs you can follow: context on every line, JSON lines, access lines, HTTP correlation."""

import json
import logging

import pytest
from django.http import JsonResponse
from django.test import RequestFactory

from cliffracer_core import RemoteError, Service, call, get_correlation_id, rpc
from cliffracer_core.contrib.rest.middleware import CorrelationIdMiddleware
from cliffracer_core.core.log import ConsoleFormatter, ContextFilter, JsonFormatter
from cliffracer_core.testing import wait_for
from tests.models import Add, Total


class Recorder(logging.Handler):
    """Keeps formatted lines, as a real handler with Cliffracer's filter would write them."""

    def __init__(self, formatter: logging.Formatter) -> None:
        super().__init__()
        self.addFilter(ContextFilter())
        self.setFormatter(formatter)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def make_service(service_name: str) -> type[Service]:
    class Noisy(Service):
        name = service_name

        @rpc
        async def add(self, request: Add) -> Total:
            logging.getLogger("cliffracer.test").info("adding %d and %d", request.a, request.b)
            return Total(total=request.a + request.b)

        @rpc
        def fail(self, request: Add) -> Total:
            raise RuntimeError("kaboom")

    return Noisy


def attach(formatter: logging.Formatter) -> Recorder:
    recorder = Recorder(formatter)
    logger = logging.getLogger("cliffracer")
    logger.addHandler(recorder)
    logger.setLevel(logging.INFO)
    return recorder


def test_every_line_names_service_instance_endpoint_and_correlation(start_service, unique_name):
    recorder = attach(JsonFormatter())
    try:
        running = start_service(make_service(unique_name))
        call(f"{unique_name}.add", {"a": 1, "b": 2}, headers={"X-Correlation-ID": "log-1"})
        with pytest.raises(RemoteError):
            call(f"{unique_name}.fail", {"a": 1, "b": 2}, headers={"X-Correlation-ID": "log-2"})
        # Access lines are written in batches, within 50 ms (core/access.py).
        wait_for(lambda: sum("cliffracer.access" in line for line in recorder.lines) >= 2)
    finally:
        logging.getLogger("cliffracer").removeHandler(recorder)
    entries = [json.loads(line) for line in recorder.lines]
    mine = [e for e in entries if e["correlation_id"] in ("log-1", "log-2")]
    for entry in mine:
        assert entry["service"] == unique_name
        assert entry["instance"] == running.runner.identity.id
    handler_line = next(e for e in mine if e["message"] == "adding 1 and 2")
    assert handler_line["endpoint"] == "add"
    access = [e for e in mine if e["logger"] == "cliffracer.access"]
    assert [(e["endpoint"], e["outcome"]) for e in access] == [
        ("add", "ok"),
        ("fail", "500 internal_error"),
    ]
    assert all(e["duration_ms"] >= 0 for e in access)
    # The traceback is logged once, in the service that raised it.
    tracebacks = [e for e in mine if "exception" in e]
    assert len(tracebacks) == 1 and "kaboom" in tracebacks[0]["exception"]


def test_console_format_is_one_line_with_context(start_service, unique_name):
    recorder = attach(ConsoleFormatter())
    try:
        start_service(make_service(unique_name))
        call(f"{unique_name}.add", {"a": 2, "b": 2}, headers={"X-Correlation-ID": "log-3"})
    finally:
        logging.getLogger("cliffracer").removeHandler(recorder)
    line = next(line for line in recorder.lines if "adding 2 and 2" in line)
    assert "\n" not in line
    assert f" {unique_name}/" in line and " add [log-3] " in line


def view(request):
    return JsonResponse({"correlation_id": get_correlation_id()})


def test_http_requests_get_and_return_a_correlation_id():
    middleware = CorrelationIdMiddleware(view)
    given = middleware(RequestFactory().get("/", HTTP_X_CORRELATION_ID="from-client-1"))
    assert given["X-Correlation-ID"] == "from-client-1"
    assert json.loads(given.content) == {"correlation_id": "from-client-1"}
    made = middleware(RequestFactory().get("/"))
    assert len(made["X-Correlation-ID"]) == 32
    assert json.loads(made.content)["correlation_id"] == made["X-Correlation-ID"]
    # A value that is not an id (too long, or unsafe in a header) is replaced.
    odd = middleware(RequestFactory().get("/", HTTP_X_CORRELATION_ID="x" * 500))
    assert odd["X-Correlation-ID"] != "x" * 500
    newline = middleware(RequestFactory().get("/", HTTP_X_CORRELATION_ID="from-client-2\n"))
    assert newline["X-Correlation-ID"] != "from-client-2\n"


def test_the_project_returns_the_header_on_real_responses(client):
    response = client.get("/admin/login/", HTTP_X_CORRELATION_ID="page-1")
    assert response.status_code == 200
    assert response["X-Correlation-ID"] == "page-1"


def test_log_format_json_makes_every_line_a_json_object(runservice_process):
    process = runservice_process(
        "testservice", DJANGO_SETTINGS_MODULE="tests.settings", LOG_FORMAT="json"
    )
    call("testservice.echo", {"text": "hi"}, headers={"X-Correlation-ID": "json-lines-1"})
    process.stop()
    entries = [json.loads(line) for line in process.output().splitlines() if line.strip()]
    assert entries
    access = [e for e in entries if e["correlation_id"] == "json-lines-1"]
    assert [(e["logger"], e["service"], e["endpoint"], e["outcome"]) for e in access] == [
        ("cliffracer.access", "testservice", "echo", "ok")
    ]
