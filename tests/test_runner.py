"""Requests and replies through a running service, over a real nats-server."""

import asyncio
import json
import logging
import subprocess
import sys

import nats
import pytest

from cliffracer_core import (
    Conflict,
    NotFound,
    RemoteError,
    Service,
    ServiceError,
    Unavailable,
    ValidationFailed,
    acall,
    call,
    get_correlation_id,
    rpc,
)
from cliffracer_core.core.auth.tokens import system_identity
from cliffracer_core.core.errors import (
    NoResponders,
    RemoteConflict,
    RemoteNotFound,
    RemoteUnavailable,
)
from cliffracer_core.core.log import ContextFilter
from cliffracer_core.core.runner import REQUESTS_PER_TURN
from cliffracer_core.testing import wait_for
from cliffracer_core.testing.plugin import project_root, run_async
from cliffracer_core.transports.base import Features, Received
from cliffracer_core.transports.memory import MemoryTransport
from tests.models import Add, Item, Tagged, Total, Wait


def make_service(service_name: str) -> type[Service]:
    class Calculator(Service):
        name = service_name

        @rpc
        async def add(self, request: Add) -> Total:
            return Total(total=request.a + request.b)

        @rpc
        def add_in_thread(self, request: Add) -> Total:
            return Total(total=request.a + request.b)

        @rpc
        async def as_dict(self, request: Add) -> Total:
            return {"total": request.a + request.b}

        @rpc
        async def explode(self, request: Add) -> Total:
            raise RuntimeError("database password is hunter2")

        @rpc
        def explode_in_thread(self, request: Add) -> Total:
            raise KeyError("secret")

        @rpc
        async def find(self, request: Item) -> Item:
            raise NotFound(f"No item {request.id}.", details={"id": request.id})

        @rpc
        async def taken(self, request: Item) -> Item:
            raise Conflict("Name taken.", details={"name": request.name})

        @rpc
        async def unavailable(self, request: Add) -> Total:
            raise Unavailable("Down for maintenance.")

        @rpc
        async def pass_through(self, request: Item) -> Item:
            # An error another service replied with, passed on to this caller unchanged.
            try:
                return await self.call(f"{service_name}.taken", request, reply=Item)
            except RemoteError as error:
                raise ServiceError.from_remote(error) from None

        @rpc
        async def wrong_reply(self, request: Add) -> Total:
            return {"sum": 3}

        @rpc
        async def nothing(self, request: Add) -> None:
            return None

        @rpc
        async def whoami(self, request: Wait) -> Tagged:
            return Tagged(tag=request.tag, correlation_id=get_correlation_id())

        @rpc
        async def relay(self, request: Wait) -> Tagged:
            # A call made inside a handler carries the correlation id onward.
            return await self.call(f"{service_name}.whoami", request, reply=Tagged)

    return Calculator


@pytest.fixture
def calculator(start_service, unique_name):
    start_service(make_service(unique_name))
    return unique_name


async def raw_request(url: str, subject: str, body: bytes, headers=None):
    """A request from a plain nats-py client, with a token as any client would send it."""
    headers = {"Authorization": system_identity.authorization(), **(headers or {})}
    client = await nats.connect(url)
    try:
        return await client.request(subject, body, timeout=5, headers=headers)
    finally:
        await client.close()


def test_a_burst_of_requests_gives_the_event_loop_a_turn_every_few_requests(
    start_service, unique_name
):
    """Handlers that never suspend run back to back as a burst of requests comes in; every
    REQUESTS_PER_TURN of them the request subscription lets the loop run (replies so far go
    out, other work runs) rather than only once the whole burst is handled."""
    running = start_service(make_service(unique_name))
    runner = running.runner
    counters = runner.counters["add"]
    burst = 3 * REQUESTS_PER_TURN

    async def handle_a_burst() -> list[int]:
        before = counters.num_requests
        turns: list[int] = []
        loop = asyncio.get_running_loop()

        def other_work() -> None:
            # Runs when the loop gets a turn: note how far the burst had come, and wait again.
            turns.append(counters.num_requests - before)
            if len(turns) < 10:
                loop.call_soon(other_work)

        loop.call_soon(other_work)
        for _ in range(burst):
            # A request nobody waits a reply for, handed over as the subscription hands it.
            await runner.on_request(Received(f"rpc.{unique_name}.add", b'{"a": 1, "b": 2}'))
        return turns

    turns = running.run(handle_a_burst())
    assert counters.num_requests >= burst
    # The loop ran other work before the burst was over, and at least once per REQUESTS_PER_TURN.
    during = [handled for handled in turns if handled < burst]
    assert len(during) >= 2, turns
    assert all(0 <= handled <= burst for handled in turns), turns


