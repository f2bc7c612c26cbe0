"""/ws/events/ across real daphne processes, with real WebSocket clients and a real nats-server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket as sockets_module
import time
from collections.abc import Iterator
from typing import Any

import pytest
import websockets
from django.contrib.auth.models import Permission, User
from nats.aio.client import Client as NatsClient
from rest_framework_simplejwt.tokens import AccessToken
from websockets.exceptions import ConnectionClosed

from cliffracer_core.core.auth.tokens import claims_for_user
from cliffracer_core.core.headers import CORRELATION_ID
from cliffracer_core.testing.polling import wait_until
from cliffracer_core.transports import connect as connect_transport
from cliffracer_core.transports.nats.embedded import NatsServer
from tests.amqp_broker import amqp_url  # noqa: F401  (a fixture)
from tests.redis_broker import prefixed_url

pytestmark = pytest.mark.django_db(transaction=True)

RULES = [
    {"subject": "ws.public.>", "subscribe": []},
    {"subject": "ws.staff.*", "subscribe": ["auth.view_user"]},
]


@pytest.fixture
def nats_with_monitoring(tmp_path) -> Iterator[NatsServer]:
    """A nats-server of the test's own (it may be restarted), with HTTP monitoring."""
    server = NatsServer(store_dir=tmp_path / "nats", monitor_port=0)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def web(web_process, nats_with_monitoring):
    """Start a daphne process on the test's nats-server, with the test's rules and limits."""

    def start(label: str, **websocket: Any) -> Any:
        overrides = {"SUBJECT_RULES": RULES, "WEBSOCKET": websocket}
        return web_process(
            label,
            NATS_URL=nats_with_monitoring.url,
            DJANGO_SETTINGS_MODULE="tests.websocket_settings",
            CLIFFRACER_TEST_OVERRIDES=json.dumps(overrides),
            LOG_LEVEL="INFO",
        )

    return start


def token_for(user: User) -> str:
    token = AccessToken.for_user(user)
    for name, value in claims_for_user(user).items():
        token[name] = value
    return str(token)


@pytest.fixture
def alice_token(django_user_model) -> str:
    return token_for(django_user_model.objects.create_user("alice", password="pw-alice-123"))


@pytest.fixture
def boss_token(django_user_model) -> str:
    user = django_user_model.objects.create_user("boss", password="pw-boss-123")
    user.user_permissions.add(Permission.objects.get(codename="view_user"))
    return token_for(User.objects.get(pk=user.pk))


def run(coroutine: Any, timeout: float = 60) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, timeout))


async def open_socket(url: str, token: str | None, **options: Any) -> Any:
    socket = await websockets.connect(f"{url}/ws/events/", compression=None, **options)
    if token is not None:
        await socket.send(json.dumps({"type": "auth", "token": token}))
        ready = json.loads(await socket.recv())
        assert ready["type"] == "ready", ready
    return socket


async def subscribe(socket: Any, subject: str) -> dict[str, Any]:
    await socket.send(json.dumps({"type": "subscribe", "id": subject, "subject": subject}))
    return json.loads(await socket.recv())


async def next_event(socket: Any, timeout: float = 5) -> dict[str, Any]:
    while True:
        frame = json.loads(await asyncio.wait_for(socket.recv(), timeout))
        if frame["type"] == "event":
            return frame


async def nats_connection(server: NatsServer) -> NatsClient:
    connection = NatsClient()
    await connection.connect(server.url)
    return connection


def subscriptions_of(server: NatsServer, pid: int) -> list[str]:
    """The subjects the connection of process ``pid`` subscribes to, per nats-server."""
    connections = server.monitor("connz?subs=1")["connections"]
    subjects: list[str] = []
    for connection in connections:
        if re.search(rf":{pid}$", connection.get("name", "")):
            subjects.extend(connection.get("subscriptions_list", []))
    return subjects


def test_events_reach_sockets_on_every_web_process_through_one_subscription_each(
    web, nats_with_monitoring, alice_token
):
    first, second = web("web1"), web("web2")

    async def scenario():
        sockets = [await open_socket(first.ws_url, alice_token) for _ in range(3)]
        sockets.append(await open_socket(second.ws_url, alice_token))
        for socket in sockets:
            assert (await subscribe(socket, "ws.public.news"))["type"] == "subscribed"
        subscriptions = {
            "web1": subscriptions_of(nats_with_monitoring, first.pid),
            "web2": subscriptions_of(nats_with_monitoring, second.pid),
        }
        publisher = await nats_connection(nats_with_monitoring)
        await publisher.publish(
            "ws.public.news", b'{"headline": "hello"}', headers={CORRELATION_ID: "cafe01"}
        )
        await publisher.flush()
        events = [await next_event(socket) for socket in sockets]
        # The last socket out drops the process's subscription.
        for socket in sockets[:3]:
            await socket.close()
        await asyncio.sleep(0.5)
        after = subscriptions_of(nats_with_monitoring, first.pid)
        await sockets[3].close()
        await publisher.close()
        return subscriptions, events, after

    subscriptions, events, after = run(scenario())
    assert subscriptions["web1"].count("ws.public.news") == 1
    assert subscriptions["web2"].count("ws.public.news") == 1
    assert all(event["data"] == {"headline": "hello"} for event in events)
    assert all(event["correlation_id"] == "cafe01" for event in events)
    assert "ws.public.news" not in after


