"""The command-line tools as real processes against a service running on a real NATS server:
``services``, ``call``, ``publish``, ``listen`` and ``shell``."""

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import BaseModel

from cliffracer_core import NotFound, RemoteError, Service, call, event, get_correlation_id, rpc
from cliffracer_core.dev.running_system import write_record
from cliffracer_core.testing.plugin import project_root

CORRELATION_ID = re.compile(r"^correlation id: (\S+)$", re.MULTILINE)


class Text(BaseModel):
    text: str


class Lookup(BaseModel):
    id: int


class Sleep(BaseModel):
    seconds: float


class Caller(BaseModel):
    correlation_id: str | None


class Happened(BaseModel):
    n: int


def make_service(service_name: str, received: list) -> type[Service]:
    class Tools(Service):
        """Endpoints for the command-line tools."""

        name = service_name
        version = "4.5.6"

        @rpc
        async def echo(self, request: Text) -> Text:
            return request

        @rpc
        async def find(self, request: Lookup) -> Text:
            raise NotFound(f"No thing {request.id}.", details={"id": request.id})

        @rpc
        async def sleep(self, request: Sleep) -> Text:
            await asyncio.sleep(request.seconds)
            return Text(text="awake")

        @rpc
        async def whoami(self) -> Caller:
            return Caller(correlation_id=get_correlation_id())

        @event(f"{service_name}.events.*")
        async def on_event(self, happened: Happened) -> None:
            received.append((happened.n, get_correlation_id()))

    return Tools


@pytest.fixture
def received() -> list:
    return []


@pytest.fixture
def tools(start_service, unique_name, received):
    name = f"cli{unique_name}"
    running = start_service(make_service(name, received))
    return name, running


def manage(*arguments: str, input: str | None = None) -> subprocess.CompletedProcess:
    """Run ``manage.py`` against the test's NATS server (``NATS_URL`` is in the environment)."""
    return subprocess.run(
        [sys.executable, "manage.py", *arguments],
        cwd=project_root(),
        env=dict(os.environ, DJANGO_SETTINGS_MODULE="settings.settings"),
        input=input,
        capture_output=True,
        text=True,
        timeout=60,
    )


def correlation_id(stderr: str) -> str:
    [found] = set(CORRELATION_ID.findall(stderr))
    return found


def wait_for(condition, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


class Listener:
    """``manage.py listen`` in the background, its output going to files."""

    def __init__(self, tmp_path: Path, *arguments: str) -> None:
        self.out = tmp_path / f"listen-{time.monotonic_ns()}.out"
        self.err = self.out.with_suffix(".err")
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "manage.py", "listen", *arguments],
                cwd=project_root(),
                env=dict(os.environ, DJANGO_SETTINGS_MODULE="settings.settings"),
                stdout=out,
                stderr=err,
            )
        wait_for(lambda: "listening on" in self.stderr() or self.process.poll() is not None)
        assert self.process.poll() is None, self.stderr()

    def stdout(self) -> str:
        return self.out.read_text()

    def stderr(self) -> str:
        return self.err.read_text()

    def wait(self, timeout: float = 15.0) -> int:
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def listen(tmp_path, nats_server):
    started: list[Listener] = []

    def start(*arguments: str) -> Listener:
        listener = Listener(tmp_path, *arguments)
        started.append(listener)
        return listener

    yield start
    for listener in started:
        listener.stop()


# services


def service_block(output: str, name: str) -> list[str]:
    """The heading and table of one service in the ``services`` output."""
    lines = output.splitlines()
    start = next(index for index, line in enumerate(lines) if line.startswith(f"{name}  "))
    block = []
    for line in lines[start:]:
        if not line.strip():
            break
        block.append(line)
    return block


