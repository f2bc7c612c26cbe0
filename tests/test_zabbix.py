"""Zabbix over its real protocol: the generated template imported into a real Zabbix 6.0
server, a real service process pushing with the trapper protocol, values read back through the
API (``history.get``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cliffracer_core.contrib.metrics import zabbix
from cliffracer_core.testing.plugin import project_root
from cliffracer_core.testing.polling import wait_for
from tests.test_metrics import requests
from tests.zabbix_server import ZabbixServer, missing

HOST = "cliffracer-metered"
# Loading Zabbix's schema takes from 10 s to over a minute on a busy machine.
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def zabbix_server(tmp_path_factory):
    reason = missing()
    if reason is not None:
        if os.environ.get("CI") == "true" and "PostgreSQL" not in reason:
            pytest.fail(reason)
        pytest.skip(reason)
    server = ZabbixServer(tmp_path_factory.mktemp("zabbix")).start()
    yield server
    server.stop()


@pytest.fixture
def api(zabbix_server):
    from zabbix_utils import ZabbixAPI

    made = ZabbixAPI(url=zabbix_server.url)
    made.login(user="Admin", password="zabbix")
    yield made
    made.logout()


def manage(*arguments: str, **environment: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *arguments],
        cwd=project_root(),
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.exporters_settings", **environment},
        capture_output=True,
        text=True,
        timeout=300,
    )


def item(api, key: str) -> dict | None:
    found = api.item.get(
        host=HOST, filter={"key_": key}, output=["itemid", "state", "error", "value_type"]
    )
    return found[0] if found else None


def history(api, found: dict) -> list[float]:
    values = api.history.get(
        itemids=[found["itemid"]], history=int(found["value_type"]), output="extend"
    )
    return [float(value["value"]) for value in values]


def test_pushed_figures_arrive_in_zabbix_through_the_generated_template(
    zabbix_server, api, nats_server, runservice_process
):
    synced = manage(
        "zabbix_sync", "--url", zabbix_server.url, "--user", "Admin", ZABBIX_PASSWORD="zabbix"
    )
    assert synced.returncode == 0, synced.stderr
    assert HOST in synced.stdout
    exporter = {
        "BACKEND": "cliffracer_core.contrib.metrics.backends.zabbix.ZabbixExporter",
        "OPTIONS": {
            "SERVER": "127.0.0.1",
            "PORT": zabbix_server.trapper_port,
            "INTERVAL": 0.5,
            "DISCOVERY_INTERVAL": 2,
        },
    }
    process = runservice_process(
        "metered",
        DJANGO_SETTINGS_MODULE="tests.exporters_settings",
        TEST_METRICS_EXPORTERS=json.dumps([exporter]),
    )
    # Until the configuration cache has the host, and LLD has made the endpoint's items, the
    # values are refused: the exporter retries and resends discovery until they exist.
    requests_key = zabbix.REQUESTS.format("echo")
    wait_for(lambda: item(api, requests_key), 120, what="the echo endpoint discovered")
    errors_key = zabbix.SERVER_ERRORS.format("fail")
    wait_for(lambda: item(api, errors_key), 120, what="the fail endpoint discovered")
    # The items are in the configuration cache a second later; from then on nothing is lost.
    wait_for(
        lambda: history(api, item(api, zabbix.IN_FLIGHT)) and "took" not in process.output(),
        120,
        what="the first values stored",
    )

    def after_sync() -> bool:
        found = item(api, requests_key)
        return bool(history(api, found))

    wait_for(after_sync, 120, what="values of the discovered items stored")
    replies = requests(
        nats_server.url,
        [("rpc.metered.echo", b'{"text": "z"}')] * 4 + [("rpc.metered.fail", b"")] * 2,
    )
    assert len(replies) == 6
    wait_for(
        lambda: sum(history(api, item(api, requests_key))) >= 4,
        120,
        what="the echo requests in Zabbix",
    )
    wait_for(
        lambda: sum(history(api, item(api, errors_key))) >= 2,
        120,
        what="the failures in Zabbix",
    )
    assert sum(history(api, item(api, requests_key))) == 4
    assert sum(history(api, item(api, errors_key))) == 2
    # A value of the wrong type would still count as processed: the items must be supported.
    for key in (requests_key, errors_key, zabbix.P95.format("echo"), zabbix.IN_FLIGHT):
        found = item(api, key)
        assert found is not None and found["state"] == "0", (key, found)
    assert max(history(api, item(api, zabbix.P95.format("echo")))) <= 10.0
    # relay calls echo under a call policy: the target is discovered at its first call (whose
    # values Zabbix refuses: its items do not exist yet), then its figures arrive.
    calls_key = zabbix.CALLS.format("metered.echo")
    breaker_key = zabbix.BREAKER.format("metered.echo")
    requests(nats_server.url, [("rpc.metered.relay", b'{"text": "r"}')])
    wait_for(lambda: item(api, calls_key), 120, what="the call target discovered")
    wait_for(lambda: history(api, item(api, breaker_key)), 120, what="the breaker state stored")
    before = sum(history(api, item(api, calls_key)))
    requests(nats_server.url, [("rpc.metered.relay", b'{"text": "r"}')] * 3)
    wait_for(
        lambda: sum(history(api, item(api, calls_key))) >= before + 3,
        120,
        what="the calls in Zabbix",
    )
    assert sum(history(api, item(api, calls_key))) == before + 3
    assert set(history(api, item(api, breaker_key))) == {0.0}
    for key in (calls_key, breaker_key):
        assert item(api, key)["state"] == "0", key


def test_the_template_command_writes_an_importable_export(tmp_path):
    output = tmp_path / "template.json"
    made = manage("zabbix_template", "--format", "json", "--output", str(output))
    assert made.returncode == 0, made.stderr
    exported = json.loads(output.read_text())["zabbix_export"]
    assert exported["version"] == "6.0"
    (template,) = exported["templates"]
    assert "metered" in template["description"]
    rules = {rule["key"]: rule for rule in template["discovery_rules"]}
    assert set(rules) == {
        zabbix.ENDPOINTS_RULE,
        zabbix.EVENTS_RULE,
        zabbix.TIMERS_RULE,
        zabbix.CALLS_RULE,
    }
    call_triggers = rules[zabbix.CALLS_RULE]["trigger_prototypes"]
    assert [trigger["name"] for trigger in call_triggers] == [
        "Circuit breaker to {#TARGET} is open"
    ]
    endpoint_keys = {p["key"] for p in rules[zabbix.ENDPOINTS_RULE]["item_prototypes"]}
    assert zabbix.P95.format("{#ENDPOINT}") in endpoint_keys
    assert len(rules[zabbix.ENDPOINTS_RULE]["trigger_prototypes"]) == 2
    assert template["dashboards"][0]["pages"][0]["widgets"]


def test_sync_without_credentials_is_a_usage_error():
    made = manage("zabbix_sync", "--url", "http://127.0.0.1:9/")
    assert made.returncode == 2
    assert "ZABBIX_TOKEN" in made.stderr
