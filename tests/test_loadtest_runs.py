"""``manage.py loadtest`` as a real process against ``runservice testservice`` on the suite's
nats-server: every request accounted for, errors by code, thresholds and exit codes, Ctrl-C.

No assertion here is about speed: the figures asserted are counts, which a slow machine
changes no more than a fast one.
"""

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
from html.parser import HTMLParser
from pathlib import Path

import nats
import pytest
from pydantic import BaseModel

from cliffracer_core import Service, event
from cliffracer_core.core.client import rpc_subject
from cliffracer_core.dev.loadtest.generator import service_stats
from cliffracer_core.testing.plugin import (
    ServiceProcess,
    child_environment,
    project_root,
    run_async,
)
from cliffracer_core.testing.polling import wait_for
from cliffracer_core.transports import connect

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


@pytest.fixture(scope="module")
def testservice(nats_server, tmp_path_factory):
    """One ``runservice testservice`` for the module: its STATS are read as differences."""
    environment = child_environment(nats_server, {"DJANGO_SETTINGS_MODULE": "tests.settings"})
    log_path = tmp_path_factory.mktemp("loadtest") / "testservice.log"
    process = ServiceProcess("testservice", log_path=log_path, arguments=[], env=environment)
    try:
        yield process.wait_serving()
    finally:
        process.stop()


def loadtest_command(*arguments: str, record: bool = False) -> list[str]:
    """The command; ``--no-record`` unless ``record``: these runs have no test database, and
    must not write to the developer's (the records are tested in test_loadtest_records.py)."""
    return [
        sys.executable,
        "manage.py",
        "loadtest",
        *arguments,
        *([] if record else ["--no-record"]),
    ]


def environment() -> dict[str, str]:
    return dict(os.environ, DJANGO_SETTINGS_MODULE="settings.settings")


