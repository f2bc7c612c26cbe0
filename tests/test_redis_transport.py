"""What only the Redis transport has to show (tests/test_transports.py holds it to NATS's
semantics): its prefix, groups whose members are gone, reconnecting after Redis restarts (on a
private ``redis-server``, never the machine's), and a real ``runservice`` on Redis that
``manage.py call`` and ``manage.py services`` reach."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from cliffracer_core.core.errors import NoResponders, RemoteUnavailable
from cliffracer_core.core.streams import STREAM_DEFAULTS, Stream
from cliffracer_core.testing.plugin import project_root
from cliffracer_core.transports import backend_for
from cliffracer_core.transports import connect as connect_transport
from cliffracer_core.transports.base import Transport
from cliffracer_core.transports.redis import RedisTransport
from tests.certificates import make_certificates
from tests.redis_broker import REDIS_URL, PrivateRedis, prefixed_url


@pytest.fixture
def url() -> Iterator[str]:
    with prefixed_url() as location:
        yield location


async def echo(transport: Transport, subject: str, *, queue: str = "") -> Any:
    async def respond(message: Any) -> None:
        await transport.publish(message.reply, message.data)

    subscription = await transport.subscribe(subject, respond, queue=queue)
    await transport.flush()
    return subscription


def test_redis_urls_choose_the_redis_backend_and_name_a_prefix() -> None:
    for url in ("redis://127.0.0.1:6379/0", "rediss://cache.example:6380/2"):
        assert backend_for(url) == "cliffracer_core.transports.redis.RedisTransport"
    assert RedisTransport("redis://h/0").prefix == "cliffracer:"
    assert RedisTransport("redis://h/0?prefix=shop:").prefix == "shop:"
    assert RedisTransport("redis://h/0?prefix=shop:", {"prefix": "other:"}).prefix == "other:"
    assert RedisTransport("redis://u:secret@h/0").redacted_location() == "redis://***@h/0"


def test_an_unreachable_redis_is_remote_unavailable() -> None:
    async def main() -> None:
        with pytest.raises(RemoteUnavailable) as raised:
            await connect_transport("redis://127.0.0.1:1/0")
        assert raised.value.type == "transport_unavailable"

    asyncio.run(main())


def test_prefixes_keep_systems_apart_on_one_redis(url: str) -> None:
    async def main() -> None:
        with prefixed_url() as elsewhere:
            mine, other = await connect_transport(url), await connect_transport(elsewhere)
            try:
                await echo(mine, "shared.echo", queue="echo")
                await echo(mine, "shared.news")
                assert (await mine.request("shared.echo", b"1", timeout=5)).data == b"1"
                for subject in ("shared.echo", "shared.news"):
                    with pytest.raises(NoResponders):
                        await other.request(subject, b"", timeout=5)
            finally:
                await mine.close()
                await other.close()

    asyncio.run(main())


def test_a_group_whose_members_are_gone_takes_nothing_more(url: str) -> None:
    """No responders once the last member's connection is gone, and its list does not grow."""

    async def main() -> None:
        caller, member = await connect_transport(url), await connect_transport(url)
        await echo(member, "gone.work", queue="workers")
        assert (await caller.request("gone.work", b"x", timeout=5)).data == b"x"
        await member.close()
        client = aioredis.Redis.from_url(REDIS_URL)
        assert isinstance(caller, RedisTransport)
        # The member left: its binding is gone from the registry.
        assert not await client.smembers(f"{caller.prefix}bx:gone.work")
        with pytest.raises(NoResponders):
            await caller.request("gone.work", b"y", timeout=5)
        await caller.publish("gone.work", b"z")
        try:
            assert not await client.keys(f"{caller.prefix}g:*")
            # The round-robin counter expires: a prefix used once leaves nothing for good.
            assert 0 < await client.pttl(f"{caller.prefix}rr") <= 3_600_000
            # A member that vanished without leaving (killed) has its binding dropped by the
            # first publisher that finds no live member.
            await client.sadd(f"{caller.prefix}bx:gone.work", "workers gone.work")
            await client.sadd(f"{caller.prefix}gm:workers gone.work", "f00d")
            with pytest.raises(NoResponders):
                await caller.request("gone.work", b"y", timeout=5)
            assert not await client.smembers(f"{caller.prefix}bx:gone.work")
            assert not await client.smembers(f"{caller.prefix}gm:workers gone.work")
        finally:
            await client.aclose()
            await caller.close()

    asyncio.run(main())


def test_one_queue_name_on_overlapping_patterns_gets_a_message_once(url: str) -> None:
    """As on NATS: the subscriptions of one queue name that match a subject are one group."""

    async def main() -> None:
        transport = await connect_transport(url)
        received: asyncio.Queue[Any] = asyncio.Queue()
        try:
            for pattern in ("once.*", "once.>", "once.a"):
                await transport.subscribe(pattern, received.put, queue="q")
            await transport.flush()
            for number in range(5):
                await transport.publish("once.a", str(number).encode())
            await asyncio.sleep(0.3)
            assert sorted(received.get_nowait().data for _ in range(received.qsize())) == [
                str(number).encode() for number in range(5)
            ]
        finally:
            await transport.close()

    asyncio.run(main())