def test_rules_and_close_codes_over_real_sockets(web, alice_token, boss_token):
    server = web("web1")

    async def scenario():
        alice = await open_socket(server.ws_url, alice_token)
        denied = await subscribe(alice, "ws.staff.news")
        boss = await open_socket(server.ws_url, boss_token)
        allowed = await subscribe(boss, "ws.staff.news")
        intruder = await open_socket(server.ws_url, None)
        await intruder.send(json.dumps({"type": "auth", "token": alice_token[:-4] + "AAAA"}))
        with pytest.raises(ConnectionClosed) as closed:
            await intruder.recv()
        for socket in (alice, boss):
            await socket.close()
        return denied, allowed, closed.value.rcvd.code

    denied, allowed, code = run(scenario())
    assert denied["error"]["code"] == 403
    assert allowed == {"type": "subscribed", "id": "ws.staff.news"}
    assert code == 4401


def test_bad_frames_close_only_the_socket_that_sent_them(web, nats_with_monitoring, alice_token):
    server = web("web1", MAX_BAD_FRAMES=3, MAX_FRAME_BYTES=4096)

    async def scenario():
        good = await open_socket(server.ws_url, alice_token)
        await subscribe(good, "ws.public.ticks")
        bad = await open_socket(server.ws_url, alice_token, max_size=None)
        await bad.send("{not json")
        await bad.send(json.dumps({"type": "ping", "padding": "x" * 10_000}))
        await bad.send(b"\x00binary")
        errors = [json.loads(await bad.recv()) for _ in range(3)]
        with pytest.raises(ConnectionClosed) as closed:
            await bad.recv()
        # Bigger than daphne's own 1 MiB limit: the server drops that socket too.
        huge = await open_socket(server.ws_url, alice_token, max_size=None)
        with pytest.raises(ConnectionClosed):  # while sending, or when reading after it
            await huge.send("x" * (2 * 1024 * 1024))
            await asyncio.wait_for(huge.recv(), 10)
        publisher = await nats_connection(nats_with_monitoring)
        await publisher.publish("ws.public.ticks", b'{"n": 1}')
        await publisher.flush()
        event = await next_event(good)
        await good.close()
        await publisher.close()
        return errors, closed.value.rcvd.code, event

    errors, code, event = run(scenario())
    assert [error["error"]["type"] for error in errors] == [
        "invalid_json",
        "frame_too_large",
        "binary_frame",
    ]
    assert code == 4400
    assert event["data"] == {"n": 1}
    assert server.process.poll() is None
    assert "Traceback" not in server.output()


def test_a_slow_client_is_closed_and_does_not_hold_up_a_fast_one(
    web, nats_with_monitoring, alice_token
):
    server = web("web1", SLOW_CLIENT_BYTES=256 * 1024, QUEUE_SIZE=1000)
    count, size = 6000, 4096

    async def read_all(fast: Any) -> int:
        received = 0
        while received < count:
            event = await next_event(fast, timeout=20)
            assert event["data"]["n"] == received
            received += 1
        return received

    async def scenario():
        fast = await open_socket(server.ws_url, alice_token, max_size=None, max_queue=None)
        await subscribe(fast, "ws.public.flood")
        reader = asyncio.create_task(read_all(fast))
        # A client that stops reading: websockets stops reading the socket once a few frames
        # wait in its queue, so the kernel's buffers fill, then the web server's.
        # A small receive buffer, so that the server's side fills soon.
        raw = sockets_module.socket(sockets_module.AF_INET, sockets_module.SOCK_STREAM)
        raw.setsockopt(sockets_module.SOL_SOCKET, sockets_module.SO_RCVBUF, 16 * 1024)
        raw.connect(("127.0.0.1", server.port))
        slow = await open_socket(server.ws_url, alice_token, max_queue=1, max_size=None, sock=raw)
        await subscribe(slow, "ws.public.flood")
        publisher = await nats_connection(nats_with_monitoring)
        padding = "x" * size
        started = time.monotonic()
        for number in range(count):
            payload = json.dumps({"n": number, "padding": padding}).encode()
            await publisher.publish("ws.public.flood", payload)
            if number % 10 == 0:
                await asyncio.sleep(0.005)  # let the fast client read as it goes
        await publisher.flush()
        received = await reader
        fast_seconds = time.monotonic() - started
        # Now read the slow socket: what was buffered, then its end.
        slow_received = 0
        code = None
        try:
            while True:
                frame = json.loads(await asyncio.wait_for(slow.recv(), 20))
                slow_received += frame["type"] == "event"
        except ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd else None
        await fast.close()
        await publisher.close()
        return received, fast_seconds, slow_received, code

    received, fast_seconds, slow_received, code = run(scenario(), timeout=120)
    assert received == count
    assert slow_received < count
    assert code in (4429, None)  # the close frame, or the connection dropped after it
    assert "does not keep up with its events" in server.output()
    assert server.process.poll() is None


