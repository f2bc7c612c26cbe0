"""Queue groups and events: shared work, broadcast, publish from anywhere."""

import threading
import time

from cliffracer_core import Service, call, event, get_subject, publish, rpc
from tests.models import Happened, Tagged, Wait


def wait_until(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def make_service(service_name: str, subject: str) -> type[Service]:
    class Listener(Service):
        name = service_name

        def __init__(self) -> None:
            self.shared: list[Happened] = []
            self.everyone: list[Happened] = []
            self.subjects: list[str | None] = []
            self.lock = threading.Lock()

        @rpc
        async def which(self, request: Wait) -> Tagged:
            return Tagged(tag=request.tag, instance=str(id(self)))

        @event(f"{subject}.*")
        async def on_shared(self, happened: Happened) -> None:
            self.shared.append(happened)
            self.subjects.append(get_subject())

        @event(f"{subject}.>", broadcast=True)
        def on_everyone(self, happened: Happened) -> None:
            with self.lock:
                self.everyone.append(happened)

    return Listener


def test_two_instances_share_requests_and_each_is_answered_once(start_service, unique_name):
    service_class = make_service(unique_name, unique_name + "_events")
    first = start_service(service_class)
    second = start_service(service_class)
    replies = [call(f"{unique_name}.which", {"tag": i}, reply=Tagged) for i in range(200)]
    assert [reply.tag for reply in replies] == list(range(200))
    by_instance = {}
    for reply in replies:
        by_instance[reply.instance] = by_instance.get(reply.instance, 0) + 1
    assert set(by_instance) == {str(id(first.service)), str(id(second.service))}
    assert sum(by_instance.values()) == 200
    counted = sum(running.runner.counters["which"].num_requests for running in (first, second))
    assert counted == 200


def test_events_are_shared_by_default_and_broadcast_on_request(start_service, unique_name):
    subject = unique_name + "_events"
    service_class = make_service(unique_name, subject)
    first = start_service(service_class)
    second = start_service(service_class)
    for number in range(50):
        publish(f"{subject}.happened", Happened(what="thing", number=number))
    services = (first.service, second.service)
    assert wait_until(lambda: sum(len(s.everyone) for s in services) == 100)
    assert wait_until(lambda: sum(len(s.shared) for s in services) == 50)
    # Broadcast: every instance saw every event.
    for service in services:
        assert sorted(h.number for h in service.everyone) == list(range(50))
    # Shared: each event handled exactly once across the instances.
    numbers = sorted(h.number for s in services for h in s.shared)
    assert numbers == list(range(50))
    time.sleep(0.2)
    assert sum(len(s.shared) for s in services) == 50


def test_wildcards_match_as_nats_does(start_service, unique_name):
    subject = unique_name + "_events"
    running = start_service(make_service(unique_name, subject))
    publish(f"{subject}.one", {"what": "single token"})
    publish(f"{subject}.one.two", {"what": "two tokens"})
    service = running.service
    assert wait_until(lambda: len(service.everyone) == 2)
    assert wait_until(lambda: len(service.shared) == 1)
    assert service.shared[0].what == "single token"
    assert service.subjects == [f"{subject}.one"]


def test_a_bad_event_is_logged_and_the_service_keeps_going(start_service, unique_name, caplog):
    subject = unique_name + "_events"
    running = start_service(make_service(unique_name, subject))
    publish(f"{subject}.bad", {"number": "not a number"})
    publish(f"{subject}.good", {"what": "fine"})
    service = running.service
    assert wait_until(lambda: len(service.shared) == 1)
    assert service.shared[0].what == "fine"
    assert wait_until(lambda: running.runner.events_failed == 2)
    assert call(f"{unique_name}.which", {"tag": 1}, reply=Tagged).tag == 1


def test_events_from_handlers_carry_the_correlation_id(start_service, unique_name):
    subject = unique_name + "_chain"
    seen: list[tuple[str, str | None]] = []

    from cliffracer_core import get_correlation_id

    class Chain(Service):
        name = unique_name

        @rpc
        async def start(self, request: Wait) -> None:
            await self.publish(f"{subject}.started", Happened(what="started"))

        @event(f"{subject}.started")
        def on_started(self, happened: Happened) -> None:
            # A def handler publishes with the sync client, onward in the same chain.
            publish(f"{subject}.finished", Happened(what="finished"))
            seen.append((happened.what, get_correlation_id()))

        @event(f"{subject}.finished")
        async def on_finished(self, happened: Happened) -> None:
            seen.append((happened.what, get_correlation_id()))

    start_service(Chain)
    call(f"{unique_name}.start", {}, headers={"X-Correlation-ID": "chain-7"})
    assert wait_until(lambda: len(seen) == 2)
    assert sorted(seen) == [("finished", "chain-7"), ("started", "chain-7")]
