"""The RabbitMQ transport beyond the conformance suite (tests/test_transports.py): what only
RabbitMQ can get wrong, a real ``manage.py runservice`` on it, a reconnect, durable streams
where they differ from JetStream's (unclaimed messages, the registry, dead-letter queue), the
example's order flow, and durable events through a SIGKILL and lost connections.

Everything runs in a vhost of the session's own (tests/amqp_broker.py)."""

from __future__ import annotations

import asyncio
import functools
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import pytest

from cliffracer_core.contrib.channels.layers import NatsChannelLayer
from cliffracer_core.core.errors import NoResponders, RemoteError, RemoteUnavailable, RpcTimeout
from cliffracer_core.core.streams import STREAM_DEFAULTS, Stream
from cliffracer_core.testing.plugin import child_environment, project_root, run_async
from cliffracer_core.testing.polling import wait_until
from cliffracer_core.transports import close_transport, connect, get_transport
from cliffracer_core.transports.amqp import AmqpTransport
from tests import amqp_broker
from tests.amqp_broker import rabbitmqctl

# The session's vhost (a fixture).
amqp_url = amqp_broker.amqp_url


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def runner() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as runner:
        yield runner


def run(runner: asyncio.Runner, coroutine: Any, timeout: float = 30.0) -> Any:
    return runner.run(asyncio.wait_for(coroutine, timeout))


def test_the_url_scheme_picks_the_rabbitmq_backend(amqp_url: str, runner: asyncio.Runner) -> None:
    async def main() -> None:
        transport = await connect(amqp_url)
        try:
            assert isinstance(transport, AmqpTransport)
            assert transport.server().startswith("RabbitMQ 3.")
            assert "guest" not in transport.redacted_location()
        finally:
            await transport.close()

    run(runner, main())


def test_many_requests_are_in_flight_at_once_on_one_connection(
    amqp_url: str, runner: asyncio.Runner, prefix: str
) -> None:
    """FastStream's RabbitMQ RPC holds a lock: one request at a time. Here every request of a
    caller is at the responder at once (the responder answers none until all have come)."""
    count = 50

    async def main() -> None:
        caller, responder = await connect(amqp_url), await connect(amqp_url)
        try:
            held: list[Any] = []
            everyone = asyncio.Event()

            async def respond(message: Any) -> None:
                held.append(message)
                if len(held) == count:
                    everyone.set()
                    for waiting in held:
                        await responder.publish(waiting.reply, waiting.data)

            await responder.subscribe(f"{prefix}.wait", respond, queue="waiters")
            replies = await asyncio.gather(
                *(caller.request(f"{prefix}.wait", b"%d" % n, timeout=20) for n in range(count))
            )
            assert everyone.is_set()
            assert sorted(int(reply.data) for reply in replies) == list(range(count))
        finally:
            await caller.close()
            await responder.close()

    run(runner, main())


def test_a_group_whose_last_member_left_has_no_queue_left(
    amqp_url: str, runner: asyncio.Runner, prefix: str
) -> None:
    """The group's queue goes with its last consumer: requests to a stopped service are
    NoResponders, not a backlog that waits for it."""

    async def main() -> None:
        transport = await connect(amqp_url)
        try:

            async def silent(message: Any) -> None:
                pass

            first = await transport.subscribe(f"{prefix}.svc", silent, queue="svc")
            second = await transport.subscribe(f"{prefix}.svc", silent, queue="svc")
            await first.unsubscribe()
            with pytest.raises(RpcTimeout):  # one member is left, and says nothing
                await transport.request(f"{prefix}.svc", b"", timeout=0.2)
            await second.unsubscribe()
            async with asyncio.timeout(5):  # once the broker has deleted the queue
                while True:
                    try:
                        await transport.request(f"{prefix}.svc", b"", timeout=0.2)
                    except RpcTimeout:
                        continue
                    except NoResponders:
                        break
        finally:
            await transport.close()

    run(runner, main())


