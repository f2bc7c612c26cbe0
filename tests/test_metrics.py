"""Prometheus metrics: real runservice processes scraped over HTTP, the web process's /metrics,
``manage.py prometheus_targets``, and the settings' checks."""

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import ExitStack
from urllib.parse import urlsplit

import nats
import pytest
from django.core.checks import run_checks
from django.test import override_settings
from prometheus_client.parser import text_string_to_metric_families

from cliffracer_core.contrib.metrics.exporter import parse_ports
from cliffracer_core.core.auth.tokens import mint_system_token
from cliffracer_core.core.discovery import request_all
from cliffracer_core.testing.plugin import project_root, run_async
from cliffracer_core.transports import connect
from cliffracer_core.transports.nats.embedded import NatsServer

SETTINGS = {"DJANGO_SETTINGS_MODULE": "tests.metrics_settings"}
SERVICE = "metered"


# Helpers


def free_port_range(count: int) -> range:
    """``count`` consecutive loopback ports that nothing listens on now."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first = probe.getsockname()[1]
        ports = range(first, first + count)
        if ports.stop <= 65536 and all(_free(port) for port in ports):
            return ports
    raise RuntimeError("no free range of ports")


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def port_setting(ports: range) -> str:
    return f"{ports.start}-{ports.stop - 1}"


def start(runservice_process, ports: range, *arguments: str, **environment: str):
    return runservice_process(
        SERVICE, *arguments, CLIFFRACER_METRICS_PORTS=port_setting(ports), **SETTINGS, **environment
    )


def info_of(process, nats_url: str) -> dict:
    """The $SRV.INFO reply of ``process`` (found by its pid in the metadata)."""

    async def ask() -> list[dict]:
        connection = await connect(nats_url)
        try:
            return await request_all(connection, "INFO", SERVICE, timeout=0.5)
        finally:
            await connection.close()

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for reply in run_async(ask()):
            if reply["metadata"].get("pid") == str(process.pid):
                return reply
    raise AssertionError(f"process {process.pid} did not answer $SRV.INFO")


def metrics_url(process, nats_url: str) -> str:
    return info_of(process, nats_url)["metadata"]["metrics"]


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of a /metrics page, keyed by (sample name, labels)."""
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def requests(url: str, calls: list[tuple[str, bytes]]) -> list:
    """Send each (subject, body) request in turn with a plain nats-py client."""

    async def send() -> list:
        connection = await nats.connect(url)
        try:
            return [await connection.request(subject, body, timeout=5) for subject, body in calls]
        finally:
            await connection.close()

    return run_async(send())


def publish(url: str, messages: list[tuple[str, bytes, str | None]]) -> None:
    """Publish each (subject, body, access token or None) with a plain nats-py client."""

    async def send() -> None:
        connection = await nats.connect(url)
        try:
            for subject, body, token in messages:
                headers = {"Authorization": f"Bearer {token}"} if token else None
                await connection.publish(subject, body, headers=headers)
            await connection.flush()
        finally:
            await connection.close()

    run_async(send())


def wait_for(condition, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def manage(*arguments: str, **environment: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *arguments],
        cwd=project_root(),
        env=dict(os.environ, **environment),
        capture_output=True,
        text=True,
        timeout=60,
    )


# A runservice process's exporter


def test_runservice_serves_metrics_on_a_port_of_the_range_and_advertises_it(
    nats_server, runservice_process
):
    ports = free_port_range(5)
    process = start(runservice_process, ports)
    info = info_of(process, nats_server.url)
    url = info["metadata"]["metrics"]
    parts = urlsplit(url)
    assert (parts.scheme, parts.hostname, parts.path) == ("http", "127.0.0.1", "/metrics")
    assert parts.port in ports
    samples = scrape(url)
    assert (
        value(
            samples,
            "cliffracer_service_info",
            service=SERVICE,
            version="2.0.0",
            instance_id=info["id"],
        )
        == 1
    )
    # The default registry: the process's own metrics come with the service's.
    assert value(samples, "process_cpu_seconds_total") is not None
    # Every endpoint is there from the start, at zero, so rate() has a series to work on.
    for endpoint in ("echo", "fail", "sleep"):
        labels = {"service": SERVICE, "endpoint": endpoint}
        assert value(samples, "cliffracer_rpc_requests_total", code="200", **labels) == 0
        assert value(samples, "cliffracer_rpc_duration_seconds_count", **labels) == 0
    assert value(samples, "cliffracer_rpc_in_flight", service=SERVICE) == 0
    assert value(samples, "cliffracer_nats_reconnects_total", service=SERVICE) == 0
    assert f"Prometheus metrics at {url}" in process.output()