def test_subscriptions_work_again_after_redis_restarts() -> None:
    """On a private redis-server: it forgets everything (no persistence); the transports
    reconnect, subscribe and bind their groups again, and serve without a restart."""

    async def main(server: PrivateRedis) -> None:
        member = await connect_transport(server.url)
        caller = await connect_transport(server.url)
        try:
            await echo(member, "after.work", queue="workers")
            news: asyncio.Queue[Any] = asyncio.Queue()
            await member.subscribe("after.>", news.put)
            await member.flush()
            await asyncio.to_thread(server.restart)
            async with asyncio.timeout(20):
                while member.reconnects < 1 or not member.is_connected:
                    await asyncio.sleep(0.05)
            await member.flush()
            async with asyncio.timeout(20):
                while True:
                    try:
                        reply = await caller.request("after.work", b"again", timeout=2)
                        break
                    except (RemoteUnavailable, NoResponders):
                        await asyncio.sleep(0.1)
            assert reply.data == b"again"
            while not news.empty():
                news.get_nowait()
            await caller.publish("after.news", b"news")
            async with asyncio.timeout(5):
                while (await news.get()).subject != "after.news":
                    pass
        finally:
            await member.close()
            await caller.close()

    with PrivateRedis() as server:
        asyncio.run(main(server))


def test_rediss_carries_requests_and_durable_events_over_tls(tmp_path: Any) -> None:
    """On a private redis-server that speaks only TLS: ``rediss://`` with the authority's
    certificate works; without it, the connection is refused with a clear reason."""

    async def main(server: PrivateRedis) -> None:
        transport = await connect_transport(server.url)
        try:
            await echo(transport, "secure.echo", queue="workers")
            reply = await transport.request("secure.echo", b"over tls", timeout=5)
            assert reply.data == b"over tls"
            stream = Stream("SECURE", {**STREAM_DEFAULTS, "subjects": ["secure.events.>"]})
            assert await transport.ensure_stream(stream) == "created"
            assert await transport.publish_durable("secure.events.a", b"kept", msg_id="1") == 1
            assert (await transport.stored_message("SECURE", 1)).data == b"kept"
        finally:
            await transport.close()
        untrusted = server.url.split("?")[0]  # the system's authorities do not know this one
        with pytest.raises(RemoteUnavailable) as raised:
            await connect_transport(untrusted)
        assert raised.value.type == "transport_unavailable"
        assert "certificate" in str(raised.value).lower()

    certificates = make_certificates(tmp_path / "tls")
    with PrivateRedis(certificates=certificates) as server:
        asyncio.run(main(server))


def manage(url: str, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *arguments],
        cwd=project_root(),
        env=dict(os.environ, DJANGO_SETTINGS_MODULE="tests.settings", CLIFFRACER_TRANSPORT_URL=url),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_runservice_on_redis_answers_call_and_discovery(
    transactional_db: Any, runservice_process: Any, url: str
) -> None:
    runservice_process(
        "testservice", DJANGO_SETTINGS_MODULE="tests.settings", CLIFFRACER_TRANSPORT_URL=url
    )
    called = manage(url, "call", "testservice.echo", '{"text": "over redis"}')
    assert called.returncode == 0, called.stderr
    assert json.loads(called.stdout) == {"text": "over redis"}
    services = manage(url, "services", "--wait", "0.5", "--json")
    assert services.returncode == 0, services.stderr
    found = json.loads(services.stdout)
    assert "testservice" in json.dumps(found)


def test_a_connection_that_may_give_up_closes_once_redis_stays_away() -> None:
    """As the shared client connection asks (``max_reconnect_attempts``): a caller hears that
    Redis is down, and the next call opens another connection."""

    async def main(server: PrivateRedis) -> None:
        transport = await connect_transport(
            server.url, max_reconnect_attempts=1, reconnect_wait=0.1
        )
        await asyncio.to_thread(server.stop)
        async with asyncio.timeout(20):
            while not transport.is_closed:
                await asyncio.sleep(0.05)
        assert not transport.is_connected
        with pytest.raises(RemoteUnavailable):
            await transport.publish("after.close", b"")

    with PrivateRedis() as server:
        asyncio.run(main(server))