def test_subjects_amqp_would_read_as_wildcards_are_literal(
    amqp_url: str, runner: asyncio.Runner, prefix: str
) -> None:
    """A ``#`` token is a wildcard to AMQP and a plain token to NATS; ``$`` (the Services API's
    subjects) is no character of an AMQP queue name."""

    async def main() -> None:
        transport = await connect(amqp_url)
        try:
            received: asyncio.Queue[Any] = asyncio.Queue()

            async def put(message: Any) -> None:
                await received.put(message.subject)

            await transport.subscribe(f"{prefix}.#", put)
            await transport.subscribe(f"$SRV.PING.{prefix}", put, queue="$q")
            await transport.publish(f"{prefix}.x", b"")
            await transport.publish(f"{prefix}.#", b"")
            await transport.publish(f"$SRV.PING.{prefix}", b"")
            async with asyncio.timeout(5):
                got = [await received.get(), await received.get()]
            assert sorted(got) == sorted([f"{prefix}.#", f"$SRV.PING.{prefix}"])
            await transport.flush()
            await asyncio.sleep(0.2)
            assert received.empty()
        finally:
            await transport.close()

    run(runner, main())


def test_headers_larger_than_a_frame_are_refused_and_the_connection_stays(
    amqp_url: str, runner: asyncio.Runner, prefix: str
) -> None:
    """AMQP carries headers in one frame (128 KiB here); RabbitMQ closes the whole connection
    over a larger one, so the transport refuses it first (413), and nothing else is lost."""

    async def main() -> None:
        transport = await connect(amqp_url)
        try:
            received: asyncio.Queue[Any] = asyncio.Queue()

            async def put(message: Any) -> None:
                await received.put(message)

            await transport.subscribe(f"{prefix}.h", put)
            await transport.publish(f"{prefix}.h", b"", headers={"P": "x" * 100_000})
            big = {"P": "x" * 200_000}
            with pytest.raises(RemoteError) as raised:
                await transport.publish(f"{prefix}.h", b"", headers=big)
            assert (raised.value.code, raised.value.type) == (413, "request_too_large")
            with pytest.raises(RemoteError) as raised:
                await transport.request(f"{prefix}.h", b"", headers=big, timeout=5)
            assert (raised.value.code, raised.value.type) == (413, "request_too_large")
            [message] = [await asyncio.wait_for(received.get(), 5)]
            assert len(message.headers["P"]) == 100_000
            await transport.flush()
            assert transport.is_connected and transport.reconnects == 0
        finally:
            await transport.close()

    run(runner, main())


def test_subscriptions_and_requests_work_again_after_the_connections_are_closed(
    amqp_url: str, runner: asyncio.Runner, prefix: str
) -> None:
    """The broker's side closes every connection of the test vhost (only of its own vhost:
    the shared server is not restarted); the robust connections come back and declare their
    queues, bindings and consumers again, direct reply-to's included."""
    vhost = amqp_url.rsplit("/", 1)[1]

    async def main() -> None:
        caller, responder = await connect(amqp_url), await connect(amqp_url)
        try:

            async def respond(message: Any) -> None:
                await responder.publish(message.reply, message.data.upper())

            await responder.subscribe(f"{prefix}.echo", respond, queue="echo")
            assert (await caller.request(f"{prefix}.echo", b"before", timeout=5)).data == b"BEFORE"
            closed = await asyncio.to_thread(
                rabbitmqctl, "close_all_connections", "-p", vhost, "test: reconnect"
            )
            assert closed.returncode == 0, closed.stderr
            async with asyncio.timeout(20):
                while caller.reconnects < 1 or responder.reconnects < 1:
                    await asyncio.sleep(0.05)
            async with asyncio.timeout(20):
                while True:
                    try:
                        reply = await caller.request(f"{prefix}.echo", b"after", timeout=1)
                        break
                    except (NoResponders, RpcTimeout):
                        await asyncio.sleep(0.1)
            assert reply.data == b"AFTER"
            assert caller.is_connected and responder.is_connected
        finally:
            await caller.close()
            await responder.close()

    run(runner, main())


def test_a_client_connection_gives_up_after_its_reconnect_attempts(
    amqp_url: str, runner: asyncio.Runner
) -> None:
    """As a shared client's NATS connection does (``get_transport`` opens another on the next
    call): here the vhost refuses the user while its connections are closed."""
    vhost = amqp_url.rsplit("/", 1)[1]
    user = urlsplit(amqp_url).username or "guest"

    async def main() -> None:
        client = await connect(amqp_url, max_reconnect_attempts=0)
        serving = await connect(amqp_url)
        try:
            await asyncio.to_thread(rabbitmqctl, "clear_permissions", "-p", vhost, user)
            await asyncio.to_thread(
                rabbitmqctl, "close_all_connections", "-p", vhost, "test: give up"
            )
            async with asyncio.timeout(20):
                while not client.is_closed:
                    await asyncio.sleep(0.05)
            with pytest.raises(RemoteUnavailable):
                await client.request("anything", b"", timeout=1)
            assert not serving.is_closed  # reconnects forever (the default)
        finally:
            await asyncio.to_thread(
                rabbitmqctl, "set_permissions", "-p", vhost, user, ".*", ".*", ".*"
            )
            await client.close()
            await serving.close()

    run(runner, main())


