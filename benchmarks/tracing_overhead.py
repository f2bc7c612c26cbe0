#!/usr/bin/env python
"""What OpenTelemetry tracing costs an RPC round trip: tracing off versus on, in one run.

Run from the repository root::

    .venv/bin/python benchmarks/tracing_overhead.py [--seconds 5] [--warmup 1] [--repeats 1]

It starts its own nats-server on a free port, a receiver of OTLP/HTTP spans in its own process
(it decodes each ``ExportTraceServiceRequest`` and counts the spans, as a collector would take
them), and two copies of the echo service (``benchmarks/echo/service.py``), each in its own
process for the whole run, served by ``ServiceRunner`` as ``runservice`` serves it:

* ``off``: the service ``plain``, started without any ``OTEL_*`` variable (tracing off, the
  default), called by a Cliffracer caller (``acall``) without them either;
* ``on``: the service ``traced``, started as ``runservice`` starts a service when
  ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set (``tracing.configure``, then ``enable_tracing``):
  sampling 1.0 (``OTEL_TRACES_SAMPLER=always_on``), the SDK's ``BatchSpanProcessor`` and
  ``OTLPSpanExporter`` posting to the receiver; its caller traces too (a client span per call,
  a server span per request handled).

Each side runs at concurrency 1 and 50: a requester process keeps that many calls in flight,
warms up, then records every call for a fixed time. Runs alternate (off on on off ...) so
that machine noise hits both sides. It prints requests/s, p50 and p99 latency, CPU time per
request of the caller and the service, the spans received, and the ratios on/off. It is a
measurement, not a test: it exits 0 whatever the figures.

The same file is the entry point of the child processes (``--role ...``); they are internal.
"""

from __future__ import annotations

import argparse
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

from benchmarks import harness, rpc_overhead  # noqa: E402
from benchmarks.echo.service import EchoService  # noqa: E402

HIGH_CONCURRENCY = rpc_overhead.HIGH_CONCURRENCY
# The BatchSpanProcessor's default schedule delay (OTEL_BSP_SCHEDULE_DELAY, 5 s), and a margin.
BATCH_DELAY = 5.5
SIDES = ("off", "on")
SERVICES = {"off": "plain", "on": "traced"}


class PlainService(EchoService):
    name = SERVICES["off"]


class TracedService(EchoService):
    name = SERVICES["on"]


def tracing_environment(endpoint: str) -> dict[str, str | None]:
    """The ``OTEL_*`` variables of the ``on`` side: every call sampled, the batch exporter."""
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_TRACES_SAMPLER": "always_on",
        "OTEL_SERVICE_NAME": None,
    }


# Child processes