def test_durable_events_survive_a_kill_and_a_redis_restart(
    settings: Any, transactional_db: Any, runservice_process: Any, tmp_path: Any, monkeypatch: Any
) -> None:
    """The JetStream fault test (tests/test_faults.py) on a private redis-server that keeps
    an append-only file: events published while the consuming service is SIGKILLed and while
    Redis restarts are all stored once and processed once."""
    from django.db import connection
    from django.db.models import Count

    from cliffracer_core.contrib.durable.models import DeadLetter
    from cliffracer_core.testing.plugin import run_async
    from tests.durableapp.models import SideEffect
    from tests.test_faults import SETTINGS, STREAM, Publisher, side_effects, wait_until

    total = 2_000
    settings.CLIFFRACER = {
        **settings.CLIFFRACER,
        "STREAMS": {STREAM: {"subjects": ["durabletest.>"], "max_age": 3600}},
    }
    with connection.schema_editor() as editor:
        editor.create_model(SideEffect)
    with PrivateRedis(tmp_path / "redis") as server:
        monkeypatch.setenv("CLIFFRACER_TRANSPORT_URL", server.url)
        environment = {
            **SETTINGS,
            "CONN_MAX_AGE": "60",
            "ACCESS_LOG_LEVEL": "WARNING",
            "CLIFFRACER_TRANSPORT_URL": server.url,
        }
        service = runservice_process("durabletest", **environment)
        publisher = Publisher(total, per_second=400)
        publisher.start()
        faults = []

        def at(count: int) -> None:
            assert wait_until(lambda: publisher.acknowledged >= count or publisher.error, 60)
            assert publisher.error is None, publisher.error

        at(500)
        service.process.kill()
        faults.append(f"SIGKILL at {publisher.acknowledged}, {side_effects('work')[0]} done")
        service.wait()
        service = runservice_process("durabletest", **environment)
        at(1000)
        faults.append(f"Redis restart at {publisher.acknowledged}, {side_effects('work')[0]} done")
        server.restart()
        publisher.join(120)
        assert publisher.error is None, publisher.error
        assert publisher.acknowledged == total
        wait_until(lambda: side_effects("work")[0] >= total, 90, interval=0.25)
        time.sleep(3)  # anything redelivered late would show up as a duplicate now

        async def stored() -> int:
            transport = await connect_transport(server.url)
            try:
                state = await transport.stream_state(STREAM)
                return state.messages if state else 0
            finally:
                await transport.close()

        messages = run_async(stored())
        rows, distinct = side_effects("work")
        duplicates = (
            SideEffect.objects.filter(handler="work")
            .values("event_id")
            .annotate(times=Count("id"))
            .filter(times__gt=1)
            .count()
        )
        summary = (
            f"published {publisher.acknowledged} ({publisher.retries} retries), stored "
            f"{messages}, side effects {rows}, distinct {distinct}, duplicated {duplicates}; "
            + "; ".join(faults)
        )
        print("\n" + summary)
        assert messages == total, summary
        assert (rows, distinct, duplicates) == (total, total, 0), summary
        assert not DeadLetter.objects.exists(), summary
    with connection.schema_editor() as editor:
        editor.delete_model(SideEffect)


def test_a_stream_created_by_two_processes_at_once_keeps_what_the_first_stored(url: str) -> None:
    """Services start together: the second creation of a stream must not empty it."""
    from cliffracer_core.core.streams import STREAM_DEFAULTS, Stream

    async def main() -> None:
        first, second = await connect_transport(url), await connect_transport(url)
        stream = Stream("TWICE", {**STREAM_DEFAULTS, "subjects": ["twice.>"]})
        try:
            assert await first.ensure_stream(stream) == "created"
            await first.publish_durable("twice.a", b"kept", msg_id="k")
            assert isinstance(second, RedisTransport)
            # As if the second had found no stream an instant before the first created it.
            assert not await second.stream_call("create", "TWICE", "{}", "other-life")
            assert await second.ensure_stream(stream) == "unchanged"
            assert (await second.stored_message("TWICE", 1)).data == b"kept"
        finally:
            await first.delete_stream("TWICE")
            await first.close()
            await second.close()

    asyncio.run(main())


def test_a_publish_right_after_a_subscribe_on_one_connection_reaches_it(url: str) -> None:
    """As on NATS, where one socket orders them: here the subscription and the publish go out
    on two Redis connections, so subscribe() returns once Redis has the subscription."""

    async def main() -> None:
        transport = await connect_transport(url)
        try:
            for attempt in range(50):
                received: asyncio.Queue[Any] = asyncio.Queue()
                pattern = f"order.{attempt}.>" if attempt % 2 else f"order.{attempt}.x"
                await transport.subscribe(pattern, received.put)
                await transport.publish(f"order.{attempt}.x", b"first")
                async with asyncio.timeout(5):
                    assert (await received.get()).data == b"first", attempt
        finally:
            await transport.close()

    asyncio.run(main())


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(240)
def test_runsystem_runs_the_example_on_redis(tmp_path: Any, url: str) -> None:
    """``make run`` on Redis: see ``tests.test_runsystem.run_the_example_on``."""
    from tests.test_runsystem import run_the_example_on

    run_the_example_on(tmp_path, url)


@pytest.mark.timeout(240)
def test_the_examples_order_flow_runs_on_redis(
    transactional_db: Any, runservice_process: Any, url: str
) -> None:
    """The e-commerce example's four services on Redis: a customer's order is paid, its stock
    committed and the customer notified, through RPCs, outboxes and durable events."""
    from tests.test_ecommerce_flow import place_an_order_on

    place_an_order_on(url, runservice_process, functools.partial(manage, url))