def test_a_stream_keeps_what_no_consumer_took_yet_for_the_first_one_that_does(
    amqp_url: str, runner: asyncio.Runner, prefix: str
) -> None:
    """Without stream history (features.stream_history) a message published while no
    consumer's filter takes it waits in the stream's unclaimed queue, within the stream's
    limits, for the first consumer of its subject; a consumer made later gets no others."""

    async def main() -> None:
        transport = await connect(amqp_url)
        stream = Stream(f"T{prefix}", {**STREAM_DEFAULTS, "subjects": [f"{prefix}.>"]})
        try:
            assert transport.features.durable and not transport.features.stream_history
            assert await transport.ensure_stream(stream) == "created"
            first = await transport.publish_durable(f"{prefix}.a", b"a", msg_id="a")
            second = await transport.publish_durable(f"{prefix}.b", b"b", msg_id="b")
            assert second > first
            assert (await transport.stream_state(stream.name)).messages == 2
            assert await transport.stored_message(stream.name, first) is None
            deliveries: asyncio.Queue[Any] = asyncio.Queue()
            options = {"ack_wait": 5, "max_in_flight": 5}
            taker = await transport.consume(
                stream.name, "a-reader", deliveries.put, filter_subject=f"{prefix}.a", **options
            )
            delivery = await asyncio.wait_for(deliveries.get(), 5)
            assert (delivery.subject, delivery.data, delivery.sequence) == (
                f"{prefix}.a",
                b"a",
                first,
            )
            await delivery.ack()

            async def waiting(count: int) -> bool:
                return (await transport.stream_state(stream.name)).messages == count

            # The other one went back to wait (an attachment claims in a task of its own).
            await wait_until(lambda: waiting(1), timeout=5, what="b to wait unclaimed again")
            other = await transport.consume(
                stream.name, "b-reader", deliveries.put, filter_subject=f"{prefix}.>", **options
            )
            delivery = await asyncio.wait_for(deliveries.get(), 5)
            assert (delivery.data, delivery.sequence) == (b"b", second)
            await delivery.ack()
            await wait_until(lambda: waiting(0), timeout=5, what="nothing to wait unclaimed")
            await taker.close()
            await other.close()
        finally:
            await transport.delete_stream(stream.name)
            await transport.close()

    run(runner, main())


def test_a_stream_kept_for_interest_keeps_nothing_no_consumer_takes(
    amqp_url: str, runner: asyncio.Runner, prefix: str
) -> None:
    async def main() -> None:
        transport = await connect(amqp_url)
        options = {**STREAM_DEFAULTS, "subjects": [f"{prefix}.>"], "retention": "interest"}
        stream = Stream(f"T{prefix}", options)
        try:
            assert await transport.ensure_stream(stream) == "created"
            await transport.publish_durable(f"{prefix}.a", b"a", msg_id="a")
            assert (await transport.stream_state(stream.name)).messages == 0
            # Back to limits: the (empty) unclaimed queue is made again with its limits.
            kept = Stream(stream.name, {**options, "retention": "limits"})
            assert await transport.ensure_stream(kept) == "updated"
            await transport.publish_durable(f"{prefix}.a", b"b", msg_id="b")
            assert (await transport.stream_state(stream.name)).messages == 1
        finally:
            await transport.delete_stream(stream.name)
            await transport.close()

    run(runner, main())


def test_a_client_that_dies_mid_change_leaves_the_newer_stream_registry(
    amqp_url: str, runner: asyncio.Runner, prefix: str
) -> None:
    """The streams' declarations are one message that a writer holds while it publishes the
    next version: a writer that dies before acknowledging the old one leaves both, and the
    newer one counts."""

    async def main() -> None:
        transport = await connect(amqp_url)
        stream = Stream(f"T{prefix}", {**STREAM_DEFAULTS, "subjects": [f"{prefix}.>"]})
        try:
            await transport.ensure_stream(stream)
            writer = await aio_pika.connect(amqp_url)
            channel = await writer.channel()
            queue = await channel.declare_queue("cliffracer.streams", passive=True)
            held = None
            while held is None:  # another test's client may hold it a moment
                held = await queue.get(no_ack=False, fail=False)
            registry = json.loads(held.body)
            registry["streams"][stream.name]["config"]["max_msgs"] = 5
            registry["version"] += 1
            body = json.dumps(registry).encode()
            await channel.default_exchange.publish(
                aio_pika.Message(body), routing_key="cliffracer.streams"
            )
            await writer.close()  # the old version goes back, not acknowledged
            assert await transport.compare_stream(stream) == ["max_msgs"]
            assert await transport.ensure_stream(stream) == "updated"
            assert await transport.compare_stream(stream) == []
        finally:
            await transport.delete_stream(stream.name)
            await transport.close()

    run(runner, main())


