"""Durable events published without a ``Nats-Msg-Id`` after their stream is created again.

Such an event's key is its stream's incarnation and sequence (``<stream>@<created>:<seq>``).
Sequences start again at 1 in a new stream, and when the key was the sequence alone, every new
event whose sequence had been seen was skipped as processed, acknowledged, with no log line and
no dead letter (issue 20: 10 of 20 stored). Real ``runservice`` processes, real nats-servers,
one database.
"""

from __future__ import annotations

import json

import nats
import pytest
from django.db import connection

from cliffracer_core.contrib.durable.consumer import consumer_name
from cliffracer_core.contrib.durable.models import ProcessedMessage
from cliffracer_core.core.auth.tokens import mint_system_token
from cliffracer_core.testing import wait_for
from cliffracer_core.testing.plugin import run_async
from cliffracer_core.transports.nats.embedded import NatsServer
from tests.durableapp.models import SideEffect

SETTINGS = {"DJANGO_SETTINGS_MODULE": "tests.durable_settings"}
STREAM = "DURABLETEST"
CONSUMER = consumer_name("durabletest", "on_ledger")


@pytest.fixture
def ledger(transactional_db):
    """The durabletest service's side-effect table (the test process does not install it)."""
    with connection.schema_editor() as editor:
        editor.create_model(SideEffect)
    yield
    with connection.schema_editor() as editor:
        editor.delete_model(SideEffect)


async def publish_plain(url: str, first: int, count: int) -> None:
    """Publish to the stream as a plain JetStream client does: no Nats-Msg-Id."""
    client = await nats.connect(url)
    try:
        js = client.jetstream()
        headers = {"Authorization": f"Bearer {mint_system_token()}"}
        for number in range(first, first + count):
            body = json.dumps({"id": f"item-{number}"}).encode()
            await js.publish("durabletest.ledger", body, headers=headers)
    finally:
        await client.close()


async def delete_stream(url: str) -> None:
    client = await nats.connect(url)
    try:
        await client.jetstream().delete_stream(STREAM)
    except nats.js.errors.NotFoundError:
        pass
    finally:
        await client.close()


async def event_outcomes(url: str) -> dict:
    client = await nats.connect(url)
    try:
        reply = await client.request("$SRV.STATS.durabletest", b"", timeout=5)
        return json.loads(json.loads(reply.data)["metadata"]["event_outcomes"])["on_ledger"]
    finally:
        await client.close()


def stored() -> int:
    return SideEffect.objects.filter(handler="ledger").count()


def test_events_after_the_stream_is_created_again_are_all_processed(
    ledger, nats_server, runservice_process
):
    run_async(delete_stream(nats_server.url))
    service = runservice_process("durabletest", **SETTINGS)
    run_async(publish_plain(nats_server.url, 0, 10))
    wait_for(lambda: stored() == 10, 20, what="the first 10 events stored")
    service.stop()
    # `nats stream rm`, or a declaration change that needs a new stream: the database stays.
    run_async(delete_stream(nats_server.url))
    service = runservice_process("durabletest", **SETTINGS)  # creates the stream again
    run_async(publish_plain(nats_server.url, 10, 10))
    wait_for(lambda: stored() == 20, 20, what="all 20 events stored")
    assert sorted(SideEffect.objects.values_list("event_id", flat=True)) == sorted(
        f"item-{number}" for number in range(20)
    )
    keys = set(
        ProcessedMessage.objects.filter(consumer=CONSUMER).values_list("message_id", flat=True)
    )
    assert len(keys) == 20
    assert {key.split("@")[0] for key in keys} == {STREAM}
    assert len({key.split(":")[0] for key in keys}) == 2  # two incarnations of one stream
    assert run_async(event_outcomes(nats_server.url))["duplicate"] == 0
    run_async(delete_stream(nats_server.url))


def test_a_fresh_server_store_with_the_same_database(ledger, runservice_process, tmp_path):
    first = NatsServer(store_dir=tmp_path / "store-1")
    first.start()
    try:
        service = runservice_process("durabletest", "--nats-url", first.url, **SETTINGS)
        run_async(publish_plain(first.url, 0, 10))
        wait_for(lambda: stored() == 10, 20, what="the first 10 events stored")
        service.stop()
    finally:
        first.stop()
    # The JetStream store is lost (or the system moves to a new cluster); the database stays.
    second = NatsServer(store_dir=tmp_path / "store-2")
    second.start()
    try:
        runservice_process("durabletest", "--nats-url", second.url, **SETTINGS)
        run_async(publish_plain(second.url, 10, 10))
        wait_for(lambda: stored() == 20, 20, what="all 20 events stored")
    finally:
        second.stop()


def test_a_redelivery_in_the_same_stream_is_still_skipped_and_counted(
    ledger, nats_server, runservice_process
):
    run_async(delete_stream(nats_server.url))
    service = runservice_process("durabletest", **SETTINGS)
    run_async(publish_plain(nats_server.url, 0, 5))
    wait_for(lambda: stored() == 5, 20, what="5 events stored")

    async def delete_consumer() -> None:
        client = await nats.connect(nats_server.url)
        try:
            await client.jetstream().delete_consumer(STREAM, CONSUMER)
        finally:
            await client.close()

    # The consumer is created again and reads its stream from the start: every event comes
    # again, with the same sequence in the same stream. Each is skipped, and counted.
    run_async(delete_consumer())
    wait_for(
        lambda: run_async(event_outcomes(nats_server.url))["duplicate"] == 5,
        20,
        what="5 redeliveries skipped",
    )
    assert stored() == 5
    assert service.process.poll() is None
    run_async(delete_stream(nats_server.url))
