"""The NATS channel layer, against a real nats-server and real processes (and Redis if it runs)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from asgiref.sync import async_to_sync
from channels.exceptions import ChannelFull
from channels.layers import BaseChannelLayer, channel_layers
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from cliffracer_core.contrib.channels.layers import NatsChannelLayer, subject_token
from cliffracer_core.testing.plugin import project_root, run_async
from cliffracer_core.testing.polling import wait_until
from settings.settings import channel_layers as channel_layers_for

# The Redis the "redis" cases use: the machine's, or the one .ci/run starts when it has none.
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def redis_answers() -> bool:
    address = urlsplit(REDIS_URL)
    try:
        socket.create_connection((address.hostname, address.port or 6379), timeout=1).close()
    except OSError:
        return False
    return True


@pytest.fixture
def prefix(nats_server, unique_name: str) -> str:
    """A subject prefix of this test's own, so that no other test's layer hears it."""
    return f"_test.layer.{unique_name}"


async def next_message(layer: BaseChannelLayer, channel: str, timeout: float = 5.0) -> Any:
    return await asyncio.wait_for(layer.receive(channel), timeout)


async def nothing_arrives(layer: BaseChannelLayer, channel: str, wait: float = 0.3) -> bool:
    try:
        await asyncio.wait_for(layer.receive(channel), wait)
    except TimeoutError:
        return True
    return False


def subscribed(layer: NatsChannelLayer, name: str) -> bool:
    """Whether ``layer`` holds a confirmed subscription for the named channel ``name``."""
    entry = layer._subscriptions.get(layer._named_subject(name))
    return entry is not None and entry.confirmed()


# Groups, through every backend the settings can choose


async def group_round_trip(layer: BaseChannelLayer, group: str) -> None:
    """Two members hear a group_send; after a group_discard only the one left does."""
    first = await layer.new_channel()
    second = await layer.new_channel()
    await layer.group_add(group, first)
    await layer.group_add(group, second)
    await layer.group_send(group, {"type": "chat.message", "text": "hello", "data": b"\x00\xff"})
    for channel in (first, second):
        message = await next_message(layer, channel)
        assert message == {"type": "chat.message", "text": "hello", "data": b"\x00\xff"}
    await layer.group_discard(group, second)
    await layer.group_send(group, {"type": "chat.message", "text": "again"})
    assert (await next_message(layer, first))["text"] == "again"
    assert await nothing_arrives(layer, second)


@pytest.fixture(params=["nats", "configured", "memory", "redis"])
def make_layer(request, prefix: str) -> Callable[[], BaseChannelLayer]:
    """A layer of each backend; "configured" is the one CHANNEL_LAYERS names (NATS by default,
    channels-redis when CI runs this module with CHANNEL_LAYER_URL=redis://...)."""
    if request.param == "nats":
        return lambda: NatsChannelLayer(prefix=prefix)
    if request.param == "configured":
        return lambda: channel_layers.make_backend("default")
    if request.param == "memory":
        config = channel_layers_for("memory://")["default"]
        return lambda: import_string(config["BACKEND"])(**config.get("CONFIG", {}))
    if not redis_answers():
        message = f"Redis does not answer at {REDIS_URL} (REDIS_URL)."
        if os.environ.get("CI") == "true":
            # .ci/run installs and starts one when the machine has none.
            pytest.fail(f"{message} Under CI=true the Redis layer must be tested.")
        pytest.skip(message)
    config = channel_layers_for(REDIS_URL)["default"]
    return lambda: import_string(config["BACKEND"])(**config["CONFIG"], prefix=prefix)


def test_group_round_trip(make_layer, unique_name: str) -> None:
    async def scenario() -> None:
        layer = make_layer()
        try:
            await group_round_trip(layer, f"{unique_name}.room")
        finally:
            if close_pools := getattr(layer, "close_pools", None):  # channels-redis
                await layer.flush()
                await close_pools()

    run_async(scenario())


def test_settings_choose_the_layer_by_url() -> None:
    assert channel_layers_for("")["default"]["BACKEND"] == (
        "cliffracer_core.contrib.channels.layers.NatsChannelLayer"
    )
    assert channel_layers_for(REDIS_URL)["default"] == {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [REDIS_URL]},
    }
    assert channel_layers_for("memory://")["default"]["BACKEND"] == (
        "channels.layers.InMemoryChannelLayer"
    )
    with pytest.raises(ImproperlyConfigured):
        channel_layers_for("amqp://127.0.0.1")


