"""Durable events under faults, with real processes: a consuming service killed with SIGKILL,
nats-server restarted, a publisher killed between its commit and its publish, a dead letter
replayed from the admin.

The service is ``tests/durableapp`` run by ``manage.py runservice`` with
``tests/durable_settings.py`` (ack wait 2 s, retry delays 0.2 and 0.5 s).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import threading
import time

import nats
import pytest
from django.contrib.auth.models import Permission
from django.db import connection
from django.db.models import Count

from cliffracer_core import RemoteError, publish
from cliffracer_core.contrib.durable.models import DeadLetter, OutboxMessage
from cliffracer_core.core.auth.tokens import session_access_token
from cliffracer_core.core.client import apublish
from cliffracer_core.testing.plugin import database_url, project_root, run_async
from tests.durableapp.models import SideEffect

SETTINGS = {"DJANGO_SETTINGS_MODULE": "tests.durable_settings"}
STREAM = "DURABLETEST"


def wait_until(condition, timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


@pytest.fixture
def durabletest(settings, transactional_db, nats_server):
    """The durabletest service's stream known here too, and its side-effect table.

    The test process does not install ``tests.durableapp``, so it declares the stream in its
    settings (as the service does) and makes the table itself.
    """
    settings.CLIFFRACER = {
        **settings.CLIFFRACER,
        "STREAMS": {STREAM: {"subjects": ["durabletest.>"], "max_age": 3600}},
    }
    with connection.schema_editor() as editor:
        editor.create_model(SideEffect)
    yield
    with connection.schema_editor() as editor:
        editor.delete_model(SideEffect)
    run_async(_delete_stream(nats_server.url))


async def _delete_stream(url: str) -> None:
    client = await nats.connect(url)
    try:
        await client.jetstream().delete_stream(STREAM)
    except Exception:  # noqa: BLE001
        pass
    finally:
        await client.close()


async def _stream_messages(url: str) -> int:
    client = await nats.connect(url)
    try:
        return (await client.jetstream().stream_info(STREAM)).state.messages
    except nats.js.errors.NotFoundError:
        return 0
    finally:
        await client.close()


def side_effects(handler: str) -> tuple[int, int]:
    """(rows, distinct event ids) the handler wrote."""
    rows = SideEffect.objects.filter(handler=handler)
    return rows.count(), rows.values("event_id").distinct().count()


def duplicated(handler: str) -> int:
    """Events the handler wrote more than one side effect for."""
    rows = SideEffect.objects.filter(handler=handler).values("event_id")
    return rows.annotate(times=Count("id")).filter(times__gt=1).count()


class Publisher(threading.Thread):
    """Publish ``total`` durable events with their own ids, retrying each until JetStream
    acknowledges it (the same Nats-Msg-Id every time, as a careful publisher does)."""

    def __init__(self, total: int, *, in_flight: int = 50, per_second: float = 1500) -> None:
        super().__init__(daemon=True)
        self.total = total
        self.in_flight = in_flight
        self.per_second = per_second
        self.acknowledged = 0
        self.retries = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            run_async(self.publish_all())
        except BaseException as error:  # noqa: BLE001  (reported by the test)
            self.error = error

    async def publish_all(self) -> None:
        numbers = iter(range(self.total))
        started = time.monotonic()

        async def worker() -> None:
            for number in numbers:
                # Paced, so that the faults below happen while events are being published.
                ahead = number / self.per_second - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
                while True:
                    try:
                        await apublish("durabletest.work", {"id": str(number)}, msg_id=f"w{number}")
                        break
                    except RemoteError:
                        self.retries += 1
                        await asyncio.sleep(0.2)
                self.acknowledged += 1

        await asyncio.gather(*(worker() for _ in range(self.in_flight)))


def test_ten_thousand_durable_events_survive_two_kills_and_a_server_restart(
    durabletest, runservice_process, nats_server
):
    total = 10_000
    started = time.monotonic()
    # Persistent database connections, as a production deployment would have; one line per
    # event in the access log would cost more than the event.
    environment = {**SETTINGS, "CONN_MAX_AGE": "60", "ACCESS_LOG_LEVEL": "WARNING"}
    services = [runservice_process("durabletest", **environment)]
    service = services[-1]
    publisher = Publisher(total)
    publisher.start()
    faults = []

    def at(count: int) -> None:
        assert wait_until(lambda: publisher.acknowledged >= count or publisher.error, 60)
        assert publisher.error is None, publisher.error

    at(1500)
    service.process.kill()  # SIGKILL: no goodbye, no acknowledgements of what it was doing
    faults.append(f"SIGKILL at {publisher.acknowledged} published, {side_effects('work')[0]} done")
    service.wait()
    service = runservice_process("durabletest", **environment)
    services.append(service)
    at(4000)
    faults.append(
        f"nats-server restart at {publisher.acknowledged} published, {side_effects('work')[0]} done"
    )
    nats_server.restart()
    at(7000)
    service.process.kill()
    faults.append(f"SIGKILL at {publisher.acknowledged} published, {side_effects('work')[0]} done")
    service.wait()
    service = runservice_process("durabletest", **environment)
    services.append(service)
    publisher.join(60)
    assert publisher.error is None, publisher.error
    assert publisher.acknowledged == total
    wait_until(lambda: side_effects("work")[0] >= total, 90, interval=0.25)
    time.sleep(3)  # anything redelivered late would show up as a duplicate now
    rows, distinct = side_effects("work")
    duplicates = duplicated("work")
    stored = run_async(_stream_messages(nats_server.url))
    # Events whose first successful run was a redelivery (the kills, the restart), and
    # redeliveries of events already processed, which processed_once turned into no-ops.
    redelivered = SideEffect.objects.filter(handler="work", delivery__gt=1).count()
    skipped = sum(process.output().count("was processed before; skipped") for process in services)
    summary = (
        f"published {publisher.acknowledged} ({publisher.retries} publish retries), stored in "
        f"the stream {stored}, side effects {rows}, distinct events {distinct}, events with "
        f"duplicate side effects {duplicates}; {redelivered} events first processed on a "
        f"redelivery, {skipped} redeliveries of processed events skipped; "
        f"{time.monotonic() - started:.1f}s; faults: " + "; ".join(faults)
    )
    print("\n" + summary)
    assert stored == total, summary
    assert (rows, distinct, duplicates) == (total, total, 0), summary
    assert not DeadLetter.objects.exists(), summary


def test_an_event_committed_by_a_publisher_killed_before_publishing_still_arrives(
    durabletest, runservice_process, nats_server, tmp_path
):
    # A process that commits an outbox row and is killed before anything publishes it: it
    # runs no relay, and no runservice process (whose relay would) is up yet.
    script = textwrap.dedent(
        """
        import time
        import django
        django.setup()
        from django.db import transaction
        from cliffracer_core import publish_on_commit
        with transaction.atomic():
            publish_on_commit("durabletest.work", {"id": "outbox-1"})
        print("committed", flush=True)
        time.sleep(120)
        """
    )
    environment = dict(
        os.environ, NATS_URL=nats_server.url, DATABASE_URL=database_url(), **SETTINGS
    )
    publisher = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=project_root(),
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert publisher.stdout.readline().strip() == "committed"
    finally:
        publisher.kill()
        publisher.wait()
    row = OutboxMessage.objects.get()
    assert row.sent_at is None
    assert run_async(_stream_messages(nats_server.url)) == 0
    # A transaction that rolls back leaves nothing for the relay.
    from django.db import transaction

    from cliffracer_core import publish_on_commit

    with pytest.raises(ValueError), transaction.atomic():
        publish_on_commit("durabletest.work", {"id": "rolled-back"})
        raise ValueError
    # The next relay to run (the one in any runservice process) publishes it.
    runservice_process("durabletest", **SETTINGS)
    assert wait_until(lambda: side_effects("work") == (1, 1), 15)
    assert SideEffect.objects.get().event_id == "outbox-1"
    row.refresh_from_db()
    assert row.sent_at is not None
    # A commit here, in a process without a relay, wakes the service's relay over NATS long
    # before its 30-second poll.
    committed = time.monotonic()
    with transaction.atomic():
        publish_on_commit("durabletest.work", {"id": "outbox-2"})
    assert wait_until(lambda: side_effects("work") == (2, 2), 10)
    assert time.monotonic() - committed < 5
    time.sleep(1)
    assert not SideEffect.objects.filter(event_id="rolled-back").exists()
    assert run_async(_stream_messages(nats_server.url)) == 2


def test_a_dead_letter_replayed_from_the_admin_is_processed_once_fixed(
    durabletest, runservice_process, tmp_path, django_user_model, client
):
    broken = tmp_path / "broken"
    broken.touch()
    runservice_process("durabletest", DURABLETEST_BROKEN=str(broken), **SETTINGS)
    customer = django_user_model.objects.create_user("customer", password="x")
    publish(
        "durabletest.flaky",
        {"id": "poison"},
        headers={"Authorization": f"Bearer {session_access_token(customer)}"},
    )
    publish("durabletest.work", {"id": "healthy"})
    assert wait_until(lambda: DeadLetter.objects.filter(status="pending").exists(), 15)
    letter = DeadLetter.objects.get()
    assert (letter.service, letter.handler, letter.attempts) == ("durabletest", "on_flaky", 3)
    assert letter.error_type == "RuntimeError"
    assert letter.caller == "customer"
    assert "Authorization" not in letter.headers
    assert side_effects("work") == (1, 1)  # the other handler went on
    assert side_effects("flaky") == (0, 0)

    broken.unlink()  # the fix is deployed
    operator = django_user_model.objects.create_user("operator", password="x", is_staff=True)
    operator.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_deadletter", "replay_deadletter"])
    )
    client.force_login(operator)
    response = client.post(
        "/admin/durable/deadletter/",
        {"action": "replay", "_selected_action": [letter.pk]},
        follow=True,
    )
    assert "Replayed 1 dead letter" in response.content.decode()
    assert wait_until(lambda: side_effects("flaky") == (1, 1), 10)
    effect = SideEffect.objects.get(handler="flaky")
    # The replay ran as the system identity, on its first delivery.
    assert (effect.event_id, effect.caller, effect.delivery) == ("poison", "system", 1)
    letter.refresh_from_db()
    assert (letter.status, letter.resolved_by) == ("replayed", "operator")
    time.sleep(1)
    assert side_effects("flaky") == (1, 1)
