"""Call policies in the client: retries of safe errors only, breakers, bulkheads, fallbacks,
per-call overrides, idempotency in $SRV.INFO, and the checks of bad policies.

These run on the in-memory transport; tests/test_resilience_processes.py runs the same
policies across real runservice processes on a real nats-server.
"""

import asyncio
import json
import threading
import time

import pytest
from django.test import override_settings
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cliffracer_core import (
    BadRequest,
    BulkheadFull,
    CircuitOpen,
    NoResponders,
    RemoteError,
    RpcTimeout,
    Service,
    Unavailable,
    ValidationFailed,
    acall,
    call,
    rpc,
)
from cliffracer_core.contrib.metrics import calls as call_metrics  # noqa: F401  (registers)
from cliffracer_core.core import resilience
from cliffracer_core.core.breaker import (
    ADMITTED,
    CLOSED,
    HALF_OPEN,
    OPEN,
    REFUSED,
    TRIAL,
    Bulkhead,
    BulkheadFullError,
    CircuitBreaker,
)
from cliffracer_core.core.checks import check_call_policies, check_services
from cliffracer_core.core.context import get_correlation_id
from cliffracer_core.core.headers import ATTEMPT, CORRELATION_ID
from cliffracer_core.testing.plugin import run_async
from tests.models import Add, Total, Wait

pytestmark = pytest.mark.usefixtures("memory_transport")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_on_its_failure_ratio_then_half_opens_and_closes():
    clock = Clock()
    changes: list[tuple[str, str]] = []
    breaker = CircuitBreaker(
        "inventory",
        failure_ratio=0.5,
        min_calls=4,
        window=10.0,
        open_seconds=5.0,
        on_change=lambda name, state: changes.append((name, state)),
        clock=clock,
    )
    for failed in (True, False, True):
        assert breaker.admit() == ADMITTED
        breaker.record(failed)
    assert breaker.state == CLOSED  # 3 calls: fewer than min_calls
    breaker.admit()
    breaker.record(False)
    assert breaker.state == CLOSED  # 2 of 4 failed, but the last call succeeded
    late = breaker.admit()  # a call that will end while the breaker is half-open
    breaker.admit()
    breaker.record(True)
    assert breaker.state == OPEN  # 3 of 5 failed
    assert breaker.admit() == REFUSED
    clock.now += 5.0
    assert breaker.admit() == TRIAL
    assert breaker.state == HALF_OPEN
    assert breaker.admit() == REFUSED  # one trial at a time
    breaker.record(False, late)
    assert breaker.state == HALF_OPEN  # only the trial decides
    breaker.record(True, TRIAL)
    assert breaker.state == OPEN  # the trial failed: open for another delay
    clock.now += 5.0
    assert breaker.admit() == TRIAL
    breaker.record(False, TRIAL)
    assert breaker.state == CLOSED
    assert changes == [
        ("inventory", OPEN),
        ("inventory", HALF_OPEN),
        ("inventory", OPEN),
        ("inventory", HALF_OPEN),
        ("inventory", CLOSED),
    ]


def test_breaker_forgets_failures_older_than_its_window():
    clock = Clock()
    breaker = CircuitBreaker(
        "t", failure_ratio=0.5, min_calls=4, window=10.0, open_seconds=5.0, clock=clock
    )
    for _ in range(3):
        breaker.admit()
        breaker.record(True)
    clock.now += 11.0
    breaker.admit()
    breaker.record(True)
    assert breaker.state == CLOSED  # one failure within the window


def test_cancelled_trial_lets_the_next_call_try():
    clock = Clock()
    breaker = CircuitBreaker(
        "t", failure_ratio=1.0, min_calls=1, window=10.0, open_seconds=1.0, clock=clock
    )
    breaker.admit()
    breaker.record(True)
    clock.now += 1.0
    assert breaker.admit() == TRIAL
    breaker.record(None, TRIAL)
    assert breaker.admit() == TRIAL