def test_reply_is_the_plain_json_of_the_reply_model(nats_server, calculator):
    reply = run_async(raw_request(nats_server.url, f"rpc.{calculator}.add", b'{"a": 2, "b": 3}'))
    assert json.loads(reply.data) == {"total": 5}
    # No headers: the caller sent no correlation id, so it gets none back on success (the
    # service's access line has the one it made), and an error reply would say which.
    assert not reply.headers
    error = run_async(raw_request(nats_server.url, f"rpc.{calculator}.add", b"{}"))
    assert error.headers["Nats-Service-Error-Code"] == "422"
    assert len(error.headers["X-Correlation-ID"]) == 32


def test_a_caller_that_sent_a_correlation_id_gets_a_bare_reply(nats_server, calculator):
    headers = {"X-Correlation-ID": "known-to-caller"}
    reply = run_async(
        raw_request(nats_server.url, f"rpc.{calculator}.add", b'{"a": 2, "b": 3}', headers)
    )
    assert json.loads(reply.data) == {"total": 5}
    assert not reply.headers
    error = run_async(raw_request(nats_server.url, f"rpc.{calculator}.add", b"{}", headers))
    assert error.headers["X-Correlation-ID"] == "known-to-caller"


def test_typed_and_untyped_calls(calculator):
    assert call(f"{calculator}.add", Add(a=1, b=2), reply=Total) == Total(total=3)
    assert call(f"{calculator}.add", {"a": 1, "b": 2}) == {"total": 3}
    assert call(f"{calculator}.add_in_thread", {"a": 5, "b": 5}) == {"total": 10}
    assert call(f"{calculator}.as_dict", {"a": 1, "b": 1}, reply=Total) == Total(total=2)
    assert call(f"{calculator}.nothing", {"a": 1, "b": 1}) is None


def error_reply(url, subject, body):
    reply = run_async(raw_request(url, subject, body))
    return reply.headers, json.loads(reply.data)["error"]


@pytest.mark.parametrize(
    ("endpoint", "body", "code", "error_type"),
    [
        ("add", b"{not json", "400", "invalid_json"),
        ("add", b'{"a": "x"}', "422", "validation_failed"),
        ("no_such_endpoint", b"{}", "404", "unknown_endpoint"),
        ("explode", b'{"a": 1, "b": 1}', "500", "internal_error"),
        ("explode_in_thread", b'{"a": 1, "b": 1}', "500", "internal_error"),
        ("wrong_reply", b'{"a": 1, "b": 1}', "502", "invalid_reply"),
        ("find", b'{"id": 7, "name": "x"}', "404", "not_found"),
        ("taken", b'{"id": 7, "name": "x"}', "409", "conflict"),
    ],
)
def test_each_error_kind_is_an_adr32_error(
    nats_server, calculator, endpoint, body, code, error_type
):
    headers, error = error_reply(nats_server.url, f"rpc.{calculator}.{endpoint}", body)
    assert headers["Nats-Service-Error-Code"] == code
    assert headers["Nats-Service-Error"] == error["message"]
    assert error["code"] == int(code)
    assert error["type"] == error_type
    assert set(error) == {"code", "type", "message", "details"}
    # The worker keeps serving after every one of them.
    assert call(f"{calculator}.add", {"a": 1, "b": 1}) == {"total": 2}


def test_validation_errors_carry_pydantic_details(calculator):
    with pytest.raises(ValidationFailed) as raised:
        call(f"{calculator}.add", {"a": "not a number"})
    error = raised.value
    assert error.code == 422
    fields = {tuple(item["loc"]): item["type"] for item in error.details}
    assert fields == {("a",): "int_parsing", ("b",): "missing"}


