"""OpenTelemetry traces: the example's services in real processes export their spans with the
SDK's OTLP/HTTP exporter to a real receiver, and one order placed is one trace."""

from __future__ import annotations

import json
import os
import urllib.request

import pytest
from django.core.cache import cache
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from apps.inventory.logic import stock_item_create
from cliffracer_core import call
from cliffracer_core.core import tracing
from tests.otlp_receiver import OtlpReceiver
from tests.roles import restore_roles
from tests.test_ecommerce_flow import SERVICES, Customer, wait_for

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
ROOT_SPAN = "00f067aa0ba902b7"


def tracing_environment(receiver: OtlpReceiver) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_TRACES_SAMPLER": "always_on",
        # Export each batch within 100 ms instead of 5 s.
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }


@pytest.fixture
def receiver():
    made = OtlpReceiver()
    yield made
    made.close()


@pytest.fixture
def traced_services(transactional_db, runservice_process, receiver):
    """The example's services in their own processes, tracing to ``receiver``."""
    restore_roles()
    cache.clear()
    stock_item_create(sku="FLOW-TEE", name="T-shirt", price="19.00", quantity_on_hand=10)
    environment = tracing_environment(receiver)
    processes = [runservice_process(label, wait=False, **environment) for label in SERVICES]
    for process in processes:
        process.wait_serving()
    return processes


class SpansSeen:
    """What the receiver holds of a trace, shown beside the processes' logs on a timeout."""

    label = "spans received"

    def __init__(self, receiver: OtlpReceiver, trace_id: str) -> None:
        self.receiver, self.trace_id = receiver, trace_id

    def output(self) -> str:
        return "\n".join(f"{s.service}: {s.name}" for s in self.receiver.trace(self.trace_id))


def one(spans, **wanted):
    """The one span whose fields and attributes match ``wanted``."""
    found = [
        span
        for span in spans
        if all(
            getattr(span, key, span.attributes.get(key.replace("__", "."))) == value
            for key, value in wanted.items()
        )
    ]
    assert len(found) == 1, (wanted, [(s.service, s.name) for s in spans])
    return found[0]


EMAIL_TASK = "apps.notifications.tasks.send_notification_email"


