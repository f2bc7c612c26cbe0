"""Durable events: JetStream consumers, retries with delays, dead letters, replay, idempotency.

Services run in-process (``start_service``) against the session's real nats-server with
JetStream, on the test database; ``tests/test_faults.py`` does the same with real processes.
"""

from __future__ import annotations

import asyncio
import threading
import time

import nats
import pytest
from django.contrib.auth.models import Permission
from django.core.checks import run_checks
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.test.utils import modify_settings
from pydantic import BaseModel

from cliffracer_core import Service, event, get_message_id, processed_once, publish
from cliffracer_core.contrib.durable.consumer import consumer_name
from cliffracer_core.contrib.durable.models import DeadLetter, ProcessedMessage
from cliffracer_core.contrib.durable.relay import prune
from cliffracer_core.core.auth.tokens import session_access_token
from cliffracer_core.core.streams import covers, overlaps, stream_for
from cliffracer_core.testing.plugin import run_async


class Happened(BaseModel):
    id: str
    fail: bool = False


def wait_until(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


@pytest.fixture
def stream(settings, unique_name, nats_server):
    """A stream of its own for the test (subjects ``<name>.>``), with short retry delays."""
    name = unique_name.upper()
    settings.CLIFFRACER = {
        **settings.CLIFFRACER,
        "STREAMS": {name: {"subjects": [f"{unique_name}.>"], "max_age": 600}},
        "DURABLE_RETRY_DELAYS": [0.2, 0.5],
        "DURABLE_ACK_WAIT": 2.0,
    }
    yield name
    run_async(_delete_stream(nats_server.url, name))


async def _delete_stream(url: str, name: str) -> None:
    connection = await nats.connect(url)
    try:
        await connection.jetstream().delete_stream(name)
    except Exception:  # noqa: BLE001  (never created)
        pass
    finally:
        await connection.close()


async def _stream_state(url: str, name: str, consumer: str | None = None):
    connection = await nats.connect(url)
    try:
        js = connection.jetstream()
        info = await js.stream_info(name)
        consumer_info = await js.consumer_info(name, consumer) if consumer else None
        return info, consumer_info
    finally:
        await connection.close()


def recording_service(service_name: str, subject: str, **options):
    """A service whose durable handler records every delivery, failing when asked to."""

    class Recorder(Service):
        name = service_name

        def __init__(self) -> None:
            self.deliveries: list[tuple[str, float, str | None, str | None]] = []
            self.lock = threading.Lock()
            self.broken = True

        @event(f"{subject}.happened", durable=True, **options)
        async def on_happened(self, happened: Happened) -> None:
            with self.lock:
                caller = self.caller.username if self.caller else None
                self.deliveries.append((happened.id, time.monotonic(), caller, get_message_id()))
            if happened.fail and self.broken:
                raise RuntimeError(f"cannot handle {happened.id}")

        def handled(self, event_id: str) -> list[float]:
            with self.lock:
                return [at for id_, at, *_ in self.deliveries if id_ == event_id]

    return Recorder


def test_subject_patterns_cover_and_overlap_as_nats_matches():
    assert covers("orders.>", "orders.created")
    assert covers("orders.>", "orders.*")
    assert covers("orders.*", "orders.created")
    assert not covers("orders.*", "orders.>")
    assert not covers("orders.*", "orders.a.b")
    assert not covers("orders.created", "orders.*")
    assert not covers("orders.>", "orders")
    assert overlaps("orders.*", "orders.created")
    assert overlaps("orders.>", "*.created")
    assert not overlaps("orders.>", "payments.>")
    assert not overlaps("orders.*", "orders.a.b")


def test_publishing_to_a_stream_subject_goes_through_jetstream(stream, unique_name, nats_server):
    assert stream_for(f"{unique_name}.anything") == stream
    assert stream_for(f"{unique_name}_other.x") is None
    publish(f"{unique_name}.happened", Happened(id="1"))
    info, _ = run_async(_stream_state(nats_server.url, stream))
    assert info.state.messages == 1


def test_a_retried_publish_with_the_same_msg_id_is_stored_once(stream, unique_name, nats_server):
    for _ in range(3):
        publish(f"{unique_name}.happened", Happened(id="1"), msg_id="order-1-created")
    publish(f"{unique_name}.happened", Happened(id="2"), msg_id="order-2-created")
    info, _ = run_async(_stream_state(nats_server.url, stream))
    assert info.state.messages == 2


@pytest.mark.django_db(transaction=True)
def test_a_durable_handler_acknowledges_each_event_after_it_succeeds(
    stream, unique_name, start_service, nats_server
):
    running = start_service(recording_service(unique_name, unique_name))
    for number in range(50):
        publish(f"{unique_name}.happened", Happened(id=str(number)), msg_id=f"event-{number}")
    service = running.service
    assert wait_until(lambda: len(service.deliveries) == 50)
    name = consumer_name(unique_name, "on_happened")
    assert wait_until(
        lambda: run_async(_stream_state(nats_server.url, stream, name))[1].num_ack_pending == 0
    )
    _, consumer = run_async(_stream_state(nats_server.url, stream, name))
    assert consumer.num_pending == 0
    assert consumer.num_redelivered == 0
    assert consumer.config.durable_name == name
    # Each handler saw its event's Nats-Msg-Id, and the caller that published it.
    assert sorted(message_id for *_, message_id in service.deliveries) == sorted(
        f"event-{number}" for number in range(50)
    )
    assert {caller for _, _, caller, _ in service.deliveries} == {"system"}
    time.sleep(0.3)
    assert len(service.deliveries) == 50


def test_an_ordered_streams_handler_takes_its_events_one_at_a_time_in_order(
    settings, unique_name, start_service, nats_server
):
    """On an ``ordered`` stream a durable handler is given one event at a time, so that it
    handles them in publish order, even where a later one would finish first."""
    name = unique_name.upper()
    settings.CLIFFRACER = {
        **settings.CLIFFRACER,
        "STREAMS": {name: {"subjects": [f"{unique_name}.>"], "ordered": True}},
    }

    class Sorter(Service):
        def __init__(self) -> None:
            self.handled: list[str] = []

        @event(f"{unique_name}.happened", durable=True)
        async def on_happened(self, happened: Happened) -> None:
            await asyncio.sleep(0.03 if int(happened.id) % 2 == 0 else 0)
            self.handled.append(happened.id)

    Sorter.name = unique_name
    try:
        running = start_service(Sorter)
        for number in range(20):
            publish(f"{unique_name}.happened", Happened(id=str(number)))
        assert wait_until(lambda: len(running.service.handled) == 20)
        assert running.service.handled == [str(number) for number in range(20)]
    finally:
        run_async(_delete_stream(nats_server.url, name))


@pytest.mark.django_db(transaction=True)
def test_two_instances_share_one_consumer(stream, unique_name, start_service):
    service_class = recording_service(unique_name, unique_name)
    first = start_service(service_class)
    second = start_service(service_class)
    for number in range(300):
        publish(f"{unique_name}.happened", Happened(id=str(number)))
    services = (first.service, second.service)
    assert wait_until(lambda: sum(len(s.deliveries) for s in services) == 300)
    time.sleep(0.3)
    handled = sorted(int(id_) for s in services for id_, *_ in s.deliveries)
    assert handled == list(range(300))
    assert all(s.deliveries for s in services)


@pytest.mark.django_db(transaction=True)
def test_a_failing_event_is_retried_with_the_delays_then_becomes_a_dead_letter(
    stream, unique_name, start_service, django_user_model
):
    running = start_service(recording_service(unique_name, unique_name, max_deliveries=3))
    service = running.service
    user = django_user_model.objects.create_user("alice", password="x")
    token = session_access_token(user)
    publish(
        f"{unique_name}.happened",
        Happened(id="bad", fail=True),
        headers={"Authorization": f"Bearer {token}", "X-Correlation-ID": "poison-1"},
    )
    for number in range(20):
        publish(f"{unique_name}.happened", Happened(id=str(number)))
    # Other events flow past the failing one while it waits for its redelivery.
    assert wait_until(lambda: all(service.handled(str(number)) for number in range(20)), 5)
    assert len(service.handled("bad")) < 3
    assert wait_until(lambda: DeadLetter.objects.filter(status="pending").exists(), 10)
    attempts = service.handled("bad")
    assert len(attempts) == 3
    gaps = [later - earlier for earlier, later in zip(attempts, attempts[1:], strict=False)]
    assert 0.2 <= gaps[0] < 0.2 + 0.5, gaps
    assert 0.5 <= gaps[1] < 0.5 + 0.5, gaps
    letter = DeadLetter.objects.get()
    assert letter.status == DeadLetter.Status.PENDING
    assert (letter.service, letter.handler) == (unique_name, "on_happened")
    assert letter.consumer == consumer_name(unique_name, "on_happened")
    assert letter.subject == f"{unique_name}.happened"
    assert letter.attempts == 3
    assert letter.error_type == "RuntimeError"
    assert letter.error_message == "cannot handle bad"
    assert letter.first_failed_at < letter.last_failed_at
    assert letter.correlation_id == "poison-1"
    assert letter.caller == "alice"
    assert "Authorization" not in letter.headers
    assert token not in str(letter.headers)
    assert letter.headers["X-Correlation-ID"] == "poison-1"
    assert '"id":"bad"' in letter.payload.replace(" ", "")
    # Terminated: not delivered again.
    time.sleep(1.0)
    assert len(service.handled("bad")) == 3


@pytest.mark.django_db(transaction=True)
def test_an_event_that_succeeds_on_a_retry_leaves_no_record(stream, unique_name, start_service):
    running = start_service(recording_service(unique_name, unique_name))
    service = running.service
    publish(f"{unique_name}.happened", Happened(id="flaky", fail=True))
    assert wait_until(lambda: DeadLetter.objects.filter(status="retrying").exists(), 5)
    service.broken = False
    assert wait_until(lambda: len(service.handled("flaky")) == 2, 5)
    assert wait_until(lambda: not DeadLetter.objects.exists(), 5)


@pytest.mark.django_db(transaction=True)
def test_a_body_the_model_rejects_is_a_dead_letter_at_once(stream, unique_name, start_service):
    running = start_service(recording_service(unique_name, unique_name))
    publish(f"{unique_name}.happened", {"no_id": True})
    assert wait_until(lambda: DeadLetter.objects.filter(status="pending").exists(), 5)
    letter = DeadLetter.objects.get()
    assert letter.attempts == 1
    assert letter.error_type.endswith("InvalidRequest")
    assert running.service.deliveries == []


def dead_letter_of(service, unique_name: str) -> DeadLetter:
    publish(f"{unique_name}.happened", Happened(id="bad", fail=True), msg_id="original-id")
    assert wait_until(lambda: DeadLetter.objects.filter(status="pending").exists(), 10)
    return DeadLetter.objects.get()


@pytest.fixture
def operator(django_user_model, client):
    """A staff user who may view and replay dead letters, logged in to the admin."""
    user = django_user_model.objects.create_user("operator", password="x", is_staff=True)
    user.user_permissions.add(
        *Permission.objects.filter(
            content_type__app_label="durable",
            codename__in=["view_deadletter", "replay_deadletter", "change_deadletter"],
        )
    )
    client.force_login(user)
    return client


@pytest.mark.django_db(transaction=True)
def test_replay_from_the_admin_processes_the_event_once_the_handler_is_fixed(
    stream, unique_name, start_service, operator
):
    failing = recording_service(unique_name, unique_name, max_deliveries=2)

    # A second durable consumer of the same subject, which handled the event the first time,
    # and a plain handler of it.
    class Bystander(Service):
        name = f"{unique_name}_bystander"
        seen: list[str] = []
        plain: list[str] = []

        @event(f"{unique_name}.happened", durable=True)
        async def on_happened(self, happened: Happened) -> None:
            Bystander.seen.append(happened.id)

        @event(f"{unique_name}.happened")
        async def on_plain(self, happened: Happened) -> None:
            Bystander.plain.append(happened.id)

    running = start_service(failing)
    start_service(Bystander)
    letter = dead_letter_of(running.service, unique_name)
    assert Bystander.seen == ["bad"]
    assert wait_until(lambda: Bystander.plain == ["bad"])
    running.service.broken = False

    response = operator.post(
        "/admin/durable/deadletter/",
        {"action": "replay", "_selected_action": [letter.pk]},
        follow=True,
    )
    assert response.status_code == 200
    assert "Replayed 1 dead letter" in response.content.decode()
    assert wait_until(lambda: len(running.service.handled("bad")) == 3, 5)
    letter.refresh_from_db()
    assert letter.status == DeadLetter.Status.REPLAYED
    assert letter.resolved_by == "operator"
    assert letter.replay_message_id
    # The replay ran as the system identity, and kept the original message id.
    *_, caller, message_id = running.service.deliveries[-1]
    assert (caller, message_id) == ("system", "original-id")
    # The other handlers did not handle it again.
    time.sleep(0.5)
    assert Bystander.seen == ["bad"]
    assert Bystander.plain == ["bad"]
    assert len(running.service.handled("bad")) == 3
    # A second replay of the same letter does nothing.
    response = operator.post(
        "/admin/durable/deadletter/",
        {"action": "replay", "_selected_action": [letter.pk]},
        follow=True,
    )
    assert "not pending" in response.content.decode()


@pytest.mark.django_db(transaction=True)
def test_discard_from_the_admin_marks_the_dead_letter(stream, unique_name, start_service, operator):
    running = start_service(recording_service(unique_name, unique_name, max_deliveries=1))
    letter = dead_letter_of(running.service, unique_name)
    response = operator.post(
        "/admin/durable/deadletter/",
        {"action": "discard", "_selected_action": [letter.pk]},
        follow=True,
    )
    assert "Discarded 1 dead letter" in response.content.decode()
    letter.refresh_from_db()
    assert letter.status == DeadLetter.Status.DISCARDED
    assert letter.resolved_by == "operator"
    # The list filters by service, handler, subject and status.
    listing = operator.get(
        "/admin/durable/deadletter/", {"status": "discarded", "service": unique_name}
    )
    assert listing.status_code == 200
    assert f"{unique_name}.happened" in listing.content.decode()


@pytest.mark.django_db(transaction=True)
def test_replay_needs_the_permission(stream, unique_name, start_service, client, django_user_model):
    running = start_service(recording_service(unique_name, unique_name, max_deliveries=1))
    letter = dead_letter_of(running.service, unique_name)
    viewer = django_user_model.objects.create_user("viewer", password="x", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_deadletter"))
    client.force_login(viewer)
    client.post("/admin/durable/deadletter/", {"action": "replay", "_selected_action": [letter.pk]})
    letter.refresh_from_db()
    assert letter.status == DeadLetter.Status.PENDING


def test_a_durable_handler_outside_every_stream_is_a_startup_error(
    settings, unique_name, start_service
):
    class Lost(Service):
        name = unique_name

        @event(f"{unique_name}_nowhere.happened", durable=True)
        async def on_happened(self, happened: Happened) -> None: ...

    with pytest.raises(ImproperlyConfigured, match="no declared stream holds that subject"):
        start_service(Lost)


def test_decorator_arguments_are_checked():
    with pytest.raises(ValueError, match="durable handlers only"):
        event("a.b", max_deliveries=3)
    with pytest.raises(ValueError, match="not broadcast"):
        event("a.b", durable=True, broadcast=True)
    with pytest.raises(ValueError, match="positive integer"):
        event("a.b", durable=True, max_deliveries=0)
    with pytest.raises(TypeError, match="plain def handler"):

        @event("a.b", durable=True, idempotent=True)
        async def handler(self, happened: Happened) -> None: ...


@pytest.mark.django_db(transaction=True)
def test_processed_once_records_the_message_with_the_block(unique_name):
    with processed_once("m-1", consumer=unique_name) as first:
        assert first
    with processed_once("m-1", consumer=unique_name) as first:
        assert not first
    with pytest.raises(LookupError), processed_once("m-2", consumer=unique_name) as first:
        assert first
        raise LookupError
    # Rolled back with the block: the next delivery is the first again.
    with processed_once("m-2", consumer=unique_name) as first:
        assert first
    # Inside an outer transaction, a duplicate leaves it usable.
    with transaction.atomic():
        with processed_once("m-1", consumer=unique_name) as first:
            assert not first
        assert ProcessedMessage.objects.filter(consumer=unique_name).count() == 2
    with pytest.raises(RuntimeError, match="needs a message id"), processed_once():
        pass


@pytest.mark.django_db(transaction=True)
def test_processed_messages_past_their_retention_are_pruned(settings, unique_name):
    from django.utils import timezone

    settings.CLIFFRACER = {**settings.CLIFFRACER, "PROCESSED_MESSAGE_RETENTION": 60.0}
    now = timezone.now()
    ProcessedMessage.objects.create(
        consumer=unique_name, message_id="old", processed_at=now - timezone.timedelta(seconds=61)
    )
    ProcessedMessage.objects.create(consumer=unique_name, message_id="new", processed_at=now)
    assert prune()["processed"] == 1
    assert list(ProcessedMessage.objects.values_list("message_id", flat=True)) == ["new"]


def check_ids() -> set[str]:
    return {message.id for message in run_checks() if message.id.startswith("cliffracer.E0")}


def test_system_checks_of_streams_and_durable_settings(settings, monkeypatch):
    base = dict(settings.CLIFFRACER)
    settings.CLIFFRACER = {**base, "STREAMS": {"BAD NAME": {"subjects": ["a.>"]}}}
    assert "cliffracer.E018" in check_ids()
    settings.CLIFFRACER = {**base, "STREAMS": {"A": {"subjects": ["a.>"], "colour": "red"}}}
    assert "cliffracer.E018" in check_ids()
    settings.CLIFFRACER = {
        **base,
        "STREAMS": {"A": {"subjects": ["a.>"]}, "B": {"subjects": ["a.b"]}},
    }
    assert "cliffracer.E020" in check_ids()
    settings.CLIFFRACER = {**base, "DURABLE_RETRY_DELAYS": "soon", "DURABLE_MAX_DELIVERIES": 0}
    assert "cliffracer.E022" in check_ids()
    settings.CLIFFRACER = base
    with modify_settings(INSTALLED_APPS={"append": "tests.durableapp"}):
        from tests.durableapp.service import DurableTestService

        assert not {"cliffracer.E019", "cliffracer.E021"} & check_ids()
        # Declared in the setting too, differently: which one holds?
        settings.CLIFFRACER = {
            **base,
            "STREAMS": {"DURABLETEST": {"subjects": ["durabletest.>"], "max_age": 60}},
        }
        assert "cliffracer.E019" in check_ids()
        settings.CLIFFRACER = base
        # Without its stream, the service's durable handlers hold subjects no stream holds.
        monkeypatch.setattr(DurableTestService, "streams", {})
        assert "cliffracer.E021" in check_ids()


def test_the_streams_command_creates_the_declared_streams_and_lists_them(nats_server):
    import os
    import subprocess
    import sys

    from cliffracer_core.testing.plugin import project_root

    # tests.durableapp's service declares DURABLETEST itself; no setting names it.
    environment = dict(
        os.environ, NATS_URL=nats_server.url, DJANGO_SETTINGS_MODULE="tests.durable_settings"
    )

    def streams(*arguments: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "manage.py", "streams", *arguments],
            cwd=project_root(),
            env=environment,
            capture_output=True,
            text=True,
            timeout=60,
        )

    run_async(_delete_stream(nats_server.url, "DURABLETEST"))
    listed = streams("--list")
    assert listed.returncode == 1, listed.stderr
    assert "missing" in listed.stdout
    created = streams()
    assert created.returncode == 0, created.stderr
    line = next(line for line in created.stdout.splitlines() if line.startswith("DURABLETEST"))
    assert "durabletest.>" in line
    assert "service durabletest" in line
    assert line.endswith("created")
    listed = streams("--list")
    assert listed.returncode == 0, listed.stderr
    assert next(
        line for line in listed.stdout.splitlines() if line.startswith("DURABLETEST")
    ).endswith("ok")
    run_async(_delete_stream(nats_server.url, "DURABLETEST"))


@pytest.mark.django_db(transaction=True)
def test_a_handler_running_longer_than_the_ack_wait_is_not_given_the_event_twice(
    stream, settings, unique_name, start_service
):
    settings.CLIFFRACER = {**settings.CLIFFRACER, "DURABLE_ACK_WAIT": 1.0}
    started: list[str] = []
    finished: list[str] = []

    class Slow(Service):
        name = unique_name

        @event(f"{unique_name}.happened", durable=True)
        async def on_happened(self, happened: Happened) -> None:
            started.append(happened.id)
            await asyncio.sleep(2.5)
            finished.append(happened.id)

    start_service(Slow)
    publish(f"{unique_name}.happened", Happened(id="slow"))
    assert wait_until(lambda: finished, 6)
    time.sleep(1.5)
    assert started == ["slow"]


@pytest.mark.django_db(transaction=True)
def test_stopping_lets_durable_handlers_finish_and_acknowledge(
    stream, unique_name, start_service, nats_server
):
    finished: list[str] = []

    class Draining(Service):
        name = unique_name

        @event(f"{unique_name}.happened", durable=True)
        async def on_happened(self, happened: Happened) -> None:
            await asyncio.sleep(0.5)
            finished.append(happened.id)

    first = start_service(Draining)
    for number in range(5):
        publish(f"{unique_name}.happened", Happened(id=str(number)))
    time.sleep(0.2)
    first.stop()
    assert sorted(finished) == [str(number) for number in range(5)]
    # A new instance is not given them again: they were acknowledged before the old one left.
    start_service(Draining)
    time.sleep(1.0)
    assert len(finished) == 5
    name = consumer_name(unique_name, "on_happened")
    _, consumer = run_async(_stream_state(nats_server.url, stream, name))
    assert (consumer.num_pending, consumer.num_ack_pending) == (0, 0)


class Padded(BaseModel):
    id: str
    fail: bool = False
    padding: str = ""


def padded_service(service_name: str, subject: str, **options):
    class Padder(Service):
        name = service_name

        def __init__(self) -> None:
            self.sizes: list[int] = []
            self.broken = True

        @event(f"{subject}.padded", durable=True, **options)
        async def on_padded(self, event: Padded) -> None:
            self.sizes.append(len(event.padding))
            if event.fail and self.broken:
                raise RuntimeError("cannot handle it")

    return Padder


@pytest.mark.django_db(transaction=True)
def test_a_dead_letter_keeps_the_start_of_a_big_event_and_a_replay_reads_it_all(
    stream, unique_name, start_service, settings
):
    settings.CLIFFRACER = {**settings.CLIFFRACER, "DEAD_LETTER_MAX_PAYLOAD_BYTES": 1000}
    running = start_service(padded_service(unique_name, unique_name, max_deliveries=1))
    publish(f"{unique_name}.padded", Padded(id="big", fail=True, padding="é" * 200_000))
    assert wait_until(lambda: DeadLetter.objects.filter(status="pending").exists(), 10)
    letter = DeadLetter.objects.get()
    assert len(letter.payload.encode()) <= 1000
    assert letter.payload_encoding == "utf-8"  # cut at a whole character
    assert letter.payload_size > 400_000
    running.service.broken = False
    from cliffracer_core.contrib.durable.dead_letters import replay

    assert replay([letter], by="operator") == (1, [])
    assert wait_until(lambda: running.service.sizes == [200_000, 200_000], 10)


@pytest.mark.django_db(transaction=True)
def test_a_cut_dead_letter_is_not_replayed_where_streams_keep_no_history(
    stream, unique_name, start_service, settings, monkeypatch
):
    """On a backend without ``stream_history`` (RabbitMQ) the rest of a cut body cannot be read
    back: the replay says so and the letter stays pending, never a replay of half an event."""
    from cliffracer_core.contrib.durable.dead_letters import replay
    from cliffracer_core.transports.nats import NatsTransport

    settings.CLIFFRACER = {**settings.CLIFFRACER, "DEAD_LETTER_MAX_PAYLOAD_BYTES": 1000}
    running = start_service(padded_service(unique_name, unique_name, max_deliveries=1))
    publish(f"{unique_name}.padded", Padded(id="big", fail=True, padding="é" * 2000))
    assert wait_until(lambda: DeadLetter.objects.filter(status="pending").exists(), 10)
    running.service.broken = False

    class WithoutHistory(type(NatsTransport.features)):
        stream_history = False

    monkeypatch.setattr(NatsTransport, "features", WithoutHistory())
    replayed, [error] = replay([DeadLetter.objects.get()], by="operator")
    assert replayed == 0
    assert "keeps no stream history" in error and "DEAD_LETTER_MAX_PAYLOAD_BYTES" in error
    assert DeadLetter.objects.get().status == "pending"
    assert running.service.sizes == [2000]


@pytest.mark.django_db(transaction=True)
def test_dead_letter_rows_are_rate_limited_and_none_is_lost(
    stream, unique_name, start_service, settings
):
    settings.CLIFFRACER = {**settings.CLIFFRACER, "DEAD_LETTERS_PER_SECOND": 4.0}
    start_service(recording_service(unique_name, unique_name))
    started = time.monotonic()
    for number in range(20):
        publish(f"{unique_name}.happened", {"not_an_id": number})  # junk: dead at once
    time.sleep(1.0)
    # A burst of 4, then 4 a second: a flood of junk writes a trickle, not a flood, of rows.
    written = DeadLetter.objects.count()
    assert written <= 4 + 4 * (time.monotonic() - started) + 1
    assert wait_until(lambda: DeadLetter.objects.count() == 20, 15)
    assert set(DeadLetter.objects.values_list("status", flat=True)) == {"pending"}


@pytest.mark.django_db(transaction=True)
def test_an_event_without_a_token_is_refused_and_leaves_no_dead_letter(
    stream, unique_name, start_service, nats_server
):
    running = start_service(recording_service(unique_name, unique_name))

    async def anonymous() -> None:
        connection = await nats.connect(nats_server.url)
        try:
            await connection.jetstream().publish(f"{unique_name}.happened", b'{"id": "x"}')
        finally:
            await connection.close()

    run_async(anonymous())
    from cliffracer_core.contrib.durable.extension import DurableHandlers

    consumer = running.runner.extension(DurableHandlers).consumers[0]
    assert wait_until(lambda: consumer.refused == 1)
    assert running.service.deliveries == []
    assert not DeadLetter.objects.exists()
    _, info = run_async(_stream_state(nats_server.url, stream, consumer.name))
    assert info.num_ack_pending == 0 and info.num_pending == 0


def test_streams_keep_at_most_a_gigabyte_unless_declared_otherwise(stream, unique_name):
    from cliffracer_core.core.streams import declared_streams
    from cliffracer_core.transports.nats.jetstream import stream_config

    assert declared_streams()[stream].options["max_bytes"] == 1024**3
    assert stream_config(declared_streams()[stream]).max_bytes == 1024**3


@pytest.mark.django_db(transaction=True)
def test_processed_records_are_kept_as_long_as_their_stream_may_deliver_again(settings):
    from django.utils import timezone

    from cliffracer_core.contrib.durable.relay import processed_retentions

    # The example's payments handler reads ORDERS, which keeps its events 7 days: a consumer
    # created again could get any of them again, so its records stay that long.
    settings.CLIFFRACER = {**settings.CLIFFRACER, "PROCESSED_MESSAGE_RETENTION": 60.0}
    assert processed_retentions()["payments-on_order_created"] == 7 * 86400.0
    old = timezone.now() - timezone.timedelta(seconds=3600)
    ProcessedMessage.objects.create(
        consumer="payments-on_order_created", message_id="kept", processed_at=old
    )
    ProcessedMessage.objects.create(consumer="a-script", message_id="pruned", processed_at=old)
    assert prune()["processed"] == 1
    assert list(ProcessedMessage.objects.values_list("message_id", flat=True)) == ["kept"]
    # A stream that keeps its messages for ever keeps its handlers' records for ever.
    settings.CLIFFRACER = {
        **settings.CLIFFRACER,
        "STREAMS": {"ORDERS": {"subjects": ["orders.>"], "max_age": 0}},
    }
    assert processed_retentions()["payments-on_order_created"] is None
    assert "cliffracer.W024" in {message.id for message in run_checks()}