# Channels


def test_send_and_receive_on_a_process_specific_channel(prefix: str) -> None:
    async def scenario() -> None:
        here, elsewhere = NatsChannelLayer(prefix=prefix), NatsChannelLayer(prefix=prefix)
        channel = await here.new_channel()
        assert channel.startswith(f"specific.{here.process_token}!")
        await here.send(channel, {"type": "local"})
        assert await next_message(here, channel) == {"type": "local"}
        # Another layer is another process: its send travels through NATS.
        await elsewhere.send(channel, {"type": "remote"})
        assert await next_message(here, channel) == {"type": "remote"}
        with pytest.raises(ValueError):
            await elsewhere.receive(channel)

    run_async(scenario())


def test_a_named_channel_gives_each_message_to_one_receiver(prefix: str, unique_name: str) -> None:
    name = f"{unique_name}-jobs"

    async def scenario() -> tuple[list[int], list[int]]:
        first, second, sender = (NatsChannelLayer(prefix=prefix) for _ in range(3))
        received: dict[NatsChannelLayer, list[int]] = {first: [], second: []}

        async def work(layer: NatsChannelLayer) -> None:
            while True:
                received[layer].append((await layer.receive(name))["n"])

        workers = [asyncio.create_task(work(layer)) for layer in (first, second)]
        await wait_until(lambda: subscribed(first, name) and subscribed(second, name))
        for n in range(40):
            await sender.send(name, {"type": "job", "n": n})
        await wait_until(lambda: len(received[first]) + len(received[second]) >= 40)
        await asyncio.sleep(0.2)  # and nothing more
        for worker in workers:
            worker.cancel()
        return received[first], received[second]

    first, second = run_async(scenario())
    assert sorted(first + second) == list(range(40))
    assert first and second  # the server shares them out


def test_capacity_raises_on_a_local_send(prefix: str) -> None:
    async def scenario() -> None:
        layer = NatsChannelLayer(prefix=prefix, capacity=2)
        channel = await layer.new_channel()
        await layer.send(channel, {"type": "one"})
        await layer.send(channel, {"type": "two"})
        with pytest.raises(ChannelFull):
            await layer.send(channel, {"type": "three"})
        assert await next_message(layer, channel) == {"type": "one"}
        await layer.send(channel, {"type": "three"})
        assert [(await next_message(layer, channel))["type"] for _ in range(2)] == ["two", "three"]

    run_async(scenario())


