"""What an access line costs a service: the batched access log against ``logger.info``.

Both write through the logging configuration of ``settings.LOGGING`` (the ``console`` handler,
Cliffracer's ``StreamHandler`` with the ``ConsoleFormatter`` and the ``ContextFilter``), its
stream pointed at ``/dev/null`` so that the terminal does not count. Per line:

- **batched**: ``AccessLog.add()`` on the hot path (what handling a message pays at once) and
  ``flush()`` (what it pays up to 50 ms later: records made from a template, formatted, one
  write per batch of ``access.BATCH``);
- **logger.info**: the line as the runner logged it before (``logger.info`` with the context
  filter reading contextvars, a record built by ``Logger.makeRecord``, a write and a flush).

CPU time of this process (``time.process_time``), alternating the two in rounds, so noise from
other work on the machine falls on both. Run: ``.venv/bin/python benchmarks/access_log.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings.settings")

import django  # noqa: E402

django.setup()

from cliffracer_core.core import access  # noqa: E402
from cliffracer_core.core.handling import Finished  # noqa: E402
from cliffracer_core.core.log import current_endpoint, current_service  # noqa: E402


def to_dev_null() -> None:
    """Point every handler of the access logger's chain at /dev/null."""
    sink = open(os.devnull, "w")  # noqa: SIM115  (open for the whole run)
    logger: logging.Logger | None = access.access_logger
    while logger is not None:
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler):
                handler.setStream(sink)
        logger = logger.parent if logger.propagate else None


def finished(index: int) -> Finished:
    return Finished(
        kind="rpc",
        service="orders",
        name="create_order",
        outcome="ok",
        started=time.perf_counter_ns(),
        correlation_id=f"{index:032x}",
        subject="orders.create_order",
    )


def batched(lines: int) -> tuple[float, float]:
    """CPU µs per line for ``add`` alone and for ``add`` plus its share of ``flush``."""
    # A loop that never runs: add() schedules the flush on it, and the benchmark flushes by
    # hand after each batch, as the timer or the batch size would.
    loop = asyncio.new_event_loop()
    log = access.AccessLog("instance-1")
    log.bind(loop)
    messages = [finished(index) for index in range(lines)]
    add_cpu = flush_cpu = 0.0
    for start in range(0, lines, access.BATCH - 1):
        chunk = messages[start : start + access.BATCH - 1]
        began = time.process_time()
        for message in chunk:
            log.add(message)
        added = time.process_time()
        log.flush()
        flushed = time.process_time()
        add_cpu += added - began
        flush_cpu += flushed - added
    loop.close()
    return add_cpu / lines * 1e6, (add_cpu + flush_cpu) / lines * 1e6


def logger_info(lines: int) -> float:
    """CPU µs per line written as the runner wrote it before the access log was batched."""
    logger = access.access_logger
    current_service.set(("orders", "instance-1"))
    current_endpoint.set("create_order")
    began = time.process_time()
    for index in range(lines):
        message = finished(index)
        elapsed = (time.perf_counter_ns() - message.started) / 1e6
        logger.info(
            "%s %s.%s %s in %.2f ms",
            message.kind,
            message.service,
            message.name,
            message.outcome,
            elapsed,
            extra={"duration_ms": round(elapsed, 3), "outcome": message.outcome},
        )
    return (time.process_time() - began) / lines * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=100_000, help="Lines per round and way.")
    parser.add_argument("--rounds", type=int, default=5)
    arguments = parser.parse_args()
    to_dev_null()
    hot, whole, old = [], [], []
    for _ in range(arguments.rounds):
        add, total = batched(arguments.lines)
        hot.append(add)
        whole.append(total)
        old.append(logger_info(arguments.lines))
    print(f"{arguments.lines:,} lines x {arguments.rounds} rounds, CPU µs per line (median):")
    print(f"  batched, on the hot path (add)        {statistics.median(hot):6.2f}")
    print(f"  batched, in all (add + flush)         {statistics.median(whole):6.2f}")
    print(f"  logger.info, written at once          {statistics.median(old):6.2f}   (baseline)")
    ratio = statistics.median(whole) / statistics.median(old)
    print(f"  batched / logger.info                 {ratio:6.3f}")


if __name__ == "__main__":
    main()