def test_deliberate_errors_carry_message_and_details(calculator):
    with pytest.raises(RemoteNotFound) as raised:
        call(f"{calculator}.find", {"id": 42, "name": "x"})
    assert (raised.value.code, raised.value.message) == (404, "No item 42.")
    assert raised.value.details == {"id": 42}
    with pytest.raises(RemoteConflict) as raised:
        call(f"{calculator}.taken", {"id": 1, "name": "bolt"})
    assert raised.value.details == {"name": "bolt"}


def test_unexpected_exception_stays_in_the_log(nats_server, calculator, caplog):
    caplog.set_level(logging.ERROR, logger="cliffracer")
    caplog.handler.addFilter(ContextFilter())
    headers = {"X-Correlation-ID": "corr-explode-1"}
    reply = run_async(
        raw_request(nats_server.url, f"rpc.{calculator}.explode", b'{"a":1,"b":1}', headers)
    )
    assert b"hunter2" not in reply.data and b"Traceback" not in reply.data
    assert "hunter2" not in json.dumps(dict(reply.headers))
    assert json.loads(reply.data)["error"]["message"] == "The service failed to handle the request."
    logged = [r for r in caplog.records if getattr(r, "correlation_id", None) == "corr-explode-1"]
    assert len(logged) == 1
    assert logged[0].exc_info is not None
    assert "hunter2" in str(logged[0].exc_info[1])


def test_reply_model_validation_failure_details(calculator):
    with pytest.raises(RemoteError) as raised:
        call(f"{calculator}.wrong_reply", {"a": 1, "b": 2})
    assert raised.value.code == 502
    assert raised.value.details[0]["loc"] == ["total"]


def test_correlation_id_travels_through_nested_calls(calculator):
    reply = call(
        f"{calculator}.relay", {"tag": 4}, reply=Tagged, headers={"X-Correlation-ID": "abc-123"}
    )
    assert reply == Tagged(tag=4, correlation_id="abc-123")


def test_a_correlation_id_is_created_when_the_caller_has_none(calculator):
    first = call(f"{calculator}.whoami", {"tag": 1}, reply=Tagged)
    second = call(f"{calculator}.whoami", {"tag": 2}, reply=Tagged)
    assert first.correlation_id and second.correlation_id
    assert first.correlation_id != second.correlation_id


def test_oversized_request_is_refused(start_service, unique_name):
    start_service(make_service(unique_name))
    from django.test import override_settings

    with override_settings(CLIFFRACER={"MAX_REQUEST_BYTES": 64}):
        start_service(make_service(unique_name + "small"))
    with pytest.raises(RemoteError) as raised:
        call(f"{unique_name}small.add", {"a": 1, "b": 2, "padding": "x" * 100})
    assert raised.value.code == 413
    # The normal instance accepts the same body.
    assert call(f"{unique_name}.add", {"a": 1, "b": 2, "padding": "x" * 100}) == {"total": 3}


def test_no_responders_when_no_instance_runs(nats_server):
    with pytest.raises(NoResponders) as raised:
        call("nobody_runs_this.method", {})
    assert raised.value.code == 503


def test_async_callers_share_the_loop_connection(calculator):
    async def many():
        replies = await asyncio.gather(
            *(acall(f"{calculator}.add", {"a": i, "b": 1}) for i in range(20))
        )
        return [reply["total"] for reply in replies]

    assert run_async(many()) == [i + 1 for i in range(20)]


def test_a_deliberate_503_is_not_mistaken_for_no_responders(calculator):
    with pytest.raises(RemoteUnavailable) as raised:
        call(f"{calculator}.unavailable", {"a": 1, "b": 1})
    assert not isinstance(raised.value, NoResponders)
    assert raised.value.message == "Down for maintenance."


def test_a_remote_error_can_be_passed_through(calculator):
    with pytest.raises(RemoteConflict) as raised:
        call(f"{calculator}.pass_through", {"id": 1, "name": "bolt"})
    assert (raised.value.type, raised.value.details) == ("conflict", {"name": "bolt"})