def test_the_web_process_resubscribes_after_a_nats_server_restart(
    web, nats_with_monitoring, alice_token
):
    server = web("web1")

    async def scenario():
        socket = await open_socket(server.ws_url, alice_token)
        assert (await subscribe(socket, "ws.public.after"))["type"] == "subscribed"
        await asyncio.to_thread(nats_with_monitoring.restart)
        publisher = await nats_connection(nats_with_monitoring)
        deadline = time.monotonic() + 30
        event = None
        while event is None and time.monotonic() < deadline:
            await publisher.publish("ws.public.after", b'{"back": true}')
            await publisher.flush()
            try:
                event = await next_event(socket, timeout=0.5)
            except TimeoutError:
                continue
        # A new subscription works too.
        fresh = await subscribe(socket, "ws.public.fresh")
        await publisher.publish("ws.public.fresh", b'{"fresh": true}')
        await publisher.flush()
        fresh_event = await next_event(socket)
        await socket.close()
        await publisher.close()
        return event, fresh, fresh_event

    event, fresh, fresh_event = run(scenario())
    assert event is not None and event["data"] == {"back": True}
    assert fresh["type"] == "subscribed"
    assert fresh_event["data"] == {"fresh": True}
    assert "Reconnected to NATS" in server.output()


def test_send_to_user_reaches_the_users_sockets_on_every_web_process(
    web, nats_with_monitoring, django_user_model, monkeypatch
):
    from cliffracer_core.contrib.channels.push import send_to_user
    from cliffracer_core.core.settings import cliffracer_settings

    alice = django_user_model.objects.create_user("alice", password="pw-alice-123")
    bob = django_user_model.objects.create_user("bob", password="pw-bob-123")
    alice_token, bob_token = token_for(alice), token_for(bob)
    first, second = web("web1"), web("web2")
    # This process's channel layer talks to the web processes' nats-server.
    monkeypatch.setenv("NATS_URL", nats_with_monitoring.url)
    cliffracer_settings.reload()

    async def scenario():
        alices = [
            await open_socket(first.ws_url, alice_token),
            await open_socket(second.ws_url, alice_token),
        ]
        bobs = await open_socket(second.ws_url, bob_token)
        await send_to_user(alice.pk, {"type": "notice", "text": "export ready"})
        frames = [json.loads(await asyncio.wait_for(s.recv(), 10)) for s in alices]
        bob_heard = None
        with contextlib.suppress(TimeoutError):
            bob_heard = await asyncio.wait_for(bobs.recv(), 0.5)
        for socket in (*alices, bobs):
            await socket.close()
        return frames, bob_heard

    try:
        frames, bob_heard = run(scenario())
    finally:
        monkeypatch.undo()
        cliffracer_settings.reload()
    assert frames == [{"type": "notice", "text": "export ready"}] * 2
    assert bob_heard is None


def test_the_web_process_exports_websocket_metrics(web, nats_with_monitoring, alice_token):
    from urllib.request import urlopen

    from prometheus_client.parser import text_string_to_metric_families

    server = web("web1")

    def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        with urlopen(f"{server.url}/metrics", timeout=10) as response:
            text = response.read().decode()
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    async def scenario():
        sockets = [await open_socket(server.ws_url, alice_token) for _ in range(2)]
        for socket in sockets:
            await subscribe(socket, "ws.public.metrics")
        await sockets[0].send("{bad")
        await sockets[0].recv()
        publisher = await nats_connection(nats_with_monitoring)
        await publisher.publish("ws.public.metrics", b"{}")
        await publisher.flush()
        for socket in sockets:
            await next_event(socket)
        during = await asyncio.to_thread(scrape)
        for socket in sockets:
            await socket.close()
        await publisher.close()
        await asyncio.sleep(0.5)
        return during, await asyncio.to_thread(scrape)

    during, after = run(scenario())
    assert during[("cliffracer_websocket_connections", ())] == 2
    assert during[("cliffracer_websocket_subscriptions", ())] == 1
    assert during[("cliffracer_websocket_frames_in_total", (("type", "subscribe"),))] == 2
    assert during[("cliffracer_websocket_frames_in_total", (("type", "bad"),))] == 1
    assert during[("cliffracer_websocket_frames_out_total", (("kind", "event"),))] == 2
    assert after[("cliffracer_websocket_connections", ())] == 0
    assert after[("cliffracer_websocket_subscriptions", ())] == 0