def test_bulkhead_runs_its_limit_queues_its_limit_and_refuses_the_rest():
    async def scenario() -> list[str]:
        bulkhead = Bulkhead(max_in_flight=2, max_waiting=1)
        await bulkhead.acquire(1.0)
        await bulkhead.acquire(1.0)
        queued = asyncio.ensure_future(bulkhead.acquire(5.0))
        await asyncio.sleep(0)
        outcomes = []
        try:
            await bulkhead.acquire(5.0)
        except BulkheadFullError:
            outcomes.append("refused at once")
        bulkhead.release()
        await asyncio.wait_for(queued, 1.0)
        outcomes.append(f"queued call ran, {bulkhead.in_flight} in flight")
        try:
            await bulkhead.acquire(0.05)
            bulkhead.release()
        except BulkheadFullError:
            outcomes.append("waited its timeout, refused")
        bulkhead.release()
        bulkhead.release()
        outcomes.append(f"{bulkhead.in_flight} in flight")
        return outcomes

    assert run_async(scenario()) == [
        "refused at once",
        "queued call ran, 2 in flight",
        "waited its timeout, refused",
        "0 in flight",
    ]


def test_bulkhead_hands_slots_across_threads_and_loops():
    bulkhead = Bulkhead(max_in_flight=3, max_waiting=100)
    peak = [0]
    errors: list[BaseException] = []

    async def one() -> None:
        await bulkhead.acquire(10.0)
        try:
            peak[0] = max(peak[0], bulkhead.in_flight)
            await asyncio.sleep(0.002)
        finally:
            bulkhead.release()

    def work() -> None:
        async def many() -> None:
            await asyncio.gather(*(one() for _ in range(10)))

        try:
            asyncio.run(many())
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors
    assert peak[0] <= 3
    assert bulkhead.in_flight == 0


class Flaky(Service):
    """Endpoints that fail on demand, and remember what they saw."""

    fail_times = 0
    seen: list[tuple[str, str | None, str]] = []

    def note(self, endpoint: str) -> bool:
        """Record the call; True while it should still fail."""
        from cliffracer_core.core.context import current_headers

        headers = current_headers.get() or {}
        type(self).seen.append((endpoint, headers.get(ATTEMPT), get_correlation_id() or ""))
        return sum(1 for name, *_ in type(self).seen if name == endpoint) <= type(self).fail_times

    @rpc
    async def unavailable(self, request: Add) -> Total:
        if self.note("unavailable"):
            raise Unavailable("not now")
        return Total(total=request.a + request.b)

    @rpc
    async def broken(self, request: Add) -> Total:
        if self.note("broken"):
            raise RuntimeError("boom")
        return Total(total=request.a + request.b)

    @rpc(idempotent=True)
    async def broken_read(self, request: Add) -> Total:
        if self.note("broken_read"):
            raise RuntimeError("boom")
        return Total(total=request.a + request.b)

    @rpc
    async def refuse(self, request: Add) -> Total:
        self.note("refuse")
        raise BadRequest("no")

    @rpc(idempotent=True)
    async def slow_read(self, request: Wait) -> Total:
        slow = self.note("slow_read")
        await asyncio.sleep(request.seconds if slow else 0)
        return Total(total=request.tag)

    @rpc
    async def slow_write(self, request: Wait) -> Total:
        slow = self.note("slow_write")
        await asyncio.sleep(request.seconds if slow else 0)
        return Total(total=request.tag)


def flaky_service(name: str, fail_times: int) -> type[Service]:
    return type(
        "FlakyService",
        (Flaky,),
        {"name": name, "fail_times": fail_times, "seen": [], "__module__": __name__},
    )


def calls(name: str, values: dict, **more: dict) -> dict:
    return {"CALLS": {name: values, **more}}


def seen(service: type[Service], endpoint: str) -> list[tuple[str, str | None, str]]:
    return [entry for entry in service.seen if entry[0] == endpoint]


