"""The transactional outbox: publish_on_commit, the relay, its wake-ups and its claims."""

from __future__ import annotations

import asyncio
import time

import nats
import pytest
from django.db import transaction
from django.utils import timezone
from pydantic import BaseModel

from cliffracer_core import Service, event, publish_on_commit
from cliffracer_core.contrib.durable.models import OutboxMessage
from cliffracer_core.contrib.durable.relay import OutboxRelay, prune
from cliffracer_core.core.auth.tokens import session_access_token
from cliffracer_core.core.context import message_context
from cliffracer_core.core.headers import MSG_ID, ORIGIN_CALLER
from cliffracer_core.testing.plugin import run_async


class Placed(BaseModel):
    order_id: int


def wait_until(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


@pytest.fixture
def stream(settings, unique_name, nats_server):
    name = unique_name.upper()
    settings.CLIFFRACER = {
        **settings.CLIFFRACER,
        "STREAMS": {name: {"subjects": [f"{unique_name}.>"], "max_age": 600}},
        "OUTBOX_POLL_INTERVAL": 30.0,
    }
    yield name
    run_async(_delete_stream(nats_server.url, name))


async def _delete_stream(url: str, name: str) -> None:
    connection = await nats.connect(url)
    try:
        await connection.jetstream().delete_stream(name)
    except Exception:  # noqa: BLE001
        pass
    finally:
        await connection.close()


async def _stored(url: str, name: str) -> list:
    """Every message the stream holds, with its headers."""
    connection = await nats.connect(url)
    try:
        js = connection.jetstream()
        try:
            info = await js.stream_info(name)
        except nats.js.errors.NotFoundError:
            return []
        return [
            await js.get_msg(name, sequence)
            for sequence in range(info.state.first_seq, info.state.last_seq + 1)
            if info.state.messages
        ]
    finally:
        await connection.close()


async def _relay(url: str, *relays_batch: int) -> list[OutboxRelay]:
    """Run relays side by side until the outbox is empty."""
    from cliffracer_core.transports import connect

    connection = await connect(url)
    relays = [OutboxRelay(connection, batch_size=batch) for batch in relays_batch]
    try:

        async def drain(relay: OutboxRelay) -> None:
            await relay.start()
            while await relay.relay_once():
                pass

        await asyncio.gather(*(drain(relay) for relay in relays))
        return relays
    finally:
        for relay in relays:
            await relay.close()
        await connection.close()


@pytest.mark.django_db(transaction=True)
def test_a_committed_event_is_published_once_by_the_relay(
    stream, unique_name, nats_server, django_user_model
):
    token = session_access_token(django_user_model.objects.create_user("alice", password="x"))
    headers = {"X-Correlation-ID": "corr-42", "Authorization": f"Bearer {token}"}
    with message_context(headers), transaction.atomic():
        row = publish_on_commit(f"{unique_name}.placed", Placed(order_id=7))
    row.refresh_from_db()
    assert row.sent_at is None
    # Never the token; the correlation id and who it was, yes.
    assert row.headers == {"X-Correlation-ID": "corr-42"}
    assert row.caller == "alice"
    (relay,) = run_async(_relay(nats_server.url, 100))
    assert relay.published == 1
    row.refresh_from_db()
    assert row.sent_at is not None
    (stored,) = run_async(_stored(nats_server.url, stream))
    assert stored.data == b'{"order_id":7}'
    assert stored.headers[MSG_ID] == row.message_id
    assert stored.headers["X-Correlation-ID"] == "corr-42"
    # Published as the system identity, naming the original caller for the logs.
    assert stored.headers["Authorization"].startswith("Bearer ")
    assert token not in stored.headers["Authorization"]
    assert stored.headers[ORIGIN_CALLER] == "alice"
    # Relaying again publishes nothing.
    (relay,) = run_async(_relay(nats_server.url, 100))
    assert relay.published == 0
    assert len(run_async(_stored(nats_server.url, stream))) == 1


@pytest.mark.django_db(transaction=True)
def test_a_rolled_back_transaction_publishes_nothing(stream, unique_name, nats_server):
    with pytest.raises(RuntimeError), transaction.atomic():
        publish_on_commit(f"{unique_name}.placed", {"order_id": 1})
        raise RuntimeError("changed my mind")
    assert not OutboxMessage.objects.exists()
    run_async(_relay(nats_server.url, 100))
    assert run_async(_stored(nats_server.url, stream)) == []


@pytest.mark.django_db(transaction=True)
def test_a_row_republished_after_a_lost_mark_is_stored_once(stream, unique_name, nats_server):
    row = publish_on_commit(f"{unique_name}.placed", {"order_id": 1}, msg_id="order-1-placed")
    run_async(_relay(nats_server.url, 100))
    # As if the relay had died between publishing and marking the row sent.
    OutboxMessage.objects.filter(pk=row.pk).update(sent_at=None)
    run_async(_relay(nats_server.url, 100))
    assert OutboxMessage.objects.get().attempts == 2
    (stored,) = run_async(_stored(nats_server.url, stream))
    assert stored.headers[MSG_ID] == "order-1-placed"
    # The same id published again on purpose (a re-announcement): one row more, one event.
    publish_on_commit(f"{unique_name}.placed", {"order_id": 1}, msg_id="order-1-placed")
    run_async(_relay(nats_server.url, 100))
    assert OutboxMessage.objects.filter(sent_at=None).count() == 0
    assert len(run_async(_stored(nats_server.url, stream))) == 1


@pytest.mark.django_db(transaction=True)
def test_relays_running_at_once_publish_each_row_once(stream, unique_name, nats_server):
    for number in range(600):
        publish_on_commit(f"{unique_name}.placed", {"order_id": number})
    relays = run_async(_relay(nats_server.url, 50, 50, 50))
    assert sum(relay.published for relay in relays) == 600
    assert all(relay.published for relay in relays)
    # Each row was claimed by one relay only.
    assert set(OutboxMessage.objects.values_list("attempts", flat=True)) == {1}
    assert not OutboxMessage.objects.filter(sent_at=None).exists()
    stored = run_async(_stored(nats_server.url, stream))
    assert sorted(message.data for message in stored) == sorted(
        f'{{"order_id":{number}}}'.encode() for number in range(600)
    )


@pytest.mark.django_db(transaction=True)
def test_a_commit_wakes_the_relay_of_the_same_process(stream, unique_name, start_service):
    received: list[tuple[int, float]] = []

    class Consumer(Service):
        name = unique_name

        @event(f"{unique_name}.placed", durable=True)
        async def on_placed(self, placed: Placed) -> None:
            received.append((placed.order_id, time.monotonic()))

    # OUTBOX_POLL_INTERVAL is 30 s: only the wake-up can make it this quick.
    start_service(Consumer, relay=True)
    time.sleep(0.5)
    started = time.monotonic()
    with transaction.atomic():
        publish_on_commit(f"{unique_name}.placed", Placed(order_id=3))
    assert wait_until(lambda: received, 5)
    assert received[0][0] == 3
    assert received[0][1] - started < 2.0


@pytest.mark.django_db(transaction=True)
def test_sent_rows_past_their_retention_are_pruned(settings, unique_name):
    settings.CLIFFRACER = {**settings.CLIFFRACER, "OUTBOX_RETENTION": 60.0}
    old = publish_on_commit(f"{unique_name}.placed", {"order_id": 1})
    new = publish_on_commit(f"{unique_name}.placed", {"order_id": 2})
    unsent = publish_on_commit(f"{unique_name}.placed", {"order_id": 3})
    now = timezone.now()
    OutboxMessage.objects.filter(pk=old.pk).update(sent_at=now - timezone.timedelta(seconds=61))
    OutboxMessage.objects.filter(pk=new.pk).update(sent_at=now)
    assert prune()["outbox"] == 1
    assert set(OutboxMessage.objects.values_list("pk", flat=True)) == {new.pk, unsent.pk}
