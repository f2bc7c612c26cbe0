#!/usr/bin/env python
"""How fast ``manage.py loadtest`` sends, against a bare nats-py request loop, in one run.

Run from the repository root::

    .venv/bin/python benchmarks/loadtest_generator.py [--seconds 5] [--warmup 1] [--repeats 1]

It starts its own nats-server on a free port and one responder process that costs as little as
a responder can: raw nats-py answering ``rpc.bench.echo`` (and ``$SRV.INFO.bench``, so that
``loadtest`` finds the endpoint). Then, alternating on each repeat:

* A, the baseline: a bare nats-py loop, ``--concurrency`` coroutines each awaiting
  ``nc.request(subject, body)`` in turn, counting the replies after the warm-up;
* B: ``manage.py loadtest bench.echo -c <concurrency> --warmup ... --json``, the closed model
  with the same number of users, its rate as it reports it;
* C: ``manage.py loadtest bench.echo --rate <A's rate>``, the open model asked for what the bare
  loop achieved: the rate it reached, its p99 and how late it sent;
* D: B against ``bench.echo_public``, the same responder declared public in ``$SRV.INFO``, so
  loadtest sends no access token (only the correlation id and the deadline): what the ~1 KB
  ``Authorization`` header of B costs the generator, nats-server and the responder.

It prints each row's rate and the CPU seconds each process used (generator, responder,
nats-server), so the busiest process, the bottleneck, shows; and the ratio B/A with its bar
(>= 0.90). It is a measurement, not a test: it exits 0 whatever the figures.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import harness  # noqa: E402

SUBJECT = "rpc.bench.echo"
PUBLIC_SUBJECT = "rpc.bench.echo_public"
BODY = {"id": 1, "name": "widget-42", "values": [1.5, 2.25, 0.5]}
RATE_BAR = 0.90  # loadtest's closed model / the bare loop, requests per second


async def respond(url: str) -> None:
    """The cheapest responder: echo the body; answer $SRV.INFO as an ADR-32 service would."""
    import nats

    connection = await nats.connect(url, name="bench-responder")
    info = {
        "type": "io.nats.micro.v1.info_response",
        "name": "bench",
        "id": "bench-raw",
        "version": "0.0.0",
        "endpoints": [
            {"name": "echo", "subject": SUBJECT, "queue_group": "q", "metadata": {}},
            {
                "name": "echo_public",
                "subject": PUBLIC_SUBJECT,
                "queue_group": "q",
                "metadata": {"public": "true"},
            },
        ],
        "metadata": {},
    }

    async def on_request(message: Any) -> None:
        # Not message.respond(): nats-py's respond() sends the request's headers back.
        await connection.publish(message.reply, message.data)

    async def on_info(message: Any) -> None:
        await message.respond(json.dumps(info).encode())

    await connection.subscribe(SUBJECT, queue="q", cb=on_request)
    await connection.subscribe(PUBLIC_SUBJECT, queue="q", cb=on_request)
    await connection.subscribe("$SRV.INFO.bench", cb=on_info)
    await connection.flush()
    harness.announce_ready()
    await harness.wait_for_stop_signal()
    await connection.drain()


async def bare_loop(url: str, concurrency: int, warmup: float, seconds: float) -> dict[str, Any]:
    """A: ``concurrency`` coroutines awaiting nc.request in turn; replies counted in the window."""
    import nats

    connection = await nats.connect(url, name="bench-bare-loop")
    body = json.dumps(BODY).encode()
    start = time.perf_counter()
    window_start, window_end = start + warmup, start + warmup + seconds
    completed = errors = 0

    async def worker() -> None:
        nonlocal completed, errors
        while (now := time.perf_counter()) < window_end:
            try:
                await connection.request(SUBJECT, body, timeout=5)
            except Exception:  # noqa: BLE001  (counted, never hidden)
                errors += 1
                continue
            if now >= window_start and time.perf_counter() <= window_end:
                completed += 1

    cpu = time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu = time.process_time() - cpu
    await connection.close()
    return {"rate": completed / seconds, "errors": errors, "cpu": cpu}


def run_child(args: Any) -> int:
    harness.die_with_parent(args.parent_pid)
    url = os.environ["NATS_URL"]
    if args.role == "responder":
        asyncio.run(respond(url))
        return 0
    if args.role == "bare":
        result = asyncio.run(bare_loop(url, args.concurrency, args.warmup, args.seconds))
        print(json.dumps(result), flush=True)
        return 0
    raise SystemExit(f"unknown role {args.role}")


def finish_row(
    children: harness.Children, child: harness.Child, watched: dict[str, list[int]]
) -> tuple[str, dict[str, float | None]]:
    """Wait for a row's process to end; its output and the CPU the watched processes used."""
    before = harness.cpu_of(watched)
    try:
        output = child.finish(600)
    finally:
        after = harness.cpu_of(watched)
        children.stop(child)
    return output, harness.cpu_used(before, after)


def loadtest_row(
    children: harness.Children,
    watched: dict[str, list[int]],
    *options: str,
    endpoint: str = "bench.echo",
) -> tuple[dict[str, Any], dict[str, float | None]]:
    """Run ``manage.py loadtest`` to its end; its JSON and the CPU each process used."""
    command = [sys.executable, "manage.py", "loadtest", endpoint, "--json"]
    command += ["--body", json.dumps(BODY), *options]
    child = children.start("loadtest", command)
    output, cpu = finish_row(children, child, watched)
    if child.process.returncode not in (0, 1):
        raise RuntimeError(f"loadtest failed:\n{harness.tail(child.log)}")
    return json.loads(output), cpu