def test_services_lists_every_instance_with_its_counts(start_service, tools):
    name, first = tools
    second = start_service(type(first.service))
    for text in ("a", "b", "c"):
        call(f"{name}.echo", {"text": text})
    with pytest.raises(RemoteError):
        call(f"{name}.find", {"id": 7})

    result = manage("services", "--wait", "0.3")

    assert result.returncode == 0, result.stderr
    heading, columns, *rows = service_block(result.stdout, name)
    assert heading == f"{name}  4.5.6  2 instances  Endpoints for the command-line tools."
    assert columns.split() == [
        "INSTANCE",
        "HOST",
        "PID",
        "UPTIME",
        "ENDPOINTS",
        "REQUESTS",
        "ERRORS",
        "AVG",
        "LATENCY",
    ]
    by_id = {row.split()[0]: row.split() for row in rows}
    assert set(by_id) == {first.runner.identity.id, second.runner.identity.id}
    for fields in by_id.values():
        assert fields[2] == str(os.getpid())
        assert re.fullmatch(r"\d+s", fields[3])
        assert fields[4] == "4"
    assert sum(int(fields[5]) for fields in by_id.values()) == 4
    assert sum(int(fields[6]) for fields in by_id.values()) == 1
    assert any(fields[7:] != ["-"] and fields[8] == "ms" for fields in by_id.values())


def test_services_shows_endpoints_with_verbosity_2(tools):
    name, _ = tools
    call(f"{name}.echo", {"text": "a"})
    result = manage("services", "--wait", "0.3", "-v", "2")
    assert result.returncode == 0, result.stderr
    assert re.search(rf"\n  echo +rpc\.{name}\.echo +1 +0 +[\d.]+ ms\n", result.stdout)
    assert re.search(rf"\n  whoami +rpc\.{name}\.whoami +0 +0 +-\n", result.stdout)


def test_services_json_prints_the_adr32_replies(tools):
    name, running = tools
    result = manage("services", "--wait", "0.3", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data) == {"ping", "info", "stats"}
    for verb in ("ping", "info", "stats"):
        [reply] = [reply for reply in data[verb] if reply["name"] == name]
        assert reply["type"] == f"io.nats.micro.v1.{verb}_response"
        assert reply["id"] == running.runner.identity.id


def test_services_watch_refreshes_until_interrupted(tools):
    name, _ = tools
    process = subprocess.Popen(
        [sys.executable, "manage.py", "services", "--wait", "0.2", "--watch", "0.3"],
        cwd=project_root(),
        env=dict(os.environ, DJANGO_SETTINGS_MODULE="settings.settings"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(3)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr
    assert stdout.count("Every 0.3s: manage.py services") >= 2
    assert stdout.count(f"{name}  4.5.6  1 instance") >= 2


def test_services_refuses_a_bad_wait(nats_server):
    result = manage("services", "--wait", "0")
    assert result.returncode == 2
    assert "--wait must be more than 0 seconds." in result.stderr


def test_services_when_nats_is_down_is_one_line_and_exit_1(nats_server):
    result = manage("services", "--nats-url", "nats://127.0.0.1:1")
    assert result.returncode == 1
    assert "CommandError: cannot connect to NATS at nats://127.0.0.1:1" in result.stderr
    assert "Traceback" not in result.stderr


# call


def test_call_prints_the_reply_as_json_and_the_correlation_id(tools):
    name, _ = tools
    result = manage("call", f"{name}.whoami")
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    # The id printed is the id the service saw: a user can grep the logs for it.
    assert reply == {"correlation_id": correlation_id(result.stderr)}
    assert re.fullmatch(r"[0-9a-f]{32}", reply["correlation_id"])

    echoed = manage("call", f"{name}.echo", '{"text": "héllo"}')
    assert echoed.returncode == 0, echoed.stderr
    assert echoed.stdout == '{\n  "text": "héllo"\n}\n'


def test_call_reads_the_request_from_stdin(tools):
    name, _ = tools
    result = manage("call", f"{name}.echo", "-", input='{"text": "from stdin"}')
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"text": "from stdin"}


def test_call_sends_headers(tools):
    name, _ = tools
    result = manage(
        "call", f"{name}.whoami", "--header", "X-Correlation-ID=cli-1", "-H", "X-Other=a=b"
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"correlation_id": "cli-1"}
    assert correlation_id(result.stderr) == "cli-1"


def test_call_prints_an_error_reply_on_stderr_with_exit_code_1(tools):
    name, _ = tools
    result = manage("call", f"{name}.find", '{"id": 7}')
    assert result.returncode == 1
    assert result.stdout == ""
    assert "error: 404 not_found: No thing 7." in result.stderr
    assert 'details: {\n  "id": 7\n}' in result.stderr
    assert correlation_id(result.stderr)

    invalid = manage("call", f"{name}.find", '{"id": "seven"}')
    assert invalid.returncode == 1
    assert "error: 422 validation_failed:" in invalid.stderr
    assert '"loc": [\n      "id"\n    ]' in invalid.stderr


def test_call_timeout_and_no_responders_are_errors(tools):
    name, _ = tools
    slow = manage("call", f"{name}.sleep", '{"seconds": 3}', "--timeout", "0.5")
    assert slow.returncode == 1
    assert f"error: 408 timeout: No reply from rpc.{name}.sleep within 0.5s." in slow.stderr

    nobody = manage("call", f"nobody{name}.echo", "{}")
    assert nobody.returncode == 1
    assert "error: 503 no_responders:" in nobody.stderr


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["call", "svc.echo", "{not json"], "CommandError: the argument is not valid JSON: "),
        (["call", "no_method", "{}"], "CommandError: Call target 'no_method' must read"),
        (["call", "svc.*", "{}"], "'rpc.svc.*' is not a valid NATS subject"),
        (["call", "svc.echo", "{}", "--header", "novalue"], "must read NAME=VALUE"),
        (["call", "svc.echo", "{}", "--timeout", "0"], "--timeout must be more than 0"),
    ],
)
def test_call_usage_mistakes_are_one_line_and_exit_code_2(nats_server, arguments, message):
    result = manage(*arguments)
    assert result.returncode == 2
    assert result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert message in line


