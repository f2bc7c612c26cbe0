"""Handlers run concurrently, up to the service's bound."""

import asyncio
import threading

import pytest
from django.test import override_settings

from cliffracer_core import RemoteError, Service, acall, rpc
from cliffracer_core.testing.plugin import run_async
from tests.models import Tagged, Wait


def make_service(service_name: str, expected: int) -> type[Service]:
    class Gate(Service):
        """Each handler waits until ``expected`` handlers are inside at once."""

        name = service_name

        def __init__(self) -> None:
            self.active = 0
            self.peak = 0
            self.all_in = asyncio.Event()
            self.lock = threading.Lock()
            self.barrier = threading.Barrier(expected, timeout=10)

        @rpc
        async def gate(self, request: Wait) -> Tagged:
            self.active += 1
            self.peak = max(self.peak, self.active)
            if self.active >= expected:
                self.all_in.set()
            try:
                # Times out (an error reply) unless `expected` requests run at once.
                await asyncio.wait_for(self.all_in.wait(), timeout=10)
                await asyncio.sleep(request.seconds)
            finally:
                self.active -= 1
            return Tagged(tag=request.tag)

        @rpc
        def gate_in_thread(self, request: Wait) -> Tagged:
            with self.lock:
                self.active += 1
                self.peak = max(self.peak, self.active)
            try:
                self.barrier.wait()
            finally:
                with self.lock:
                    self.active -= 1
            return Tagged(tag=request.tag)

    return Gate


async def call_many(target: str, count: int, seconds: float = 0.05) -> list[int]:
    replies = await asyncio.gather(
        *(acall(target, {"tag": tag, "seconds": seconds}, timeout=20) for tag in range(count))
    )
    return [reply["tag"] for reply in replies]


def test_slow_async_handlers_run_concurrently(start_service, unique_name):
    running = start_service(make_service(unique_name, expected=50))
    assert run_async(call_many(f"{unique_name}.gate", 50)) == list(range(50))
    assert running.service.peak == 50
    assert running.runner.counters["gate"].num_errors == 0


def test_def_handlers_run_in_parallel_threads(start_service, unique_name):
    running = start_service(make_service(unique_name, expected=8), threads=8)
    assert run_async(call_many(f"{unique_name}.gate_in_thread", 8)) == list(range(8))
    assert running.service.peak == 8


def test_concurrency_is_bounded(start_service, unique_name):
    # With a bound of 5, a gate that needs 6 handlers inside at once can never open.
    running = start_service(make_service(unique_name, expected=6), concurrency=5)
    service = running.service

    async def attempt():
        tasks = [
            asyncio.ensure_future(acall(f"{unique_name}.gate", {"tag": i}, timeout=3))
            for i in range(6)
        ]
        await asyncio.sleep(1.0)
        peak = service.peak
        service.all_in.set()  # let them all finish
        results = await asyncio.gather(*tasks, return_exceptions=True)
        return peak, results

    peak, results = run_async(attempt())
    assert peak == 5
    assert all(not isinstance(result, RemoteError) for result in results)
    assert sorted(result["tag"] for result in results) == list(range(6))


@pytest.mark.parametrize("concurrency", [1, 3])
def test_runner_rejects_nothing_it_cannot_run_yet(start_service, unique_name, concurrency):
    # Requests beyond the bound wait their turn (up to MAX_WAITING_REQUESTS, at least 100 an
    # endpoint); none is lost or refused.
    running = start_service(make_service(unique_name, expected=1), concurrency=concurrency)
    assert run_async(call_many(f"{unique_name}.gate", 30, seconds=0.01)) == list(range(30))
    assert running.service.peak <= concurrency


def test_beyond_the_waiting_line_requests_are_refused_at_once(start_service, unique_name):
    with override_settings(CLIFFRACER={"MAX_WAITING_REQUESTS": 5}):
        running = start_service(make_service(unique_name, expected=1), concurrency=1)

    async def flood() -> list:
        return await asyncio.gather(
            *(
                acall(f"{unique_name}.gate", {"tag": tag, "seconds": 0.2}, timeout=20)
                for tag in range(20)
            ),
            return_exceptions=True,
        )

    results = run_async(flood())
    answered = [result["tag"] for result in results if isinstance(result, dict)]
    refused = [result for result in results if isinstance(result, RemoteError)]
    # One runs, five wait their turn, the other fourteen hear 503 at once.
    assert len(answered) == 6
    assert len(refused) == 14
    assert {(error.code, error.type) for error in refused} == {(503, "overloaded")}
    assert running.runner.shed == {"gate": 14}
    assert running.runner.stats_data()["gate"]["shed"] == 14