def test_an_order_placed_over_rest_is_one_trace_across_the_services(
    traced_services, receiver, web_process, celery_worker_process
):
    web = web_process(**tracing_environment(receiver))
    worker = celery_worker_process(**tracing_environment(receiver))
    customer = Customer("ada")
    request = urllib.request.Request(
        f"{web.url}/api/orders/",
        data=json.dumps(
            {"lines": [{"sku": "FLOW-TEE", "quantity": 2}], "payment_token": "tok_visa"}
        ).encode(),
        headers={
            "Content-Type": "application/json",
            "Authorization": customer.authorization,
            "traceparent": f"00-{TRACE_ID}-{ROOT_SPAN}-01",
        },
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 201
        placed = json.loads(response.read())

    wait_for(
        lambda: (
            ORDER_SPANS | {"POST /api/orders/", f"send {EMAIL_TASK}", f"process {EMAIL_TASK}"}
            <= names(receiver)
        ),
        "the order's spans",
        [*traced_services, web, worker, SpansSeen(receiver, TRACE_ID)],
    )
    spans = receiver.trace(TRACE_ID)
    assert placed["status"] == "pending_payment"
    # The HTTP request, in the web process, whose view places the order.
    http = one(spans, service="web", name="POST /api/orders/")
    assert http.parent_id == ROOT_SPAN
    assert http.kind == Span.SPAN_KIND_SERVER
    assert http.attributes["http.response.status_code"] == 201
    assert http.attributes["http.route"] == "/api/orders/"
    check_order_trace(spans, placing=http, placer="web")
    # The notification of the order's creation is emailed by a Celery task, queued by the
    # durable handler that recorded it: the task's span is that handler's child.
    notifying = one(
        spans,
        service="notifications",
        name="process orders.*",
        messaging__destination__name="orders.created",
    )

    # The handler's send of the task is a producer span, the parent of the task's run. Each
    # process exports on its own schedule: wait for the send span of every run received.
    def sends_and_runs() -> tuple[list, list] | None:
        spans = receiver.trace(TRACE_ID)
        sends = [s for s in spans if s.name == f"send {EMAIL_TASK}"]
        runs = [s for s in spans if s.name == f"process {EMAIL_TASK}"]
        return (sends, runs) if {r.parent_id for r in runs} <= {s.span_id for s in sends} else None

    sends, emails = wait_for(sends_and_runs, "a send span for each task run", [web, worker])
    assert notifying.span_id in {send.parent_id for send in sends}
    assert all(send.kind == Span.SPAN_KIND_PRODUCER for send in sends)
    assert all(send.attributes["messaging.system"] == "celery" for send in sends)
    assert all(send.attributes["messaging.message.id"] for send in sends)
    assert emails and all(email.service == "celery" for email in emails)
    assert all(email.kind == Span.SPAN_KIND_CONSUMER for email in emails)


def test_an_order_placed_over_nats_is_one_trace_across_the_services(traced_services, receiver):
    customer = Customer("ada")
    placed = call(
        "orders.create_order",
        {
            "customer_id": customer.id,
            "customer_email": customer.user.email,
            "lines": [{"sku": "FLOW-TEE", "quantity": 2}],
            "payment_token": "tok_visa",
        },
        headers={
            "Authorization": customer.authorization,
            "traceparent": f"00-{TRACE_ID}-{ROOT_SPAN}-01",
        },
    )
    wait_for(
        lambda: ORDER_SPANS | {"process rpc.orders.create_order"} <= names(receiver),
        "the order's spans",
        [*traced_services, SpansSeen(receiver, TRACE_ID)],
    )
    spans = receiver.trace(TRACE_ID)
    assert placed["status"] == "pending_payment"
    # The handling of orders.create_order, the child of the caller's context.
    handling = one(spans, service="orders", name="process rpc.orders.create_order")
    assert handling.parent_id == ROOT_SPAN
    assert handling.kind == Span.SPAN_KIND_SERVER
    assert handling.attributes["messaging.system"] == "nats"
    assert handling.attributes["messaging.operation.type"] == "process"
    assert handling.attributes["messaging.destination.name"] == "rpc.orders.create_order"
    assert handling.attributes["messaging.consumer.group.name"] == "orders"
    assert handling.attributes["messaging.message.conversation_id"]
    check_order_trace(spans, placing=handling, placer="orders")


# What follows an order placed, wherever it was placed.
ORDER_SPANS = {
    "send rpc.inventory.reserve_stock",
    "process rpc.inventory.reserve_stock",
    "send orders.created",
    "process orders.created",
    "process orders.*",
    "send payments.completed",
    "process payments.completed",
}


def names(receiver: OtlpReceiver) -> set[str]:
    return {span.name for span in receiver.trace(TRACE_ID)}


def check_order_trace(spans, *, placing, placer: str) -> None:
    """The tree under ``placing``, the span of ``placer`` that placed an order."""
    # The stock is reserved by a call: a client span and its server span in inventory.
    reserving = one(spans, service=placer, name="send rpc.inventory.reserve_stock")
    assert reserving.kind == Span.SPAN_KIND_CLIENT
    assert reserving.parent_id == placing.span_id
    served = one(spans, service="inventory", parent_id=reserving.span_id)
    assert served.name == "process rpc.inventory.reserve_stock"
    assert served.kind == Span.SPAN_KIND_SERVER

    # The outbox relay publishes orders.created as the child of the span that wrote the row
    # (whichever process's relay sends it: every runservice process runs one).
    created = one(spans, name="send orders.created")
    assert created.kind == Span.SPAN_KIND_PRODUCER
    assert created.parent_id == placing.span_id

    # Each durable handler of the event is the producer's child, with its delivery attempt.
    paying = one(spans, service="payments", name="process orders.created")
    notifying = one(
        spans,
        service="notifications",
        name="process orders.*",
        messaging__destination__name="orders.created",
    )
    for consumer in (paying, notifying):
        assert consumer.kind == Span.SPAN_KIND_CONSUMER
        assert consumer.parent_id == created.span_id
        assert consumer.attributes["messaging.nats.message.delivery_attempt"] == 1
    assert paying.attributes["messaging.destination.template"] == "orders.created"
    assert notifying.attributes["messaging.destination.template"] == "orders.*"

    # payments answers with payments.completed, which orders handles: the chain goes on.
    completed = one(spans, name="send payments.completed")
    assert completed.parent_id == paying.span_id
    paid = one(spans, service="orders", name="process payments.completed")
    assert paid.parent_id == completed.span_id


def test_tracing_is_off_unless_the_environment_asks():
    assert not tracing.wanted({})
    assert tracing.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert tracing.wanted({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"})
    assert tracing.wanted({"OTEL_TRACES_EXPORTER": "otlp"})
    assert not tracing.wanted({"OTEL_TRACES_EXPORTER": "none"})
    assert not tracing.wanted(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}
    )
    # This test process was started without them: the tracer is not even made.
    if not tracing.wanted(os.environ):
        assert tracing.tracer is None


def test_timer_runs_are_root_spans_and_failures_are_errors(receiver, runservice_process):
    runservice_process(
        "metered", DJANGO_SETTINGS_MODULE="tests.metrics_settings", **tracing_environment(receiver)
    )

    def runs(name: str) -> list:
        return [span for span in receiver.spans if span.name == name]

    wait_for(lambda: runs("run metered.tick") and runs("run metered.broken"), "timer spans", [])
    tick, broken = runs("run metered.tick")[0], runs("run metered.broken")[0]
    assert (tick.parent_id, tick.service, tick.status) == ("", "metered", 0)
    assert broken.status == 2  # STATUS_CODE_ERROR
    assert broken.attributes["error.type"] == "internal_error"


def test_a_handlers_queries_are_spans_under_its_span(
    transactional_db, receiver, runservice_process
):
    runservice_process(
        "metered", DJANGO_SETTINGS_MODULE="tests.metrics_settings", **tracing_environment(receiver)
    )
    reply = call(
        "metered.count_users", {}, headers={"traceparent": f"00-{TRACE_ID}-{ROOT_SPAN}-01"}
    )
    assert reply == {"count": 0}
    wait_for(
        lambda: any(s.attributes.get("db.operation.name") for s in receiver.trace(TRACE_ID)),
        "the query's span",
        [SpansSeen(receiver, TRACE_ID)],
    )
    spans = receiver.trace(TRACE_ID)
    handling = one(spans, service="metered", name="process rpc.metered.count_users")
    queries = [s for s in spans if "db.system" in s.attributes]
    assert queries, [(s.name, s.attributes) for s in spans]
    for query in queries:
        assert query.parent_id == handling.span_id
        assert query.kind == Span.SPAN_KIND_CLIENT
        assert query.attributes["db.system"] in ("postgresql", "sqlite")
    counting = next(q for q in queries if "auth_user" in q.attributes["db.query.text"])
    assert counting.attributes["db.operation.name"] == "SELECT"
    assert counting.name.startswith("SELECT ")
    # The statement as Django sends it, not the values of its parameters.
    assert "COUNT(*)" in counting.attributes["db.query.text"]


def test_websocket_frames_and_delivered_events_are_spans(
    transactional_db, receiver, runservice_process, web_process, nats_server
):
    import asyncio

    from django.contrib.auth.models import User
    from nats.aio.client import Client as NatsClient

    from tests.test_websocket_processes import RULES, open_socket, subscribe, token_for

    runservice_process(
        "metered", DJANGO_SETTINGS_MODULE="tests.metrics_settings", **tracing_environment(receiver)
    )
    web = web_process(
        DJANGO_SETTINGS_MODULE="tests.websocket_settings",
        CLIFFRACER_TEST_OVERRIDES=json.dumps({"SUBJECT_RULES": RULES}),
        **tracing_environment(receiver),
    )
    token = token_for(User.objects.create_user("ada", password="pw-ada-12345"))

    async def scenario() -> None:
        socket = await open_socket(web.ws_url, token)
        call_frame = {"type": "call", "id": 1, "service": "metered", "method": "echo"}
        await socket.send(json.dumps({**call_frame, "data": {"text": "hi"}}))
        assert json.loads(await socket.recv())["type"] == "reply"
        assert (await subscribe(socket, "ws.public.news"))["type"] == "subscribed"
        publisher = NatsClient()
        await publisher.connect(nats_server.url)
        await publisher.publish(
            "ws.public.news",
            b'{"headline": "traced"}',
            headers={"traceparent": f"00-{TRACE_ID}-{ROOT_SPAN}-01"},
        )
        await publisher.flush()
        assert json.loads(await asyncio.wait_for(socket.recv(), 10))["type"] == "event"
        await publisher.close()
        await socket.close()

    asyncio.run(scenario())

    def named(name: str) -> list:
        return [span for span in receiver.spans if span.name == name]

    wait_for(
        lambda: (
            named("receive call")
            and named("process rpc.metered.echo")
            and named("deliver ws.public.news")
        ),
        "the frame and delivery spans",
        [web],
    )
    # The call frame is a root span in the web process, the parent of the call it makes.
    (frame,) = named("receive call")
    assert (frame.service, frame.parent_id, frame.kind) == ("web", "", Span.SPAN_KIND_SERVER)
    assert frame.attributes["cliffracer.websocket.frame.type"] == "call"
    calling = one(receiver.spans, name="send rpc.metered.echo", parent_id=frame.span_id)
    served = one(receiver.spans, name="process rpc.metered.echo")
    assert served.parent_id == calling.span_id
    assert named("receive auth") and named("receive subscribe")
    # The event handed to the socket: a span of its own, linked to the publisher's.
    (delivery,) = named("deliver ws.public.news")
    assert delivery.kind == Span.SPAN_KIND_CONSUMER
    assert delivery.parent_id == ""
    assert delivery.links == [(TRACE_ID, ROOT_SPAN)]
    assert delivery.attributes["messaging.destination.name"] == "ws.public.news"
    assert delivery.attributes["cliffracer.websocket.sockets"] == 1
