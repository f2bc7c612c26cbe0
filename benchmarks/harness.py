"""The child-process harness every benchmark shares.

A benchmark is one script that is also the entry point of its own child processes
(``--role ...``). Its orchestrator starts them through ``Children``, waits for each to print
``READY``, talks to them a line at a time, reads their CPU time from ``/proc``, alternates its
A/B runs, prints ratios with their bars, and stops every child however the run ends: Ctrl-C,
SIGTERM, or a child that failed. What stays in each script is what it measures.

The failures it handles: a terminal Ctrl-C reaching the children before the orchestrator could
stop them in order (each child has a session of its own); an orchestrator killed by SIGKILL
leaving children behind (each asks the kernel for SIGTERM when its parent dies, Linux); a child
whose pipe nobody reads filling it and stalling (a child that does not talk writes to its log).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

ROOT = Path(__file__).resolve().parent.parent
READY = "READY"


# In the child processes


def set_parent_death_signal() -> None:
    """Have the kernel send SIGTERM to this process when its parent dies (Linux)."""
    with contextlib.suppress(Exception):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def die_with_parent(parent_pid: int) -> None:
    """Make the kernel stop this child if the orchestrator dies, even by SIGKILL (Linux)."""
    set_parent_death_signal()
    if parent_pid and os.getppid() != parent_pid:  # the parent died before prctl took effect
        sys.exit(1)


def announce_ready() -> None:
    """Tell the orchestrator this child is up (``Children.wait_ready`` reads it)."""
    print(f"{READY} {os.getpid()}", flush=True)


async def wait_for_stop_signal() -> None:
    """Return on SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(number, stop.set)
    await stop.wait()


async def serve_service(service_class: type[Any], **options: Any) -> None:
    """Serve a Cliffracer service until SIGTERM or SIGINT, as ``runservice``'s ``serve()`` does
    (``options`` go to ``ServiceRunner``); announce it ready once it is subscribed."""
    from cliffracer_core.core.runner import ServiceRunner

    runner = ServiceRunner(service_class, **options)
    await runner.start(connect_attempts=20)
    announce_ready()
    try:
        await wait_for_stop_signal()
    finally:
        await runner.stop()


# Measuring processes from outside (Linux /proc; None elsewhere)


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time of a process, all threads."""
    if pid is None:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_of(watched: dict[str, list[int]]) -> dict[str, float | None]:
    """CPU seconds of each named group of processes (None if any of a group's is unknown)."""
    totals: dict[str, float | None] = {}
    for name, pids in watched.items():
        values = [cpu_seconds(pid) for pid in pids]
        totals[name] = None if None in values else sum(value or 0.0 for value in values)
    return totals


def cpu_used(
    before: dict[str, float | None], after: dict[str, float | None]
) -> dict[str, float | None]:
    """What each group used between two ``cpu_of`` readings."""
    return {
        name: None
        if before[name] is None or after.get(name) is None
        else after[name] - before[name]  # type: ignore[operator]
        for name in before
    }


def machine_jiffies() -> tuple[int, int] | None:
    """(busy, total) CPU time of the whole machine so far, in clock ticks."""
    try:
        values = [int(value) for value in Path("/proc/stat").read_text().split()[1:9]]
    except (OSError, ValueError):
        return None
    return sum(values) - values[3] - values[4], sum(values)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def tail(log: Path, lines: int = 30) -> str:
    """The last lines of a child's log, for an error message."""
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) or "(no output)"
    except OSError:
        return "(no log)"


