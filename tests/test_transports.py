"""The transport conformance suite: every backend, held to the same semantics (NATS's).

Each test runs once per backend in ``BACKENDS``: ``nats`` against the session's real
nats-server, ``memory`` against a broker of its own. A backend passes only where it behaves as
NATS does, including where brokers are known to disagree (``orders.*`` and
``orders.eu.created``, ``orders.>`` and ``orders``). Where a test cannot apply to a backend, it
is parametrized for the others and says why.

Tests run their coroutines with ``run`` on one ``asyncio.Runner`` per test, the loop the
``transport`` fixture connected on (a NATS connection belongs to the loop it was made on).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any

import pytest

from cliffracer_core.core.errors import NoResponders, RemoteError, RemoteUnavailable, RpcTimeout
from cliffracer_core.core.headers import MSG_ID
from cliffracer_core.core.streams import STREAM_DEFAULTS, Stream
from cliffracer_core.testing.polling import wait_until
from cliffracer_core.transports import connect as connect_transport
from cliffracer_core.transports.base import Features, NoStream, StreamError, Transport
from cliffracer_core.transports.memory import reset_broker
from cliffracer_core.transports.nats.embedded import NatsServer
from tests.amqp_broker import amqp_url  # noqa: F401  (a fixture)
from tests.redis_broker import prefixed_url
from tests.sqs_broker import sqs_url

BACKENDS = ["nats", "memory", "amqp", "redis", "sqs"]
# How long a test lets messages that might still come arrive before it says none did.
QUIET = 0.2

_locations = itertools.count()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def url(backend: str, nats_server: NatsServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """The backend's URL: the session's nats-server, a memory broker of this test's own, or
    the session's vhost on the machine's RabbitMQ, a key prefix of its own on its Redis, or
    a deployment prefix of its own on the session's moto server."""
    if backend == "nats":
        yield nats_server.url
        return
    if backend == "amqp":
        yield request.getfixturevalue("amqp_url")
        return
    if backend == "redis":
        with prefixed_url() as location:
            yield location
        return
    if backend == "sqs":
        with sqs_url(request.getfixturevalue("shared_moto_server")) as location:
            yield location
        return
    location = f"memory://conformance-{next(_locations)}"
    yield location
    reset_broker(location)


@pytest.fixture
def runner() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as runner:
        yield runner