def test_503_is_retried_with_the_same_correlation_id_and_an_attempt_number(unique_name):
    received: list[dict[str, str]] = []

    async def scenario() -> object:
        from cliffracer_core.core.client import shared_transport
        from cliffracer_core.core.headers import ERROR_CODE, ERROR_MESSAGE

        transport = await shared_transport()

        async def answer(message) -> None:
            received.append(dict(message.headers or {}))
            if len(received) < 3:
                headers = {ERROR_CODE: "503", ERROR_MESSAGE: "not now"}
                body = b'{"error": {"code": 503, "type": "unavailable", "message": "not now"}}'
            else:
                headers, body = {}, b'{"total": 3}'
            await transport.publish(message.reply, body, headers=headers)

        subscription = await transport.subscribe(f"rpc.{unique_name}.add", answer)
        try:
            return await acall(f"{unique_name}.add", Add(a=1, b=2), reply=Total)
        finally:
            await subscription.unsubscribe()

    with override_settings(CLIFFRACER=calls(unique_name, {"RETRIES": 2, "RETRY_DELAY": 0.01})):
        assert run_async(scenario()) == Total(total=3)
        assert resilience.scopes[unique_name].retries == 2
    assert [headers.get(ATTEMPT) for headers in received] == [None, "2", "3"]
    assert len({headers[CORRELATION_ID] for headers in received}) == 1


def test_retries_stop_at_their_limit(start_service, unique_name):
    service = flaky_service(unique_name, fail_times=5)
    start_service(service)
    with override_settings(CLIFFRACER=calls(unique_name, {"RETRIES": 1, "RETRY_DELAY": 0.01})):
        with pytest.raises(RemoteError) as raised:
            call(f"{unique_name}.unavailable", Add(a=1, b=2))
        assert raised.value.code == 503
        assert len(seen(service, "unavailable")) == 2


def test_500_is_retried_only_from_an_idempotent_endpoint(start_service, unique_name):
    service = flaky_service(unique_name, fail_times=1)
    start_service(service)
    with override_settings(CLIFFRACER=calls(unique_name, {"RETRIES": 3, "RETRY_DELAY": 0.01})):
        with pytest.raises(RemoteError) as raised:
            call(f"{unique_name}.broken", Add(a=1, b=2))
        assert raised.value.code == 500
        assert len(seen(service, "broken")) == 1
        assert call(f"{unique_name}.broken_read", Add(a=1, b=2)) == {"total": 3}
        assert len(seen(service, "broken_read")) == 2


def test_4xx_is_never_retried(start_service, unique_name):
    service = flaky_service(unique_name, fail_times=0)
    start_service(service)
    with override_settings(CLIFFRACER=calls(unique_name, {"RETRIES": 3, "RETRY_DELAY": 0.01})):
        with pytest.raises(ValidationFailed):
            call(f"{unique_name}.refuse", Add(a=1, b=2))
        assert len(seen(service, "refuse")) == 1


def test_timeout_is_retried_only_on_an_idempotent_endpoint(start_service, unique_name):
    service = flaky_service(unique_name, fail_times=1)
    start_service(service)
    policy = {"TIMEOUT": 0.2, "RETRIES": 2, "RETRY_DELAY": 0.01}
    with override_settings(CLIFFRACER=calls(unique_name, policy)):
        assert call(f"{unique_name}.slow_read", Wait(seconds=1.0, tag=7)) == {"total": 7}
        assert len(seen(service, "slow_read")) == 2
        with pytest.raises(RpcTimeout):
            call(f"{unique_name}.slow_write", Wait(seconds=1.0, tag=7))
        assert len(seen(service, "slow_write")) == 1


