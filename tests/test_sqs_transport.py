"""What only the SNS/SQS transport has to show (tests/test_transports.py holds it to NATS's
semantics): how subjects become queue names and back, long names hashed within SQS's 80
characters, what a connection leaves behind when it closes, a request to a service that
stopped, its URL's mistakes, and a real ``runservice`` on moto's server that ``manage.py
call`` and ``manage.py services`` reach."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from cliffracer_core.core.errors import NoResponders, RemoteUnavailable, RpcTimeout
from cliffracer_core.core.headers import MSG_ID
from cliffracer_core.testing.plugin import project_root
from cliffracer_core.transports import backend_for
from cliffracer_core.transports import connect as connect_transport
from cliffracer_core.transports.base import Transport
from cliffracer_core.transports.sqs import SqsTransport, names
from tests.moto_server import REGION
from tests.sqs_broker import sqs_url


@pytest.fixture
def url(shared_moto_server: str) -> Iterator[str]:
    with sqs_url(shared_moto_server) as location:
        yield location


def prefix_of(url: str) -> str:
    return url.split("prefix=")[1].split("&")[0]


def queue_names(url: str, endpoint: str) -> list[str]:
    client = boto3.client("sqs", region_name=REGION, endpoint_url=endpoint)
    urls = client.list_queues(QueueNamePrefix=f"{prefix_of(url)}-").get("QueueUrls", [])
    return sorted(url.rsplit("/", 1)[1] for url in urls)


async def echo(transport: Transport, subject: str, *, queue: str = "") -> Any:
    async def respond(message: Any) -> None:
        await transport.publish(message.reply, message.data)

    return await transport.subscribe(subject, respond, queue=queue)


SUBJECTS = [
    "orders.create",
    "$SRV.PING.orders.abc123",
    "orders.*",
    "orders.>",
    "*.created",
    ">",
    "snake_case.kebab-case.MixedCase",
    "__.--._-",
    "orders.é.ünïcode.𝄞",
]


@pytest.mark.parametrize("subject", SUBJECTS)
def test_a_subject_is_written_in_queue_name_characters_and_read_back(subject: str) -> None:
    written = names.encode(subject)
    assert all(c.isascii() and (c.isalnum() or c in "-_") for c in written)
    assert "__" not in written
    assert names.decode(written) == subject


@pytest.mark.parametrize("subject", SUBJECTS)
@pytest.mark.parametrize("kind", ["g", "b"])
def test_a_queue_name_says_which_group_and_pattern_it_is_for(subject: str, kind: str) -> None:
    owner = "orders.on_payment" if kind == "g" else "0123456789ab"
    queue = names.QueueName(kind, owner, subject)
    name, tags = names.queue_name("shop_prod", queue)
    assert len(name) <= names.MAX_NAME and tags == {}
    assert names.parse("shop_prod", name) == queue
    # Another deployment's prefix that starts the same never reads it as its own.
    assert names.parse("shop", name) is None


def test_a_long_name_is_hashed_within_80_characters_and_read_from_its_tags() -> None:
    long = "orders." + ".".join(f"part{n}" for n in range(30))
    queue = names.QueueName("g", "orders", long)
    name, tags = names.queue_name("shop_prod", queue)
    assert len(name) == names.MAX_NAME
    assert names.parse("shop_prod", name) is None and names.is_hashed("shop_prod", name)
    assert names.from_tags(name, "shop_prod", tags) == queue
    other, _ = names.queue_name("shop_prod", names.QueueName("g", "orders", long + "x"))
    assert other != name


def test_an_ordered_streams_names_and_ids_fit_what_fifo_takes() -> None:
    long = "S" * 200
    name = names.durable_name("p" * 32, "c", "0123456789ab", long, long, fifo=True)
    assert len(name) == names.MAX_NAME and name.endswith(".fifo")
    assert names.fifo_topic_name("shop") == "shop-events.fifo"
    assert names.group_id("ORDERS") == "ORDERS" and len(names.group_id(long)) == 64
    assert names.deduplication_id("order-42:created", 7) == "order-42:created"
    assert names.deduplication_id("", 7) == "7"
    for refused in ("x" * 129, "with space", "ünïcode"):
        written = names.deduplication_id(refused, 7)
        assert written != refused and names.FIFO_ID.fullmatch(written)


def test_filter_policies_say_what_sns_can_and_leave_the_rest_to_the_consumer() -> None:
    assert names.filter_policy("orders.created") == {"subject": ["orders.created"]}
    assert names.filter_policy("orders.*.created") == {"subject": [{"prefix": "orders."}]}
    assert names.filter_policy("orders.eu.>") == {"subject": [{"prefix": "orders.eu."}]}
    assert names.filter_policy("*.created") is None
    assert names.filter_policy(">") is None


def test_the_sqs_scheme_picks_the_sqs_backend() -> None:
    assert backend_for("sqs://?prefix=shop") == "cliffracer_core.transports.sqs.SqsTransport"


@pytest.mark.parametrize(
    "location",
    [
        "sqs://somehost:4566",  # a host: the endpoint goes in endpoint_url
        "sqs://?prefix=shop-prod",  # '-' separates a name's parts
        "sqs://?prefix=shop&colour=blue",  # an option nobody reads
    ],
)
def test_a_wrong_url_is_refused_with_a_reason(location: str) -> None:
    async def main() -> None:
        with pytest.raises(RemoteUnavailable) as raised:
            await connect_transport(location)
        assert raised.value.type == "transport_unavailable"

    asyncio.run(main())


def test_the_system_check_names_a_wrong_prefix_and_a_missing_region(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for variable in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("CLIFFRACER_TRANSPORT_URL", "sqs://?prefix=shop.prod")
    [(message, hint), (no_region, region_hint)] = SqsTransport.check()
    assert "shop.prod" in message and "prefix" in hint
    assert "region" in no_region and "AWS_REGION" in region_hint
    monkeypatch.setenv("CLIFFRACER_TRANSPORT_URL", "sqs://?prefix=shop_prod&region=eu-west-1")
    assert SqsTransport.check() == []
    monkeypatch.setenv("CLIFFRACER_TRANSPORT_URL", "sqs://?prefix=shop_prod")
    monkeypatch.setenv("AWS_REGION", "eu-central-1")
    assert SqsTransport.check() == []


def test_long_subjects_and_group_names_travel_under_hashed_names(url: str) -> None:
    subject = "orders." + ".".join(f"segment{n}" for n in range(20))

    async def main() -> None:
        responder = await connect_transport(url)
        caller = await connect_transport(url)
        try:
            await echo(responder, subject, queue="a.rather.long.queue.group.name." * 3)
            reply = await caller.request(subject, b"long", timeout=10)
            assert reply.data == b"long"
            received: asyncio.Queue[Any] = asyncio.Queue()

            async def put(message: Any) -> None:
                await received.put(message)

            await responder.subscribe(subject.rsplit(".", 1)[0] + ".*", put)
            await caller.publish(subject, b"event")
            async with asyncio.timeout(10):
                assert (await received.get()).data == b"event"
        finally:
            await responder.close()
            await caller.close()

    asyncio.run(main())


def test_close_deletes_the_connections_own_queues_and_keeps_its_groups(
    url: str, shared_moto_server: str
) -> None:
    prefix = prefix_of(url)

    async def main() -> None:
        transport = await connect_transport(url)
        other = await connect_transport(url)
        await echo(transport, "svc.>", queue="svc")
        await echo(transport, "$SRV.PING")
        await other.request("svc.hello", b"", timeout=10)  # other gets its reply queue
        assert len(queue_names(url, shared_moto_server)) == 3
        await transport.close()
        # The group's queue stays for its other members; the rest of transport's goes.
        assert queue_names(url, shared_moto_server) == [
            f"{prefix}-g-svc__svc-_g",
            f"{prefix}-r-{other.client_id}",
        ]
        with pytest.raises(NoResponders):
            await other.request("$SRV.PING", b"", timeout=10)
        await other.close()
        assert queue_names(url, shared_moto_server) == [f"{prefix}-g-svc__svc-_g"]

    asyncio.run(main())


# A heartbeat so long that the connection's first sweep (at a random moment of its first
# heartbeat), which lists the queues too, does not come during a test that counts listings.
NO_SWEEP = 1e9


def count_listings(transport: Any) -> list[int]:
    """Count the ``ListQueues`` calls ``transport`` makes (each still made, on moto)."""
    calls = [0]
    list_queues = transport.sqs.list_queues

    async def counted(**arguments: Any) -> Any:
        calls[0] += 1
        return await list_queues(**arguments)

    transport.sqs.list_queues = counted
    return calls


def test_requests_reuse_the_queue_list_and_list_again_when_it_falls_short(url: str) -> None:
    """A caller lists the deployment's queues once per ``queue_list_ttl``, not once per
    request; a request whose subject no listed queue matches (a service that started a
    moment ago), or whose queues were deleted since, lists them again before it answers;
    discovery always lists them (an instance that just started is seen)."""

    async def main() -> None:
        first = await connect_transport(url)
        caller = await connect_transport(url, queue_list_ttl=60, heartbeat=NO_SWEEP)
        listings = count_listings(caller)
        later = []
        try:
            await echo(first, "cached.>", queue="cached")
            await echo(first, "$SRV.PING")
            replies = [await caller.request("cached.x", b"%d" % n, timeout=10) for n in range(5)]
            assert [reply.data for reply in replies] == [b"0", b"1", b"2", b"3", b"4"]
            assert listings[0] == 1
            # A service started after the caller listed: found at once, by listing again.
            later.append(await connect_transport(url))
            await echo(later[0], "started.>", queue="started")
            await echo(later[0], "solo.ping")
            await echo(later[0], "$SRV.PING")
            assert (await caller.request("started.now", b"hi", timeout=10)).data == b"hi"
            assert listings[0] == 2
            # Discovery lists again: both $SRV.PING queues answer.
            pings = await caller.request_many("$SRV.PING", b"p", timeout=5)
            assert len(pings) == 2 and listings[0] == 3
            assert (await caller.request("solo.ping", b"solo", timeout=10)).data == b"solo"
            assert listings[0] == 3
            # A queue deleted since the listing: the request lists again, and finds none.
            await later[0].close()
            with pytest.raises(NoResponders):
                await caller.request("solo.ping", b"", timeout=10)
            assert listings[0] == 4
            assert (await caller.request("cached.x", b"on", timeout=10)).data == b"on"
            assert listings[0] == 4
        finally:
            for transport in (first, caller, *later):
                await transport.close()

    asyncio.run(main())


def test_the_queue_list_is_read_again_after_its_ttl_and_when_the_connection_changes_it(
    url: str,
) -> None:
    async def main() -> None:
        transport = await connect_transport(url, queue_list_ttl=0.5, heartbeat=NO_SWEEP)
        listings = count_listings(transport)
        try:
            await echo(transport, "ttl.>", queue="ttl")
            for _ in range(3):
                await transport.request("ttl.x", b"", timeout=10)
            assert listings[0] == 1
            await asyncio.sleep(0.6)
            await transport.request("ttl.x", b"", timeout=10)
            assert listings[0] == 2
            # A subscription of its own made since: listed again at the next request.
            await echo(transport, "mine.ping")
            assert (await transport.request("ttl.y", b"y", timeout=10)).data == b"y"
            assert listings[0] == 3
        finally:
            await transport.close()

    asyncio.run(main())


def test_a_request_to_a_stopped_service_times_out_and_is_not_handled_later(url: str) -> None:
    """Its group's queue is still there (SQS cannot tell nobody consumes it): the caller
    waits its timeout, and an instance that starts afterwards does not act on the request."""

    async def main() -> None:
        service = await connect_transport(url)
        caller = await connect_transport(url)
        try:
            subscription = await echo(service, "billing.>", queue="billing")
            await subscription.unsubscribe()
            with pytest.raises(RpcTimeout) as raised:
                await caller.request("billing.charge", b"late", timeout=0.5)
            assert "is any instance of the service running" in str(raised.value)
            handled: list[bytes] = []

            async def handle(message: Any) -> None:
                handled.append(message.data)
                await service.publish(message.reply, message.data)

            await service.subscribe("billing.>", handle, queue="billing")
            assert (await caller.request("billing.charge", b"now", timeout=10)).data == b"now"
            await asyncio.sleep(0.3)
            assert handled == [b"now"]
        finally:
            await service.close()
            await caller.close()

    asyncio.run(main())


def manage(url: str, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *arguments],
        cwd=project_root(),
        env=dict(os.environ, DJANGO_SETTINGS_MODULE="tests.settings", CLIFFRACER_TRANSPORT_URL=url),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_runservice_on_sqs_answers_call_and_discovery(
    transactional_db: Any, runservice_process: Any, url: str
) -> None:
    runservice_process(
        "testservice", DJANGO_SETTINGS_MODULE="tests.settings", CLIFFRACER_TRANSPORT_URL=url
    )
    called = manage(url, "call", "testservice.echo", '{"text": "over sqs"}')
    assert called.returncode == 0, called.stderr
    assert json.loads(called.stdout) == {"text": "over sqs"}
    services = manage(url, "services", "--wait", "1", "--json")
    assert services.returncode == 0, services.stderr
    assert "testservice" in json.dumps(json.loads(services.stdout))
    # No queue matches a service that never ran: no responders at once, no traceback.
    missing = manage(url, "call", "nosuchservice.echo", "{}")
    assert missing.returncode == 1
    assert "no_responders" in missing.stderr
    assert "Traceback" not in missing.stderr


@pytest.mark.timeout(120)
def test_the_monitor_samples_a_service_on_sqs_and_the_console_shows_it(
    transactional_db: Any, runservice_process: Any, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``runservice monitor`` and a service, both on SNS/SQS: the monitor's discovery finds
    the service, its samples count the calls made between two of them, and the console's
    pages show the service up, its instance (the process's pid, on moto's endpoint) and its
    figures."""
    from django.contrib.auth.models import Permission, User
    from django.test import Client

    from cliffracer_core import call
    from cliffracer_core.contrib.monitor.models import EndpointMinute, InstanceSnapshot
    from cliffracer_core.core.client import close_sync_transport
    from cliffracer_core.transports import URL_VARIABLE
    from tests.monitoring import wait_until

    service = runservice_process(
        "testservice", DJANGO_SETTINGS_MODULE="tests.settings", CLIFFRACER_TRANSPORT_URL=url
    )
    monitor = runservice_process(
        "monitor", DJANGO_SETTINGS_MODULE="tests.monitor_settings", CLIFFRACER_TRANSPORT_URL=url
    )

    def snapshot_of(pid: int) -> InstanceSnapshot | None:
        return InstanceSnapshot.objects.filter(pid=str(pid)).first()

    sampled = wait_until(lambda: snapshot_of(service.pid), timeout=30)
    assert sampled is not None, monitor.output()[-3000:]
    assert sampled.service == "testservice" and sampled.version == "1.2.3"
    assert wait_until(lambda: snapshot_of(monitor.pid), timeout=30)  # the monitor sees itself

    # This process's calls go over SQS too (its sync client may hold another transport).
    close_sync_transport()
    monkeypatch.setenv(URL_VARIABLE, url)
    try:
        for number in range(3):
            assert call("testservice.echo", {"text": f"call {number}"}) == {
                "text": f"call {number}"
            }
    finally:
        close_sync_transport()

    def counted() -> bool:
        rows = EndpointMinute.objects.filter(service="testservice", endpoint="echo")
        return sum(row.requests for row in rows) == 3

    assert wait_until(counted, timeout=30), monitor.output()[-3000:]

    viewer = User.objects.create_user("viewer", password="x", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_services"))
    client = Client()
    client.force_login(viewer)
    overview = client.get("/admin/services/status.json").json()
    row = {row["name"]: row for row in overview["services"]}["testservice"]
    assert (row["state"], row["instances"], row["versions"]) == ("up", 1, ["1.2.3"])
    assert row["requests_per_minute"] > 0
    assert "The monitor is not running" not in overview["fragments"]["monitor"]
    status = client.get("/admin/services/testservice/status.json").json()
    [instance] = status["service"]["instances"]
    assert (instance["id"], instance["pid"], instance["live"]) == (
        sampled.instance_id,
        str(service.pid),
        True,
    )
    endpoints = {endpoint["name"]: endpoint for endpoint in status["service"]["endpoints"]}
    assert (endpoints["echo"]["requests"], endpoints["echo"]["errors"]) == (3, 0)
    page = client.get("/admin/services/testservice/").content.decode()
    assert f'data-instance="{sampled.instance_id}"' in page
    # The server an instance is on is moto's endpoint.
    assert sampled.nats_server == url.split("endpoint_url=")[1]


def test_a_sweep_deletes_the_queues_of_a_connection_that_stopped(
    url: str, shared_moto_server: str
) -> None:
    """A crashed process leaves its broadcast and reply queues: once their "last seen" tag is
    older than ``stale_after`` another connection's sweep deletes them and their topic
    subscriptions, and a request nobody else hears is ``NoResponders`` again."""
    prefix = prefix_of(url)
    sns = boto3.client("sns", region_name=REGION, endpoint_url=shared_moto_server)
    sqs = boto3.client("sqs", region_name=REGION, endpoint_url=shared_moto_server)

    def subscriptions() -> int:
        topic = sns.create_topic(Name=names.topic_name(prefix))["TopicArn"]
        return len(sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"])

    async def main() -> None:
        # "crashed" never refreshes its tags (a heartbeat of an hour) and is not closed
        # before the sweep, as a killed process is not.
        crashed = await connect_transport(url, heartbeat=3600)
        await echo(crashed, "lost.ping")
        await echo(crashed, "gone.>", queue="gone")
        await crashed.request("lost.ping", b"", timeout=10)  # it gets a reply queue too
        for name in queue_names(url, shared_moto_server):
            queue = sqs.get_queue_url(QueueName=name)["QueueUrl"]
            if f"-{crashed.client_id}" in name or f"-b-{crashed.client_id}" in name:
                sqs.tag_queue(QueueUrl=queue, Tags={"cliffracer-seen": "1000"})
        assert subscriptions() == 2
        sweeper = await connect_transport(url, heartbeat=0.1, stale_after=60)
        try:
            await echo(sweeper, "alive.ping")

            def swept() -> bool:
                return queue_names(url, shared_moto_server) == [
                    f"{prefix}-b-{sweeper.client_id}__alive-ping",
                    f"{prefix}-g-gone__gone-_g",
                ]

            async with asyncio.timeout(10):
                while not swept():
                    await asyncio.sleep(0.1)
            assert subscriptions() == 2  # the group's (never swept) and the sweeper's own
            with pytest.raises(NoResponders):
                await sweeper.request("lost.ping", b"", timeout=10)
        finally:
            await sweeper.close()
            await crashed.close()

    asyncio.run(main())


def test_members_with_other_settings_share_their_groups_queue(url: str) -> None:
    """SQS refuses to make a queue again with other attributes: a member whose ``poll_wait``
    differs consumes the queue as the first member made it."""

    async def main() -> None:
        first = await connect_transport(url)
        second = await connect_transport(url, poll_wait=2)
        caller = await connect_transport(url)
        try:
            await echo(first, "shared.>", queue="shared")
            await echo(second, "shared.>", queue="shared")
            replies = [await caller.request("shared.x", b"%d" % n, timeout=10) for n in range(4)]
            assert [reply.data for reply in replies] == [b"0", b"1", b"2", b"3"]
        finally:
            for transport in (first, second, caller):
                await transport.close()

    asyncio.run(main())


@pytest.mark.parametrize("leaving", ["unsubscribe", "close"])
def test_a_member_that_leaves_hands_back_what_its_last_receive_took(url: str, leaving: str) -> None:
    """A member's long poll is still waiting in SQS when it leaves its group: what that
    receive takes is made visible again at once for the other members, not hidden for the
    queue's visibility timeout (a rolling restart would time its callers out)."""

    async def main() -> None:
        leaver = await connect_transport(url)
        stayer = await connect_transport(url)
        caller = await connect_transport(url)
        try:
            subscription = await echo(leaver, "roll.>", queue="roll")
            await asyncio.sleep(0.3)  # its receive is waiting in SQS now
            if leaving == "close":
                closing = asyncio.create_task(leaver.close())
            else:
                await subscription.unsubscribe()
            await echo(stayer, "roll.>", queue="roll")
            # Sent while the leaver's receive still waits: it takes it, and hands it back.
            reply = await caller.request("roll.call", b"still served", timeout=8)
            assert reply.data == b"still served"
            if leaving == "close":
                await closing
        finally:
            for transport in (leaver, stayer, caller):
                await transport.close()

    asyncio.run(main())


@pytest.mark.timeout(300)
def test_the_examples_order_flow_runs_on_sqs(
    transactional_db: Any, runservice_process: Any, url: str
) -> None:
    """The e-commerce example's four services on SNS/SQS (moto's server): a customer's order
    is paid, its stock committed and the customer notified, through RPCs, outboxes and durable
    events."""
    import functools

    from tests.test_ecommerce_flow import place_an_order_on

    place_an_order_on(url, runservice_process, functools.partial(manage, url))


@pytest.fixture
def durable_service(settings: Any, transactional_db: Any, url: str) -> Iterator[dict[str, str]]:
    """The durabletest service's stream known here too (as tests/test_faults.py does), its
    side-effect table; the environment of its processes."""
    from django.db import connection

    from tests.durableapp.models import SideEffect
    from tests.test_faults import SETTINGS, STREAM

    settings.CLIFFRACER = {
        **settings.CLIFFRACER,
        "STREAMS": {STREAM: {"subjects": ["durabletest.>"], "max_age": 3600}},
    }
    with connection.schema_editor() as editor:
        editor.create_model(SideEffect)
    yield {**SETTINGS, "CLIFFRACER_TRANSPORT_URL": url}
    with connection.schema_editor() as editor:
        editor.delete_model(SideEffect)


@pytest.mark.timeout(240)
def test_a_killed_consumers_message_comes_again_and_a_poisoned_one_is_a_dead_letter(
    durable_service: dict[str, str],
    runservice_process: Any,
    tmp_path: Any,
    url: str,
    shared_moto_server: str,
) -> None:
    """A ``runservice`` SIGKILLed while it handles a durable event: the next one is given
    the event again once its visibility timeout (``DURABLE_ACK_WAIT``) passes. A handler that
    fails every time: after its ``max_deliveries`` the event is a DeadLetter row of the admin
    and a message in the stream's dead-letter queue."""
    from cliffracer_core import apublish
    from cliffracer_core.contrib.durable.models import DeadLetter
    from cliffracer_core.testing.plugin import run_async
    from tests.durableapp.models import SideEffect
    from tests.test_faults import wait_until

    def publish(subject: str, data: dict[str, str]) -> None:
        """On a connection of its own: the process's shared one may be another test's."""

        async def main() -> None:
            transport = await connect_transport(url)
            try:
                await apublish(subject, data, transport=transport)
            finally:
                await transport.close()

        run_async(main())

    hang, broken = tmp_path / "hang", tmp_path / "broken"
    hang.touch()
    broken.touch()
    markers = {"DURABLETEST_HANG": str(hang), "DURABLETEST_BROKEN": str(broken)}
    service = runservice_process("durabletest", **durable_service, **markers)
    publish("durabletest.slow", {"id": "killed"})
    assert wait_until(lambda: SideEffect.objects.filter(handler="slow-started").exists(), 60)
    service.process.kill()
    service.wait()
    hang.unlink()
    runservice_process("durabletest", **durable_service, **markers)
    assert wait_until(lambda: SideEffect.objects.filter(handler="slow").exists(), 60)
    first, again = SideEffect.objects.filter(handler="slow-started").order_by("delivery")
    # A later delivery, as SQS counts receives: the killed process's long poll, still open in
    # SQS, may take the message once more when it becomes visible (counted, never handled).
    assert first.delivery == 1 and again.delivery > 1
    assert SideEffect.objects.get(handler="slow").delivery == again.delivery

    publish("durabletest.flaky", {"id": "poison"})
    assert wait_until(lambda: DeadLetter.objects.filter(status="pending").exists(), 60)
    letter = DeadLetter.objects.get()
    assert (letter.service, letter.handler, letter.attempts) == ("durabletest", "on_flaky", 3)
    assert letter.error_type == "RuntimeError"
    client = boto3.client("sqs", region_name=REGION, endpoint_url=shared_moto_server)
    [dead] = client.list_queues(QueueNamePrefix=f"{prefix_of(url)}-x-")["QueueUrls"]
    received = client.receive_message(QueueUrl=dead, WaitTimeSeconds=5)["Messages"]
    buried = json.loads(received[0]["Body"])
    assert buried["s"] == "durabletest.flaky"
    assert json.loads(base64.b64decode(buried["d"])) == {"id": "poison"}


def test_the_stream_registry_keeps_the_newest_of_its_versions(
    url: str, shared_moto_server: str
) -> None:
    """A client that died between sending the registry's next version and deleting the one
    before leaves two: a reader keeps the newest and deletes the others."""
    from cliffracer_core.core.streams import STREAM_DEFAULTS, Stream

    client = boto3.client("sqs", region_name=REGION, endpoint_url=shared_moto_server)
    registry: dict[str, str] = {}

    async def main() -> None:
        transport = await connect_transport(url)
        try:
            stream = Stream("KEPT", {**STREAM_DEFAULTS, "subjects": ["kept.>"]})
            assert await transport.ensure_stream(stream) == "created"
            registry.update(client.get_queue_url(QueueName=names.registry_name(prefix_of(url))))
            # Behind it in the queue, an older version and a newer one (as writers that died
            # mid-change would leave them): the newest is kept wherever it stands.
            later = {"subjects": ["later.>"]}
            versions = [
                {"version": 0, "streams": {}},
                {
                    "version": 10**6,
                    "streams": {
                        "LATER": {"config": later, "incarnation": "x", "id": "i", "consumers": {}}
                    },
                },
            ]
            for number, version in enumerate(versions):
                client.send_message(
                    QueueUrl=registry["QueueUrl"],
                    MessageBody=json.dumps(version),
                    MessageGroupId="registry",
                    MessageDeduplicationId=f"v{number}",
                )
            assert (await transport.stream_state("LATER")).subjects == ["later.>"]
            assert await transport.stream_state("KEPT") is None
        finally:
            await transport.close()

    asyncio.run(main())
    attributes = client.get_queue_attributes(
        QueueUrl=registry["QueueUrl"], AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]
    assert attributes["ApproximateNumberOfMessages"] == "1"


# Ordered streams: FIFO topic and queues


def ordered_stream(name: str, subjects: list[str], **options: Any) -> Any:
    from cliffracer_core.core.streams import STREAM_DEFAULTS, Stream

    return Stream(name, {**STREAM_DEFAULTS, "subjects": subjects, "ordered": True, **options})


async def reader(transport: Any, stream: str, name: str, filter_subject: str) -> Any:
    """A consumer that acknowledges each delivery as it comes; the queue gets them."""
    deliveries: asyncio.Queue[Any] = asyncio.Queue()

    async def handle(delivery: Any) -> None:
        await delivery.ack()
        await deliveries.put(delivery)

    await transport.consume(
        stream, name, handle, filter_subject=filter_subject, ack_wait=5, max_in_flight=10
    )
    return deliveries


async def taken(deliveries: asyncio.Queue[Any], count: int, *, then: float = 1.5) -> list[Any]:
    """``count`` deliveries, then whatever else comes within ``then`` seconds."""
    items = []
    async with asyncio.timeout(20):
        while len(items) < count:
            items.append(await deliveries.get())
    await asyncio.sleep(then)
    while not deliveries.empty():
        items.append(deliveries.get_nowait())
    return items


def test_an_ordered_stream_is_fifo_in_order_and_drops_a_republished_message_id(
    url: str, shared_moto_server: str
) -> None:
    """Its events go through the deployment's FIFO topic to FIFO queues: a consumer receives
    them in publish order across the stream's subjects, whether they waited unclaimed or came
    after it attached, and an event published again with the same message id (as the outbox
    relay does after a lost acknowledgement) is handled once. Plain subscribers hear them.

    SQS drops the second publish within 5 minutes of the first; moto only while the first
    is still in the queue, so each is published again before the first was handled."""
    prefix = prefix_of(url)

    async def main() -> None:
        transport = await connect_transport(url)
        release = asyncio.Event()
        deliveries: asyncio.Queue[Any] = asyncio.Queue()

        async def handle(delivery: Any) -> None:
            if delivery.data == b"4":
                await release.wait()  # what comes after waits in the consumer's queue
            await delivery.ack()
            await deliveries.put(delivery)

        try:
            assert await transport.ensure_stream(ordered_stream("FIFO", ["fifo.>"])) == "created"
            plain: asyncio.Queue[Any] = asyncio.Queue()

            async def hear(message: Any) -> None:
                await plain.put(message)

            await transport.subscribe("fifo.>", hear)
            for n in range(4):  # before any consumer: they wait unclaimed
                await transport.publish_durable(f"fifo.{'ab'[n % 2]}", b"%d" % n, msg_id=f"m{n}")
            await transport.publish_durable("fifo.b", b"again", msg_id="m1")
            await transport.consume(
                "FIFO", "reader", handle, filter_subject="fifo.>", ack_wait=5, max_in_flight=10
            )
            for n in range(4, 10):
                await transport.publish_durable(f"fifo.{'ab'[n % 2]}", b"%d" % n, msg_id=f"m{n}")
            await transport.publish_durable("fifo.b", b"again", msg_id="m7")
            release.set()
            received = await taken(deliveries, 10)
            assert [d.data for d in received] == [b"%d" % n for n in range(10)]
            assert [d.headers[MSG_ID] for d in received] == [f"m{n}" for n in range(10)]
            async with asyncio.timeout(10):
                assert (await plain.get()).data == b"0"
        finally:
            await transport.close()

    asyncio.run(main())
    durable = [
        name for name in queue_names(url, shared_moto_server) if name[len(prefix) + 1] in "uxc"
    ]
    assert len(durable) == 3 and all(name.endswith(".fifo") for name in durable)
    sns = boto3.client("sns", region_name=REGION, endpoint_url=shared_moto_server)
    topic = sns.create_topic(Name=names.fifo_topic_name(prefix), Attributes={"FifoTopic": "true"})[
        "TopicArn"
    ]
    assert sns.get_topic_attributes(TopicArn=topic)["Attributes"]["FifoTopic"] == "true"


def test_consumers_of_an_ordered_stream_claim_past_each_others_events(url: str) -> None:
    """What waited unclaimed for two consumers with other filters: each takes its own in
    order, the first sending the other's back to the end of the FIFO queue (held, they would
    keep back everything after them)."""

    async def main() -> None:
        transport = await connect_transport(url)
        try:
            await transport.ensure_stream(ordered_stream("MIXED", ["mixed.>"]))
            for n in range(7):
                subject = "mixed.a" if n % 3 else "mixed.b"
                await transport.publish_durable(subject, b"%d" % n, msg_id=f"m{n}")
            first = await reader(transport, "MIXED", "a", "mixed.a")
            assert [d.data for d in await taken(first, 4)] == [b"1", b"2", b"4", b"5"]
            second = await reader(transport, "MIXED", "b", "mixed.b")
            assert [d.data for d in await taken(second, 3)] == [b"0", b"3", b"6"]
        finally:
            await transport.close()

    asyncio.run(main())


def test_a_nak_on_an_ordered_stream_holds_back_what_follows(url: str) -> None:
    async def main() -> None:
        transport = await connect_transport(url)
        deliveries: asyncio.Queue[Any] = asyncio.Queue()
        naked: list[bytes] = []

        async def handle(delivery: Any) -> None:
            if delivery.data == b"0" and not naked:
                naked.append(delivery.data)
                await delivery.nak(delay=1)
                return
            await delivery.ack()
            await deliveries.put(delivery)

        try:
            await transport.ensure_stream(ordered_stream("RETRY", ["retry.>"]))
            await transport.consume(
                "RETRY", "r", handle, filter_subject="retry.>", ack_wait=5, max_in_flight=1
            )
            for n in range(3):
                await transport.publish_durable("retry.x", b"%d" % n, msg_id=f"m{n}")
            received = await taken(deliveries, 3)
            assert [d.data for d in received] == [b"0", b"1", b"2"]
            assert received[0].delivered == 2 and naked == [b"0"]
        finally:
            await transport.close()

    asyncio.run(main())


def test_ordered_cannot_change_on_sqs_and_is_compared(url: str) -> None:
    from cliffracer_core.core.streams import STREAM_DEFAULTS, Stream
    from cliffracer_core.transports.base import StreamError

    async def main() -> None:
        transport = await connect_transport(url)
        try:
            stream = ordered_stream("FLIP", ["flip.>"])
            plain = Stream("FLIP", {**STREAM_DEFAULTS, "subjects": ["flip.>"]})
            assert await transport.ensure_stream(stream) == "created"
            assert await transport.compare_stream(plain) == ["ordered"]
            with pytest.raises(StreamError, match="'ordered' cannot change"):
                await transport.ensure_stream(plain)
            assert await transport.ensure_stream(stream) == "unchanged"
        finally:
            await transport.close()

    asyncio.run(main())