@pytest.fixture
def run(runner: asyncio.Runner) -> Callable[..., Any]:
    """Run a coroutine on the test's loop (failing it if it hangs)."""

    def run(coroutine: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
        return runner.run(asyncio.wait_for(coroutine, timeout))

    return run


@pytest.fixture
def connect(url: str, run: Callable[..., Any]) -> Iterator[Callable[[], Awaitable[Transport]]]:
    """Open another connection to the backend (closed after the test)."""
    opened: list[Transport] = []

    async def connect() -> Transport:
        transport = await connect_transport(url)
        opened.append(transport)
        return transport

    yield connect

    async def close_all() -> None:
        for transport in opened:
            await transport.close()

    run(close_all())


@pytest.fixture
def transport(connect: Callable[[], Awaitable[Transport]], run: Callable[..., Any]) -> Transport:
    return run(connect())


@pytest.fixture
def prefix() -> str:
    """A first subject token no other test uses."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def durable(transport: Transport) -> Transport:
    """The transport, for a test of durable streams: skipped where the backend declares none
    (``features.durable``; docs/transports.md says why)."""
    if not transport.features.durable:
        pytest.skip(f"{type(transport).__name__} declares no durable streams (features.durable).")
    return transport


def needs(transport: Transport, feature: str) -> Transport:
    """Skip a durable test where the backend declares it lacks ``feature``."""
    if not getattr(transport.features, feature):
        pytest.skip(f"{type(transport).__name__} declares no {feature} (features.{feature}).")
    return transport


@pytest.fixture
def history(durable: Transport) -> Transport:
    """For a test of what a stream keeps and numbers (``features.stream_history``)."""
    return needs(durable, "stream_history")


@pytest.fixture
def deduplicating(durable: Transport) -> Transport:
    """For a test of message-id deduplication in the stream (``features.deduplication``)."""
    return needs(durable, "deduplication")


@pytest.fixture
def make_stream(durable: Transport, run: Callable[..., Any]) -> Iterator[Callable[..., Any]]:
    """Create a stream of this test's own; return it and the first token of its subjects
    (it holds ``<token>.>``). Streams made are deleted after the test."""
    names: list[str] = []

    async def make(**options: Any) -> tuple[Stream, str]:
        token = uuid.uuid4().hex[:12]
        stream = Stream(f"T{token}", {**STREAM_DEFAULTS, "subjects": [f"d{token}.>"], **options})
        names.append(stream.name)
        assert await durable.ensure_stream(stream) == "created"
        return stream, f"d{token}"

    yield make

    async def delete_all() -> None:
        for name in names:
            await durable.delete_stream(name)

    run(delete_all())


async def collect(transport: Transport, subject: str, **options: Any) -> asyncio.Queue[Any]:
    """Subscribe to ``subject``; the queue gets what the subscription receives."""
    received: asyncio.Queue[Any] = asyncio.Queue()

    async def put(message: Any) -> None:
        await received.put(message)

    await transport.subscribe(subject, put, **options)
    await transport.flush()
    return received


async def take(queue: asyncio.Queue[Any], count: int = 1, timeout: float = 5.0) -> list[Any]:
    """The next ``count`` items of ``queue``."""
    async with asyncio.timeout(timeout):
        return [await queue.get() for _ in range(count)]


async def quiet(*transports: Transport) -> None:
    """Let whatever is still on its way arrive."""
    for transport in transports:
        await transport.flush()
    await asyncio.sleep(QUIET)


async def ignore(message: Any) -> None:
    pass


def drain(queue: asyncio.Queue[Any]) -> list[Any]:
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items


async def answer(transport: Transport, subject: str, reply: Callable[[Any], bytes]) -> Any:
    """A responder on ``subject`` that replies with ``reply(message)``."""

    async def respond(message: Any) -> None:
        await transport.publish(message.reply, reply(message))

    return await transport.subscribe(subject, respond)


# Connections and plain messages


# What a backend lacks, as the capability table of docs/transports.md says.
LACKING = {
    "amqp": ["deduplication", "stream_history"],
    "sqs": ["deduplication", "stream_history"],
}


def test_every_feature_is_declared(transport: Transport, backend: str) -> None:
    assert Features().missing(Features.NAMES) == list(Features.NAMES)
    assert transport.features.missing(Features.NAMES) == LACKING.get(backend, [])


def test_a_connection_reports_its_state(transport: Transport) -> None:
    assert transport.is_connected
    assert not transport.is_closed
    assert transport.reconnects == 0
    assert transport.server()
    assert transport.new_inbox() != transport.new_inbox()


def test_request_and_reply_carry_headers_both_ways(
    transport: Transport, connect: Callable[..., Any], run: Callable[..., Any], prefix: str
) -> None:
    async def main() -> None:
        responder = await connect()

        async def respond(message: Any) -> None:
            await responder.publish(
                message.reply,
                message.data.upper(),
                headers={"Answered-For": message.headers["Asked-By"], "Subject": message.subject},
            )

        await responder.subscribe(f"{prefix}.echo", respond, queue="echo")
        await responder.flush()
        reply = await transport.request(
            f"{prefix}.echo", b"hello", headers={"Asked-By": "tester"}, timeout=5
        )
        assert reply.data == b"HELLO"
        assert reply.headers == {"Answered-For": "tester", "Subject": f"{prefix}.echo"}

    run(main())


def test_a_reply_reaches_an_inbox(
    transport: Transport, connect: Callable[..., Any], run: Callable[..., Any], prefix: str
) -> None:
    async def main() -> None:
        responder = await connect()
        await answer(responder, f"{prefix}.ask", lambda message: b"to " + message.reply.encode())
        await responder.flush()
        inbox = transport.new_inbox()
        replies = await collect(transport, inbox)
        await transport.publish(f"{prefix}.ask", b"", reply=inbox)
        [reply] = await take(replies)
        assert reply.subject == inbox
        assert reply.data == f"to {inbox}".encode()
        assert reply.reply == ""
        # Where nobody listens, the server tells the reply subject so (no responders, 503).
        await transport.publish(f"{prefix}.nobody", b"", reply=inbox)
        [status] = await take(replies)
        assert (status.data, status.headers["Status"]) == (b"", "503")
        assert status.headers["Nats-Subject"] == f"{prefix}.nobody"

    run(main())


def test_a_request_without_a_reply_times_out(
    transport: Transport, run: Callable[..., Any], prefix: str
) -> None:
    async def main() -> None:
        await collect(transport, f"{prefix}.silent")  # listens, never answers
        started = time.monotonic()
        with pytest.raises(RpcTimeout) as raised:
            await transport.request(f"{prefix}.silent", b"", timeout=0.3)
        assert time.monotonic() - started >= 0.3
        assert (raised.value.code, raised.value.type) == (408, "timeout")

    run(main())


def test_a_request_nobody_listens_to_fails_with_no_responders(
    transport: Transport, run: Callable[..., Any], prefix: str
) -> None:
    async def main() -> None:
        with pytest.raises(NoResponders) as raised:
            await transport.request(f"{prefix}.nobody", b"", timeout=30)
        assert (raised.value.code, raised.value.type) == (503, "no_responders")

    run(main())


def test_a_prepared_request_carries_its_fixed_and_its_own_headers(
    transport: Transport, connect: Callable[..., Any], run: Callable[..., Any], prefix: str
) -> None:
    """prepare_request (the load generator's path): the same replies, headers and errors as
    request(), on every backend."""

    async def main() -> None:
        responder = await connect()

        async def respond(message: Any) -> None:
            headers = message.headers
            await responder.publish(
                message.reply,
                message.data.upper(),
                headers={"Seen": f"{headers['Asked-By']} {headers['Call']} {headers['Kept']}"},
            )

        await responder.subscribe(f"{prefix}.echo", respond, queue="echo")
        await responder.flush()
        fixed = {"Asked-By": "tester", "Kept": " line\nbreak "}
        prepared = transport.prepare_request(f"{prefix}.echo", headers=fixed, timeout=5)
        replies = await asyncio.gather(
            *(prepared(f"hello {number}".encode(), {"Call": str(number)}) for number in range(20))
        )
        assert [reply.data for reply in replies] == [f"HELLO {n}".encode() for n in range(20)]
        assert [reply.headers for reply in replies] == [
            {"Seen": f"tester {n} line break"} for n in range(20)
        ]
        assert fixed == {"Asked-By": "tester", "Kept": " line\nbreak "}  # left as it was
        nobody = transport.prepare_request(f"{prefix}.nobody", headers={}, timeout=30)
        with pytest.raises(NoResponders):
            await nobody(b"", {"Call": "1"})
        await collect(transport, f"{prefix}.silent")  # listens, never answers
        silent = transport.prepare_request(f"{prefix}.silent", headers={}, timeout=0.3)
        with pytest.raises(RpcTimeout) as raised:
            await silent(b"", {"Call": "1"})
        assert (raised.value.code, raised.value.type) == (408, "timeout")

    run(main())


def test_a_queue_group_shares_messages_among_its_members(
    transport: Transport, connect: Callable[..., Any], run: Callable[..., Any], prefix: str
) -> None:
    async def main() -> None:
        other = await connect()
        first = await collect(transport, f"{prefix}.work", queue="workers")
        second = await collect(other, f"{prefix}.work", queue="workers")
        everything = await collect(other, f"{prefix}.work")  # no group: gets every one
        for number in range(40):
            await transport.publish(f"{prefix}.work", str(number).encode())
        await take(everything, 40)
        await quiet(transport, other)
        one, two = drain(first), drain(second)
        assert sorted(int(m.data) for m in one + two) == list(range(40))
        assert one and two

    run(main())


def test_a_message_without_a_queue_group_reaches_every_subscription(
    transport: Transport, connect: Callable[..., Any], run: Callable[..., Any], prefix: str
) -> None:
    async def main() -> None:
        other = await connect()
        queues = [
            await collect(transport, f"{prefix}.news"),
            await collect(transport, f"{prefix}.news"),
            await collect(other, f"{prefix}.news"),
        ]
        for number in range(3):
            await transport.publish(f"{prefix}.news", str(number).encode())
        for queue in queues:
            assert [m.data for m in await take(queue, 3)] == [b"0", b"1", b"2"]
        await quiet(transport, other)
        assert all(queue.empty() for queue in queues)

    run(main())


def test_wildcards_match_as_nats_does(
    transport: Transport, connect: Callable[..., Any], run: Callable[..., Any], prefix: str
) -> None:
    p = prefix
    expected = {
        f"{p}.orders": [f"{p}.orders"],
        f"{p}.orders.*": [f"{p}.orders.created"],  # not orders.eu.created, not orders
        f"{p}.orders.>": [f"{p}.orders.created", f"{p}.orders.eu.created"],  # not orders
        f"{p}.*.created": [f"{p}.orders.created", f"{p}.payments.created"],
        f"{p}.*": [f"{p}.orders", f"{p}.created"],
        f"{p}.>": [
            f"{p}.orders",
            f"{p}.orders.created",
            f"{p}.orders.eu.created",
            f"{p}.payments.created",
            f"{p}.created",
        ],
        "*.created": [f"{p}.created"],
        ">": [
            p,
            f"{p}.orders",
            f"{p}.orders.created",
            f"{p}.orders.eu.created",
            f"{p}.payments.created",
            f"{p}.created",
        ],
    }
    published = expected[">"]

    async def main() -> None:
        publisher = await connect()
        queues = {pattern: await collect(transport, pattern) for pattern in expected}
        for subject in published:
            await publisher.publish(subject, b"")
        await publisher.flush()
        for pattern, subjects in expected.items():
            received = await take(queues[pattern], len(subjects))
            # ">" and "*.created" hear every test's traffic: keep this test's.
            assert [m.subject for m in received if m.subject.split(".")[0] == p] == subjects, (
                pattern
            )
        await quiet(transport, publisher)
        for pattern in expected:
            assert not [m for m in drain(queues[pattern]) if m.subject.split(".")[0] == p], pattern

    run(main())


def test_callbacks_run_in_a_task_of_their_own_one_at_a_time(
    transport: Transport, run: Callable[..., Any], prefix: str
) -> None:
    async def main() -> None:
        publisher = asyncio.current_task()
        running = []
        most = 0
        done: asyncio.Queue[Any] = asyncio.Queue()

        async def slow(message: Any) -> None:
            nonlocal most
            assert asyncio.current_task() is not publisher
            running.append(message)
            most = max(most, len(running))
            await asyncio.sleep(0.01)
            running.remove(message)
            await done.put(message)

        await transport.subscribe(f"{prefix}.slow", slow)
        await transport.flush()
        for number in range(5):
            await transport.publish(f"{prefix}.slow", str(number).encode())
        assert [m.data for m in await take(done, 5)] == [b"0", b"1", b"2", b"3", b"4"]
        assert most == 1

    run(main())


@pytest.mark.parametrize("limit", ["max_pending", "max_pending_bytes"])
def test_a_subscription_drops_what_exceeds_its_pending_limits_and_reports_it(
    transport: Transport,
    connect: Callable[..., Any],
    run: Callable[..., Any],
    prefix: str,
    limit: str,
) -> None:
    async def main() -> None:
        subscriber = await connect()
        dropped: list[str] = []
        subscriber.on_dropped = dropped.append
        release = asyncio.Event()
        received = []

        async def stuck(message: Any) -> None:
            await release.wait()
            received.append(message)

        # Room for two 40-byte messages waiting.
        options = {"max_pending": 2} if limit == "max_pending" else {"max_pending_bytes": 100}
        await subscriber.subscribe(f"{prefix}.flood", stuck, **options)
        await subscriber.flush()
        for _ in range(20):
            await transport.publish(f"{prefix}.flood", b"x" * 40)
        await quiet(transport, subscriber)
        release.set()
        await quiet(subscriber)
        assert dropped and set(dropped) == {f"{prefix}.flood"}
        assert len(received) + len(dropped) == 20
        assert 1 < len(received) <= 3  # two waiting, and perhaps the one the callback held

    run(main())


def test_request_many_gathers_every_responder_until_they_stall(
    transport: Transport, connect: Callable[..., Any], run: Callable[..., Any], prefix: str
) -> None:
    async def main() -> None:
        for name in (b"a", b"b", b"c"):
            responder = await connect()
            await answer(responder, f"{prefix}.who", lambda message, name=name: name)
            await responder.flush()
        started = time.monotonic()
        replies = await transport.request_many(f"{prefix}.who", timeout=20, stall=0.3)
        assert sorted(reply.data for reply in replies) == [b"a", b"b", b"c"]
        assert time.monotonic() - started < 20  # stopped once no more came
        limited = await transport.request_many(f"{prefix}.who", timeout=20, limit=2)
        assert len(limited) == 2
        # Nobody listens: the broker's no-responders status is no reply of anyone's.
        assert await transport.request_many(f"{prefix}.nobody", timeout=0.2, stall=0.1) == []

    run(main())


def test_flush_puts_a_subscription_in_effect(
    transport: Transport, connect: Callable[..., Any], run: Callable[..., Any], prefix: str
) -> None:
    """Right after ``flush()`` another connection's message reaches the new subscription
    (many times over: a flush that can return early fails some of them)."""

    async def main() -> None:
        publisher = await connect()
        for attempt in range(100):
            subject = f"{prefix}.ready.{attempt}"
            received: asyncio.Queue[Any] = asyncio.Queue()

            async def put(message: Any, received: asyncio.Queue[Any] = received) -> None:
                await received.put(message)

            await transport.subscribe(subject, put)
            await transport.flush()
            await publisher.publish(subject, b"first")
            await publisher.flush()
            assert [m.data for m in await take(received, timeout=2)] == [b"first"], attempt

    run(main())


def test_close_stops_subscriptions_and_refuses_to_send(
    transport: Transport, connect: Callable[..., Any], run: Callable[..., Any], prefix: str
) -> None:
    async def main() -> None:
        closing = await connect()
        received = await collect(closing, f"{prefix}.bye")
        await closing.close()
        assert closing.is_closed and not closing.is_connected
        await closing.close()  # a second close does nothing
        async with asyncio.timeout(5):  # once the server has seen the connection go
            while True:
                try:
                    await transport.request(f"{prefix}.bye", b"", timeout=0.1)
                except RpcTimeout:
                    continue
                except NoResponders:
                    break
        with pytest.raises(RemoteUnavailable) as raised:
            await closing.publish(f"{prefix}.bye", b"")
        assert raised.value.type == "transport_unavailable"
        with pytest.raises(RemoteUnavailable):
            await closing.flush()
        await quiet(transport)
        assert received.empty()

    run(main())


def test_headers_arrive_as_copies(
    transport: Transport, connect: Callable[..., Any], run: Callable[..., Any], prefix: str
) -> None:
    async def main() -> None:
        first = await collect(transport, f"{prefix}.h")
        second = await collect(transport, f"{prefix}.h")
        headers = {"Key": "value"}
        await transport.publish(f"{prefix}.h", b"", headers=headers)
        headers["Key"] = "changed"
        [one], [two] = await take(first), await take(second)
        assert one.headers == {"Key": "value"}
        one.headers["Key"] = "mine"
        assert two.headers == {"Key": "value"}
        await transport.publish(f"{prefix}.h", b"", headers={})
        await transport.publish(f"{prefix}.h", b"", headers={" Spaced ": "  out  "})
        assert [m.headers for m in await take(first, 2)] == [None, {"Spaced": "out"}]

    run(main())


def test_bad_subjects_and_oversized_messages_are_refused(
    transport: Transport, run: Callable[..., Any], prefix: str
) -> None:
    async def main() -> None:
        with pytest.raises(RemoteError) as raised:
            await transport.publish(f"{prefix} spaced", b"")
        assert (raised.value.code, raised.value.type) == (400, "bad_subject")
        for pattern in (f"{prefix}..empty", f"{prefix}.>.more", f"{prefix}.a*"):
            with pytest.raises(RemoteError) as raised:
                await transport.subscribe(pattern, ignore)
            assert raised.value.code == 400, pattern
        with pytest.raises(RemoteError) as raised:
            await transport.publish(f"{prefix}.big", b"x" * (1024 * 1024 + 1))
        assert (raised.value.code, raised.value.type) == (413, "request_too_large")

    run(main())


@pytest.mark.parametrize("backend", ["nats"])
def test_a_subscription_works_again_after_the_server_restarts(
    backend: str, tmp_path: Any, prefix: str
) -> None:
    """nats only, on a server of its own: a memory broker lives in the process, so it has no
    connection to lose and nothing to reconnect to (its ``reconnects`` stays 0, as
    ``test_a_connection_reports_its_state`` checks)."""

    async def main(server: NatsServer) -> None:
        subscriber = await connect_transport(server.url)
        publisher = await connect_transport(server.url)
        try:
            received = await collect(subscriber, f"{prefix}.after")
            await asyncio.to_thread(server.restart)
            async with asyncio.timeout(15):
                while subscriber.reconnects < 1 or publisher.reconnects < 1:
                    await asyncio.sleep(0.05)
            await subscriber.flush()
            await publisher.publish(f"{prefix}.after", b"again")
            assert [m.data for m in await take(received)] == [b"again"]
            assert subscriber.is_connected
        finally:
            await subscriber.close()
            await publisher.close()

    with NatsServer(store_dir=tmp_path / "nats") as server:
        asyncio.run(main(server))


@pytest.mark.parametrize("backend", ["nats"])
def test_a_plain_nats_publish_goes_straight_to_the_buffer_and_falls_back_when_it_cannot(
    backend: str, tmp_path: Any, prefix: str
) -> None:
    """A publish without headers (every reply) is written into nats-py's buffer inline while
    connected (transports/nats/direct.py); a bad subject, an oversized body and a lost
    connection go through ``Client.publish``, which refuses or buffers as it always does."""
    from cliffracer_core.transports.nats import direct

    async def main(server: NatsServer) -> None:
        # One connection hears its own messages: on reconnecting, nats-py subscribes again
        # before it sends what it buffered, so nothing published meanwhile is missed.
        publisher = await connect_transport(server.url)
        try:
            assert publisher.direct
            received = await collect(publisher, f"{prefix}.plain")
            client = publisher.client
            sent = client.stats["out_msgs"]
            assert direct.send(client, f"{prefix}.plain", b"one")
            await publisher.publish(f"{prefix}.plain", b"two")
            assert client.stats["out_msgs"] == sent + 2
            assert [m.data for m in await take(received, 2)] == [b"one", b"two"]
            assert not direct.send(client, f"{prefix}.bad\r\nPUB x 1", b"")
            assert not direct.send(client, "", b"")
            assert not direct.send(client, f"{prefix}.big", b"x" * (client._max_payload + 1))
            await asyncio.to_thread(server.kill)
            async with asyncio.timeout(10):
                while publisher.is_connected:
                    await asyncio.sleep(0.02)
            assert not direct.send(client, f"{prefix}.plain", b"lost?")
            await publisher.publish(f"{prefix}.plain", b"buffered")  # nats-py keeps it
            await asyncio.to_thread(server.start)
            assert [m.data for m in await take(received, timeout=15)] == [b"buffered"]
            assert drain(received) == []
        finally:
            await publisher.close()

    with NatsServer(store_dir=tmp_path / "nats") as server:
        asyncio.run(main(server))


# Durable streams


def test_ensure_stream_creates_updates_and_refuses(
    transport: Transport, make_stream: Callable[..., Any], run: Callable[..., Any]
) -> None:
    async def main() -> None:
        stream, subject = await make_stream()
        assert await transport.ensure_stream(stream) == "unchanged"
        changed = Stream(stream.name, {**stream.options, "max_msgs": 100})
        assert await transport.ensure_stream(changed) == "updated"
        assert await transport.ensure_stream(changed) == "unchanged"
        state = await transport.stream_state(stream.name)
        assert (state.name, state.messages, state.bytes, state.consumers) == (stream.name, 0, 0, 0)
        assert state.subjects == [f"{subject}.>"]
        assert state.incarnation
        refused = [
            Stream(f"{stream.name}X", {**stream.options, "subjects": [f"{subject}.part"]}),
            Stream(stream.name, {**stream.options, "storage": "memory"}),
            Stream(f"{stream.name}Y", {**STREAM_DEFAULTS, "subjects": ["y"], "max_age": 1.0}),
        ]
        for declaration in refused:  # overlapping subjects, new storage, window > max age
            with pytest.raises(StreamError):
                await transport.ensure_stream(declaration)
        assert await transport.stream_state(f"{stream.name}X") is None

    run(main())


@pytest.mark.usefixtures("history")
def test_publish_durable_numbers_messages_and_stores_them(
    transport: Transport, make_stream: Callable[..., Any], run: Callable[..., Any]
) -> None:
    async def main() -> None:
        stream, subject = await make_stream()
        sequences = [
            await transport.publish_durable(
                f"{subject}.{n}", f"body {n}".encode(), headers={"N": str(n)}, msg_id=f"m{n}"
            )
            for n in range(3)
        ]
        assert sequences == [1, 2, 3]
        stored = await transport.stored_message(stream.name, 2)
        assert (stored.subject, stored.data) == (f"{subject}.1", b"body 1")
        assert stored.headers == {"N": "1", MSG_ID: "m1"}
        assert await transport.stored_message(stream.name, 4) is None
        state = await transport.stream_state(stream.name)
        # JetStream's file store counts 30 + subject + 4 + headers + body bytes a message:
        # 30 + 15 + 4 + 35 ("NATS/1.0", "N: 0", "Nats-Msg-Id: m0", CRLFs) + 6.
        assert (state.messages, state.bytes) == (3, 3 * 90)

    run(main())


@pytest.mark.usefixtures("durable")
def test_publish_durable_without_a_stream_raises_no_stream(
    transport: Transport, run: Callable[..., Any], prefix: str
) -> None:
    async def main() -> None:
        with pytest.raises(NoStream):
            await transport.publish_durable(f"{prefix}.lost", b"", msg_id="x")

    run(main())


@pytest.mark.usefixtures("deduplicating")
def test_a_message_id_is_stored_once_within_the_duplicate_window(
    transport: Transport, make_stream: Callable[..., Any], run: Callable[..., Any]
) -> None:
    async def main() -> None:
        stream, subject = await make_stream(duplicate_window=0.2)
        assert await transport.publish_durable(f"{subject}.a", b"1", msg_id="same") == 1
        assert await transport.publish_durable(f"{subject}.a", b"2", msg_id="same") == 1
        assert await transport.publish_durable(f"{subject}.a", b"3", msg_id="other") == 2
        assert (await transport.stream_state(stream.name)).messages == 2
        await asyncio.sleep(0.2)

        async def stored_again() -> bool:
            return await transport.publish_durable(f"{subject}.a", b"4", msg_id="same") == 3

        # Past the window the id is forgotten; a broker prunes ids on its own timer.
        await wait_until(stored_again, timeout=5, what="the id to leave the duplicate window")

    run(main())


@pytest.mark.usefixtures("history")
def test_stream_limits_drop_the_oldest_or_refuse_the_newest(
    transport: Transport, make_stream: Callable[..., Any], run: Callable[..., Any]
) -> None:
    async def main() -> None:
        counted, subject = await make_stream(max_msgs=3)
        for n in range(5):
            await transport.publish_durable(f"{subject}.a", b"x", msg_id=f"c{n}")
        assert (await transport.stream_state(counted.name)).messages == 3
        assert await transport.stored_message(counted.name, 2) is None
        assert (await transport.stored_message(counted.name, 3)).data == b"x"

        sized, subject = await make_stream(max_bytes=300)
        for n in range(5):
            await transport.publish_durable(f"{subject}.a", b"y" * 100, msg_id=f"s{n}")
        state = await transport.stream_state(sized.name)
        assert (state.messages, state.bytes) == (1, 178)  # 30 + 15 + 4 + 29 + 100: one fits
        assert await transport.stored_message(sized.name, 4) is None
        assert await transport.stored_message(sized.name, 5) is not None

        aged, subject = await make_stream(max_age=0.2, duplicate_window=0.1)
        await transport.publish_durable(f"{subject}.a", b"z", msg_id="old")
        await asyncio.sleep(0.2)

        async def aged_out() -> bool:
            return (await transport.stream_state(aged.name)).messages == 0

        # The broker removes aged messages on its own timer, late when the machine is busy.
        await wait_until(aged_out, timeout=5, what="the aged message to be removed")

        per_subject, subject = await make_stream(max_msgs_per_subject=1)
        for n, token in enumerate("aab"):
            await transport.publish_durable(f"{subject}.{token}", b"", msg_id=f"p{n}")
        assert (await transport.stream_state(per_subject.name)).messages == 2
        assert await transport.stored_message(per_subject.name, 1) is None

        full, subject = await make_stream(max_msgs=1, discard="new")
        await transport.publish_durable(f"{subject}.a", b"", msg_id="first")
        with pytest.raises(RemoteUnavailable) as raised:
            await transport.publish_durable(f"{subject}.a", b"", msg_id="second")
        assert raised.value.type == "publish_refused"

        # Headers (here only Nats-Msg-Id: 28 bytes) and body count against max_msg_size.
        capped, subject = await make_stream(max_msg_size=100)
        assert await transport.publish_durable(f"{subject}.a", b"x" * 72, msg_id="a") == 1
        with pytest.raises(RemoteUnavailable) as raised:
            await transport.publish_durable(f"{subject}.a", b"x" * 73, msg_id="b")
        assert raised.value.type == "publish_refused"

    run(main())


@pytest.mark.usefixtures("history")
@pytest.mark.parametrize("retention", ["workqueue", "interest"])
def test_a_stream_kept_for_its_readers_drops_what_they_settled(
    transport: Transport, make_stream: Callable[..., Any], run: Callable[..., Any], retention: str
) -> None:
    async def main() -> None:
        stream, subject = await make_stream(retention=retention)
        await transport.publish_durable(f"{subject}.early", b"", msg_id="early")
        # A work queue keeps what nobody has read yet; interest keeps nothing nobody wants.
        unread = 1 if retention == "workqueue" else 0
        assert (await transport.stream_state(stream.name)).messages == unread
        deliveries: asyncio.Queue[Any] = asyncio.Queue()
        consumer = await transport.consume(
            stream.name,
            "reader",
            deliveries.put,
            filter_subject=f"{subject}.>",
            ack_wait=5,
            max_in_flight=5,
        )
        await transport.publish_durable(f"{subject}.late", b"", msg_id="late")
        received = await take(deliveries, 1 + unread)
        assert [d.sequence for d in received] == [1, 2][-len(received) :]
        assert (await transport.stream_state(stream.name)).messages == 1 + unread
        for delivery in received:
            await delivery.ack()
        await quiet(transport)
        assert (await transport.stream_state(stream.name)).messages == 0
        await consumer.close()

    run(main())


def test_an_ordered_stream_delivers_in_publish_order_and_is_declared_once(
    transport: Transport, make_stream: Callable[..., Any], run: Callable[..., Any]
) -> None:
    """``ordered: true`` is accepted by every backend (on SNS/SQS it makes the stream FIFO):
    a consumer gets the stream's events in publish order, across its subjects, before and
    after it attached; declaring the stream again changes nothing."""

    async def main() -> None:
        stream, subject = await make_stream(ordered=True)
        for n in range(4):
            await transport.publish_durable(f"{subject}.{'ab'[n % 2]}", b"%d" % n, msg_id=f"m{n}")
        deliveries: asyncio.Queue[Any] = asyncio.Queue()

        async def handle(delivery: Any) -> None:
            # Settled as it comes: a FIFO queue gives out nothing after what is held.
            await delivery.ack()
            await deliveries.put(delivery)

        consumer = await transport.consume(
            stream.name,
            "reader",
            handle,
            filter_subject=f"{subject}.>",
            ack_wait=5,
            max_in_flight=10,
        )
        for n in range(4, 12):
            await transport.publish_durable(f"{subject}.{'ab'[n % 2]}", b"%d" % n, msg_id=f"m{n}")
        received = await take(deliveries, 12, timeout=20)
        assert [d.data for d in received] == [b"%d" % n for n in range(12)]
        assert [d.subject.rsplit(".", 1)[1] for d in received] == list("ab" * 6)
        assert await transport.ensure_stream(stream) == "unchanged"
        assert await transport.compare_stream(stream) == []
        await consumer.close()

    run(main())


def test_a_consumer_delivers_from_the_start_and_acks(
    transport: Transport, make_stream: Callable[..., Any], run: Callable[..., Any]
) -> None:
    async def main() -> None:
        stream, subject = await make_stream()
        for n in range(3):
            await transport.publish_durable(
                f"{subject}.{n}", str(n).encode(), headers={"N": str(n)}, msg_id=f"m{n}"
            )
        deliveries: asyncio.Queue[Any] = asyncio.Queue()
        consumer = await transport.consume(
            stream.name,
            "reader",
            deliveries.put,
            filter_subject=f"{subject}.>",
            ack_wait=5,
            max_in_flight=10,
        )
        assert consumer.name == "reader"
        assert consumer.incarnation == (await transport.stream_state(stream.name)).incarnation
        first = await take(deliveries, 3)
        assert [(d.subject, d.data, d.delivered) for d in first] == [
            (f"{subject}.{n}", str(n).encode(), 1) for n in range(3)
        ]
        sequences = [d.sequence for d in first]
        # Without stream_history a publisher numbers its messages: unique, in its order.
        numbered = transport.features.stream_history
        assert sequences == [1, 2, 3] if numbered else sequences == sorted(set(sequences))
        assert first[0].stream == stream.name
        assert first[0].headers == {"N": "0", MSG_ID: "m0"}
        assert abs(first[0].stored_at - time.time()) < 60
        for delivery in first:
            await delivery.ack()
        await transport.publish_durable(f"{subject}.later", b"later", msg_id="later")
        [later] = await take(deliveries)
        assert later.delivered == 1
        assert later.sequence == 4 if numbered else later.sequence > sequences[-1]
        await later.ack()
        await quiet(transport)
        assert deliveries.empty()
        state = await transport.consumer_state(stream.name, "reader")
        assert (state.name, state.pending, state.ack_pending, state.redelivered) == (
            "reader",
            0,
            0,
            0,
        )
        assert (await transport.stream_state(stream.name)).consumers == 1
        await consumer.close()

    run(main())


def test_a_naked_delivery_comes_again_after_its_delay(
    transport: Transport, make_stream: Callable[..., Any], run: Callable[..., Any]
) -> None:
    async def main() -> None:
        stream, subject = await make_stream()
        await transport.publish_durable(f"{subject}.a", b"retry me", msg_id="n")
        deliveries: asyncio.Queue[Any] = asyncio.Queue()
        consumer = await transport.consume(
            stream.name,
            "retrier",
            deliveries.put,
            filter_subject=f"{subject}.>",
            ack_wait=5,
            max_in_flight=1,
        )
        [first] = await take(deliveries)
        naked_at = time.monotonic()
        await first.nak(delay=0.3)
        [again] = await take(deliveries)
        assert time.monotonic() - naked_at >= 0.3
        assert (again.sequence, again.delivered, again.data) == (first.sequence, 2, b"retry me")
        state = await transport.consumer_state(stream.name, "retrier")
        assert (state.ack_pending, state.redelivered) == (1, 1)
        await again.ack()
        await consumer.close()

    run(main())


def test_a_failing_callback_has_its_delivery_come_again(
    transport: Transport, make_stream: Callable[..., Any], run: Callable[..., Any]
) -> None:
    async def main() -> None:
        stream, subject = await make_stream()
        await transport.publish_durable(f"{subject}.a", b"", msg_id="f")
        deliveries: asyncio.Queue[Any] = asyncio.Queue()

        async def fail_first(delivery: Any) -> None:
            await deliveries.put(delivery)
            if delivery.delivered == 1:
                raise RuntimeError("the handler failed")

        consumer = await transport.consume(
            stream.name,
            "failing",
            fail_first,
            filter_subject=f"{subject}.>",
            ack_wait=5,
            max_in_flight=1,
        )
        assert [d.delivered for d in await take(deliveries, 2)] == [1, 2]
        await consumer.close()

    run(main())


def test_a_terminated_delivery_never_comes_again(
    transport: Transport, make_stream: Callable[..., Any], run: Callable[..., Any]
) -> None:
    async def main() -> None:
        stream, subject = await make_stream()
        await transport.publish_durable(f"{subject}.a", b"poison", msg_id="p")
        await transport.publish_durable(f"{subject}.a", b"fine", msg_id="q")
        deliveries: asyncio.Queue[Any] = asyncio.Queue()
        consumer = await transport.consume(
            stream.name,
            "terminator",
            deliveries.put,
            filter_subject=f"{subject}.>",
            ack_wait=0.2,
            max_in_flight=1,
        )
        [poison] = await take(deliveries)
        await poison.term()
        [fine] = await take(deliveries)
        assert fine.data == b"fine"
        await fine.ack()
        await asyncio.sleep(0.5)  # more than two ack waits
        assert deliveries.empty()
        state = await transport.consumer_state(stream.name, "terminator")
        assert (state.pending, state.ack_pending) == (0, 0)
        await consumer.close()

    run(main())


def test_an_attachment_keeps_what_it_holds_until_it_goes_away(
    transport: Transport,
    connect: Callable[..., Any],
    make_stream: Callable[..., Any],
    run: Callable[..., Any],
) -> None:
    """Held past the ack wait while attached; delivered again after the ack wait once the
    attachment closes without settling (to another attachment, on another connection)."""

    async def main() -> None:
        stream, subject = await make_stream()
        await transport.publish_durable(f"{subject}.a", b"held", msg_id="h")
        held: asyncio.Queue[Any] = asyncio.Queue()
        options = {"filter_subject": f"{subject}.>", "ack_wait": 0.2, "max_in_flight": 1}
        holder = await transport.consume(stream.name, "shared", held.put, **options)
        [delivery] = await take(held)
        await delivery.in_progress()
        other = await connect()
        later: asyncio.Queue[Any] = asyncio.Queue()
        waiting = await other.consume(stream.name, "shared", later.put, **options)
        await asyncio.sleep(0.5)  # more than two ack waits
        assert held.empty() and later.empty()
        await holder.close()
        [again] = await take(later)
        assert (again.sequence, again.delivered) == (delivery.sequence, 2)
        await again.ack()
        await waiting.close()

    run(main())


def test_attachments_share_a_consumer_within_their_max_in_flight(
    transport: Transport,
    connect: Callable[..., Any],
    make_stream: Callable[..., Any],
    run: Callable[..., Any],
) -> None:
    async def main() -> None:
        stream, subject = await make_stream()
        for n in range(10):
            await transport.publish_durable(f"{subject}.a", str(n).encode(), msg_id=f"m{n}")
        other = await connect()
        deliveries: asyncio.Queue[Any] = asyncio.Queue()

        def to(attachment: str) -> Callable[[Any], Awaitable[None]]:
            async def put(delivery: Any) -> None:
                await deliveries.put((attachment, delivery))

            return put

        options = {"filter_subject": f"{subject}.>", "ack_wait": 5, "max_in_flight": 2}
        attachments = [
            await transport.consume(stream.name, "pair", to("one"), **options),
            await other.consume(stream.name, "pair", to("two"), **options),
        ]
        await quiet(transport, other)
        held = drain(deliveries)
        assert sorted(name for name, _ in held) == ["one", "one", "two", "two"]
        seen = [delivery for _, delivery in held]
        while len(seen) < 10:
            for _, delivery in held:
                await delivery.ack()
            held = await take(deliveries, min(4, 10 - len(seen)))
            assert all([name for name, _ in held].count(name) <= 2 for name in ("one", "two"))
            seen += [delivery for _, delivery in held]
        for _, delivery in held:
            await delivery.ack()
        await quiet(transport, other)
        assert deliveries.empty()
        assert sorted(d.data for d in seen) == sorted(str(n).encode() for n in range(10))
        assert len({d.sequence for d in seen}) == 10
        if transport.features.stream_history:
            assert sorted(d.sequence for d in seen) == list(range(1, 11))
        assert {d.delivered for d in seen} == {1}
        for attachment in attachments:
            await attachment.close()

    run(main())


def test_a_stopped_attachment_takes_nothing_new_and_settles_what_it_holds(
    transport: Transport,
    connect: Callable[..., Any],
    make_stream: Callable[..., Any],
    run: Callable[..., Any],
) -> None:
    async def main() -> None:
        stream, subject = await make_stream()
        await transport.publish_durable(f"{subject}.a", b"1", msg_id="1")
        deliveries: asyncio.Queue[Any] = asyncio.Queue()
        options = {"filter_subject": f"{subject}.>", "ack_wait": 5, "max_in_flight": 1}
        stopping = await transport.consume(stream.name, "stopper", deliveries.put, **options)
        [held] = await take(deliveries)
        stopping.stop()
        await transport.publish_durable(f"{subject}.a", b"2", msg_id="2")
        await held.ack()
        await quiet(transport)
        assert deliveries.empty()
        await stopping.close()
        taker = await (await connect()).consume(stream.name, "stopper", deliveries.put, **options)
        [next_one] = await take(deliveries)
        assert next_one.data == b"2"
        assert next_one.sequence == 2 or not transport.features.stream_history
        await next_one.ack()
        await taker.close()

    run(main())


def test_consumer_state_and_delete_consumer(
    transport: Transport, make_stream: Callable[..., Any], run: Callable[..., Any]
) -> None:
    async def main() -> None:
        stream, subject = await make_stream()
        for n in range(3):
            await transport.publish_durable(f"{subject}.{n}", b"", msg_id=f"m{n}")
        await transport.publish_durable(f"{subject}.other.x", b"", msg_id="unfiltered")
        deliveries: asyncio.Queue[Any] = asyncio.Queue()
        options = {"filter_subject": f"{subject}.*", "ack_wait": 5, "max_in_flight": 1}
        consumer = await transport.consume(stream.name, "counted", deliveries.put, **options)
        [first] = await take(deliveries)
        await quiet(transport)
        state = await transport.consumer_state(stream.name, "counted")
        assert (state.pending, state.ack_pending, state.redelivered) == (2, 1, 0)
        await first.nak()
        # Delivered again before or after the next ones (JetStream settles asynchronously).
        sequences = {first.sequence}
        while (again := (await take(deliveries))[0]).sequence != first.sequence:
            sequences.add(again.sequence)
            await again.ack()
        assert again.delivered == 2
        state = await transport.consumer_state(stream.name, "counted")
        assert (state.pending, state.ack_pending, state.redelivered) == (3 - len(sequences), 1, 1)
        await consumer.close()
        assert await transport.delete_consumer(stream.name, "counted")
        assert await transport.consumer_state(stream.name, "counted") is None
        assert not await transport.delete_consumer(stream.name, "counted")
        assert await transport.consumer_state(stream.name, "never") is None
        if not transport.features.stream_history:
            return  # no history for a new consumer to read from the start
        # Attached again, it is a new consumer: from the start, first deliveries.
        consumer = await transport.consume(stream.name, "counted", deliveries.put, **options)
        [anew] = await take(deliveries)
        assert (anew.sequence, anew.delivered) == (1, 1)
        await consumer.close()

    run(main())


@pytest.mark.usefixtures("history")
def test_a_running_attachment_starts_over_when_its_consumer_is_deleted(
    transport: Transport, make_stream: Callable[..., Any], run: Callable[..., Any]
) -> None:
    """As NATS's attachment does: it creates the consumer again, delivering from the start."""

    async def main() -> None:
        stream, subject = await make_stream()
        await transport.publish_durable(f"{subject}.a", b"", msg_id="1")
        deliveries: asyncio.Queue[Any] = asyncio.Queue()
        options = {"filter_subject": f"{subject}.>", "ack_wait": 1, "max_in_flight": 5}
        consumer = await transport.consume(stream.name, "renewed", deliveries.put, **options)
        [first] = await take(deliveries)
        await first.ack()
        assert await transport.delete_consumer(stream.name, "renewed")
        [anew] = await take(deliveries)
        assert (anew.sequence, anew.delivered) == (1, 1)
        await anew.ack()
        await consumer.close()

    run(main())


def test_a_stream_created_again_is_a_new_incarnation(
    transport: Transport, make_stream: Callable[..., Any], run: Callable[..., Any]
) -> None:
    async def main() -> None:
        stream, subject = await make_stream()
        before = (await transport.stream_state(stream.name)).incarnation
        await transport.publish_durable(f"{subject}.a", b"old", msg_id="1")
        await transport.publish_durable(f"{subject}.a", b"old", msg_id="2")
        deliveries: asyncio.Queue[Any] = asyncio.Queue()
        options = {"filter_subject": f"{subject}.>", "ack_wait": 1, "max_in_flight": 5}
        consumer = await transport.consume(stream.name, "follower", deliveries.put, **options)
        for delivery in await take(deliveries, 2):
            await delivery.ack()
        assert await transport.delete_stream(stream.name)
        assert await transport.stream_state(stream.name) is None
        assert not await transport.delete_stream(stream.name)
        assert await transport.ensure_stream(stream) == "created"
        after = (await transport.stream_state(stream.name)).incarnation
        assert after != before
        # The same message id is new to the new stream, and numbered from 1 again.
        numbered = transport.features.stream_history
        sequence = await transport.publish_durable(f"{subject}.a", b"new", msg_id="1")
        assert sequence == 1 or not numbered
        # The running attachment follows the stream into its new life.
        [renewed] = await take(deliveries)
        assert (renewed.sequence, renewed.delivered, renewed.data) == (sequence, 1, b"new")
        assert consumer.incarnation == after
        await renewed.ack()
        await consumer.close()

    run(main())


# The memory broker itself


@pytest.mark.parametrize("backend", ["memory"])
def test_memory_brokers_are_separate_by_location_and_reset(
    backend: str, run: Callable[..., Any], prefix: str
) -> None:
    """memory only: how its brokers are found and reset."""

    async def main() -> None:
        default, other = f"memory://{prefix}", f"memory://{prefix}-other"
        one, two, elsewhere = [await connect_transport(u) for u in (default, default, other)]
        received = await collect(one, "hello")
        await two.publish("hello", b"shared")
        assert [m.data for m in await take(received)] == [b"shared"]
        with pytest.raises(NoResponders):
            await elsewhere.request("hello", b"", timeout=5)
        await one.ensure_stream(Stream("KEPT", {**STREAM_DEFAULTS, "subjects": ["kept.>"]}))
        reset_broker(default)
        assert await two.stream_state("KEPT") is None
        with pytest.raises(NoResponders):
            await two.request("hello", b"", timeout=5)
        for transport in (one, two, elsewhere):
            await transport.close()
        reset_broker(other)

    run(main())


@pytest.mark.parametrize("backend", ["memory"])
def test_memory_delivers_on_each_subscriptions_own_loop(
    transport: Transport, make_stream: Callable[..., Any], run: Callable[..., Any], prefix: str
) -> None:
    """memory only: NATS delivers over a socket; a memory broker must hand messages and
    deliveries to another thread's loop itself."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    seen: list[tuple[str, asyncio.AbstractEventLoop]] = []
    arrived = threading.Event()

    async def subscribe_there(stream: str, subject: str) -> Any:
        async def note(message: Any) -> None:
            seen.append((message.subject, asyncio.get_running_loop()))
            if len(seen) == 2:
                arrived.set()

        async def settle(delivery: Any) -> None:
            await delivery.ack()
            await note(delivery)

        subscription = await transport.subscribe(f"{prefix}.x", note)
        consumer = await transport.consume(
            stream,
            "elsewhere",
            settle,
            filter_subject=f"{subject}.>",
            ack_wait=5,
            max_in_flight=1,
        )
        return subscription, consumer

    async def close_there(subscription: Any, consumer: Any) -> None:
        await subscription.unsubscribe()
        await consumer.close()

    async def main() -> None:
        stream, subject = await make_stream()
        there = asyncio.run_coroutine_threadsafe(subscribe_there(stream.name, subject), loop)
        subscription, consumer = await asyncio.wrap_future(there)
        await transport.publish(f"{prefix}.x", b"")
        await transport.publish_durable(f"{subject}.y", b"", msg_id="y")
        assert await asyncio.to_thread(arrived.wait, 5)
        assert sorted(seen) == sorted([(f"{prefix}.x", loop), (f"{subject}.y", loop)])
        closing = asyncio.run_coroutine_threadsafe(close_there(subscription, consumer), loop)
        await asyncio.wrap_future(closing)

    try:
        run(main())
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


@pytest.mark.usefixtures("durable")
def test_a_declaration_is_compared_without_changing_anything(
    transport: Transport, run: Callable[..., Any], prefix: str
) -> None:
    stream = Stream(
        name=prefix.upper() + "_CMP",
        options={**STREAM_DEFAULTS, "subjects": [f"{prefix}.cmp.>"]},
    )

    async def main() -> None:
        assert await transport.compare_stream(stream) is None  # missing
        assert await transport.ensure_stream(stream) == "created"
        assert await transport.compare_stream(stream) == []
        longer = Stream(stream.name, {**stream.options, "max_age": 3600.0})
        assert await transport.compare_stream(longer) == ["max_age"]
        assert await transport.compare_stream(stream) == []  # nothing was changed
        await transport.consume(
            stream.name,
            "listed",
            _ignore,
            filter_subject=f"{prefix}.cmp.>",
            ack_wait=5.0,
            max_in_flight=1,
        )
        [listed] = await transport.consumers(stream.name)
        assert (listed.name, listed.filter_subject) == ("listed", f"{prefix}.cmp.>")
        await transport.delete_stream(stream.name)
        assert await transport.consumers(stream.name) == []

    run(main())


async def _ignore(delivery: Any) -> None:
    await delivery.ack()


@pytest.mark.usefixtures("durable")
def test_consuming_a_missing_stream_is_no_stream(
    transport: Transport, run: Callable[..., Any], prefix: str
) -> None:
    async def main() -> None:
        with pytest.raises(NoStream):
            await transport.consume(
                f"{prefix.upper()}_NONE",
                "nobody",
                _ignore,
                filter_subject=f"{prefix}.none.>",
                ack_wait=5.0,
                max_in_flight=1,
            )

    run(main())


def test_a_stream_keeps_plain_publishes_and_plain_subscribers_hear_durable_ones(
    transport: Transport, connect: Callable[..., Any], run: Callable[..., Any], make_stream: Any
) -> None:
    async def main() -> None:
        stream, token = await make_stream()
        listener = await connect()
        heard: asyncio.Queue[Any] = asyncio.Queue()
        await listener.subscribe(f"{token}.>", heard.put)
        await listener.flush()
        sequence = await transport.publish_durable(f"{token}.durable", b"1", msg_id="one")
        # A plain subscriber hears a durable publish, as JetStream's subject is a subject.
        assert (await asyncio.wait_for(heard.get(), 5)).data == b"1"
        if not transport.features.stream_history:
            return  # what a stream holds cannot be read back (stored_message)
        # A stream keeps a plain publish on its subjects (nats pub, any client).
        await transport.publish(f"{token}.plain", b"2")
        await transport.flush()
        assert (await asyncio.wait_for(heard.get(), 5)).data == b"2"

        async def kept() -> Any:
            return await transport.stored_message(stream.name, sequence + 1)

        stored = await wait_until(kept, timeout=2, what="the plain message to be stored")
        assert (stored.subject, stored.data) == (f"{token}.plain", b"2")

    run(main())