# publish and listen


def test_publish_is_seen_by_listen_and_by_services(tools, received, listen):
    name, _ = tools
    listener = listen(f"{name}.events.*", "--count", "1")

    result = manage("publish", f"{name}.events.created", '{"n": 1}', "-H", "X-Correlation-ID=p-1")

    assert result.returncode == 0, result.stderr
    assert correlation_id(result.stderr) == "p-1"
    assert listener.wait() == 0
    [line] = listener.stdout().splitlines()
    moment, subject, seen_id, body = line.split("  ", 3)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", moment)
    assert (subject, seen_id, json.loads(body)) == (f"{name}.events.created", "p-1", {"n": 1})
    wait_for(lambda: received == [(1, "p-1")])


def test_listen_json_prints_each_event_with_its_headers(tools, listen):
    name, _ = tools
    listener = listen(f"{name}.events.>", "--count", "2", "--json")
    assert manage("publish", f"{name}.events.a", "[1, 2]").returncode == 0
    assert manage("publish", f"{name}.events.b.c", "-", input='"text"').returncode == 0
    assert listener.wait() == 0
    events = [json.loads(line) for line in listener.stdout().splitlines()]
    assert [(event["subject"], event["body"]) for event in events] == [
        (f"{name}.events.a", [1, 2]),
        (f"{name}.events.b.c", "text"),
    ]
    assert all(re.fullmatch(r"[0-9a-f]{32}", e["headers"]["X-Correlation-ID"]) for e in events)


def test_listen_stops_cleanly_on_ctrl_c(listen, unique_name):
    listener = listen(f"{unique_name}.>")
    listener.process.send_signal(signal.SIGINT)
    assert listener.wait() == 0
    assert listener.stdout() == ""
    assert "Traceback" not in listener.stderr()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["publish", "a.*", "{}"], "'a.*' is not a valid NATS subject"),
        (["publish", "a..b", "{}"], "'a..b' is not a valid NATS subject"),
        (["publish", "a.b", "nope"], "the argument is not valid JSON"),
        (["listen", "a.>.b"], "'a.>.b' is not a valid NATS subject pattern"),
        (["listen", "a.b", "--count", "0"], "--count must be at least 1."),
    ],
)
def test_publish_and_listen_usage_mistakes_exit_2(nats_server, arguments, message):
    result = manage(*arguments)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert message in line


# shell


def test_shell_has_services_call_and_publish(tools, received):
    name, _ = tools
    code = "\n".join(
        [
            f"print(services.{name}.echo({{'text': 'attribute'}}))",
            f"print(services['{name}'].echo({{'text': 'item'}}))",
            f"print(services.call('{name}.echo', {{'text': 'services.call'}}))",
            f"print(call('{name}.echo', {{'text': 'call'}}))",
            f"print('listed' if '{name}' in dir(services) else dir(services))",
            f"print(repr(services.{name}))",
            f"publish('{name}.events.shell', {{'n': 5}})",
        ]
    )
    result = manage("shell", "-c", code)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for text in ("attribute", "item", "services.call", "call"):
        assert f"{{'text': '{text}'}}" in lines
    assert "listed" in lines
    assert f"<service {name}: echo, find, sleep, whoami>" in lines
    # Published just before the process exited, and still delivered.
    wait_for(lambda: [n for n, _ in received] == [5])