def test_rpc_requests_are_counted_by_endpoint_and_code_with_their_latency(
    nats_server, runservice_process
):
    process = start(runservice_process, free_port_range(5))
    url = metrics_url(process, nats_server.url)
    replies = requests(
        nats_server.url,
        [
            ("rpc.metered.echo", b'{"text": "one"}'),
            ("rpc.metered.echo", b'{"text": "two"}'),
            ("rpc.metered.echo", b'{"text": "three"}'),
            ("rpc.metered.echo", b"{}"),  # fails validation: 422
            ("rpc.metered.echo", b"{not json"),  # 400
            ("rpc.metered.no_such_endpoint", b"{}"),  # 404
            ("rpc.metered.other_unknown", b"{}"),  # 404, the same series
            ("rpc.metered.fail", b""),  # the handler raises: 500
            ("rpc.metered.fail", b""),
        ],
    )
    codes = [(reply.headers or {}).get("Nats-Service-Error-Code", "200") for reply in replies]
    assert codes == ["200", "200", "200", "422", "400", "404", "404", "500", "500"]
    samples = scrape(url)

    def requests_total(endpoint: str, code: str) -> float | None:
        return value(
            samples, "cliffracer_rpc_requests_total", service=SERVICE, endpoint=endpoint, code=code
        )

    assert requests_total("echo", "200") == 3
    assert requests_total("echo", "422") == 1
    assert requests_total("echo", "400") == 1
    assert requests_total("fail", "500") == 2
    assert requests_total("fail", "200") == 0
    # Unknown endpoints share one label value, whatever name the caller sent.
    assert requests_total("(unknown)", "404") == 2
    assert not [key for key in samples if ("endpoint", "no_such_endpoint") in key[1]]

    # The histogram: every answered request of a known endpoint, in cumulative buckets.
    labels = {"service": SERVICE, "endpoint": "echo"}
    assert value(samples, "cliffracer_rpc_duration_seconds_count", **labels) == 5
    assert 0 < value(samples, "cliffracer_rpc_duration_seconds_sum", **labels) < 5
    buckets = sorted(
        (float(dict(key[1])["le"]), count)
        for key, count in samples.items()
        if key[0] == "cliffracer_rpc_duration_seconds_bucket"
        and dict(key[1]).items() >= labels.items()
    )
    bounds = [bound for bound, _ in buckets]
    assert bounds[0] == 0.0001 and bounds[-2] == 10.0 and bounds[-1] == float("inf")
    counts = [count for _, count in buckets]
    assert counts == sorted(counts) and counts[-1] == 5
    assert value(samples, "cliffracer_rpc_duration_seconds_count", service=SERVICE, endpoint="fail")
    # Requests for unknown endpoints have no latency series.
    assert not [
        key for key in samples if ("endpoint", "(unknown)") in key[1] and "_bucket" in key[0]
    ]


def test_in_flight_counts_the_requests_being_handled(nats_server, runservice_process):
    process = start(runservice_process, free_port_range(5))
    url = metrics_url(process, nats_server.url)
    done = threading.Event()

    async def sleepers() -> None:
        connection = await nats.connect(nats_server.url)
        try:
            await asyncio.gather(
                *(
                    connection.request("rpc.metered.sleep", b'{"seconds": 2}', timeout=10)
                    for _ in range(3)
                )
            )
        finally:
            await connection.close()

    caller = threading.Thread(target=lambda: (run_async(sleepers()), done.set()))
    caller.start()
    wait_for(lambda: value(scrape(url), "cliffracer_rpc_in_flight", service=SERVICE) == 3)
    caller.join(15)
    assert done.is_set()
    assert value(scrape(url), "cliffracer_rpc_in_flight", service=SERVICE) == 0