def test_per_call_overrides_win(start_service, unique_name):
    service = flaky_service(unique_name, fail_times=1)
    start_service(service)
    policy = {"TIMEOUT": 5.0, "RETRIES": 3, "RETRY_DELAY": 0.01}
    with override_settings(CLIFFRACER=calls(unique_name, policy)):
        with pytest.raises(RemoteError):
            call(f"{unique_name}.unavailable", Add(a=1, b=2), retries=0)
        assert len(seen(service, "unavailable")) == 1
        started = time.monotonic()
        with pytest.raises(RpcTimeout):
            call(f"{unique_name}.slow_write", Wait(seconds=2.0), timeout=0.1)
        assert time.monotonic() - started < 2.0
    # Without any policy, a call may still ask for retries.
    other = flaky_service(f"{unique_name}x", fail_times=1)
    start_service(other)
    assert call(f"{unique_name}x.unavailable", Add(a=1, b=2), retries=1) == {"total": 3}


def test_no_responders_is_retried_and_counted_against_the_breaker(unique_name):
    policy = {
        "RETRIES": 1,
        "RETRY_DELAY": 0.01,
        "BREAKER": {"MIN_CALLS": 4, "FAILURE_RATIO": 0.5, "OPEN_SECONDS": 60},
    }
    with override_settings(CLIFFRACER=calls(unique_name, policy)):
        for _ in range(2):
            with pytest.raises(NoResponders):
                call(f"{unique_name}.anything")
        started = time.perf_counter()
        with pytest.raises(CircuitOpen) as raised:
            call(f"{unique_name}.anything")
        assert raised.value.code == 503
        assert raised.value.type == "circuit_open"
        assert resilience.scopes[unique_name].state == OPEN
        assert resilience.scopes[unique_name].rejected["circuit_open"] == 1
        assert time.perf_counter() - started < 1.0
        scraped = {
            (sample.name, sample.labels.get("target"), sample.labels.get("reason")): sample.value
            for family in text_string_to_metric_families(generate_latest(REGISTRY).decode())
            for sample in family.samples
        }
    assert scraped[("cliffracer_circuit_breaker_state", unique_name, None)] == 2
    assert scraped[("cliffracer_calls_total", unique_name, None)] == 3
    assert scraped[("cliffracer_call_retries_total", unique_name, None)] == 2
    assert scraped[("cliffracer_call_rejections_total", unique_name, "circuit_open")] == 1
    assert scraped[("cliffracer_call_rejections_total", unique_name, "bulkhead_full")] == 0


def test_bulkhead_refuses_calls_beyond_its_queue_at_once(start_service, unique_name):
    service = flaky_service(unique_name, fail_times=100)
    start_service(service)
    policy = {"BULKHEAD": {"MAX_IN_FLIGHT": 2, "MAX_WAITING": 1}, "TIMEOUT": 5.0}

    async def many() -> list:
        return await asyncio.gather(
            *(acall(f"{unique_name}.slow_write", Wait(seconds=0.5, tag=n)) for n in range(6)),
            return_exceptions=True,
        )

    with override_settings(CLIFFRACER=calls(unique_name, policy)):
        results = run_async(many())
    refused = [result for result in results if isinstance(result, BulkheadFull)]
    assert len(refused) == 3
    assert all(result.type == "bulkhead_full" and result.code == 503 for result in refused)
    assert [result for result in results if isinstance(result, dict)] == [
        {"total": n} for n in range(3)
    ]


def remember_fallback(target, data, error):
    return {"total": -1, "target": target, "code": error.code}