# Finding the NATS server of `runsystem` (var/runsystem.json)


def manage_elsewhere(var_dir: Path, *arguments: str, **environment: str):
    """``manage.py`` in a second terminal: ``VAR_DIR`` as given, ``NATS_URL`` unset unless
    given, and the test's signing key, so that the services accept the calls it makes."""
    from django.conf import settings

    env = dict(os.environ, DJANGO_SETTINGS_MODULE="settings.settings", VAR_DIR=str(var_dir))
    env.pop("NATS_URL", None)
    env.pop("CLIFFRACER_TRANSPORT_URL", None)
    env.update(JWT_PRIVATE_KEY=settings.JWT_PRIVATE_KEY, **environment)
    return subprocess.run(
        [sys.executable, "manage.py", *arguments],
        cwd=project_root(),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def var_dir(tmp_path, settings) -> Path:
    """A ``VAR_DIR`` of the test's own, for this process and the tools it starts."""
    settings.VAR_DIR = tmp_path / "var"
    return settings.VAR_DIR


def write_stale_record(var_dir: Path, url: str) -> None:
    ended = subprocess.Popen(["true"])
    ended.wait()
    var_dir.mkdir(parents=True, exist_ok=True)
    (var_dir / "runsystem.json").write_text(
        json.dumps({"url": url, "pid": ended.pid, "started": "2026-01-01T00:00:00Z"})
    )


def test_the_tools_use_the_recorded_nats_server_when_nats_url_is_not_set(
    tools, nats_server, var_dir
):
    name, _ = tools
    write_record(nats_server.url)  # as runsystem does, from a process that runs
    used = f"Using {nats_server.url}: NATS_URL is not set, and `runsystem` (pid {os.getpid()})"

    called = manage_elsewhere(var_dir, "call", f"{name}.echo", '{"text": "found"}')
    assert called.returncode == 0, called.stderr
    assert json.loads(called.stdout) == {"text": "found"}
    assert used in called.stderr and str(var_dir / "runsystem.json") in called.stderr

    listed = manage_elsewhere(var_dir, "services")
    assert listed.returncode == 0, listed.stderr
    assert used in listed.stderr
    assert f"on {nats_server.url}" in listed.stdout
    assert service_block(listed.stdout, name)

    shell = manage_elsewhere(var_dir, "shell", "-c", f"print(call('{name}.echo', {{'text': 's'}}))")
    assert shell.returncode == 0, shell.stderr
    assert used in shell.stderr
    assert "{'text': 's'}" in shell.stdout.splitlines()


def test_nats_url_wins_over_the_record(tools, nats_server, var_dir):
    name, _ = tools
    write_record("nats://127.0.0.1:1")  # nothing answers there
    result = manage_elsewhere(
        var_dir, "call", f"{name}.echo", '{"text": "env"}', NATS_URL=nats_server.url
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"text": "env"}
    assert "Using" not in result.stderr


def test_a_record_whose_runsystem_is_gone_is_ignored(nats_server, var_dir):
    write_stale_record(var_dir, nats_server.url)
    result = manage_elsewhere(var_dir, "services", "--wait", "0.2")
    assert "Using" not in result.stderr
    # The configured default, whatever answers there (or nothing) on this machine.
    assert "nats://127.0.0.1:4222" in result.stdout + result.stderr
    assert nats_server.url not in result.stdout + result.stderr


def test_a_service_started_by_hand_joins_the_recorded_nats_server(
    runservice_process, nats_server, var_dir
):
    # NATS_URL empty, as unset in a second terminal; the record points at the suite's server.
    write_record(nats_server.url)
    process = runservice_process(
        "testservice", DJANGO_SETTINGS_MODULE="tests.settings", NATS_URL="", VAR_DIR=str(var_dir)
    )
    used = f"Using {nats_server.url}: NATS_URL is not set, and `runsystem` (pid {os.getpid()})"
    assert used in process.output()
    assert f"on {nats_server.url}" in process.output()
    listed = manage_elsewhere(var_dir, "services")
    assert listed.returncode == 0, listed.stderr
    assert service_block(listed.stdout, "testservice")