def test_events_and_timer_runs_are_counted_by_outcome(nats_server, runservice_process):
    process = start(runservice_process, free_port_range(5))
    url = metrics_url(process, nats_server.url)
    token = mint_system_token()
    publish(
        nats_server.url,
        [
            ("metered.ping", b"{}", token),
            ("metered.ping", b'{"fail": false}', token),
            ("metered.ping", b'{"fail": true}', token),  # the handler raises: error
            ("metered.ping", b'{"fail": "sometimes"}', token),  # fails validation: rejected
            ("metered.ping", b"{}", None),  # no token: refused
        ],
    )

    def events(outcome: str) -> float | None:
        return value(
            scrape(url),
            "cliffracer_events_handled_total",
            service=SERVICE,
            subject="metered.ping",
            outcome=outcome,
        )

    wait_for(lambda: events("ok") == 2 and events("refused") == 1)
    assert events("error") == 1
    assert events("rejected") == 1

    def timer_runs() -> dict:
        samples = scrape(url)
        return {
            (timer, outcome): value(
                samples,
                "cliffracer_timer_runs_total",
                service=SERVICE,
                timer=timer,
                outcome=outcome,
            )
            for timer in ("tick", "broken")
            for outcome in ("ok", "error")
        }

    runs = wait_for(lambda: (found := timer_runs())[("broken", "error")] >= 1 and found)
    assert runs[("tick", "ok")] >= 1
    assert runs[("tick", "error")] == 0
    assert runs[("broken", "ok")] == 0


def test_reconnects_to_nats_are_counted(runservice_process, tmp_path):
    server = NatsServer(store_dir=tmp_path / "nats")
    server.start()
    try:
        process = start(runservice_process, free_port_range(5), "--nats-url", server.url)
        url = metrics_url(process, server.url)
        assert value(scrape(url), "cliffracer_nats_reconnects_total", service=SERVICE) == 0
        server.restart()
        wait_for(
            lambda: value(scrape(url), "cliffracer_nats_reconnects_total", service=SERVICE) == 1,
            timeout=20,
        )
    finally:
        server.stop()


def test_two_processes_on_one_host_take_different_ports_and_both_are_targets(
    nats_server, runservice_process, tmp_path
):
    ports = free_port_range(3)
    first = start(runservice_process, ports)
    second = start(runservice_process, ports)
    first_info = info_of(first, nats_server.url)
    second_info = info_of(second, nats_server.url)
    addresses = {urlsplit(info["metadata"]["metrics"]).netloc for info in (first_info, second_info)}
    assert len(addresses) == 2
    assert {int(address.rsplit(":", 1)[1]) for address in addresses} <= set(ports)
    for address in addresses:
        assert (
            value(scrape(f"http://{address}/metrics"), "cliffracer_rpc_in_flight", service=SERVICE)
            == 0
        )

    output = tmp_path / "targets" / "cliffracer.json"
    output.parent.mkdir()
    output.write_text("[]")
    result = manage(
        "prometheus_targets", "--output", str(output), "--timeout", "1", NATS_URL=nats_server.url
    )
    assert result.returncode == 0, result.stderr
    groups = [
        group for group in json.loads(output.read_text()) if group["labels"]["service"] == SERVICE
    ]
    expected = sorted(
        (
            {
                "targets": [urlsplit(info["metadata"]["metrics"]).netloc],
                "labels": {"service": SERVICE, "instance": info["id"]},
            }
            for info in (first_info, second_info)
        ),
        key=lambda group: group["targets"][0],
    )
    assert groups == expected
    assert "targets of" in result.stdout
    # Written through a temporary file renamed into place: nothing else is left behind.
    assert [path.name for path in output.parent.iterdir()] == ["cliffracer.json"]

    # Without --output the JSON goes to standard output.
    result = manage("prometheus_targets", "--timeout", "1", NATS_URL=nats_server.url)
    assert result.returncode == 0, result.stderr
    printed = [
        group for group in json.loads(result.stdout) if group["labels"]["service"] == SERVICE
    ]
    assert printed == expected

    # A departed instance leaves the file the next time.
    second.stop()
    manage(
        "prometheus_targets", "--output", str(output), "--timeout", "1", NATS_URL=nats_server.url
    )
    groups = [
        group for group in json.loads(output.read_text()) if group["labels"]["service"] == SERVICE
    ]
    assert [group["labels"]["instance"] for group in groups] == [first_info["id"]]


def test_prometheus_targets_without_nats_is_a_one_line_error(tmp_path):
    port = free_port_range(1).start
    result = manage("prometheus_targets", "--timeout", "0.2", NATS_URL=f"nats://127.0.0.1:{port}")
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert "cannot connect to NATS" in result.stderr
    result = manage("prometheus_targets", "--timeout", "0")
    assert result.returncode == 2


def test_metrics_port_option_names_the_port_or_turns_metrics_off(nats_server, runservice_process):
    port = free_port_range(1).start
    process = start(runservice_process, free_port_range(3), "--metrics-port", str(port))
    assert metrics_url(process, nats_server.url) == f"http://127.0.0.1:{port}/metrics"
    off = start(runservice_process, free_port_range(3), "--metrics-port", "0")
    assert "metrics" not in info_of(off, nats_server.url)["metadata"]
    assert "Prometheus metrics at" not in off.output()