def test_echoed_input_is_cut_short_in_an_error_reply(nats_server, calculator):
    # find echoes the id in its message and details: a huge one once made the reply too big to
    # send, and the caller waited for a timeout. Item.id is an int, so name carries it here.
    huge = "x" * 900_000
    reply = run_async(
        raw_request(
            nats_server.url,
            f"rpc.{calculator}.taken",
            json.dumps({"id": 1, "name": huge}).encode(),
        )
    )
    assert reply.headers["Nats-Service-Error-Code"] == "409"
    assert len(reply.headers["Nats-Service-Error"]) <= 200
    error = json.loads(reply.data)["error"]
    assert len(error["details"]["name"]) == 1000
    assert error["details"]["name"].endswith("…")
    assert len(reply.data) < 5000


@pytest.mark.parametrize(
    "offered",
    ["\x1b[31mred\x1b[0m", "nul\x00byte", "x" * 200, "spaces are not allowed", "tab\there"],
)
def test_a_correlation_id_not_fit_to_log_is_replaced(nats_server, calculator, caplog, offered):
    with caplog.at_level(logging.INFO, logger="cliffracer.access"):
        reply = run_async(
            raw_request(
                nats_server.url,
                f"rpc.{calculator}.whoami",
                b'{"tag": 1}',
                {"X-Correlation-ID": offered},
            )
        )
        used = json.loads(reply.data)["correlation_id"]
        # Access lines are written in batches, within 50 ms (core/access.py).
        wait_for(
            lambda: any(getattr(r, "correlation_id", "") == used for r in caplog.records),
            what="the access line",
        )
    assert used != offered
    assert len(used) == 32 and used.isalnum()
    assert reply.headers["X-Correlation-ID"] == used
    assert offered not in caplog.text


class WithoutDurableStreams(Features):
    """A transport's features without durable streams (as Redis pub/sub alone would be)."""

    no_responders = wildcards = queue_groups = broadcast = True


class MemoryWithoutDurable(MemoryTransport):
    features = WithoutDurableStreams()


def test_a_service_is_refused_a_transport_that_lacks_what_it_needs(settings):
    from django.core.exceptions import ImproperlyConfigured

    from cliffracer_core import event
    from cliffracer_core.core.runner import ServiceRunner

    class Ledger(Service):
        name = "ledger"

        @event("ledger.>", durable=True)
        def on_entry(self) -> None: ...

    settings.CLIFFRACER = {
        **settings.CLIFFRACER,
        "TRANSPORT": {
            "BACKEND": "tests.test_runner.MemoryWithoutDurable",
            "LOCATION": "memory://refused",
        },
        "STREAMS": {"LEDGER": {"subjects": ["ledger.>"]}},
    }
    runner = ServiceRunner(Ledger)
    with pytest.raises(ImproperlyConfigured) as refused:
        asyncio.run(runner.start(connect_attempts=1))
    message = str(refused.value)
    assert "MemoryWithoutDurable" in message
    assert "durable (on_entry is a durable handler)" in message


FORKING = """
import os
from cliffracer_core.core.context import new_correlation_id
reading, writing = os.pipe()
child = os.fork()
if child == 0:
    os.write(writing, new_correlation_id().encode())
    os._exit(0)
os.waitpid(child, 0)
print(new_correlation_id(), os.read(reading, 64).decode())
"""


def test_correlation_ids_are_unique_within_a_process_and_across_a_fork() -> None:
    from cliffracer_core.core.context import new_correlation_id
    from cliffracer_core.core.headers import accepted_id

    made = [new_correlation_id() for _ in range(1000)]
    assert len(set(made)) == 1000 and all(len(i) == 32 and accepted_id(i) for i in made)
    # In a process of its own (this one has threads: forking it could deadlock the child).
    forked = subprocess.run(
        [sys.executable, "-c", FORKING], cwd=project_root(), capture_output=True, text=True
    )
    parent, child = forked.stdout.split()
    assert accepted_id(child) and len({parent, child, *made}) == 1002
    assert parent[:16] != child[:16]  # the child drew a random half of its own