def test_a_terminated_delivery_goes_to_the_streams_dead_letter_queue(
    amqp_url: str, runner: asyncio.Runner, prefix: str
) -> None:
    """``term`` rejects the delivery; the consumer's queue dead-letters it into the stream's
    dead-letter queue (``<exchange>.dead.<stream>``), where an operator can still see it."""

    async def main() -> None:
        transport = await connect(amqp_url)
        stream = Stream(f"T{prefix}", {**STREAM_DEFAULTS, "subjects": [f"{prefix}.>"]})
        try:
            await transport.ensure_stream(stream)
            deliveries: asyncio.Queue[Any] = asyncio.Queue()
            consumer = await transport.consume(
                stream.name,
                "dying",
                deliveries.put,
                filter_subject=f"{prefix}.>",
                ack_wait=5,
                max_in_flight=1,
            )
            await transport.publish_durable(f"{prefix}.poison", b"poison", msg_id="p")
            delivery = await asyncio.wait_for(deliveries.get(), 5)
            await delivery.term()
            dead = f"cliffracer.dead.{stream.name}"

            async def kept() -> bool:
                async with transport.probe() as channel:
                    queue = await channel.declare_queue(dead, passive=True)
                    return queue.declaration_result.message_count == 1

            await wait_until(kept, timeout=5, what="the dead letter in its queue")
            await consumer.close()
        finally:
            await transport.delete_stream(stream.name)
            await transport.close()

    run(runner, main())


def test_the_channel_layer_runs_on_rabbitmq(
    amqp_url: str, monkeypatch: pytest.MonkeyPatch, prefix: str
) -> None:
    """The project's channel layer goes through the transport: a membership asked for by
    another layer (as from another process) and a group message, over RabbitMQ."""
    monkeypatch.setenv("CLIFFRACER_TRANSPORT_URL", amqp_url)
    group = f"{prefix}.room"

    async def scenario() -> None:
        owner = NatsChannelLayer(prefix=f"_test.layer.{prefix}")
        other = NatsChannelLayer(prefix=f"_test.layer.{prefix}")
        try:
            channel = await owner.new_channel()
            assert isinstance(await get_transport(), AmqpTransport)
            await other.group_add(group, channel)
            await other.group_send(group, {"type": "hello"})
            assert await asyncio.wait_for(owner.receive(channel), 5) == {"type": "hello"}
        finally:
            await owner.flush()
            await other.flush()
            await close_transport()

    run_async(scenario())


# A real service on RabbitMQ


def manage(environment: dict[str, str], *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *arguments],
        cwd=project_root(),
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_service_serves_calls_and_discovery_on_rabbitmq(
    transactional_db: Any, nats_server: Any, runservice_process: Any, amqp_url: str
) -> None:
    on_rabbitmq = {"CLIFFRACER_TRANSPORT_URL": amqp_url, "DJANGO_SETTINGS_MODULE": "tests.settings"}
    runservice_process("testservice", **on_rabbitmq)
    environment = child_environment(nats_server, on_rabbitmq)

    called = manage(environment, "call", "testservice.echo", '{"text": "over rabbitmq"}')
    assert called.returncode == 0, called.stderr
    assert json.loads(called.stdout) == {"text": "over rabbitmq"}

    listed = manage(environment, "services", "--wait", "1", "--json")
    assert listed.returncode == 0, listed.stderr
    found = json.loads(listed.stdout)
    for verb in ("ping", "info", "stats"):
        assert [reply["name"] for reply in found[verb]] == ["testservice"], verb
    [stats] = found["stats"]
    echo = next(item for item in stats["endpoints"] if item["name"] == "echo")
    assert echo["num_requests"] == 1

    missing = manage(environment, "call", "nosuchservice.echo", "{}")
    assert missing.returncode == 1
    assert "no_responders" in missing.stderr
    assert "Traceback" not in missing.stderr