def test_a_named_port_that_is_taken_is_an_error_and_a_full_range_is_not(
    nats_server, runservice_process
):
    with ExitStack() as stack:
        taken = stack.enter_context(socket.socket())
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = manage(
            "runservice",
            SERVICE,
            "--metrics-port",
            str(port),
            NATS_URL=nats_server.url,
            **SETTINGS,
        )
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("runservice: cannot serve metrics:")
        process = start(runservice_process, range(port, port + 1))
        assert "metrics" not in info_of(process, nats_server.url)["metadata"]
        assert "serves no metrics: no free port for metrics" in process.output()


# The port setting


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("9400-9499", range(9400, 9500)),
        (" 9400 - 9401 ", range(9400, 9402)),
        ("9400", range(9400, 9401)),
        (9400, range(9400, 9401)),
        ("", None),
        ("0", None),
        (0, None),
        (None, None),
    ],
)
def test_parse_ports(setting, expected):
    assert parse_ports(setting) == expected


@pytest.mark.parametrize("setting", ["9499-9400", "abc", "0-10", "9400-70000", 1.5, True, [9400]])
def test_parse_ports_refuses_what_is_not_a_port_range(setting):
    with pytest.raises(ValueError):
        parse_ports(setting)


@pytest.mark.parametrize(
    ("settings", "check_id"),
    [
        ({"METRICS_PORTS": "many"}, "cliffracer.E015"),
        ({"METRICS_HOST": ""}, "cliffracer.E016"),
        ({"METRICS_ADVERTISED_HOST": 5}, "cliffracer.E016"),
        ({"METRICS_ALLOWED_IPS": ["10.0.0.0/8", "not-an-address"]}, "cliffracer.E017"),
        ({"METRICS_ALLOWED_IPS": 10}, "cliffracer.E017"),
    ],
)
def test_bad_metrics_settings_are_system_check_errors(settings, check_id):
    with override_settings(CLIFFRACER=settings):
        ids = [message.id for message in run_checks(tags=["cliffracer"])]
    assert check_id in ids


def test_good_metrics_settings_pass_the_checks():
    good = {
        "METRICS_PORTS": "9500",
        "METRICS_HOST": "0.0.0.0",
        "METRICS_ADVERTISED_HOST": "orders-1.internal",
        "METRICS_ALLOWED_IPS": ["10.1.2.3", "2001:db8::/32"],
    }
    with override_settings(CLIFFRACER=good):
        ids = [message.id for message in run_checks(tags=["cliffracer"])]
    assert not [
        check_id
        for check_id in ids
        if check_id in {"cliffracer.E015", "cliffracer.E016", "cliffracer.E017"}
    ]


# The web process's /metrics


@pytest.mark.django_db
def test_web_metrics_serve_django_prometheus_metrics_to_an_allowed_address(client):
    from django.contrib.auth.models import User

    User.objects.count()  # a query, for the database metrics
    client.get("/healthz")
    response = client.get("/metrics", REMOTE_ADDR="10.1.2.3")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    samples = {
        sample.name
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
    }
    assert "django_http_requests_before_middlewares_total" in samples
    assert "django_http_requests_latency_seconds_by_view_method_bucket" in samples
    assert "django_db_execute_total" in samples


@pytest.mark.parametrize(
    "headers",
    [
        {"REMOTE_ADDR": "203.0.113.7"},
        # Through a proxy on the same host: the proxy is allowed, the client is not.
        {"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": "203.0.113.7"},
        {"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": "10.0.0.1, 203.0.113.7"},
        {"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": "unknown"},
    ],
)
def test_web_metrics_refuse_other_addresses(client, headers):
    response = client.get("/metrics", **headers)
    assert response.status_code == 403
    assert b"django_http" not in response.content


def test_web_metrics_allowed_addresses_come_from_the_setting(client):
    with override_settings(CLIFFRACER={"METRICS_ALLOWED_IPS": ["203.0.113.0/24"]}):
        assert client.get("/metrics", REMOTE_ADDR="203.0.113.7").status_code == 200
        assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 403
    with override_settings(CLIFFRACER={"METRICS_ALLOWED_IPS": []}):
        assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 403
    # An IPv4 client of a dual-stack listener, and an IPv6 loopback client.
    assert client.get("/metrics", REMOTE_ADDR="::ffff:10.0.0.9").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="::1").status_code == 200