def loadtest(*arguments: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``manage.py loadtest`` against the suite's NATS (``NATS_URL`` is set)."""
    command = loadtest_command(*arguments)
    if cwd is not None:
        command[1] = str(project_root() / "manage.py")
    return subprocess.run(
        command,
        cwd=cwd or project_root(),
        env=environment(),
        capture_output=True,
        text=True,
        timeout=90,
    )


def figures(result: subprocess.CompletedProcess) -> dict:
    assert result.stdout, result.stderr
    return json.loads(result.stdout)


def accounted(summary: dict) -> int:
    """Requests counted as ok or as an error, also added up by code and by second."""
    by_code = sum(summary["errors_by_code"].values())
    expected = summary["expected_errors"]
    by_second = sum(row["ok"] + row["errors"] + row["expected"] for row in summary["timeline"])
    assert summary["ok"] + by_code + expected == summary["requests"] == by_second
    return summary["requests"]


async def stats_of(url: str, name: str) -> dict:
    connection = await connect(url)
    try:
        return await service_stats(connection, {name})
    finally:
        await connection.close()


def served(url: str, endpoint: str) -> int:
    """Requests the testservice instances counted on ``endpoint`` so far."""
    totals = run_async(stats_of(url, "testservice"))
    return totals.get(f"testservice.{endpoint}", {}).get("num_requests", 0)


def test_the_open_model_sends_every_planned_request_and_accounts_for_each(testservice):
    result = loadtest("testservice.echo", "--rate", "50", "--duration", "2s", "--json")
    assert result.returncode == 0, result.stderr
    summary = figures(result)
    assert summary["sent"] == accounted(summary) == 100
    assert summary["ok"] == 100
    assert summary["target_rate"] == pytest.approx(50)
    # The services counted what the tool sent: $SRV.STATS before and after.
    assert summary["server"]["endpoints"]["testservice.echo"]["num_requests"] == 100
    assert summary["passed"] is True
    assert summary["plan"]["model"] == "open"


def test_the_open_model_stops_after_the_requests_asked(testservice):
    result = loadtest("testservice.echo", "--rate", "100", "--requests", "150", "--json")
    assert result.returncode == 0, result.stderr
    summary = figures(result)
    assert summary["sent"] == accounted(summary) == 150
    assert summary["target_rate"] == pytest.approx(100)
    assert summary["server"]["endpoints"]["testservice.echo"]["num_requests"] == 150


def test_the_default_body_is_an_example_of_the_request_schema(testservice):
    result = loadtest("testservice.refuse", "-n", "3", "--json")
    summary = figures(result)
    # Refusal's defaults: code 409, type "refused"; the example uses them.
    assert summary["errors_by_type"] == {"409 refused": 3}


def test_the_closed_model_stops_after_the_requests_asked(testservice):
    result = loadtest("testservice.echo", "--concurrency", "4", "--requests", "40", "--json")
    assert result.returncode == 0, result.stderr
    summary = figures(result)
    assert summary["sent"] == accounted(summary) == summary["ok"] == 40
    assert summary["plan"]["model"] == "closed"
    assert summary["server"]["endpoints"]["testservice.echo"]["num_requests"] == 40


def test_errors_are_counted_by_code_and_a_run_where_all_fail_is_a_failure(testservice, tmp_path):
    (tmp_path / "busy.json").write_text('{"code": 503, "type": "busy"}')
    result = loadtest(
        "testservice.refuse",
        "--body",
        "@busy.json",
        "--rate",
        "30",
        "-d",
        "1s",
        "--json",
        cwd=tmp_path,
    )
    assert result.returncode == 1
    summary = figures(result)
    assert accounted(summary) == 30
    assert summary["errors_by_code"] == {"503": 30}
    assert summary["server_errors"] == 30
    assert summary["server"]["endpoints"]["testservice.refuse"]["num_errors"] == 30
    assert summary["passed"] is False
    assert result.stderr.strip().splitlines()[-1] == (
        "load test failed: every request failed (30 errors)"
    )


def test_thresholds_that_hold_pass_with_exit_code_0(testservice):
    result = loadtest(
        "testservice.echo", "-n", "20", "-c", "2", "--fail-on", "errors<1%,p99<30s,requests>=20"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "requests   20  (20 ok, 0 errors)" in result.stdout
    assert "pass  errors<1%  (0.00%)" in result.stdout
    assert result.stdout.rstrip().endswith("PASSED")


def test_a_threshold_missed_fails_with_exit_code_1(testservice):
    result = loadtest(
        "testservice.refuse", "--body", '{"code": 404}', "-n", "10", "--fail-on", "errors<=5"
    )
    assert result.returncode == 1
    assert "FAIL  errors<=5  (10)" in result.stdout
    assert "404 refused: 10" in result.stdout


def test_a_throughput_out_of_reach_fails(testservice):
    result = loadtest("testservice.echo", "-n", "10", "--fail-on", "rps>=1000000")
    assert result.returncode == 1
    assert "FAIL  rps>=1000000" in result.stdout


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["testservice.echo", "--fail-on", "p99<<3"], "--fail-on: 'p99<<3' is not a threshold"),
        (["testservice.echo", "--fail-on", "p99<1s,"], "has an empty condition"),
        (["testservice.nope"], "service 'testservice' has no endpoint 'nope'; it has: crash,"),
        (["nosuchservice.echo"], "no running instance of service 'nosuchservice'"),
        (["echo"], "must read 'service.method'"),
        (["testservice.echo", "--rate", "0"], "a rate must be more than 0"),
        (["testservice.echo", "--duration", "soon"], "--duration: 'soon' is not a duration"),
        (["testservice.echo", "--body", "{nope"], "the body is not valid JSON"),
        (["testservice.echo", "--body", "@/no/such.json"], "cannot read the body file"),
        ([], "name what to load"),
        (["--http", "ftp://example.com/"], "is not an http:// or https:// URL"),
        (["--http", "http://127.0.0.1:9/", "--method", "FETCH"], "is not an HTTP method"),
        (["testservice.echo", "--method", "POST"], "--method goes with --http URL"),
        (["testservice.echo", "--event", "a.b"], "give one of an endpoint"),
        (["testservice.echo", "--processes", "0"], "--processes must be between 1 and 64"),
        (["testservice.echo", "--baseline", "/no/such.json"], "--baseline: cannot read"),
        (["testservice.echo", "--body", '{"text": "{pad}"}'], "needs a size range"),
        (["testservice.echo", "--body-size", "1KB..2KB"], 'mark it "{pad}"'),
        (["--body-size", "1KB"], "--body and --body-size go with"),
        (["testservice.echo", "--clients", "5"], "--clients goes with --websocket URL"),
        (["--event", "a.b", "--body", "{}", "--websocket", "http://x/"], "is not a ws:// or"),
        (
            ["testservice.echo", "--body", '{"text": "{pad}"}', "--body-size", "9KB..1KB"],
            "the body size '9KB..1KB': the low end is above the high end",
        ),
    ],
)
def test_usage_mistakes_are_one_line_and_exit_code_2(testservice, arguments, message):
    result = loadtest(*arguments)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert message in line


