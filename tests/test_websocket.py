"""The /ws/events/ consumer, driven by Channels' WebsocketCommunicator over a real nats-server."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import timedelta
from typing import Any

import pytest
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import Permission, User
from nats.aio.client import Client as NatsClient
from rest_framework_simplejwt.tokens import AccessToken

from cliffracer_core import Service, rpc
from cliffracer_core.contrib.channels.hub import get_hub
from cliffracer_core.contrib.channels.protocol import (
    CLOSE_BAD_FRAMES,
    CLOSE_NOT_AUTHENTICATED,
)
from cliffracer_core.contrib.channels.routing import websocket_urlpatterns
from cliffracer_core.core import client as client_module
from cliffracer_core.core.auth.identity import get_caller
from cliffracer_core.core.auth.tokens import claims_for_user, mint_system_token
from cliffracer_core.core.headers import CORRELATION_ID
from cliffracer_core.transports import close_transport
from tests.models import Add, Tagged, Total

pytestmark = pytest.mark.django_db(transaction=True)

# The project's WebSocket routes as settings/asgi.py serves them (importing that module would
# make this test process a "web" process, which changes how its own calls are signed).
application = URLRouter(websocket_urlpatterns)

RULES = [
    {"subject": "ws.public.>", "subscribe": []},
    {"subject": "ws.staff.*", "subscribe": ["auth.view_user"], "publish": ["auth.view_user"]},
    {"subject": "ws.user.{user_id}", "subscribe": []},
]


def make_service(service_name: str) -> type[Service]:
    class Calculator(Service):
        name = service_name

        @rpc(public=True)
        async def add(self, request: Add) -> Total:
            return Total(total=request.a + request.b)

        @rpc
        async def whoami(self) -> Tagged:
            caller = get_caller()
            return Tagged(tag=0, instance=caller.username, correlation_id=None)

        @rpc(permission="auth.view_user")
        async def guarded(self, request: Add) -> Total:
            return Total(total=request.a * request.b)

    return Calculator


@pytest.fixture(autouse=True)
def websocket_settings(settings, nats_server):
    settings.CLIFFRACER = {
        "SUBJECT_RULES": RULES,
        "WEBSOCKET": {"MAX_BAD_FRAMES": 3, "AUTH_TIMEOUT": 2.0},
    }


@pytest.fixture
def calculator(start_service, unique_name, monkeypatch):
    monkeypatch.setattr(client_module, "service_loop", None)
    start_service(make_service(unique_name))
    return unique_name


# Long enough to sign in on a loaded CI machine (a 1 s token, whose expiry is
# rounded down to the second, sometimes expired before the socket was ready).
SHORT_LIFETIME = timedelta(seconds=3)


def token_for(user: User, lifetime: timedelta | None = None) -> str:
    token = AccessToken.for_user(user)
    if lifetime is not None:
        token.set_exp(lifetime=lifetime)
    for name, value in claims_for_user(user).items():
        token[name] = value
    return str(token)


@pytest.fixture
def no_leeway(settings):
    """Tokens expire on the second (the project allows 5 s of clock skew)."""
    settings.SIMPLE_JWT = {**settings.SIMPLE_JWT, "LEEWAY": 0}


@pytest.fixture
def alice(django_user_model) -> User:
    return django_user_model.objects.create_user("alice", password="pw-alice-123")


@pytest.fixture
def boss(django_user_model) -> User:
    user = django_user_model.objects.create_user("boss", password="pw-boss-123")
    user.user_permissions.add(Permission.objects.get(codename="view_user"))
    return User.objects.get(pk=user.pk)


@pytest.fixture
def root(django_user_model) -> User:
    return django_user_model.objects.create_superuser("root", password="pw-root-123")


def run(coroutine: Any) -> Any:
    async def main() -> Any:
        try:
            return await asyncio.wait_for(coroutine, 30)
        finally:
            await close_transport()

    return asyncio.run(main())


async def connect(headers: list[tuple[bytes, bytes]] | None = None) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(application, "/ws/events/", headers=headers or [])
    connected, _ = await communicator.connect()
    assert connected
    return communicator


async def signed_in(token: str) -> WebsocketCommunicator:
    communicator = await connect()
    await communicator.send_json_to({"type": "auth", "token": token})
    ready = await communicator.receive_json_from(timeout=5)
    assert ready["type"] == "ready", ready
    return communicator


async def closed_with(communicator: WebsocketCommunicator) -> int:
    while True:
        message = await communicator.receive_output(timeout=5)
        if message["type"] == "websocket.close":
            return message.get("code")


async def publish(subject: str, data: Any, correlation_id: str = "c0ffee") -> None:
    from cliffracer_core.core.settings import cliffracer_settings
    from cliffracer_core.transports.nats.embedded import NatsServer  # noqa: F401  (the URL comes from settings)

    connection = NatsClient()
    await connection.connect(str(cliffracer_settings.NATS_URL))
    await connection.publish(
        subject, json.dumps(data).encode(), headers={CORRELATION_ID: correlation_id}
    )
    await connection.flush()
    await connection.close()


def test_auth_frame_makes_the_socket_ready_with_the_user(alice):
    token_0 = token_for(alice)

    async def scenario():
        communicator = await connect()
        await communicator.send_json_to({"type": "auth", "token": token_0})
        ready = await communicator.receive_json_from(timeout=5)
        await communicator.disconnect()
        return ready

    ready = run(scenario())
    assert ready["type"] == "ready"
    assert ready["user"]["id"] == str(alice.pk)
    assert ready["user"]["username"] == "alice"
    assert ready["user"]["is_superuser"] is False


@pytest.mark.parametrize(
    "first_frame",
    [
        {"type": "auth", "token": "not-a-jwt"},
        {"type": "subscribe", "id": "1", "subject": "ws.public.x"},
        {"type": "nonsense"},
        "{not json",
    ],
    ids=["bad-token", "subscribe-first", "unknown-type", "malformed"],
)
def test_anything_but_a_good_auth_frame_first_closes_4401(first_frame):
    async def scenario():
        communicator = await connect()
        if isinstance(first_frame, str):
            await communicator.send_to(text_data=first_frame)
        else:
            await communicator.send_json_to(first_frame)
        return await closed_with(communicator)

    assert run(scenario()) == CLOSE_NOT_AUTHENTICATED


def test_the_system_identity_token_cannot_open_a_socket():
    async def scenario():
        communicator = await connect()
        await communicator.send_json_to({"type": "auth", "token": mint_system_token()})
        return await closed_with(communicator)

    assert run(scenario()) == CLOSE_NOT_AUTHENTICATED


def test_a_socket_that_never_authenticates_is_closed_4401(settings):
    settings.CLIFFRACER = {"WEBSOCKET": {"AUTH_TIMEOUT": 0.3}}

    async def scenario():
        communicator = await connect()
        started = time.monotonic()
        code = await closed_with(communicator)
        return code, time.monotonic() - started

    code, waited = run(scenario())
    assert code == CLOSE_NOT_AUTHENTICATED
    assert waited < 5


def test_an_access_token_that_expires_mid_session_closes_4401(alice, no_leeway):
    token_0 = token_for(alice, lifetime=SHORT_LIFETIME)

    async def scenario():
        communicator = await signed_in(token_0)
        return await closed_with(communicator)

    assert run(scenario()) == CLOSE_NOT_AUTHENTICATED


def test_a_fresh_token_for_the_same_user_extends_the_session_another_user_closes_it(alice, boss):
    token_0 = token_for(alice)
    token_1 = token_for(alice, lifetime=SHORT_LIFETIME)
    token_2 = token_for(boss)

    async def scenario():
        communicator = await signed_in(token_1)
        await communicator.send_json_to({"type": "auth", "token": token_0})
        again = await communicator.receive_json_from(timeout=5)
        # Past the first token's expiry: still open.
        await asyncio.sleep(SHORT_LIFETIME.total_seconds() + 0.5)
        await communicator.send_json_to({"type": "ping", "id": 1})
        pong = await communicator.receive_json_from(timeout=5)
        await communicator.send_json_to({"type": "auth", "token": token_2})
        return again, pong, await closed_with(communicator)

    again, pong, code = run(scenario())
    assert again["type"] == "ready"
    assert pong == {"type": "pong", "id": 1}
    assert code == CLOSE_NOT_AUTHENTICATED


def test_events_reach_a_subscribed_socket_with_their_correlation_id(alice):
    token_0 = token_for(alice)

    async def scenario():
        communicator = await signed_in(token_0)
        await communicator.send_json_to({"type": "subscribe", "id": "s1", "subject": "ws.public.>"})
        subscribed = await communicator.receive_json_from(timeout=5)
        await publish("ws.public.orders.created", {"order_id": 7}, correlation_id="abc123")
        event = await communicator.receive_json_from(timeout=5)
        await communicator.disconnect()
        return subscribed, event

    subscribed, event = run(scenario())
    assert subscribed == {"type": "subscribed", "id": "s1"}
    assert event == {
        "type": "event",
        "subject": "ws.public.orders.created",
        "data": {"order_id": 7},
        "correlation_id": "abc123",
    }


def test_sockets_share_one_subscription_per_pattern_and_the_last_one_out_drops_it(alice):
    token_0 = token_for(alice)

    async def scenario():
        hub = get_hub()
        first = await signed_in(token_0)
        second = await signed_in(token_0)
        for communicator in (first, second):
            await communicator.send_json_to(
                {"type": "subscribe", "id": "s", "subject": "ws.public.shared"}
            )
            assert (await communicator.receive_json_from(timeout=5))["type"] == "subscribed"
        shared = hub.subscription_count()
        await publish("ws.public.shared", {"n": 1})
        events = [await c.receive_json_from(timeout=5) for c in (first, second)]
        await first.send_json_to({"type": "unsubscribe", "id": "u", "subject": "ws.public.shared"})
        unsubscribed = await first.receive_json_from(timeout=5)
        after_one = hub.subscription_count()
        await publish("ws.public.shared", {"n": 2})
        second_event = await second.receive_json_from(timeout=5)
        first_got_nothing = await first.receive_nothing(timeout=0.3)
        await second.disconnect()
        await asyncio.sleep(0.1)
        after_all = hub.subscription_count()
        await first.disconnect()
        return shared, events, unsubscribed, after_one, second_event, first_got_nothing, after_all

    shared, events, unsubscribed, after_one, second_event, nothing, after_all = run(scenario())
    assert shared == 1
    assert [event["data"] for event in events] == [{"n": 1}, {"n": 1}]
    assert unsubscribed == {"type": "unsubscribed", "id": "u"}
    assert after_one == 1
    assert second_event["data"] == {"n": 2}
    assert nothing is True
    assert after_all == 0


@pytest.mark.parametrize(
    ("subject", "code", "type"),
    [
        ("ws.staff.*", 403, "permission_denied"),
        ("ws.elsewhere", 403, "permission_denied"),
        ("rpc.orders.>", 403, "permission_denied"),
        ("ws..bad", 400, "invalid_subject"),
        ("ws.>.x", 400, "invalid_subject"),
        ("ws.sp ace", 400, "invalid_subject"),
    ],
)
def test_subscriptions_no_rule_allows_are_refused(alice, subject, code, type):
    token_0 = token_for(alice)

    async def scenario():
        communicator = await signed_in(token_0)
        await communicator.send_json_to({"type": "subscribe", "id": 9, "subject": subject})
        reply = await communicator.receive_json_from(timeout=5)
        await communicator.disconnect()
        return reply

    reply = run(scenario())
    assert reply["type"] == "error"
    assert reply["id"] == 9
    assert reply["error"]["code"] == code
    assert reply["error"]["type"] == type


def test_a_permission_rule_lets_the_user_who_holds_it(boss):
    token_0 = token_for(boss)

    async def scenario():
        communicator = await signed_in(token_0)
        await communicator.send_json_to({"type": "subscribe", "id": 1, "subject": "ws.staff.*"})
        reply = await communicator.receive_json_from(timeout=5)
        await communicator.disconnect()
        return reply

    assert run(scenario()) == {"type": "subscribed", "id": 1}


def test_a_user_subject_rule_allows_the_own_id_only(alice, boss):
    token_0 = token_for(alice)

    async def scenario():
        communicator = await signed_in(token_0)
        await communicator.send_json_to(
            {"type": "subscribe", "id": "own", "subject": f"ws.user.{alice.pk}"}
        )
        own = await communicator.receive_json_from(timeout=5)
        await communicator.send_json_to(
            {"type": "subscribe", "id": "other", "subject": f"ws.user.{boss.pk}"}
        )
        other = await communicator.receive_json_from(timeout=5)
        await communicator.send_json_to({"type": "subscribe", "id": "all", "subject": "ws.user.*"})
        everyone = await communicator.receive_json_from(timeout=5)
        await communicator.disconnect()
        return own, other, everyone

    own, other, everyone = run(scenario())
    assert own == {"type": "subscribed", "id": "own"}
    assert other["error"]["code"] == 403
    assert everyone["error"]["code"] == 403


def test_a_superuser_passes_every_rule_but_not_into_system_subjects(root):
    token_0 = token_for(root)

    async def scenario():
        communicator = await signed_in(token_0)
        replies = []
        for subject in ("anything.at.all", "rpc.>", "$SRV.>", "_INBOX.>", ">", "*.x"):
            await communicator.send_json_to(
                {"type": "subscribe", "id": subject, "subject": subject}
            )
            replies.append(await communicator.receive_json_from(timeout=5))
        await communicator.disconnect()
        return replies

    replies = run(scenario())
    assert replies[0] == {"type": "subscribed", "id": "anything.at.all"}
    assert [reply["error"]["code"] for reply in replies[1:]] == [403] * 5


def test_calls_carry_the_users_identity_and_map_errors(alice, boss, calculator):
    token_0 = token_for(alice)
    token_1 = token_for(boss)

    async def scenario():
        communicator = await signed_in(token_0)
        frames = [
            {
                "type": "call",
                "id": 1,
                "service": calculator,
                "method": "add",
                "data": {"a": 2, "b": 3},
            },
            {"type": "call", "id": 2, "service": calculator, "method": "whoami", "data": {}},
            {
                "type": "call",
                "id": 3,
                "service": calculator,
                "method": "guarded",
                "data": {"a": 2, "b": 3},
            },
            {"type": "call", "id": 4, "service": calculator, "method": "add", "data": {"a": "x"}},
            {"type": "call", "id": 5, "service": calculator, "method": "nope", "data": {}},
            {"type": "call", "id": 6, "service": "no-such-service", "method": "x", "data": {}},
            {"type": "call", "id": 7, "service": "bad.name", "method": "x", "data": {}},
        ]
        for frame in frames:
            await communicator.send_json_to(frame)
        replies = {}
        for _ in frames:
            reply = await communicator.receive_json_from(timeout=10)
            replies[reply["id"]] = reply
        boss_socket = await signed_in(token_1)
        await boss_socket.send_json_to(frames[2])
        boss_reply = await boss_socket.receive_json_from(timeout=10)
        await communicator.disconnect()
        await boss_socket.disconnect()
        return replies, boss_reply

    replies, boss_reply = run(scenario())
    assert replies[1]["type"] == "reply" and replies[1]["data"] == {"total": 5}
    assert replies[1]["correlation_id"]
    assert replies[2]["data"]["instance"] == "alice"
    assert replies[3]["error"]["code"] == 403
    assert replies[4]["error"]["code"] == 422
    assert replies[4]["error"]["details"]
    assert replies[5]["error"]["code"] == 404
    assert replies[6]["error"]["code"] == 503
    assert replies[7]["error"] == {
        "code": 404,
        "type": "unknown_service",
        "message": "No such service.",
        "details": None,
    }
    assert boss_reply["data"] == {"total": 6}
    for reply in replies.values():
        assert "Traceback" not in json.dumps(reply)


def test_a_call_to_a_name_with_a_trailing_newline_is_refused_with_an_error_frame(alice, calculator):
    token = token_for(alice)

    async def scenario():
        communicator = await signed_in(token)
        frames = [
            {"type": "call", "id": 1, "service": calculator, "method": "add\n", "data": {}},
            {"type": "call", "id": 2, "service": f"{calculator}\n", "method": "add", "data": {}},
            {"type": "call", "id": 3, "service": calculator, "method": "add\r\n", "data": {}},
        ]
        for frame in frames:
            await communicator.send_json_to(frame)
        replies = [await communicator.receive_json_from(timeout=10) for _ in frames]
        await communicator.disconnect()
        return {reply["id"]: reply for reply in replies}

    replies = run(scenario())
    assert replies[1]["error"]["type"] == "unknown_endpoint"
    assert replies[2]["error"]["type"] == "unknown_service"
    assert replies[3]["error"]["type"] == "unknown_endpoint"
    assert {reply["error"]["code"] for reply in replies.values()} == {404}


def test_a_call_that_fails_in_an_unexpected_way_is_answered_with_a_500_frame(
    alice, calculator, settings, caplog
):
    # A frame that the socket accepts but NATS refuses (over the server's 1 MB max_payload):
    # the call's task fails outside the RPC error path, and the client still hears of it.
    settings.CLIFFRACER = {**settings.CLIFFRACER, "WEBSOCKET": {"MAX_FRAME_BYTES": 4 << 20}}
    token = token_for(alice)

    async def scenario():
        communicator = await signed_in(token)
        call = {"type": "call", "service": calculator, "method": "add"}
        too_big = {"a": 1, "b": 2, "padding": "x" * (2 << 20)}
        await communicator.send_json_to({**call, "id": "big", "data": too_big})
        failed = await communicator.receive_json_from(timeout=10)
        await communicator.send_json_to({**call, "id": 2, "data": {"a": 1, "b": 2}})
        after = await communicator.receive_json_from(timeout=10)
        await communicator.disconnect()
        return failed, after

    failed, after = run(scenario())
    assert (failed["type"], failed["id"]) == ("error", "big")
    assert failed["error"]["code"] == 413
    assert "Traceback" not in json.dumps(failed)
    assert after["data"] == {"total": 3}
    assert "never retrieved" not in caplog.text


def test_publish_needs_a_publish_rule(alice, boss):
    token_0 = token_for(alice)
    token_1 = token_for(boss)

    async def scenario():
        listener = await signed_in(token_1)
        await listener.send_json_to({"type": "subscribe", "id": 1, "subject": "ws.staff.*"})
        await listener.receive_json_from(timeout=5)
        refused_socket = await signed_in(token_0)
        await refused_socket.send_json_to(
            {"type": "publish", "id": "p", "subject": "ws.staff.news", "data": {"x": 1}}
        )
        refused = await refused_socket.receive_json_from(timeout=5)
        await listener.send_json_to(
            {"type": "publish", "id": "q", "subject": "ws.staff.news", "data": {"x": 2}}
        )
        first = await listener.receive_json_from(timeout=5)
        second = await listener.receive_json_from(timeout=5)
        await listener.send_json_to(
            {"type": "publish", "id": "w", "subject": "ws.staff.*", "data": {}}
        )
        wildcard = await listener.receive_json_from(timeout=5)
        await listener.disconnect()
        await refused_socket.disconnect()
        return refused, {first["type"]: first, second["type"]: second}, wildcard

    refused, frames, wildcard = run(scenario())
    assert refused["error"]["code"] == 403
    assert frames["published"]["id"] == "q"
    assert frames["event"]["data"] == {"x": 2}
    assert frames["event"]["correlation_id"] == frames["published"]["correlation_id"]
    assert wildcard["error"]["type"] == "invalid_subject"


def test_bad_frames_get_error_frames_then_close_4400(alice, settings):
    settings.CLIFFRACER = {"WEBSOCKET": {"MAX_BAD_FRAMES": 4, "MAX_FRAME_BYTES": 1024}}

    token_0 = token_for(alice)

    async def scenario():
        communicator = await signed_in(token_0)
        errors = []
        await communicator.send_to(text_data="{nope")
        errors.append(await communicator.receive_json_from(timeout=5))
        await communicator.send_json_to({"type": "teleport", "id": "t"})
        errors.append(await communicator.receive_json_from(timeout=5))
        await communicator.send_to(text_data=json.dumps({"type": "ping", "pad": "x" * 2000}))
        errors.append(await communicator.receive_json_from(timeout=5))
        await communicator.send_to(bytes_data=b"\x00\x01")
        errors.append(await communicator.receive_json_from(timeout=5))
        return errors, await closed_with(communicator)

    errors, code = run(scenario())
    assert [error["error"]["type"] for error in errors] == [
        "invalid_json",
        "invalid_frame",
        "frame_too_large",
        "binary_frame",
    ]
    assert errors[1]["id"] == "t"
    assert code == CLOSE_BAD_FRAMES


def test_a_same_origin_session_cookie_authenticates_without_a_frame(alice, client):
    client.force_login(alice)
    cookie = f"sessionid={client.cookies['sessionid'].value}".encode()

    async def scenario():
        same_site = await connect(
            [
                (b"cookie", cookie),
                (b"origin", b"http://127.0.0.1:8000"),
                (b"host", b"127.0.0.1:8000"),
            ]
        )
        ready = await same_site.receive_json_from(timeout=5)
        await same_site.send_json_to(
            {"type": "subscribe", "id": 1, "subject": f"ws.user.{alice.pk}"}
        )
        subscribed = await same_site.receive_json_from(timeout=5)
        await same_site.disconnect()
        # From another site's page the cookie counts for nothing: a frame is needed.
        cross_site = await connect(
            [
                (b"cookie", cookie),
                (b"origin", b"https://evil.example"),
                (b"host", b"127.0.0.1:8000"),
            ]
        )
        silent = await cross_site.receive_nothing(timeout=0.3)
        await cross_site.send_json_to({"type": "subscribe", "id": 1, "subject": "ws.public.x"})
        code = await closed_with(cross_site)
        return ready, subscribed, silent, code

    ready, subscribed, silent, code = run(scenario())
    assert ready["type"] == "ready" and ready["user"]["username"] == "alice"
    assert subscribed == {"type": "subscribed", "id": 1}
    assert silent is True
    assert code == CLOSE_NOT_AUTHENTICATED


@pytest.mark.parametrize(
    ("origin", "host", "same_origin"),
    [
        ("http://localhost:8000", "localhost:8000", True),
        ("http://LOCALHOST:8000", "localhost:8000", True),
        ("http://localhost", "localhost:80", True),
        # Another port of the same host is another origin: another app on this machine.
        ("http://localhost:1234", "localhost:8000", False),
        ("http://localhost:8000", "localhost", False),
        # A secure page's origin does not match a plain socket's, nor the other way round.
        ("https://localhost:8000", "localhost:8000", False),
        ("https://localhost", "localhost", False),
        # The Host must be one of ALLOWED_HOSTS, as for any request.
        ("http://evil.example", "evil.example", False),
        ("null", "localhost:8000", False),
        ("http://localhost:8000", None, False),
    ],
)
def test_a_session_cookie_counts_only_from_the_sites_own_origin(
    alice, client, origin, host, same_origin
):
    client.force_login(alice)
    cookie = f"sessionid={client.cookies['sessionid'].value}".encode()
    headers = [(b"cookie", cookie), (b"origin", origin.encode())]
    if host is not None:
        headers.append((b"host", host.encode()))

    async def scenario():
        communicator = await connect(headers)
        if await communicator.receive_nothing(timeout=0.3):
            await communicator.disconnect()
            return None
        ready = await communicator.receive_json_from()
        await communicator.disconnect()
        return ready

    ready = run(scenario())
    assert (ready is not None) == same_origin
    if same_origin:
        assert ready["user"]["username"] == "alice"


def test_csrf_trusted_origins_are_trusted_for_the_session_cookie(alice, client, settings):
    settings.CSRF_TRUSTED_ORIGINS = ["https://shop.example", "https://*.admin.example"]
    client.force_login(alice)
    cookie = f"sessionid={client.cookies['sessionid'].value}".encode()

    async def ready_from(origin: bytes) -> bool:
        communicator = await connect(
            [(b"cookie", cookie), (b"origin", origin), (b"host", b"localhost:8000")]
        )
        silent = await communicator.receive_nothing(timeout=0.3)
        await communicator.disconnect()
        return not silent

    async def scenario():
        return [
            await ready_from(origin)
            for origin in (
                b"https://shop.example",
                b"https://ops.admin.example",
                b"http://shop.example",
                b"https://shop.example:8443",
            )
        ]

    assert run(scenario()) == [True, True, False, False]


def test_a_session_users_calls_carry_a_token_minted_for_them(alice, client, calculator):
    client.force_login(alice)
    cookie = f"sessionid={client.cookies['sessionid'].value}".encode()

    async def scenario():
        communicator = await connect(
            [(b"cookie", cookie), (b"origin", b"http://localhost"), (b"host", b"localhost")]
        )
        await communicator.receive_json_from(timeout=5)
        await communicator.send_json_to(
            {"type": "call", "id": 1, "service": calculator, "method": "whoami", "data": {}}
        )
        reply = await communicator.receive_json_from(timeout=10)
        await communicator.disconnect()
        return reply

    reply = run(scenario())
    assert reply["type"] == "reply"
    assert reply["data"]["instance"] == "alice"


def test_an_auth_frame_replaces_the_session_cookies_user(alice, boss, client):
    client.force_login(boss)
    cookie = f"sessionid={client.cookies['sessionid'].value}".encode()
    token = token_for(alice)

    async def scenario():
        communicator = await connect(
            [(b"cookie", cookie), (b"origin", b"http://localhost"), (b"host", b"localhost")]
        )
        as_boss = await communicator.receive_json_from(timeout=5)
        await communicator.send_json_to({"type": "subscribe", "id": 1, "subject": "ws.staff.*"})
        subscribed = await communicator.receive_json_from(timeout=5)
        await communicator.send_json_to({"type": "auth", "token": token})
        as_alice = await communicator.receive_json_from(timeout=5)
        # Boss's subscription ended with boss.
        await publish("ws.staff.news", {"secret": True})
        nothing = await communicator.receive_nothing(timeout=0.5)
        await communicator.disconnect()
        return as_boss, subscribed, as_alice, nothing

    as_boss, subscribed, as_alice, nothing = run(scenario())
    assert as_boss["user"]["username"] == "boss"
    assert subscribed == {"type": "subscribed", "id": 1}
    assert as_alice["user"]["username"] == "alice"
    assert nothing is True


def test_a_deleted_users_token_cannot_open_a_socket(alice):
    token = token_for(alice)
    alice.delete()

    async def scenario():
        communicator = await connect()
        await communicator.send_json_to({"type": "auth", "token": token})
        return await communicator.receive_output(timeout=5)

    closed = run(scenario())
    assert (closed["type"], closed["code"]) == ("websocket.close", CLOSE_NOT_AUTHENTICATED)
    assert "no longer exists" in closed["reason"]


@pytest.mark.parametrize("change", ["delete", "deactivate"])
def test_an_open_socket_closes_when_its_user_is_deleted_or_deactivated(alice, change):
    from channels.db import database_sync_to_async

    def gone() -> None:
        # As the admin would: saved, committed, announced to every process.
        if change == "delete":
            alice.delete()
        else:
            alice.is_active = False
            alice.save()

    token = token_for(alice)

    async def scenario():
        communicator = await signed_in(token)
        started = time.monotonic()
        await database_sync_to_async(gone)()
        closed = await communicator.receive_output(timeout=5)
        return closed, time.monotonic() - started

    closed, seconds = run(scenario())
    assert (closed["type"], closed["code"]) == ("websocket.close", CLOSE_NOT_AUTHENTICATED)
    assert seconds < 5  # the announcement, not USER_CHECK_INTERVAL (30 s)


def test_an_unannounced_change_closes_the_socket_within_the_check_interval(alice, settings):
    from channels.db import database_sync_to_async

    settings.CLIFFRACER = {**settings.CLIFFRACER, "USER_CHECK_INTERVAL": 0.5}
    token = token_for(alice)

    async def scenario():
        communicator = await signed_in(token)
        # An UPDATE sends no signal: the socket's own periodic check notices.
        await database_sync_to_async(
            lambda: User.objects.filter(pk=alice.pk).update(is_active=False)
        )()
        return await communicator.receive_output(timeout=5)

    closed = run(scenario())
    assert (closed["type"], closed["code"]) == ("websocket.close", CLOSE_NOT_AUTHENTICATED)


def test_calls_follow_the_call_policies_of_the_web_process(alice, calculator, settings):
    """A WebSocket call goes through the same client: its target's breaker opens."""
    gone = f"{calculator}-gone"
    policy = {"BREAKER": {"MIN_CALLS": 2, "FAILURE_RATIO": 1.0, "OPEN_SECONDS": 600}}
    settings.CLIFFRACER = {**settings.CLIFFRACER, "CALLS": {gone: policy}}
    token = token_for(alice)

    async def scenario():
        communicator = await signed_in(token)
        replies = []
        for number in range(3):
            await communicator.send_json_to(
                {"type": "call", "id": number, "service": gone, "method": "add", "data": {}}
            )
            replies.append(await communicator.receive_json_from(timeout=10))
        await communicator.disconnect()
        return replies

    replies = run(scenario())
    assert [(reply["error"]["code"], reply["error"]["type"]) for reply in replies] == [
        (503, "no_responders"),
        (503, "no_responders"),
        (503, "circuit_open"),
    ]
