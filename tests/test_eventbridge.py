"""Events put on an Amazon EventBridge bus (``contrib.durable.eventbridge``), checked through
moto's server: the outbox relay puts what was published on commit on the declared subjects,
a bus that refuses leaves the row to be tried again, and bad settings are a system check."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest
from django.db import transaction

from cliffracer_core import publish_on_commit
from cliffracer_core.contrib.durable.checks import durable_errors
from cliffracer_core.contrib.durable.models import OutboxMessage
from cliffracer_core.contrib.durable.relay import OutboxRelay
from cliffracer_core.core.context import message_context
from cliffracer_core.testing.plugin import run_async
from cliffracer_core.transports.memory import reset_broker
from tests.moto_server import CREDENTIALS, REGION, moto_server  # noqa: F401  (a fixture)

LOCATION = "memory://eventbridge"


@pytest.fixture
def bus(moto_server: str, monkeypatch: Any, settings: Any) -> Any:  # noqa: F811
    """An event bus ``shop`` on moto whose rule sends what ``cliffracer`` puts to an SQS
    queue; EVENTBRIDGE set for ``orders.*``. Yields a function that reads the queue."""
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    events = boto3.client("events", region_name=REGION, endpoint_url=moto_server)
    sqs = boto3.client("sqs", region_name=REGION, endpoint_url=moto_server)
    queue = sqs.create_queue(QueueName="bus-target")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    events.create_event_bus(Name="shop")
    events.put_rule(
        Name="all", EventBusName="shop", EventPattern=json.dumps({"source": ["cliffracer"]})
    )
    events.put_targets(Rule="all", EventBusName="shop", Targets=[{"Id": "queue", "Arn": arn}])
    settings.CLIFFRACER = {
        **settings.CLIFFRACER,
        "EVENTBRIDGE": {
            "BUS": "shop",
            "SUBJECTS": ["orders.*"],
            "REGION": REGION,
            "ENDPOINT_URL": moto_server,
        },
    }

    def received() -> list[dict[str, Any]]:
        found = []
        while True:
            answer = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=1)
            if not answer.get("Messages"):
                return found
            found += [json.loads(m["Body"]) for m in answer["Messages"]]

    yield received
    reset_broker(LOCATION)


async def relay_all() -> OutboxRelay:
    from cliffracer_core.transports import connect

    connection = await connect(LOCATION)
    relay = OutboxRelay(connection, batch_size=100)
    try:
        await relay.start()
        while await relay.relay_once():
            pass
        return relay
    finally:
        await relay.close()
        await connection.close()


@pytest.mark.django_db(transaction=True)
def test_events_published_on_commit_on_declared_subjects_reach_the_bus(bus: Any) -> None:
    with message_context({"X-Correlation-ID": "corr-eb"}), transaction.atomic():
        placed = publish_on_commit("orders.placed", {"order_id": 7})
        publish_on_commit("orders.eu.placed", {"order_id": 8})  # orders.* takes one token
        publish_on_commit("payments.completed", {"order_id": 7})
    relay = run_async(relay_all())
    assert (relay.published, relay.failures) == (3, 0)
    [put] = bus()
    assert (put["source"], put["detail-type"]) == ("cliffracer", "orders.placed")
    assert put["detail"] == {
        "subject": "orders.placed",
        "message_id": placed.message_id,
        "correlation_id": "corr-eb",
        "data": {"order_id": 7},
    }


@pytest.mark.django_db(transaction=True)
def test_a_bus_that_refuses_leaves_the_event_in_the_outbox(bus: Any, settings: Any) -> None:
    settings.CLIFFRACER = {
        **settings.CLIFFRACER,
        "EVENTBRIDGE": {**settings.CLIFFRACER["EVENTBRIDGE"], "BUS": "missing"},
    }
    row = publish_on_commit("orders.placed", {"order_id": 9})
    relay = run_async(relay_all())
    assert (relay.published, relay.failures) == (0, 1)
    row.refresh_from_db()
    assert row.sent_at is None and "EventBridge" in row.last_error
    # Once the bus takes it, the relay's next try puts it there.
    settings.CLIFFRACER = {
        **settings.CLIFFRACER,
        "EVENTBRIDGE": {**settings.CLIFFRACER["EVENTBRIDGE"], "BUS": "shop"},
    }
    OutboxMessage.objects.filter(pk=row.pk).update(lease_until=None)
    assert run_async(relay_all()).published == 1
    assert [put["detail"]["data"] for put in bus()] == [{"order_id": 9}]


@pytest.mark.parametrize(
    "config",
    [
        "shop",
        {"BUS": "shop"},
        {"BUS": "", "SUBJECTS": ["orders.*"]},
        {"BUS": "shop", "SUBJECTS": ["orders. bad"]},
        {"BUS": "shop", "SUBJECTS": ["orders.*"], "SOURCES": "x"},
    ],
)
def test_bad_eventbridge_settings_are_a_system_check(settings: Any, config: Any) -> None:
    settings.CLIFFRACER = {**settings.CLIFFRACER, "EVENTBRIDGE": config}
    assert "cliffracer.E046" in {error.id for error in durable_errors()}


def test_good_eventbridge_settings_pass_the_check(settings: Any) -> None:
    good = {"BUS": "shop", "SUBJECTS": ["orders.*", "payments.>"], "SOURCE": "shop"}
    settings.CLIFFRACER = {**settings.CLIFFRACER, "EVENTBRIDGE": good}
    assert "cliffracer.E046" not in {error.id for error in durable_errors()}