def test_fallbacks_a_function_and_the_last_good_reply(start_service, unique_name):
    service = flaky_service(unique_name, fail_times=0)
    start_service(service)
    settings = {
        "CALLS": {
            f"{unique_name}.broken_read": {"FALLBACK": "cached"},
            f"{unique_name}.broken": {"FALLBACK": f"{__name__}.remember_fallback"},
        }
    }
    with override_settings(CLIFFRACER=settings):
        assert call(f"{unique_name}.broken_read", Add(a=1, b=2)) == {"total": 3}
        service.fail_times = 100
        assert call(f"{unique_name}.broken_read", Add(a=1, b=2)) == {"total": 3}
        with pytest.raises(RemoteError):  # a request never answered has nothing cached
            call(f"{unique_name}.broken_read", Add(a=2, b=2))
        assert call(f"{unique_name}.broken", Add(a=1, b=2)) == {
            "total": -1,
            "target": f"{unique_name}.broken",
            "code": 500,
        }
        with pytest.raises(ValidationFailed):  # a refusal is the answer, not a failure
            call(f"{unique_name}.refuse", Add(a=1, b=2))
        assert resilience.scopes[f"{unique_name}.broken"].fallbacks == 1


def test_info_tells_callers_which_endpoints_are_idempotent(start_service, unique_name):
    start_service(flaky_service(unique_name, fail_times=0))

    async def endpoints() -> dict:
        from cliffracer_core.core.client import shared_transport

        transport = await shared_transport()
        reply = await transport.request(f"$SRV.INFO.{unique_name}", b"", timeout=2)
        return {
            endpoint["name"]: endpoint["metadata"]["idempotent"]
            for endpoint in json.loads(reply.data)["endpoints"]
        }

    found = run_async(endpoints())
    assert found["broken_read"] == "true"
    assert found["broken"] == "false"


def test_a_service_declares_the_policies_of_its_calls(start_service, unique_name):
    target = flaky_service(unique_name, fail_times=1)
    start_service(target)

    class Caller(Service):
        name = f"{unique_name}caller"
        calls = {unique_name: {"RETRIES": 2, "RETRY_DELAY": 0.01}}

        @rpc
        async def relay(self, request: Add) -> Total:
            return await self.call(f"{unique_name}.unavailable", request, reply=Total)

    start_service(Caller)
    assert call(f"{unique_name}caller.relay", Add(a=2, b=3)) == {"total": 5}
    assert len(seen(target, "unavailable")) == 2


def test_bad_policies_are_system_check_errors():
    bad = {
        "CALLS": {
            "default": {"TIMEOUT": -1, "RETRIES": 1.5},
            "inventory": {"BREAKER": {"FAILURE_RATIO": 2, "MINCALLS": 3}},
            "inventory.reserve": {"BULKHEAD": {"MAX_IN_FLIGHT": 0}, "FALLBACK": "no.such"},
            "a.b.c": {},
            "orders": {"RETRY": 3},
        }
    }
    with override_settings(CLIFFRACER=bad):
        errors = check_call_policies()
    assert {error.id for error in errors} == {"cliffracer.E025"}
    messages = "\n".join(error.msg for error in errors)
    for expected in (
        "['default']['TIMEOUT'] must be a positive number",
        "['default']['RETRIES'] must be an integer",
        "FAILURE_RATIO'] must be above 0 and at most 1",
        "unknown key 'MINCALLS'",
        "MAX_IN_FLIGHT'] must be a positive integer",
        "['FALLBACK'] must be 'cached' or the import string",
        "'a.b.c']: a target is 'default', 'service' or 'service.method'",
        "unknown key 'RETRY'",
    ):
        assert expected in messages
    with override_settings(CLIFFRACER={"CALLS": {"default": {"RETRIES": 2, "BREAKER": True}}}):
        assert check_call_policies() == []


def test_a_services_bad_calls_are_system_check_errors(monkeypatch):
    from cliffracer_core.core.apps import service_app_configs

    config = next(config for config in service_app_configs() if config.service_class)
    assert [error for error in check_services() if error.id == "cliffracer.E026"] == []
    monkeypatch.setattr(config.service_class, "calls", {"inventory": {"RETRIES": -1}})
    errors = [error for error in check_services() if error.id == "cliffracer.E026"]
    assert [(error.obj, error.msg) for error in errors] == [
        (
            config.label,
            f"{config.service_class.__name__}.calls['inventory']['RETRIES'] must be an "
            "integer of 0 or more.",
        )
    ]