def test_ctrl_c_stops_the_run_and_still_reports_every_request(testservice, nats_server, tmp_path):
    before = served(nats_server.url, "echo")
    report = tmp_path / "interrupted.html"
    command = ["testservice.echo", "--rate", "20", "--duration", "60s", "--report", str(report)]
    process = subprocess.Popen(
        loadtest_command(*command, "--json"),
        cwd=project_root(),
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: served(nats_server.url, "echo") >= before + 10, 30, what="requests")
        process.send_signal(signal.SIGINT)
        output, errors = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, errors
    summary = json.loads(output)
    assert summary["interrupted"] is True
    assert 10 <= accounted(summary) < 1200
    assert summary["server"]["endpoints"]["testservice.echo"]["num_requests"] == summary["sent"]
    assert "(interrupted)" in report.read_text()


# The HTML report


class Page(HTMLParser):
    """The elements of an HTML page, and any attribute that would load something."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.loads: list[str] = []
        self.data: dict[str, str] = {}
        self.inside: str | None = None

    def handle_starttag(self, tag, attributes):
        values = dict(attributes)
        self.tags.append((tag, values))
        self.loads += [values[name] for name in ("src", "href") if values.get(name)]
        self.inside = values.get("id") if tag == "script" else None

    def handle_data(self, data):
        if self.inside:
            self.data[self.inside] = self.data.get(self.inside, "") + data


def test_the_report_is_one_html_file_with_its_charts_and_figures(testservice, tmp_path):
    report = tmp_path / "reports" / "echo.html"
    result = loadtest(
        "testservice.echo", "--rate", "40", "-d", "2s", "--report", str(report), "--json"
    )
    assert result.returncode == 0, result.stderr
    assert f"report: {report}" in result.stderr
    page = Page()
    page.feed(report.read_text())
    page.close()
    charts = [values for tag, values in page.tags if tag == "svg"]
    assert len(charts) == 5
    assert [tag for tag, _ in page.tags].count("polyline") >= 5
    # Nothing from elsewhere: no script, stylesheet, image or font to fetch.
    assert page.loads == []
    embedded = json.loads(page.data["loadtest-result"])
    assert embedded["requests"] == figures(result)["requests"] == 80


def test_the_report_opens_in_a_browser_with_its_charts(testservice, tmp_path):
    from cliffracer_core.testing.browser import launch_chromium

    report = tmp_path / "report.html"
    result = loadtest("testservice.refuse", "--rate", "20", "-d", "2s", "--report", str(report))
    assert result.returncode == 1
    with launch_chromium() as browser:
        page = browser.new_page(viewport={"width": 900, "height": 1200})
        page.goto(report.as_uri())
        assert page.locator("svg.chart").count() == 5
        assert "FAILED: every request failed (40 errors)" in page.inner_text("body")
        assert page.locator("svg.chart").nth(3).locator("text", has_text="409").count() == 1
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "loadtest-report.png"), full_page=True)


# Scenarios and presets


def test_a_scenario_mixes_targets_by_weight_and_counts_each(testservice, tmp_path):
    (tmp_path / "refusal.json").write_text('{"code": 429, "type": "slow_down"}')
    (tmp_path / "mixed.toml").write_text(
        """
        name = "mixed"
        requests = 200
        users = 4
        seed = 1
        fail_on = "errors<50%"

        [[targets]]
        rpc = "testservice.echo"
        weight = 80
        body = { text = "hello" }

        [[targets]]
        rpc = "testservice.refuse"
        weight = 20
        body_file = "refusal.json"
        """
    )
    result = loadtest("--scenario", str(tmp_path / "mixed.toml"), "--json")
    assert result.returncode == 0, result.stderr
    summary = figures(result)
    assert accounted(summary) == 200
    echo, refuse = summary["targets"]["testservice.echo"], summary["targets"]["testservice.refuse"]
    assert echo["requests"] + refuse["requests"] == 200
    assert 120 <= echo["ok"] == echo["requests"] <= 190
    assert refuse["errors_by_code"] == {"429": refuse["requests"]}
    assert summary["errors_by_type"] == {"429 slow_down": refuse["requests"]}
    server = summary["server"]["endpoints"]
    assert server["testservice.echo"]["num_requests"] == echo["requests"]
    assert server["testservice.refuse"]["num_errors"] == refuse["requests"]


def test_scenario_stages_ramp_the_rate(testservice, tmp_path):
    (tmp_path / "ramp.toml").write_text(
        """
        model = "open"
        [[stages]]
        duration = "2s"
        target = 40
        [[stages]]
        duration = "1s"
        target = 40

        [[targets]]
        rpc = "testservice.echo"
        """
    )
    result = loadtest("--scenario", str(tmp_path / "ramp.toml"), "--json")
    assert result.returncode == 0, result.stderr
    summary = figures(result)
    # 0 → 40 req/s over 2 s is 40 requests, then 40 more at 40 req/s.
    assert summary["sent"] == accounted(summary) == 80
    assert [stage["level"] for stage in summary["plan"]["stages"]] == [40, 40]


def test_a_preset_scaled_down_keeps_its_shape_and_thresholds(testservice):
    result = loadtest("testservice.echo", "--preset", "smoke", "--scale", "0.05", "--json")
    assert result.returncode == 0, result.stderr
    summary = figures(result)
    assert summary["plan"]["duration"] == pytest.approx(1.5)
    assert summary["plan"]["model"] == "closed"
    assert [result["threshold"] for result in summary["thresholds"]] == ["errors<1%"]
    assert accounted(summary) == summary["server"]["endpoints"]["testservice.echo"]["num_requests"]


@pytest.mark.parametrize(
    ("scenario", "message"),
    [
        ("rate = [", "is not valid TOML"),
        ("rate = 5\nduration = '1s'\nbursts = 3", "the scenario has unknown keys: bursts"),
        ("rate = 5\n[[targets]]\nservice = 'testservice.echo'", "target 1 has unknown keys"),
        ("rate = 5\n[[targets]]\nweight = 2", "target 1 needs one of rpc"),
        ("rate = 'fast'", "rate must be a number"),
        ("model = 'closed'\n[[stages]]\nduration = '1s'", "stage 1 needs a duration and a target"),
        ("users = 3\n[[stages]]\nduration = '1s'\ntarget = 3", "with [[stages]], give model"),
        ("rate = 5\nduration = 'long'", "duration: 'long' is not a duration"),
        ("rate = 5\nduration = '1s'", "name what to load"),
        ("rate = 5\nuntil_handled = 'yes'", "until_handled is true or false"),
        ("rate = 5\nclients = 'many'", "clients must be a whole number"),
        ("rate = 5\nwebsocket = 'http://x/'", "websocket must be a ws:// or wss:// URL"),
    ],
)
def test_an_invalid_scenario_is_one_line_and_exit_code_2(tmp_path, scenario, message):
    path = tmp_path / "bad.toml"
    path.write_text(scenario)
    result = loadtest("--scenario", str(path))
    assert result.returncode == 2, result.stdout + result.stderr
    [line] = result.stderr.strip().splitlines()
    assert message in line


# Bodies that vary


def test_padded_bodies_span_the_size_range_and_stay_valid(testservice, nats_server):
    subscriber = Subscriber(nats_server.url, rpc_subject("testservice.echo"))
    try:
        result = loadtest(
            "testservice.echo", "--body", '{"text": "{pad}"}', "--body-size", "100B..50KB",
            "-c", "4", "-n", "60", "--seed", "5", "--json",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        wait_for(lambda: len(subscriber.bodies) >= 60, 15, what="60 requests")
    finally:
        subscriber.stop()
    summary = figures(result)
    # Every body was a valid Text for the echo endpoint: all 60 answered, none refused.
    assert summary["ok"] == accounted(summary) == 60
    sizes = sorted(len(body) for body in subscriber.bodies)
    assert len(sizes) == 60
    assert 100 <= sizes[0] < 1000 and 10_000 < sizes[-1] <= 50_000
    assert len(set(sizes)) > 50
    target = summary["plan"]["targets"][0]
    assert target["body_varies"] is True
    assert (target["body_bytes_min"], target["body_bytes_max"]) == (sizes[0], sizes[-1])


def test_generated_fields_vary_per_request_in_a_scenario(testservice, nats_server, tmp_path):
    (tmp_path / "vary.toml").write_text(
        """
        requests = 90
        users = 3
        seed = 2

        [[targets]]
        rpc = "testservice.sleep"
        weight = 2
        body = { seconds = "{float:0..0.002}", tag = "{int:1..5}" }

        [[targets]]
        rpc = "testservice.refuse"
        body = { code = "{choice:404,409,429}" }
        """
    )
    subscriber = Subscriber(nats_server.url, rpc_subject("testservice.sleep"))
    try:
        result = loadtest("--scenario", str(tmp_path / "vary.toml"), "--json")
        summary = figures(result)
        sleeps = summary["targets"]["testservice.sleep"]["requests"]
        wait_for(lambda: len(subscriber.bodies) >= sleeps, 15, what="the sleep requests")
    finally:
        subscriber.stop()
    assert accounted(summary) == 90
    assert summary["targets"]["testservice.sleep"]["ok"] == sleeps
    tags = [json.loads(body)["tag"] for body in subscriber.bodies]
    assert set(tags) == {1, 2, 3, 4, 5}
    assert all(0 <= json.loads(body)["seconds"] <= 0.002 for body in subscriber.bodies)
    refusals = summary["targets"]["testservice.refuse"]
    assert set(refusals["errors_by_code"]) == {"404", "409", "429"}
    assert sum(refusals["errors_by_code"].values()) == refusals["requests"] == 90 - sleeps


# Event targets


class Subscriber:
    """A plain nats-py subscriber on its own thread and loop, counting what arrives."""

    def __init__(self, url: str, subject: str) -> None:
        self.url, self.subject = url, subject
        self.bodies: list[bytes] = []
        self.ready = threading.Event()
        self.done = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self.run()), daemon=True)
        self.thread.start()
        assert self.ready.wait(15), "the subscriber did not start"

    async def run(self) -> None:
        connection = await nats.connect(self.url)

        async def on_message(message) -> None:
            self.bodies.append(message.data)

        await connection.subscribe(self.subject, cb=on_message)
        await connection.flush()
        self.ready.set()
        while not self.done.is_set():
            await asyncio.sleep(0.02)
        await connection.close()

    def stop(self) -> None:
        self.done.set()
        self.thread.join(15)


def test_events_are_published_at_the_rate_and_each_counted(nats_server, unique_name):
    subject = f"loadtest.{unique_name}.happened"
    subscriber = Subscriber(nats_server.url, subject)
    try:
        result = loadtest(
            "--event", subject, "--body", '{"n": 1}', "--rate", "25", "-d", "2s", "--json"
        )
        assert result.returncode == 0, result.stderr
        summary = figures(result)
        assert summary["sent"] == accounted(summary) == summary["ok"] == 50
        assert summary["server"] is None
        wait_for(lambda: len(subscriber.bodies) >= 50, 15, what="50 events")
    finally:
        subscriber.stop()
    assert len(subscriber.bodies) == 50
    assert {json.loads(body)["n"] for body in subscriber.bodies} == {1}


def test_an_event_needs_a_body(nats_server):
    result = loadtest("--event", "loadtest.nobody", "--rate", "5")
    assert result.returncode == 2
    assert "give a body" in result.stderr


# --until-handled


class Work(BaseModel):
    seconds: float = 0.0


def make_workers(service_name: str, worked: list, audited: list) -> type[Service]:
    class Workers(Service):
        """A queue-group handler that takes its time, and a broadcast one on every instance."""

        name = service_name

        @event(f"{service_name}.work", public=True)
        async def work(self, job: Work) -> None:
            await asyncio.sleep(job.seconds)
            worked.append(job.seconds)

        @event(f"{service_name}.>", broadcast=True, public=True)
        async def audit(self, job: Work) -> None:
            audited.append(job.seconds)

    return Workers


@pytest.fixture
def workers(start_service, unique_name):
    """Two instances of a service with event handlers, on the suite's NATS."""
    name = f"lt{unique_name}"
    worked, audited = [], []
    for _ in range(2):
        start_service(make_workers(name, worked, audited))
    return name, worked, audited


