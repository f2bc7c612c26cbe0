"""The NATS Services API (ADR-32): PING, INFO and STATS, checked against the ADR's shapes."""

import json
import re

import pytest

from cliffracer_core import RemoteError, Service, call, event, rpc
from cliffracer_core.core.discovery import request_all
from cliffracer_core.testing.plugin import run_async
from cliffracer_core.transports import connect
from tests.models import Add, Happened, Total

ID = re.compile(r"^[A-Za-z0-9]+$")
SEMVER = re.compile(r"^\d+\.\d+\.\d+")
STARTED = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def make_service(service_name: str) -> type[Service]:
    class Inventory(Service):
        """Keeps stock."""

        name = service_name
        version = "2.3.4"

        @rpc
        async def add(self, request: Add) -> Total:
            """Add two numbers."""
            return Total(total=request.a + request.b)

        @rpc
        async def fail(self, request: Add) -> Total:
            raise RuntimeError("nope")

        @event(f"{service_name}.things.*")
        async def on_thing(self, happened: Happened) -> None:
            pass

    return Inventory


async def ask(url: str, verb: str, name: str | None = None, instance: str | None = None):
    connection = await connect(url)
    try:
        if instance:
            reply = await connection.request(f"$SRV.{verb}.{name}.{instance}", b"", timeout=2)
            return [json.loads(reply.data)]
        return await request_all(connection, verb, name, timeout=0.3)
    finally:
        await connection.close()


def check_identity(reply: dict, response_type: str, name: str) -> None:
    assert reply["type"] == f"io.nats.micro.v1.{response_type}"
    assert reply["name"] == name
    assert ID.match(reply["id"])
    assert SEMVER.match(reply["version"])
    assert isinstance(reply["metadata"], dict)
    assert all(isinstance(v, str) for v in reply["metadata"].values())


@pytest.fixture
def two_instances(start_service, unique_name):
    service_class = make_service(unique_name)
    return unique_name, [start_service(service_class), start_service(service_class)]


def test_ping_all_by_name_and_by_id(nats_server, two_instances):
    name, running = two_instances
    ids = {r.runner.identity.id for r in running}
    everyone = run_async(ask(nats_server.url, "PING"))
    assert ids <= {reply["id"] for reply in everyone}
    by_name = run_async(ask(nats_server.url, "PING", name))
    assert {reply["id"] for reply in by_name} == ids
    for reply in by_name:
        check_identity(reply, "ping_response", name)
        assert set(reply) == {"type", "id", "name", "version", "metadata"}
    one = next(iter(ids))
    by_id = run_async(ask(nats_server.url, "PING", name, one))
    assert [reply["id"] for reply in by_id] == [one]


def test_info_lists_endpoints_with_schemas(nats_server, two_instances):
    name, running = two_instances
    replies = run_async(ask(nats_server.url, "INFO", name))
    assert len(replies) == 2
    for info in replies:
        check_identity(info, "info_response", name)
        assert info["version"] == "2.3.4"
        assert info["description"] == "Keeps stock."
        endpoints = {endpoint["name"]: endpoint for endpoint in info["endpoints"]}
        assert set(endpoints) == {"add", "fail"}
        add = endpoints["add"]
        assert add["subject"] == f"rpc.{name}.add"
        assert add["queue_group"] == name
        assert set(add) == {"name", "subject", "queue_group", "metadata"}
        assert json.loads(add["metadata"]["request_schema"]) == Add.model_json_schema()
        assert json.loads(add["metadata"]["reply_schema"]) == Total.model_json_schema()
        assert add["metadata"]["description"] == "Add two numbers."
        events = json.loads(info["metadata"]["events"])
        assert events[0]["subject"] == f"{name}.things.*"
        assert events[0]["queue_group"] == f"{name}.on_thing"


def test_stats_count_requests_errors_and_time(nats_server, two_instances):
    name, running = two_instances
    for _ in range(6):
        call(f"{name}.add", {"a": 1, "b": 1})
    for _ in range(3):
        with pytest.raises(RemoteError):
            call(f"{name}.fail", {"a": 1, "b": 1})
    replies = run_async(ask(nats_server.url, "STATS", name))
    assert len(replies) == 2
    totals = {"add": [0, 0], "fail": [0, 0]}
    for stats in replies:
        check_identity(stats, "stats_response", name)
        assert STARTED.match(stats["started"])
        for endpoint in stats["endpoints"]:
            assert set(endpoint) >= {
                "name",
                "subject",
                "queue_group",
                "num_requests",
                "num_errors",
                "last_error",
                "processing_time",
                "average_processing_time",
            }
            assert isinstance(endpoint["processing_time"], int)
            totals[endpoint["name"]][0] += endpoint["num_requests"]
            totals[endpoint["name"]][1] += endpoint["num_errors"]
            if endpoint["num_requests"]:
                assert endpoint["average_processing_time"] > 0
            if endpoint["name"] == "fail" and endpoint["num_errors"]:
                assert endpoint["last_error"].startswith("500:")
                assert "nope" not in endpoint["last_error"]
    assert totals == {"add": [6, 0], "fail": [3, 3]}
