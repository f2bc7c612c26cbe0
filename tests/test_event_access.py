"""Who may publish what a handler handles: events are refused like RPCs, before the handler.

An attack run published ``payments.completed`` with no token at all, and orders marked an unpaid
order paid. Every event here is published over real NATS, by a plain nats-py client (no token,
or a token of the test's choosing) or by Cliffracer's client, to handlers in a running service.
"""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import nats
import pytest
from django.contrib.auth.models import Permission, User
from django.test import override_settings

from cliffracer_core import Service, event, rpc
from cliffracer_core.contrib.monitor.records import errors_subject
from cliffracer_core.core.auth.tokens import mint_system_token
from cliffracer_core.testing import wait_for
from cliffracer_core.testing.plugin import run_async
from tests.models import Happened, Tagged
from tests.test_auth import access_token


def make_service(service_name: str, subject: str) -> type[Service]:
    class Listener(Service):
        name = service_name

        def __init__(self) -> None:
            self.heard: dict[str, list[str]] = {
                "default": [],
                "system": [],
                "guarded": [],
                "public": [],
            }

        @rpc(public=True)
        async def ping(self) -> Tagged:
            return Tagged(tag=1)

        @event(f"{subject}.default")
        async def on_default(self, happened: Happened) -> None:
            self.heard["default"].append(happened.what)

        @event(f"{subject}.system", from_system=True)
        async def on_system(self, happened: Happened) -> None:
            self.heard["system"].append(happened.what)

        @event(f"{subject}.guarded", permission="auth.view_user")
        async def on_guarded(self, happened: Happened) -> None:
            self.heard["guarded"].append(happened.what)

        @event(f"{subject}.public", public=True)
        async def on_public(self, happened: Happened) -> None:
            self.heard["public"].append(happened.what)

    return Listener


async def raw_publish(url: str, subject: str, what: str, token: str | None = None) -> None:
    connection = await nats.connect(url)
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else None
        await connection.publish(subject, json.dumps({"what": what}).encode(), headers=headers)
        await connection.flush()
    finally:
        await connection.close()


@pytest.fixture
def listener(start_service, unique_name):
    subject = f"{unique_name}_access"
    running = start_service(make_service(unique_name, subject))
    return subject, running


@pytest.fixture
def people(transactional_db):
    viewer = User.objects.create_user("viewer", password="x")
    viewer.user_permissions.add(Permission.objects.get(codename="view_user"))
    plain = User.objects.create_user("plain", password="x")
    return {"viewer": access_token(viewer), "plain": access_token(plain)}


def publish_all(url: str, subject: str, what: str, token: str | None) -> None:
    async def send() -> None:
        for handler in ("default", "system", "guarded", "public"):
            await raw_publish(url, f"{subject}.{handler}", what, token)

    run_async(send())


def test_anonymous_events_reach_only_public_handlers(nats_server, listener):
    subject, running = listener
    publish_all(nats_server.url, subject, "anonymous", None)
    heard = running.service.heard
    wait_for(lambda: heard["public"] == ["anonymous"], what="the public handler")
    refused = running.runner.metrics.events
    wait_for(lambda: sum(refused[name]["refused"] for name in refused) == 3, what="3 refusals")
    assert heard["default"] == heard["system"] == heard["guarded"] == []


def test_a_user_token_reaches_default_and_permitted_handlers_only(nats_server, listener, people):
    subject, running = listener
    publish_all(nats_server.url, subject, "plain", people["plain"])
    publish_all(nats_server.url, subject, "viewer", people["viewer"])
    heard = running.service.heard
    wait_for(lambda: sorted(heard["default"]) == ["plain", "viewer"], what="default handler")
    wait_for(lambda: heard["guarded"] == ["viewer"], what="the guarded handler")
    wait_for(lambda: len(heard["public"]) == 2, what="the public handler")
    metrics = running.runner.metrics.events
    # plain: system and guarded refused; viewer: system refused.
    wait_for(lambda: metrics["on_system"]["refused"] == 2 and metrics["on_guarded"]["refused"] == 1)
    assert heard["system"] == []


def test_the_system_identity_reaches_system_handlers(nats_server, listener):
    subject, running = listener
    publish_all(nats_server.url, subject, "system", mint_system_token())
    heard = running.service.heard
    wait_for(lambda: heard["system"] == ["system"], what="the system handler")
    wait_for(lambda: heard["default"] == ["system"] and heard["public"] == ["system"])
    # The system identity holds only its configured permissions: not auth.view_user.
    wait_for(lambda: running.runner.metrics.events["on_guarded"]["refused"] == 1)
    assert heard["guarded"] == []


def test_forged_and_expired_tokens_are_refused(nats_server, listener):
    subject, running = listener
    expired = mint_system_token(lifetime=timedelta(seconds=-60))
    run_async(raw_publish(nats_server.url, f"{subject}.system", "expired", expired))
    forged = mint_system_token()[:-4] + "AAAA"
    run_async(raw_publish(nats_server.url, f"{subject}.system", "forged", forged))
    wait_for(lambda: running.runner.metrics.events["on_system"]["refused"] == 2)
    assert running.service.heard["system"] == []


def test_oversized_headers_are_refused(nats_server, listener):
    subject, running = listener

    async def send() -> None:
        connection = await nats.connect(nats_server.url)
        try:
            await connection.publish(
                f"{subject}.public", b'{"what": "big"}', headers={"X-Junk": "x" * 100_000}
            )
            await connection.flush()
        finally:
            await connection.close()

    run_async(send())
    wait_for(lambda: running.runner.metrics.events["on_public"]["refused"] == 1)
    assert running.service.heard["public"] == []


def test_refused_events_are_recorded_for_the_monitor_rate_limited(nats_server, listener):
    subject, running = listener
    records: list[dict] = []

    async def listen_and_send() -> None:
        connection = await nats.connect(nats_server.url)
        try:
            done = asyncio.Event()

            async def record(message) -> None:
                records.append(json.loads(message.data))
                records[-1]["authorization"] = (message.headers or {}).get("Authorization", "")

            await connection.subscribe(errors_subject(running.runner.name), cb=record)
            await connection.flush()
            for _ in range(40):
                await connection.publish(f"{subject}.system", json.dumps({"what": "x"}).encode())
            await connection.flush()
            await asyncio.wait_for(done.wait(), timeout=1.0)
        except TimeoutError:
            pass
        finally:
            await connection.close()

    run_async(listen_and_send())
    wait_for(lambda: running.runner.metrics.events["on_system"]["refused"] == 40)
    # At most the error reporter's burst went out, each as the system identity.
    assert 1 <= len(records) <= 11
    assert {record["code"] for record in records} == {401}
    assert all(record["authorization"].startswith("Bearer ") for record in records)


def test_default_event_access_public_takes_anonymous_events(
    nats_server, start_service, unique_name
):
    subject = f"{unique_name}_access"
    with override_settings(CLIFFRACER={"DEFAULT_EVENT_ACCESS": "public"}):
        running = start_service(make_service(unique_name, subject))
    publish_all(nats_server.url, subject, "anonymous", None)
    heard = running.service.heard
    wait_for(lambda: heard["default"] == ["anonymous"] and heard["public"] == ["anonymous"])
    assert heard["system"] == heard["guarded"] == []


def test_a_handler_is_one_of_public_system_or_guarded():
    with pytest.raises(ValueError):
        event("x.y", public=True, from_system=True)
    with pytest.raises(ValueError):
        event("x.y", permission="auth.view_user", from_system=True)
    with pytest.raises(ValueError):
        event("x.y", permission="not-a-permission")