def version(package: str) -> str:
    """An installed package's version, or ``?``."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "?"


# The orchestrator's children


class Child:
    """One process started by the orchestrator, with line-based stdin and stdout."""

    def __init__(self, name: str, process: subprocess.Popen[bytes], log: Path) -> None:
        self.name = name
        self.process = process
        self.log = log
        self.buffer = b""

    @property
    def pid(self) -> int:
        return self.process.pid

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(line.encode() + b"\n")
            self.process.stdin.flush()
        except OSError:
            raise RuntimeError(f"{self.name} has exited:\n{tail(self.log)}") from None

    def read_line(self, timeout: float) -> str:
        assert self.process.stdout is not None
        descriptor = self.process.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(
                    f"{self.name} did not answer within {timeout:g} s:\n{tail(self.log)}"
                )
            readable, _, _ = select.select([descriptor], [], [], min(remaining, 0.5))
            if readable:
                chunk = os.read(descriptor, 1 << 16)
                if not chunk:
                    raise RuntimeError(f"{self.name} has exited:\n{tail(self.log)}")
                self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode()

    def expect(self, prefix: str, timeout: float) -> str:
        """The rest of the next line that starts with ``prefix`` (other lines are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.read_line(max(0.01, deadline - time.monotonic()))
            if line.startswith(prefix):
                return line[len(prefix) :]

    def finish(self, timeout: float) -> str:
        """Wait for the child to exit; all it printed that was not read yet."""
        try:
            output, _ = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(
                f"{self.name} did not finish within {timeout:g} s:\n{tail(self.log)}"
            ) from None
        return (self.buffer + (output or b"")).decode(errors="replace")


class Children:
    """Every process the orchestrator starts; ``stop_all`` stops those still running.

    ``script`` is the benchmark's own file, which ``start_role`` runs with ``--role``.
    """

    def __init__(
        self,
        log_dir: Path,
        environment: dict[str, str],
        script: Path,
        *,
        die_with_orchestrator: bool = False,
    ) -> None:
        self.log_dir = log_dir
        self.environment = environment
        self.script = script
        # For children that do not call die_with_parent themselves (daphne, a relay): set in
        # the forked child before it runs. Off by default: a fork of a process with threads
        # must not load a library before exec.
        self.die_with_orchestrator = die_with_orchestrator
        self.children: list[Child] = []
        self.started = 0

    def start(
        self,
        name: str,
        command: list[str],
        *,
        talks: bool = True,
        environment: dict[str, str | None] | None = None,
    ) -> Child:
        """Start ``command``; unless it ``talks`` (reads and writes lines), all goes to its log.

        ``environment`` adds to the orchestrator's; a value of None removes the variable.
        """
        self.started += 1
        log = self.log_dir / f"{name}-{self.started}.log"
        variables = dict(self.environment)
        for key, value in (environment or {}).items():
            if value is None:
                variables.pop(key, None)
            else:
                variables[key] = value
        with log.open("w") as output:
            process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=variables,
                stdin=subprocess.PIPE if talks else subprocess.DEVNULL,
                stdout=subprocess.PIPE if talks else output,
                stderr=output,
                # A terminal Ctrl-C reaches only the orchestrator, which then stops the children.
                start_new_session=True,
                preexec_fn=set_parent_death_signal if self.die_with_orchestrator else None,
            )
        child = Child(name, process, log)
        self.children.append(child)
        return child

    def start_role(
        self, role: str, *options: str, environment: dict[str, str | None] | None = None
    ) -> Child:
        """Start the benchmark's own script as the child ``role``."""
        command = [sys.executable, str(self.script), "--role", role]
        command += ["--parent-pid", str(os.getpid()), *options]
        return self.start(role, command, environment=environment)

    def wait_ready(self, child: Child, timeout: float = 30) -> None:
        child.expect(READY, timeout)

    def result(
        self,
        role: str,
        *options: str,
        environment: dict[str, str | None] | None = None,
        timeout: float = 600,
    ) -> dict[str, Any]:
        """Run ``role`` to its end; the JSON object of its last line."""
        child = self.start_role(role, *options, environment=environment)
        try:
            output = child.finish(timeout)
        finally:
            self.stop(child)
        if child.process.returncode != 0 or not output.strip():
            raise RuntimeError(f"{role} failed:\n{tail(child.log)}")
        return json.loads(output.strip().splitlines()[-1])

    def stop(self, child: Child, timeout: float = 10) -> None:
        process = child.process
        if process.poll() is None:
            with contextlib.suppress(OSError):
                if process.stdin is not None:
                    process.stdin.close()
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for stream in (process.stdin, process.stdout):
            with contextlib.suppress(OSError):
                if stream is not None:
                    stream.close()
        with contextlib.suppress(ValueError):
            self.children.remove(child)

    def stop_all(self) -> None:
        for child in reversed(list(self.children)):
            self.stop(child, timeout=5)


# The orchestrator's run


def argument_parser(doc: str) -> argparse.ArgumentParser:
    """A benchmark's parser, described by its docstring's first paragraph, with the hidden
    options that make it one of its own children (``--role``, ``--parent-pid``)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("--parent-pid", type=int, default=0, help=argparse.SUPPRESS)
    return parser


class Stoppable(Protocol):
    def stop(self) -> None: ...


def environment(**values: str) -> dict[str, str]:
    """The children's environment: the orchestrator's, unbuffered output, and ``values``."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", **values}


def stop_on_signals() -> None:
    """Make SIGTERM and Ctrl-C stop the orchestrator (as KeyboardInterrupt) and so the run."""

    def on_sigterm(number: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    # Ctrl-C stops the run even when a launching shell set SIGINT to be ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)


def supervise(work: Callable[[], None], children: Children, *servers: Stoppable) -> int:
    """Run ``work``, then stop every child and ``servers`` however it ended.

    0 when it finished; 130 on Ctrl-C or SIGTERM; 1 when it raised RuntimeError (nothing was
    measured: a failure of the tool, not a result).
    """
    try:
        work()
    except KeyboardInterrupt:
        print("\nInterrupted; stopping every process.", file=sys.stderr)
        return 130
    except RuntimeError as error:
        print(f"\nBenchmark failed: {error}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        children.stop_all()
        for server in servers:
            server.stop()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return 0


def alternate(items: Sequence[Any], repeat: int) -> list[Any]:
    """The run order of a repeat: as given on even repeats, reversed on odd ones, so that
    machine noise hits every side alike."""
    return list(items) if repeat % 2 == 0 else list(reversed(items))


def repeat_prefix(repeat: int, repeats: int) -> str:
    """``#2 `` before a row of the second repeat, when there are several."""
    return f"#{repeat + 1} " if repeats > 1 else ""


def verdict(value: float, bar: float, *, at_most: bool = False) -> str:
    passed = value <= bar if at_most else value >= bar
    return "PASS" if passed else "MISS"


def ratio_line(
    label: str,
    value: float,
    bar: float | None,
    *,
    at_most: bool = False,
    per_repeat: Sequence[float] = (),
) -> str:
    """``label 0.812 (bar >= 0.80)  PASS   per repeat: 0.79, 0.83``."""
    if bar is None:
        judged = "(no bar)"
    else:
        judged = (
            f"(bar {'<=' if at_most else '>='} {bar:.2f})  {verdict(value, bar, at_most=at_most)}"
        )
    each = ", ".join(f"{ratio:.2f}" for ratio in per_repeat)
    return f"{label} {value:.3f} {judged}" + (
        f"   per repeat: {each}" if len(per_repeat) > 1 else ""
    )