def test_a_session_cookie_counts_only_from_the_sites_own_origin(web, django_user_model, client):
    server = web("web1")
    client.force_login(django_user_model.objects.create_user("alice", password="pw-alice-123"))
    cookie = f"sessionid={client.cookies['sessionid'].value}"

    async def first_frame(origin: str) -> dict[str, Any] | None:
        # websockets sends the Host the socket is opened on, as a browser does.
        socket = await websockets.connect(
            f"{server.ws_url}/ws/events/",
            origin=origin,
            additional_headers={"Cookie": cookie},
            compression=None,
        )
        try:
            return json.loads(await asyncio.wait_for(socket.recv(), 0.5))
        except TimeoutError:
            return None
        finally:
            await socket.close()

    async def scenario():
        return (
            await first_frame(f"http://127.0.0.1:{server.port}"),
            await first_frame("http://127.0.0.1:1234"),
            await first_frame(f"https://127.0.0.1:{server.port}"),
        )

    own, other_port, other_scheme = run(scenario())
    assert own["type"] == "ready" and own["user"]["username"] == "alice"
    assert other_port is None
    assert other_scheme is None


def test_close_frames_carry_their_reason(web, alice_token):
    server = web("web1", MAX_BAD_FRAMES=2)

    async def closed_by(frames: list[str], token: str | None = None) -> Any:
        socket = await open_socket(server.ws_url, token)
        for frame in frames:
            await socket.send(frame)
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(socket.recv(), 10)
        return closed.value.rcvd

    async def scenario():
        return (
            await closed_by([json.dumps({"type": "auth", "token": alice_token[:-4] + "AAAA"})]),
            await closed_by([json.dumps({"type": "ping"})]),
            await closed_by(["{bad", "{bad"], alice_token),
        )

    bad_token, not_auth, bad_frames = run(scenario())
    assert (bad_token.code, bad_token.reason) == (4401, "The access token is not valid.")
    assert (not_auth.code, not_auth.reason) == (4401, "first frame was not auth")
    assert (bad_frames.code, bad_frames.reason) == (4400, "too many bad frames")


@pytest.fixture(params=["redis", "amqp"])
def broker_url(request) -> Iterator[str]:
    """A Redis URL with a key prefix of the test's own, or the session's RabbitMQ vhost."""
    if request.param == "amqp":
        yield request.getfixturevalue("amqp_url")
        return
    with prefixed_url() as url:
        yield url


def test_events_reach_sockets_on_a_web_process_on_redis_and_rabbitmq(
    web_process, broker_url, alice_token
):
    """The live page's hub subscribes through the transport: on Redis and on RabbitMQ, an
    event published by another process reaches a socket that subscribed, and only that one."""
    overrides = {"SUBJECT_RULES": RULES}
    process = web_process(
        "web",
        CLIFFRACER_TRANSPORT_URL=broker_url,
        DJANGO_SETTINGS_MODULE="tests.websocket_settings",
        CLIFFRACER_TEST_OVERRIDES=json.dumps(overrides),
    )

    async def scenario() -> tuple[dict[str, Any], bool]:
        listening = await open_socket(process.ws_url, alice_token)
        other = await open_socket(process.ws_url, alice_token)
        assert (await subscribe(listening, "ws.public.news"))["type"] == "subscribed"
        assert (await subscribe(other, "ws.public.other"))["type"] == "subscribed"
        publisher = await connect_transport(broker_url)
        try:
            # The hub's subscription is made when the first socket subscribes; publish until
            # it is in effect (a plain event to nobody is dropped, as on NATS).
            async def arrived() -> dict[str, Any] | None:
                await publisher.publish(
                    "ws.public.news", b'{"headline": "hello"}', headers={CORRELATION_ID: "cafe02"}
                )
                with contextlib.suppress(TimeoutError):
                    return await next_event(listening, timeout=0.5)
                return None

            event = await wait_until(arrived, timeout=20, what="the event on the socket")
            with contextlib.suppress(TimeoutError):
                await next_event(other, timeout=0.5)
                return event, True
            return event, False
        finally:
            await publisher.close()
            await listening.close()
            await other.close()

    event, other_heard = run(scenario())
    assert (event["subject"], event["data"]) == ("ws.public.news", {"headline": "hello"})
    assert event["correlation_id"] == "cafe02"
    assert not other_heard
