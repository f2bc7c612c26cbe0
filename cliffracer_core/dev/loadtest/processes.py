"""``--processes N``: one run sent by N processes, measured as one.

Python sends from one CPU; a run that needs more load than one process makes starts N-1 more
copies of the same command, each with ``--share I/N``: each resolves the targets, says
``READY``, waits for the start time the first process gives on its standard input, sends its
share of the plan (every N-th planned request, or every N-th user) and prints what it measured
as JSON. The first process merges the parts (histograms add up exactly) into one summary.
A copy that fails ends the run with its error; its own standard error goes to the terminal.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from typing import Any

READY = "READY"
# How long a copy may take to start Django, connect and find its targets.
START_WAIT = 60.0


class WorkerError(RuntimeError):
    """A copy of the command failed or did not answer."""


def parse_share(text: str) -> tuple[int, int]:
    """``"2/4"`` → (2, 4); ValueError for anything else."""
    share, _, shares = text.partition("/")
    index, count = int(share), int(shares)
    if not 0 <= index < count:
        raise ValueError(f"--share {text!r} must read I/N with 0 <= I < N.")
    return index, count


class Workers:
    """The N-1 copies of the command that send the other shares of the run."""

    def __init__(self, arguments: list[str], count: int) -> None:
        self.count = count
        self.processes = [
            subprocess.Popen(
                [sys.executable, *arguments, "--share", f"{index}/{count}"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=os.environ.copy(),
            )
            for index in range(1, count)
        ]

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_WAIT
        for number, process in enumerate(self.processes, 1):
            assert process.stdout is not None
            while True:
                remaining = deadline - time.monotonic()
                readable, _, _ = select.select([process.stdout], [], [], max(0.0, remaining))
                if not readable:
                    raise WorkerError(f"process {number + 1} did not start in {START_WAIT:g} s.")
                line = process.stdout.readline().decode(errors="replace").strip()
                if line == READY:
                    break
                if not line and process.poll() is not None:
                    raise WorkerError(
                        f"process {number + 1} exited with code {process.returncode}."
                    )

    def start(self, at: float) -> None:
        for process in self.processes:
            assert process.stdin is not None
            process.stdin.write(f"{at!r}\n".encode())
            process.stdin.flush()

    def collect(self, timeout: float) -> list[dict[str, Any]]:
        parts = []
        for number, process in enumerate(self.processes, 1):
            try:
                output, _ = process.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                raise WorkerError(f"process {number + 1} did not finish.") from None
            lines = output.decode(errors="replace").strip().splitlines()
            if process.returncode != 0 or not lines:
                raise WorkerError(f"process {number + 1} exited with code {process.returncode}.")
            parts.append(json.loads(lines[-1]))
        return parts

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