def bare_row(
    children: harness.Children, watched: dict[str, list[int]], args: Any
) -> tuple[dict[str, Any], dict[str, float | None]]:
    options = ["--concurrency", str(args.concurrency)]
    options += ["--warmup", str(args.warmup), "--seconds", str(args.seconds)]
    child = children.start_role("bare", *options)
    output, cpu = finish_row(children, child, watched)
    if child.process.returncode != 0:
        raise RuntimeError(f"the bare loop failed:\n{harness.tail(child.log)}")
    return json.loads(output.strip().splitlines()[-1]), cpu


def cpu_text(cpu: dict[str, float | None]) -> str:
    return "  ".join(
        f"{name} {'-' if value is None else f'{value:.2f}s'}" for name, value in cpu.items()
    )


def orchestrate(args: Any) -> int:
    from cliffracer_core.transports.nats.embedded import NatsServer

    harness.stop_on_signals()
    print(
        f"loadtest's generator against a bare nats-py loop: c={args.concurrency}, "
        f"{args.seconds:g} s after {args.warmup:g} s warm-up, {args.repeats} repeat(s); "
        f"nats-py {harness.version('nats-py')}, {os.cpu_count()} CPUs"
    )
    server = NatsServer(jetstream=False, start_new_session=True)
    ratios: list[float] = []
    public_ratios: list[float] = []
    with tempfile.TemporaryDirectory(prefix="cliffracer-bench-") as directory:
        environment = harness.environment(
            NATS_URL=server.url, DJANGO_SETTINGS_MODULE="settings.settings"
        )
        children = harness.Children(Path(directory), environment, Path(__file__).resolve())

        def measure() -> None:
            server.start()
            responder = children.start_role("responder")
            children.wait_ready(responder)
            watched = {"responder": [responder.pid], "nats-server": [server.pid]}
            window = ["--warmup", f"{args.warmup}s", "--duration", f"{args.seconds + args.warmup}s"]
            print(f"{'row':<34} {'req/s':>9} {'p99':>9} {'late':>8}   CPU seconds")
            for repeat in range(args.repeats):
                rates: dict[str, float] = {}
                for row in harness.alternate(("bare", "closed"), repeat):
                    prefix = harness.repeat_prefix(repeat, args.repeats)
                    if row == "bare":
                        result, cpu = bare_row(children, watched, args)
                        cpu["generator"] = result["cpu"]
                        rates["bare"] = result["rate"]
                        label, p99, late = "A bare nats-py loop", "-", "-"
                    else:
                        users = ["-c", str(args.concurrency)]
                        result, cpu = loadtest_row(children, watched, *users, *window)
                        rates["closed"] = result["achieved_rate"]
                        label = "B loadtest, closed model"
                        p99 = f"{result['latency']['p99'] * 1000:.2f}ms"
                        late = f"{result['max_send_lag'] * 1000:.1f}ms"
                        cpu["generator"] = result["generator_cpu_seconds"]
                    print(
                        f"{prefix}{label:<31} {rates[row]:>9,.0f} {p99:>9} {late:>8}   "
                        f"{cpu_text(cpu)}",
                        flush=True,
                    )
                asked = f"{rates['bare']:.0f}"
                result, cpu = loadtest_row(children, watched, "--rate", asked, *window)
                cpu["generator"] = result["generator_cpu_seconds"]
                print(
                    f"{harness.repeat_prefix(repeat, args.repeats)}"
                    f"{'C loadtest, open at A' + chr(39) + 's rate':<31} "
                    f"{result['achieved_rate']:>9,.0f} "
                    f"{result['latency']['p99'] * 1000:>7.2f}ms "
                    f"{result['max_send_lag'] * 1000:>6.1f}ms   {cpu_text(cpu)}",
                    flush=True,
                )
                ratios.append(rates["closed"] / rates["bare"])
                users = ["-c", str(args.concurrency)]
                result, cpu = loadtest_row(
                    children, watched, *users, *window, endpoint="bench.echo_public"
                )
                cpu["generator"] = result["generator_cpu_seconds"]
                print(
                    f"{harness.repeat_prefix(repeat, args.repeats)}"
                    f"{'D closed, public: no token':<31} "
                    f"{result['achieved_rate']:>9,.0f} "
                    f"{result['latency']['p99'] * 1000:>7.2f}ms "
                    f"{result['max_send_lag'] * 1000:>6.1f}ms   {cpu_text(cpu)}",
                    flush=True,
                )
                public_ratios.append(result["achieved_rate"] / rates["bare"])

        status = harness.supervise(measure, children, server)
        if status:
            return status
    print()
    print(
        harness.ratio_line(
            "loadtest closed model / bare loop, req/s:",
            sum(ratios) / len(ratios),
            RATE_BAR,
            per_repeat=ratios,
        )
    )
    print(
        harness.ratio_line(
            "loadtest closed model, no token (D) / bare loop, req/s:",
            sum(public_ratios) / len(public_ratios),
            None,
            per_repeat=public_ratios,
        )
    )
    return 0


def main() -> int:
    parser = harness.argument_parser(__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per row")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per row")
    parser.add_argument("--repeats", type=int, default=1, help="times to run every row")
    parser.add_argument("--concurrency", type=int, default=50, help="requests in flight")
    args = parser.parse_args()
    if args.role:
        return run_child(args)
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