def test_a_group_send_to_a_full_channel_is_dropped_with_one_warning(
    prefix: str, unique_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    group = f"{unique_name}.busy"

    async def scenario() -> tuple[list[int], list[int]]:
        layer = NatsChannelLayer(prefix=prefix, channel_capacity={"small.*": 2})
        small, large = await layer.new_channel("small"), await layer.new_channel("large")
        await layer.group_add(group, small)
        await layer.group_add(group, large)
        for n in range(5):
            await layer.group_send(group, {"type": "tick", "n": n})
        # Each message reaches both members at once: when "large" has all five, "small" has
        # had its chance at each.
        large_got = [(await next_message(layer, large))["n"] for _ in range(5)]
        small_got = [(await next_message(layer, small))["n"] for _ in range(2)]
        assert await nothing_arrives(layer, small)
        return large_got, small_got

    with caplog.at_level(logging.WARNING, logger="cliffracer.channels"):
        large_got, small_got = run_async(scenario())
    assert large_got == [0, 1, 2, 3, 4]
    assert small_got == [0, 1]
    warnings = [record for record in caplog.records if "is full" in record.getMessage()]
    assert len(warnings) == 1


def test_expired_messages_are_dropped(prefix: str, unique_name: str) -> None:
    group = f"{unique_name}.stale"

    async def scenario() -> None:
        layer = NatsChannelLayer(prefix=prefix, expiry=0.5)
        channel = await layer.new_channel()
        await layer.send(channel, {"type": "old"})
        await asyncio.sleep(0.8)
        await layer.send(channel, {"type": "new"})
        assert await next_message(layer, channel) == {"type": "new"}
        # A channel that leaves a group message unread past expiry is gone: it leaves its
        # groups (the next call of the layer notices).
        await layer.group_add(group, channel)
        await layer.group_send(group, {"type": "unread"})
        await asyncio.sleep(0.8)
        await layer.new_channel()
        await layer.group_send(group, {"type": "after"})
        assert await nothing_arrives(layer, channel)

    run_async(scenario())


def test_flush_forgets_channels_and_groups(prefix: str, unique_name: str) -> None:
    group = f"{unique_name}.flushed"

    async def scenario() -> None:
        layer = NatsChannelLayer(prefix=prefix)
        channel = await layer.new_channel()
        await layer.group_add(group, channel)
        await layer.send(channel, {"type": "waiting"})
        await layer.flush()
        assert await nothing_arrives(layer, channel)
        await layer.group_send(group, {"type": "to nobody"})
        assert await nothing_arrives(layer, channel)
        # And the layer works on afterwards.
        await layer.group_add(group, channel)
        await layer.group_send(group, {"type": "again"})
        assert await next_message(layer, channel) == {"type": "again"}

    run_async(scenario())


def test_invalid_names_raise_type_error(prefix: str) -> None:
    async def scenario() -> None:
        layer = NatsChannelLayer(prefix=prefix)
        channel = await layer.new_channel()
        for call in (
            layer.send("no spaces", {"type": "x"}),
            layer.receive("x" * 100),
            layer.group_add("bad group", channel),
            layer.group_discard("group", "bad/channel"),
            layer.group_send("bad/group", {"type": "x"}),
        ):
            with pytest.raises(TypeError):
                await call

    run_async(scenario())


def test_names_that_would_make_empty_subject_tokens_get_their_own() -> None:
    assert subject_token("chat.room1") == "chat.room1"
    assert subject_token("a..b") == "~a~~b"
    assert subject_token(".a") != subject_token("a")


def test_messages_keep_bytes_and_nested_values(prefix: str) -> None:
    message = {
        "type": "payload",
        "bytes": b"\x00\x01\xfe\xff",
        "text": "héllo ✓",
        "nested": {"list": [1, 2.5, None, True], 7: "integer key"},
        "pair": (1, 2),
    }
    expected = {**message, "pair": [1, 2]}  # msgpack, like channels-redis: tuples become lists

    async def scenario() -> None:
        here, elsewhere = NatsChannelLayer(prefix=prefix), NatsChannelLayer(prefix=prefix)
        channel = await here.new_channel()
        await here.send(channel, message)
        assert await next_message(here, channel) == expected
        await elsewhere.send(channel, message)
        assert await next_message(here, channel) == expected

    run_async(scenario())


def test_memberships_are_kept_by_the_process_of_the_channel(prefix: str, unique_name: str) -> None:
    group = f"{unique_name}.shared"
    name = f"{unique_name}-worker"

    async def scenario() -> None:
        owner, other = NatsChannelLayer(prefix=prefix), NatsChannelLayer(prefix=prefix)
        channel = await owner.new_channel()
        # Asked for by another process (a task), kept and undone by the owner.
        await other.group_add(group, channel)
        await other.group_send(group, {"type": "in"})
        assert await next_message(owner, channel) == {"type": "in"}
        await other.group_discard(group, channel)
        await other.group_send(group, {"type": "out"})
        assert await nothing_arrives(owner, channel)
        # A channel whose process has gone: nothing to do, and no error.
        await other.group_add(group, f"specific.{'0' * 32}!gone")
        # A named channel as a member: one of its receivers gets each group message.
        await other.group_add(group, name)
        receiving = asyncio.create_task(owner.receive(name))
        await wait_until(lambda: subscribed(owner, name))
        await other.group_send(group, {"type": "to.worker"})
        assert await asyncio.wait_for(receiving, 5) == {"type": "to.worker"}

    run_async(scenario())


# Other loops and other processes


def test_calls_from_a_plain_thread_reach_a_receiver_on_another_loop(
    prefix: str, unique_name: str
) -> None:
    group = f"{unique_name}.from-thread"

    async def scenario() -> list[Any]:
        layer = NatsChannelLayer(prefix=prefix)
        channel = await layer.new_channel()
        await layer.group_add(group, channel)
        errors: list[BaseException] = []

        def from_a_thread() -> None:  # as a Celery task or a WSGI view would
            try:
                async_to_sync(layer.group_send)(group, {"type": "via.group"})
                async_to_sync(layer.send)(channel, {"type": "via.send"})
            except BaseException as error:  # noqa: BLE001
                errors.append(error)

        thread = threading.Thread(target=from_a_thread)
        thread.start()
        received = [await next_message(layer, channel) for _ in range(2)]
        await asyncio.to_thread(thread.join, 10)
        assert not errors
        return received

    received = run_async(scenario())
    assert sorted(message["type"] for message in received) == ["via.group", "via.send"]


CHILD = r"""
import asyncio
import sys

import django

django.setup()

from cliffracer_core.contrib.channels.layers import NatsChannelLayer
from cliffracer_core.transports import close_transport


async def main(prefix, mode, argument):
    layer = NatsChannelLayer(prefix=prefix)
    try:
        if mode == "member":
            channel = await layer.new_channel()
            await layer.group_add(argument, channel)
            print("ready", channel, flush=True)
            for _ in range(2):
                message = await asyncio.wait_for(layer.receive(channel), 20)
                print("received", message["text"], message["data"].hex(), flush=True)
        else:
            await layer.send(argument, {"type": "hello", "text": "child", "data": b"\x00\xff"})
            print("sent", flush=True)
    finally:
        await close_transport()


asyncio.run(main(*sys.argv[1:]))
"""


class Child:
    """A second Python process running CHILD, with its stderr in a file for failures."""

    def __init__(self, process: asyncio.subprocess.Process, log: Path) -> None:
        self.process = process
        self.log = log

    @classmethod
    async def start(cls, nats_url: str, log: Path, *arguments: str) -> Child:
        env = {**os.environ, "NATS_URL": nats_url, "PYTHONUNBUFFERED": "1"}
        env["DJANGO_SETTINGS_MODULE"] = "settings.settings"
        env.pop("CHANNEL_LAYER_URL", None)
        with log.open("wb") as stderr:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                CHILD,
                *arguments,
                cwd=str(project_root()),
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
            )
        return cls(process, log)

    async def line(self, timeout: float = 30.0) -> str:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        assert line, f"the child ended:\n{self.log.read_text()[-3000:]}"
        return line.decode().strip()

    async def finish(self) -> int:
        try:
            return await asyncio.wait_for(self.process.wait(), 20)
        finally:
            if self.process.returncode is None:
                self.process.kill()
                await self.process.wait()