def test_until_handled_waits_for_every_handler_and_measures_to_their_completion(workers):
    name, worked, audited = workers
    result = loadtest(
        "--event", f"{name}.work", "--body", '{"seconds": 0.02}', "--rate", "40", "-d", "1s",
        "--until-handled", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = figures(result)
    handled = summary["handled"]
    assert handled["published"] == handled["handled"] == summary["ok"] == 40
    assert handled["all_handled"] is True
    # The queue group's handler took each event once, the broadcast one on both instances.
    by_handler = {row["handler"]: row for row in handled["handlers"]}
    assert set(by_handler) == {f"{name}.work", f"{name}.audit"}
    assert by_handler[f"{name}.work"]["outcomes"]["ok"] == len(worked) == 40
    assert by_handler[f"{name}.audit"]["outcomes"]["ok"] == len(audited) == 80
    assert (by_handler[f"{name}.audit"]["broadcast"], by_handler[f"{name}.audit"]["instances"]) == (
        True,
        2,
    )
    # No event can count as handled before its handler's 20 ms sleep is over.
    assert handled["latency"]["min"] >= 0.02
    assert sum(row["events"] for row in handled["timeline"]) == 40
    assert handled["catch_up"] is not None


def test_events_not_handled_within_the_timeout_fail_the_run(workers):
    name, worked, _ = workers
    result = loadtest(
        "--event", f"{name}.work", "--body", '{"seconds": 3}', "-n", "3", "--timeout", "0.5s",
        "--until-handled", "--json",
    )  # fmt: skip
    assert result.returncode == 1
    handled = figures(result)["handled"]
    assert (handled["published"], handled["handled"], handled["all_handled"]) == (3, 0, False)
    assert "3 of 3 events were not handled within 500 ms of the last publish" in result.stderr


def test_a_scenarios_until_handled_waits_for_every_handler(workers, tmp_path):
    name, worked, audited = workers
    path = tmp_path / "handled.toml"
    path.write_text(
        f"rate = 40\nduration = '1s'\nuntil_handled = true\n"
        f"[[targets]]\nevent = '{name}.work'\nbody = {{ seconds = 0.02 }}\n"
    )
    result = loadtest("--scenario", str(path), "--json")
    assert result.returncode == 0, result.stderr
    summary = figures(result)
    handled = summary["handled"]
    assert handled["published"] == handled["handled"] == summary["ok"] == 40
    assert handled["all_handled"] is True
    assert len(worked) == 40 and len(audited) == 80
    assert handled["latency"]["min"] >= 0.02


def test_until_handled_needs_events_that_something_handles(testservice, nats_server):
    nobody = loadtest("--event", "loadtest.unheard", "--body", "{}", "-n", "1", "--until-handled")
    assert nobody.returncode == 2
    [line] = nobody.stderr.strip().splitlines()
    assert "no running service handles events on loadtest.unheard" in line
    rpc = loadtest("testservice.echo", "-n", "1", "--until-handled")
    assert rpc.returncode == 2
    assert "--until-handled goes with event targets" in rpc.stderr


# HTTP targets and --user


def test_http_targets_count_answers_by_status(testservice, web_process):
    web = web_process("web")
    found = loadtest("--http", f"{web.url}/healthz", "-c", "2", "-n", "20", "--json")
    assert found.returncode == 0, found.stderr
    summary = figures(found)
    assert summary["sent"] == accounted(summary) == summary["ok"] == 20
    missing = loadtest("--http", f"{web.url}/no/such/page", "-n", "10", "--json")
    assert missing.returncode == 1
    summary = figures(missing)
    assert accounted(summary) == 10
    assert summary["errors_by_code"] == {"404": 10}


def test_http_posts_through_the_gateway_reach_the_service(testservice, web_process):
    web = web_process("web")
    result = loadtest(
        "--http", f"{web.url}/api/rpc/testservice/echo", "--body", '{"text": "hi"}',
        "--rate", "20", "-d", "1s", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = figures(result)
    assert summary["ok"] == accounted(summary) == 20
    assert summary["plan"]["targets"][0]["method"] == "POST"
    assert summary["server"] is None


def test_user_calls_as_that_user(testservice, web_process, transactional_db, nats_server):
    from django.contrib.auth.models import User

    User.objects.create_user("ada", password="unused-in-this-test")
    gateway = f"{web_process('web').url}/api/rpc/testservice/sleeping_now"
    environment_with_database = child_environment(nats_server, {})

    def run(*arguments: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            loadtest_command(*arguments, "-n", "5", "--json"),
            cwd=project_root(),
            env=environment_with_database,
            capture_output=True,
            text=True,
            timeout=90,
        )

    anonymous = figures(run("--http", gateway, "--method", "POST", "--body", "{}"))
    assert anonymous["errors_by_code"] == {"401": 5}, anonymous["errors_by_type"]
    as_ada = run("--http", gateway, "--method", "POST", "--body", "{}", "--user", "ada")
    assert figures(as_ada)["ok"] == 5, as_ada.stderr
    over_nats = run("testservice.sleeping_now", "--user", "ada")
    assert figures(over_nats)["ok"] == 5
    nobody = run("testservice.sleeping_now", "--user", "nobody")
    assert nobody.returncode == 2
    assert nobody.stderr.strip() == "CommandError: --user: no user 'nobody'."


# WebSocket clients


@pytest.fixture
def websocket_url(web_process, transactional_db):
    """/ws/events/ of a daphne process on the suite's NATS, where any signed-in user may
    subscribe to ws.public.>, and a user (loadtester) to sign in as."""
    from django.contrib.auth.models import User

    User.objects.create_user("loadtester", password="unused-in-this-test")
    rules = [{"subject": "ws.public.>", "subscribe": []}]
    web = web_process(
        "web",
        DJANGO_SETTINGS_MODULE="tests.websocket_settings",
        CLIFFRACER_TEST_OVERRIDES=json.dumps({"SUBJECT_RULES": rules}),
    )
    return web.url.replace("http://", "ws://") + "/ws/events/"


def test_websocket_clients_get_every_event_and_their_delivery_is_measured(
    websocket_url, nats_server, unique_name
):
    subject = f"ws.public.{unique_name}"
    result = subprocess.run(
        loadtest_command(
            "--event", subject, "--body", '{"n": 1}', "--rate", "20", "-d", "1s",
            "--websocket", websocket_url, "--clients", "3", "--user", "loadtester", "--json",
        ),
        cwd=project_root(),
        env=child_environment(nats_server, {}),
        capture_output=True,
        text=True,
        timeout=90,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = figures(result)
    frames = summary["websocket"]
    assert summary["ok"] == frames["events"] == 20
    assert frames["delivered"] == frames["expected"] == 60
    assert frames["all_delivered"] is True
    assert frames["foreign_frames"] == 0
    assert sum(row["frames"] for row in frames["timeline"]) == 60
    assert frames["latency"]["max"] is not None


def test_a_scenarios_websocket_clients_get_every_event(
    websocket_url, nats_server, unique_name, tmp_path
):
    subject = f"ws.public.{unique_name}"
    path = tmp_path / "frames.toml"
    path.write_text(
        f"rate = 20\nduration = '1s'\nwebsocket = '{websocket_url}'\nclients = 3\n"
        f"[[targets]]\nevent = '{subject}'\nbody = {{ n = 1 }}\n"
    )
    result = subprocess.run(
        loadtest_command("--scenario", str(path), "--user", "loadtester", "--json"),
        cwd=project_root(),
        env=child_environment(nats_server, {}),
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr
    summary = figures(result)
    frames = summary["websocket"]
    assert (frames["clients"], summary["ok"], frames["events"]) == (3, 20, 20)
    assert frames["delivered"] == frames["expected"] == 60
    assert frames["all_delivered"] is True


def test_websocket_clients_that_cannot_subscribe_end_the_run_in_one_line(
    websocket_url, nats_server
):
    def run(*arguments: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            loadtest_command("--body", "{}", "-n", "1", "--websocket", websocket_url, *arguments),
            cwd=project_root(),
            env=child_environment(nats_server, {}),
            capture_output=True,
            text=True,
            timeout=90,
        )

    refused = run("--event", "ws.private.thing", "--user", "loadtester")
    assert refused.returncode == 1
    [line] = refused.stderr.strip().splitlines()
    assert "--websocket: cannot subscribe to ws.private.thing over the WebSocket" in line
    anonymous = run("--event", "ws.public.thing")
    assert anonymous.returncode == 2
    assert "the clients sign in; give --user NAME" in anonymous.stderr


# --processes


def test_several_processes_send_one_run_and_merge_their_counts(testservice):
    result = loadtest("testservice.echo", "--rate", "40", "-d", "2s", "--processes", "2", "--json")
    assert result.returncode == 0, result.stderr
    summary = figures(result)
    assert summary["sent"] == accounted(summary) == summary["ok"] == 80
    assert summary["server"]["endpoints"]["testservice.echo"]["num_requests"] == 80
    closed = figures(
        loadtest("testservice.echo", "-c", "3", "-n", "41", "--processes", "2", "--json")
    )
    assert closed["sent"] == accounted(closed) == 41
    assert closed["server"]["endpoints"]["testservice.echo"]["num_requests"] == 41


# --invalid


def test_invalid_requests_come_back_as_expected_errors_apart_from_failures(testservice):
    result = loadtest(
        "testservice.echo", "-c", "2", "-n", "100", "--invalid", "30", "--seed", "3",
        "--fail-on", "errors<1%", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = figures(result)
    assert accounted(summary) == 100
    assert summary["errors"] == 0
    assert 10 <= summary["expected_errors"] <= 50
    assert summary["expected_by_type"] == {"400 invalid_json": summary["expected_errors"]}
    assert summary["ok"] == 100 - summary["expected_errors"]
    served = summary["server"]["endpoints"]["testservice.echo"]
    assert served["num_errors"] == summary["expected_errors"]


# --baseline


def test_a_run_worse_than_its_baseline_fails(testservice, tmp_path):
    baseline = tmp_path / "before.json"
    before = loadtest("testservice.echo", "-c", "2", "-n", "50", "--json")
    assert before.returncode == 0, before.stderr
    baseline.write_text(before.stdout)
    result = loadtest(
        "testservice.refuse", "--body", '{"code": 503}', "-n", "20", "--baseline", str(baseline)
    )
    assert result.returncode == 1
    assert "Against the baseline" in result.stdout
    assert "errors  0.00%" in result.stdout and "REGRESSION" in result.stdout
    assert "errors regressed against the baseline" in result.stderr


def test_a_nats_server_that_does_not_answer_is_one_line_and_exit_code_1(nats_server):
    result = loadtest("testservice.echo", "--url", "nats://127.0.0.1:1", "-n", "1")
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert "cannot connect to NATS at nats://127.0.0.1:1" in line
