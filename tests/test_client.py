"""The client: sync from plain threads over one connection, async, timeouts, typed errors."""

import asyncio
import threading

import pytest

from cliffracer_core import RpcTimeout, Service, acall, call, rpc
from cliffracer_core.core import client as client_module
from cliffracer_core.core.client import SynchronousCallError, background_loop, rpc_subject
from cliffracer_core.testing.plugin import run_async
from cliffracer_core.transports import _transports
from tests.models import Add, Total, Wait


def make_service(service_name: str) -> type[Service]:
    class Adder(Service):
        name = service_name

        @rpc
        async def add(self, request: Add) -> Total:
            return Total(total=request.a + request.b)

        @rpc
        async def slow(self, request: Wait) -> None:
            await asyncio.sleep(request.seconds)

    return Adder


@pytest.fixture
def adder(start_service, unique_name, monkeypatch):
    start_service(make_service(unique_name))
    # Exercise the process's own background loop, as a WSGI view or a Celery task would.
    monkeypatch.setattr(client_module, "service_loop", None)
    return unique_name


def test_sync_client_from_plain_threads_shares_one_connection(adder):
    results: dict[int, int] = {}
    errors: list[BaseException] = []

    def work(offset: int) -> None:
        try:
            for i in range(25):
                results[offset + i] = call(f"{adder}.add", Add(a=offset, b=i), reply=Total).total
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=work, args=(n * 100,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors
    assert len(results) == 200
    assert all(total == key for key, total in results.items())
    loop = background_loop.get_loop()
    connection = _transports[loop]
    call(f"{adder}.add", {"a": 0, "b": 0})
    assert _transports[loop] is connection
    # One connection for the whole process's sync calls, not one per call or thread.
    assert [t.name for t in threading.enumerate()].count("cliffracer-client") == 1


def test_sync_client_refuses_to_block_an_event_loop(adder):
    async def inside_a_loop():
        with pytest.raises(SynchronousCallError):
            call(f"{adder}.add", {"a": 1, "b": 2})
        return await acall(f"{adder}.add", {"a": 1, "b": 2})

    assert run_async(inside_a_loop()) == {"total": 3}


def test_timeout_per_call(adder):
    with pytest.raises(RpcTimeout) as raised:
        call(f"{adder}.slow", {"seconds": 1.0}, timeout=0.2)
    assert raised.value.code == 408
    assert call(f"{adder}.slow", {"seconds": 0.05}, timeout=2) is None


def test_call_target_must_name_service_and_method():
    with pytest.raises(ValueError):
        rpc_subject("orders")
    assert rpc_subject("orders.create_order") == "rpc.orders.create_order"


def test_nats_down_is_a_quick_clear_error(monkeypatch, settings):
    from cliffracer_core.core.errors import RemoteUnavailable
    from cliffracer_core.transports.nats.embedded import free_port

    monkeypatch.setenv("NATS_URL", f"nats://127.0.0.1:{free_port('127.0.0.1')}")
    settings.CLIFFRACER = {}  # reloads the lazy settings with the new NATS_URL

    async def attempt():
        with pytest.raises(RemoteUnavailable) as raised:
            await acall("anything.at_all", {})
        return raised.value

    error = run_async(attempt())
    assert error.code == 503 and error.type == "transport_unavailable"
    assert "is not reachable" in error.message


def test_clean_header_values_skip_only_work_that_is_not_needed():
    from cliffracer_core.core.headers import CleanHeaderValue, clean_header_value

    token = "Bearer abc.def.ghi"
    clean = clean_header_value(token)
    assert type(clean) is CleanHeaderValue and clean == token
    table = str.maketrans({"\r": " ", "\n": " "})
    assert clean.strip().translate(table) is clean
    # Values that need sanitising stay plain strings, so nats-py still cleans them.
    for value in ("Bearer a\r\nX-Evil: 1", " padded ", "line\nbreak"):
        assert type(clean_header_value(value)) is str