def serve_spans() -> None:
    """The receiver: a real HTTP server that decodes what the OTLP exporter posts."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
        ExportTraceServiceResponse,
    )

    reply = ExportTraceServiceResponse().SerializeToString()
    counted = {"spans": 0}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            request = ExportTraceServiceRequest.FromString(body)
            spans = sum(
                len(scope.spans)
                for resource in request.resource_spans
                for scope in resource.scope_spans
            )
            with lock:
                counted["spans"] += spans
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *arguments: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"ENDPOINT http://127.0.0.1:{server.server_address[1]}", flush=True)
    harness.announce_ready()
    # Each line on stdin asks for the count so far.
    for _ in sys.stdin:
        with lock:
            print(f"SPANS {counted['spans']}", flush=True)


async def serve_traced_or_not(service_class: type[Any]) -> None:
    """Serve ``service_class`` as ``runservice`` does, tracing when the environment asks."""
    from cliffracer_core.core import tracing
    from cliffracer_core.core.runner import ServiceRunner

    runner = ServiceRunner(service_class)
    if tracing.configure(runner.name):
        runner.enable_tracing()
    await runner.start(connect_attempts=20)
    harness.announce_ready()
    try:
        await harness.wait_for_stop_signal()
    finally:
        await runner.stop()
        tracing.shutdown()


def run_child(args: argparse.Namespace) -> int:
    harness.die_with_parent(args.parent_pid)
    if args.role == "receiver":
        serve_spans()
        return 0
    rpc_overhead._setup_django()
    from cliffracer_core.core import tracing

    if args.role == "service":
        service_class = TracedService if args.side == "on" else PlainService
        asyncio.run(serve_traced_or_not(service_class))
        return 0
    # A requester: the caller traces when its environment asks, as any process does.
    tracing.configure("caller")
    watched = {"caller": os.getpid(), "responder": args.responder_pid, "nats": args.nats_pid}
    result = asyncio.run(
        rpc_overhead.load(
            "cliffracer",
            f"{SERVICES[args.side]}.echo",
            args.concurrency,
            args.warmup,
            args.seconds,
            watched,
        )
    )
    # Its last spans are sent before it reports (outside the measured window).
    tracing.shutdown()
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


# The orchestrator


def orchestrate(args: argparse.Namespace) -> int:
    from cliffracer_core.transports.nats.embedded import NatsServer

    harness.stop_on_signals()
    print(rpc_overhead.versions())
    print(
        f"{args.seconds:g} s per run after {args.warmup:g} s warm-up, {args.repeats} repeat(s), "
        f"concurrency 1 and {HIGH_CONCURRENCY}; on: sampling always_on, BatchSpanProcessor, "
        "OTLP/HTTP to a local receiver"
    )
    rows = {side: rpc_overhead.Row(side, f"tracing {side}", "cliffracer", side) for side in SIDES}
    cells = {
        (side, concurrency): rpc_overhead.Figures(rows[side], concurrency)
        for concurrency in (1, HIGH_CONCURRENCY)
        for side in SIDES
    }
    spans_seen: dict[str, int] = {"on": 0, "off": 0}
    server = NatsServer(jetstream=False, start_new_session=True)
    with tempfile.TemporaryDirectory(prefix="cliffracer-bench-") as directory:
        environment = harness.environment(
            NATS_URL=server.url,
            DJANGO_SETTINGS_MODULE="settings.settings",
            LOG_LEVEL="WARNING",
            BENCH_AUTH="0",
        )
        # Whatever the shell says, the "off" side has no OTEL_* variable.
        for name in list(environment):
            if name.startswith("OTEL_"):
                del environment[name]
        children = harness.Children(Path(directory), environment, Path(__file__).resolve())

        def measure() -> None:
            server.start()
            receiver = children.start_role("receiver")
            endpoint = receiver.expect("ENDPOINT ", 30)
            children.wait_ready(receiver)
            traced = tracing_environment(endpoint)
            services = {
                "off": children.start_role("service", "--side", "off"),
                "on": children.start_role("service", "--side", "on", environment=traced),
            }
            for child in services.values():
                children.wait_ready(child)
            print(f"nats-server pid {server.pid}; span receiver at {endpoint}\n")
            print(rpc_overhead.SUBHEADER)
            print(rpc_overhead.HEADER)
            for repeat in range(args.repeats):
                for concurrency in (1, HIGH_CONCURRENCY):
                    for side in harness.alternate(SIDES, repeat + concurrency):
                        receiver.send("count")
                        before = int(receiver.expect("SPANS ", 10))
                        options = ["--side", side, "--responder-pid", str(services[side].pid)]
                        options += ["--nats-pid", str(server.pid)]
                        options += ["--concurrency", str(concurrency)]
                        options += ["--seconds", str(args.seconds), "--warmup", str(args.warmup)]
                        result = children.result(
                            "requester",
                            *options,
                            environment=traced if side == "on" else None,
                            timeout=args.warmup + args.seconds + 60,
                        )
                        single = rpc_overhead.Figures(rows[side], concurrency)
                        single.add(result)
                        cells[side, concurrency].add(result)
                        if side == "on":
                            # The service's last batch leaves within the batch processor's
                            # delay: wait for it, so that it is counted here and never
                            # competes with an "off" run for the CPU.
                            time.sleep(BATCH_DELAY)
                        receiver.send("count")
                        spans_seen[side] += int(receiver.expect("SPANS ", 10)) - before
                        print(
                            harness.repeat_prefix(repeat, args.repeats)
                            + rpc_overhead.format_row(single),
                            flush=True,
                        )

        status = harness.supervise(measure, children, server)
        if status:
            return status

    if args.repeats > 1:
        print("\nAll repeats pooled:")
        print(rpc_overhead.HEADER)
        for figures in cells.values():
            print(rpc_overhead.format_row(figures))
    print(
        f"\nSpans received: tracing on {spans_seen['on']:,}, tracing off {spans_seen['off']:,} "
        "(on: two per call, the caller's client span and the service's server span, "
        "warm-up included)"
    )
    for concurrency in (1, HIGH_CONCURRENCY):
        off, on = cells["off", concurrency], cells["on", concurrency]
        print(
            f"c={concurrency:<3} off {off.throughput:>8,.0f} req/s, on {on.throughput:>8,.0f} "
            f"req/s: on/off throughput {on.throughput / off.throughput:.3f}, "
            f"p50 latency {on.percentile_us(0.5) / off.percentile_us(0.5):.3f}"
        )
        for name in ("caller", "responder"):
            before, after = off.cpu_per_request_us(name), on.cpu_per_request_us(name)
            if before is not None and after is not None:
                print(
                    f"      {name} CPU per request: off {before:,.0f} µs, on {after:,.0f} µs "
                    f"(+{after - before:,.0f} µs)"
                )
    return 0


def main() -> int:
    parser = harness.argument_parser(__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per run")
    parser.add_argument("--repeats", type=int, default=1, help="times to run every cell")
    parser.add_argument("--side", choices=SIDES, default="off", help=argparse.SUPPRESS)
    parser.add_argument("--responder-pid", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--nats-pid", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        return run_child(args)
    if args.seconds <= 0 or args.warmup < 0 or args.repeats < 1:
        parser.error("--seconds must be positive, --warmup non-negative, --repeats at least 1.")
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