def test_group_send_reaches_a_member_in_another_process(
    nats_server, prefix: str, unique_name: str, tmp_path: Path
) -> None:
    room, other = f"{unique_name}.room", f"{unique_name}.other"

    async def scenario() -> None:
        layer = NatsChannelLayer(prefix=prefix)
        child = await Child.start(nats_server.url, tmp_path / "child.log", prefix, "member", room)
        try:
            ready, channel = (await child.line()).split()
            assert ready == "ready"
            await layer.group_send(room, {"type": "chat.message", "text": "one", "data": b"\x01"})
            assert await child.line() == "received one 01"
            # A membership asked for here, of the child's channel, is kept by the child.
            await layer.group_add(other, channel)
            await layer.group_send(other, {"type": "chat.message", "text": "two", "data": b"\x02"})
            assert await child.line() == "received two 02"
        finally:
            code = await child.finish()
        assert code == 0, child.log.read_text()[-3000:]

    run_async(scenario())


def test_another_process_sends_to_a_channel_of_this_one(
    nats_server, prefix: str, tmp_path: Path
) -> None:
    async def scenario() -> None:
        layer = NatsChannelLayer(prefix=prefix)
        channel = await layer.new_channel()
        child = await Child.start(nats_server.url, tmp_path / "child.log", prefix, "send", channel)
        try:
            message = await next_message(layer, channel, timeout=30)
        finally:
            code = await child.finish()
        assert code == 0, child.log.read_text()[-3000:]
        assert message == {"type": "hello", "text": "child", "data": b"\x00\xff"}

    run_async(scenario())