@pytest.mark.timeout(240)
def test_the_examples_order_flow_runs_on_rabbitmq(
    transactional_db: Any, nats_server: Any, runservice_process: Any, amqp_url: str
) -> None:
    """The e-commerce example's four services on RabbitMQ: a customer's order is paid, its
    stock committed and the customer notified, through RPCs, outboxes and durable events."""
    from tests.test_ecommerce_flow import place_an_order_on

    on_rabbitmq = {"CLIFFRACER_TRANSPORT_URL": amqp_url, "DJANGO_SETTINGS_MODULE": "tests.settings"}
    environment = child_environment(nats_server, on_rabbitmq)
    place_an_order_on(amqp_url, runservice_process, functools.partial(manage, environment))


@pytest.mark.timeout(300)
def test_durable_events_survive_a_kill_and_lost_connections(
    settings: Any,
    transactional_db: Any,
    runservice_process: Any,
    amqp_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The JetStream fault test (tests/test_faults.py) on RabbitMQ: events published while the
    consuming service is SIGKILLed and while the broker closes every connection of the test's
    vhost (``rabbitmqctl close_all_connections``: the machine's shared broker is not
    restarted) are all processed, once each (``processed_once`` turns a message stored twice,
    after a confirm lost with its connection, into a no-op)."""
    from django.db import connection

    from cliffracer_core.contrib.durable.models import DeadLetter
    from tests.durableapp.models import SideEffect
    from tests.test_faults import SETTINGS, STREAM, Publisher, duplicated, side_effects
    from tests.test_faults import wait_until as wait_for_count

    total = 2_000
    vhost = urlsplit(amqp_url).path.lstrip("/")
    settings.CLIFFRACER = {
        **settings.CLIFFRACER,
        "STREAMS": {STREAM: {"subjects": ["durabletest.>"], "max_age": 3600}},
    }
    monkeypatch.setenv("CLIFFRACER_TRANSPORT_URL", amqp_url)
    with connection.schema_editor() as editor:
        editor.create_model(SideEffect)
    environment = {
        **SETTINGS,
        "CONN_MAX_AGE": "60",
        "ACCESS_LOG_LEVEL": "WARNING",
        "CLIFFRACER_TRANSPORT_URL": amqp_url,
    }
    try:
        services = [runservice_process("durabletest", **environment)]
        publisher = Publisher(total, per_second=100)
        publisher.start()
        faults = []

        def at(count: int) -> None:
            assert wait_for_count(lambda: publisher.acknowledged >= count or publisher.error, 60)
            assert publisher.error is None, publisher.error

        at(500)
        services[-1].process.kill()
        faults.append(f"SIGKILL at {publisher.acknowledged}, {side_effects('work')[0]} done")
        services[-1].wait()
        services.append(runservice_process("durabletest", **environment))
        at(1000)
        closed = rabbitmqctl("close_all_connections", "-p", vhost, "fault test")
        assert closed.returncode == 0, closed.stderr
        faults.append(
            f"connections closed at {publisher.acknowledged}, {side_effects('work')[0]} done"
        )
        publisher.join(120)
        assert publisher.error is None, publisher.error
        assert publisher.acknowledged == total
        wait_for_count(lambda: side_effects("work")[0] >= total, 90, interval=0.25)
        time.sleep(3)  # anything redelivered late would show up as a duplicate now
        rows, distinct = side_effects("work")
        duplicates = duplicated("work")
        skipped = sum(
            process.output().count("was processed before; skipped") for process in services
        )
        summary = (
            f"published {publisher.acknowledged} ({publisher.retries} retries), side effects "
            f"{rows}, distinct {distinct}, duplicated {duplicates}, redeliveries of processed "
            f"events skipped {skipped}; " + "; ".join(faults)
        )
        print("\n" + summary)
        assert (rows, distinct, duplicates) == (total, total, 0), summary
        assert not DeadLetter.objects.exists(), summary
    finally:
        with connection.schema_editor() as editor:
            editor.delete_model(SideEffect)


@pytest.mark.django_db(transaction=True)
def test_runsystem_runs_the_example_on_rabbitmq(tmp_path: Any, amqp_url: str) -> None:
    """``make run`` on RabbitMQ: see ``tests.test_runsystem.run_the_example_on``."""
    from tests.test_runsystem import run_the_example_on

    run_the_example_on(tmp_path, amqp_url)
