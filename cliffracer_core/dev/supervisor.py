"""Run service instances as child processes: restart crashed ones, drain them all on stop.

Each instance is one ``manage.py runservice <label>`` process in a session of its own, so a
terminal's Ctrl-C reaches only the supervisor, which then stops the instances itself. A crashed
instance (non-zero exit, or killed by a signal, while nobody asked it to stop) is started again
after an exponential backoff; one that keeps crashing is marked failed with its last error while
the others go on. Every line a child writes is copied to the supervisor's own output, prefixed
with the instance's name (``orders.1 | ...``).

On a code change (``Reload``) it drains and starts again the instances of the services the
change concerns, starts the instances of a service that has appeared and stops those of one
that is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import enum
import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

# A service logs a line containing this once it has subscribed and serves (runner.py).
READY_MARKER = " serving "
# Longest line a child may write; a longer one is dropped with a note.
LINE_LIMIT = 1024 * 1024
# Lines of a child's output kept to find its last error in.
TAIL_LINES = 50
# How long after a child exits its output pipes may stay open (a grandchild may hold them).
PIPE_DRAIN_TIMEOUT = 2.0
# Seconds added to the grace period before an instance that does not stop is killed.
KILL_MARGIN = 5.0

PR_SET_PDEATHSIG = 1


class State(enum.StrEnum):
    """Where an instance is in its life."""

    STARTING = "starting"  # its process runs; the service does not serve yet
    RUNNING = "running"  # the service logged that it serves
    STOPPING = "stopping"  # asked to drain (a stop or a reload)
    BACKOFF = "backoff"  # it crashed; it is started again after a delay
    FAILED = "failed"  # it crashed too often in a row; not started again (until a reload)
    STOPPED = "stopped"  # it exited on its own with code 0, or the supervisor stopped it


@dataclass
class Instance:
    """One process of one service, and what the supervisor knows of it."""

    label: str
    number: int
    state: State = State.STARTING
    process: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    restarts: int = 0  # starts after a crash
    crashes_in_a_row: int = 0
    retry_in: float = 0.0
    last_error: str = ""
    reload_requested: bool = False
    removed: bool = False  # its service is gone: stopped for good
    kill_timer: asyncio.TimerHandle | None = None
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def name(self) -> str:
        return f"{self.label}.{self.number}"

    @property
    def pid(self) -> int | None:
        if self.process is None or self.process.returncode is not None:
            return None
        return self.process.pid


@dataclass
class Reload:
    """What a code change asks of the supervisor."""

    changed: str  # the changed files, as the supervisor names them
    restart: set[str] | None = None  # services whose instances restart; None: every one
    services: list[str] | None = None  # the services that should run now; None: the same
    note: str = ""  # said before the rest (a listing of the services that failed, say)


def backoff_delay(crashes_in_a_row: int, *, initial: float, maximum: float) -> float:
    """Seconds to wait before the next start: ``initial`` doubled per crash, capped."""
    return min(initial * 2 ** max(crashes_in_a_row - 1, 0), maximum)


def describe_exit(returncode: int, output: Sequence[str]) -> str:
    """Say how a process ended: its exit code or signal and, if found, the error it printed."""
    if returncode < 0:
        try:
            how = f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            how = f"killed by signal {-returncode}"
    else:
        how = f"exit code {returncode}"
    error = last_error_line(output)
    return f"{how}: {error}" if error else how


def last_error_line(output: Sequence[str]) -> str:
    """Find the exception line of the last traceback in ``output``, or a ``name: message`` line.

    Python ends a traceback with the exception at the start of a line, after indented frames;
    Django's management commands print ``CommandError: ...`` or ``runservice: ...`` instead.
    """
    lines = list(output)
    for index in range(len(lines) - 1, -1, -1):
        if lines[index].startswith("Traceback (most recent call last)"):
            for line in lines[index + 1 :]:
                if line and not line[0].isspace():
                    return line.strip()[:300]
            break
    for line in reversed(lines):
        head = line.split(": ", 1)[0]
        if ": " in line and head and not any(character.isspace() for character in head):
            return line.strip()[:300]
    return ""


def names_of(instances: Sequence[Instance]) -> str:
    return ", ".join(instance.name for instance in instances)


def describe_changes(changed: set[str]) -> str:
    """Name the first few changed files."""
    shown = sorted(changed)
    return ", ".join(shown[:3]) + (f" and {len(shown) - 3} more" if len(shown) > 3 else "")


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def die_with_parent() -> Callable[[], None] | None:
    """Return a pre-exec hook that makes a child get SIGTERM when its parent dies (Linux).

    A supervisor killed with SIGKILL cannot drain its children; with this they drain
    themselves instead of serving on as orphans.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def hook() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the hook ran
            os.kill(os.getpid(), signal.SIGTERM)

    return hook


async def start_child(
    arguments: Sequence[str],
    *,
    environment: dict[str, str] | None = None,
    directory: Path | None = None,
    capture: bool = False,
) -> asyncio.subprocess.Process:
    """Start a child in a session of its own that gets SIGTERM if this process dies."""
    pipe = subprocess.PIPE if capture else None
    return await asyncio.create_subprocess_exec(
        *arguments,
        stdin=subprocess.DEVNULL,
        stdout=pipe,
        stderr=pipe,
        env=environment,
        cwd=directory,
        start_new_session=True,
        preexec_fn=die_with_parent(),
        limit=LINE_LIMIT,
    )


def signal_child(process: asyncio.subprocess.Process, number: int) -> None:
    """Send a signal to a child's process group (the child leads it), if it still runs."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, number)


class Supervisor:
    """Keep service instances running until SIGTERM or SIGINT, then drain them and return.

    ``command(label)`` gives the arguments that start one instance of a service. ``changes``,
    when given, yields a ``Reload`` whenever the code changed: the instances it concerns are
    drained and started again (failed ones too), and services it names that are not running
    get ``instances`` instances each.
    """

    def __init__(
        self,
        services: Sequence[tuple[str, int]],
        *,
        command: Callable[[str], list[str]],
        environment: dict[str, str] | None = None,
        directory: Path | None = None,
        grace_period: float,
        max_restarts: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        stable_after: float = 60.0,
        status_interval: float = 0.0,
        changes: Callable[[asyncio.Event], AsyncIterator[Reload]] | None = None,
        instances: int = 1,
        stdout: TextIO = sys.stdout,
        stderr: TextIO = sys.stderr,
    ) -> None:
        self.instances = [
            Instance(label, number) for label, count in services for number in range(1, count + 1)
        ]
        self.command = command
        self.environment = environment
        self.directory = directory
        self.grace_period = grace_period
        self.max_restarts = max_restarts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.stable_after = stable_after
        self.status_interval = status_interval
        self.changes = changes
        self.instances_per_service = instances
        self.stdout = stdout
        self.stderr = stderr
        self.width = max([len("supervisor"), *(len(i.name) for i in self.instances)])
        self.stopping = False
        self.stop_requested = asyncio.Event()
        self.kill_requested = asyncio.Event()
        self.ended = asyncio.Event()  # tells the code watcher to stop
        self.keepers: list[asyncio.Task[None]] = []
        # Set when every keeper has ended (only without reload), or when one raised.
        self.keepers_ended = asyncio.Event()

    # Output

    def write(self, stream: TextIO, source: str, text: str) -> None:
        stream.write(f"{source:<{self.width}} | {text}\n")
        stream.flush()

    def say(self, text: str) -> None:
        self.write(self.stdout, "supervisor", text)

    def status_line(self, instance: Instance) -> str:
        name_width = max([len(instance.name), *(len(i.name) for i in self.instances)])
        pid = instance.pid
        uptime = format_duration(time.monotonic() - instance.started_at) if pid is not None else "-"
        line = (
            f"{instance.name:<{name_width}}  {instance.state.value:<8}  pid={pid or '-':<7}  "
            f"restarts={instance.restarts}  uptime={uptime}"
        )
        if instance.state is State.BACKOFF:
            line += f"  retry in {instance.retry_in:g}s"
        if instance.last_error and instance.state in (State.BACKOFF, State.FAILED):
            line += f"  last error: {instance.last_error}"
        return line

    def print_status(self) -> None:
        for instance in self.instances:
            self.say(self.status_line(instance))

    def set_state(self, instance: Instance, state: State) -> None:
        instance.state = state
        self.say(self.status_line(instance))

    # Running

    async def run(self) -> int:
        """Supervise until stopped; return the exit code (1 if it ended because all failed)."""
        loop = asyncio.get_running_loop()
        for number in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(number, self.request_stop)
        loop.add_signal_handler(signal.SIGUSR1, self.print_status)
        if self.instances:
            names = ", ".join(instance.name for instance in self.instances)
            plural = "" if len(self.instances) == 1 else "s"
            self.say(f"Starting {len(self.instances)} service instance{plural}: {names}.")
        else:
            self.say("No service to run yet; a service app added later starts on its own.")
        helpers = []
        if self.changes is not None:
            helpers.append(asyncio.create_task(self.reload_on_changes()))
        if self.status_interval > 0:
            helpers.append(asyncio.create_task(self.print_status_every(self.status_interval)))
        for instance in self.instances:
            self.start_keeper(instance)
        ended = asyncio.create_task(self.keepers_ended.wait())
        stop = asyncio.create_task(self.stop_requested.wait())
        try:
            await asyncio.wait([ended, stop], return_when=asyncio.FIRST_COMPLETED)
        finally:
            await self.stop_all()
            self.ended.set()
            for task in [*helpers, ended, stop]:
                task.cancel()
            await asyncio.gather(*helpers, ended, stop, return_exceptions=True)
            for number in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
                loop.remove_signal_handler(number)
        for task in self.keepers:
            if task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        if self.stop_requested.is_set():
            self.say("Stopped.")
            return 0
        failed = [i.name for i in self.instances if i.state is State.FAILED]
        if failed:
            self.say(f"Every instance has ended; failed: {', '.join(failed)}.")
            return 1
        self.say("Every instance has ended.")
        return 0

    def request_stop(self) -> None:
        if self.stop_requested.is_set():
            self.say("Second stop signal: killing every instance now.")
            self.kill_requested.set()
        self.stop_requested.set()

    def start_keeper(self, instance: Instance) -> None:
        task = asyncio.create_task(self.keep_running(instance))
        task.add_done_callback(self.keeper_done)
        self.keepers.append(task)

    def keeper_done(self, task: asyncio.Task[None]) -> None:
        raised = not task.cancelled() and task.exception() is not None
        all_done = all(keeper.done() for keeper in self.keepers)
        if raised or (all_done and self.changes is None):
            self.keepers_ended.set()

    async def stop_all(self) -> None:
        """Drain every instance; each is killed if it has not stopped after the grace period."""
        self.stopping = True
        running = [instance for instance in self.instances if instance.pid is not None]
        if running:
            plural = "" if len(running) == 1 else "s"
            self.say(f"Stopping: draining {len(running)} instance{plural} (SIGTERM).")
        for instance in self.instances:
            self.drain(instance)
            instance.wake.set()
        ended = asyncio.ensure_future(asyncio.gather(*self.keepers, return_exceptions=True))
        kill = asyncio.create_task(self.kill_requested.wait())
        await asyncio.wait([ended, kill], return_when=asyncio.FIRST_COMPLETED)
        kill.cancel()
        if not ended.done():
            for instance in self.instances:
                if instance.process is not None:
                    signal_child(instance.process, signal.SIGKILL)
        await ended

    def drain(self, instance: Instance) -> None:
        """Ask an instance's process to stop gracefully (runservice drains on SIGTERM).

        If it still runs after the grace period and a margin, it is killed.
        """
        process = instance.process
        if process is None or process.returncode is not None or instance.kill_timer is not None:
            return
        self.set_state(instance, State.STOPPING)
        signal_child(process, signal.SIGTERM)
        instance.kill_timer = asyncio.get_running_loop().call_later(
            self.grace_period + KILL_MARGIN, self.kill_late, instance, process
        )

    def kill_late(self, instance: Instance, process: asyncio.subprocess.Process) -> None:
        if process.returncode is None:
            self.write(
                self.stderr,
                "supervisor",
                f"{instance.name} did not stop within {self.grace_period + KILL_MARGIN:g}s; "
                "killing it.",
            )
            signal_child(process, signal.SIGKILL)

    async def keep_running(self, instance: Instance) -> None:
        """Start an instance again and again: after a crash (with backoff) or a reload; forget
        it once its service is gone."""
        await self.run_repeatedly(instance)
        if instance.removed:
            if instance.state is not State.STOPPED:
                self.set_state(instance, State.STOPPED)
            self.instances.remove(instance)

    async def run_repeatedly(self, instance: Instance) -> None:
        while not self.stopping and not instance.removed:
            returncode, ran = await self.run_once(instance)
            if self.stopping or instance.removed:
                break
            if instance.reload_requested:
                continue
            if returncode == 0:
                instance.last_error = ""
                self.set_state(instance, State.STOPPED)
                if not await self.wait_for_reload(instance):
                    return
                continue
            if ran >= self.stable_after:
                instance.crashes_in_a_row = 0
            instance.crashes_in_a_row += 1
            instance.last_error = describe_exit(returncode, instance.tail)
            if instance.crashes_in_a_row > self.max_restarts:
                self.set_state(instance, State.FAILED)
                if not await self.wait_for_reload(instance):
                    return
                continue
            instance.retry_in = backoff_delay(
                instance.crashes_in_a_row, initial=self.backoff, maximum=self.max_backoff
            )
            self.set_state(instance, State.BACKOFF)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(instance.wake.wait(), instance.retry_in)
            if self.stopping or instance.removed:
                break
            if not instance.reload_requested:
                instance.restarts += 1
        if instance.state is not State.FAILED:
            self.set_state(instance, State.STOPPED)

    async def wait_for_reload(self, instance: Instance) -> bool:
        """Wait, after an instance ended for good, for a reload; False if there will be none."""
        if self.changes is None:
            return False
        await instance.wake.wait()
        return not self.stopping and not instance.removed

    async def run_once(self, instance: Instance) -> tuple[int, float]:
        """Start one process of the instance, copy its output, return its exit code and run time."""
        instance.wake.clear()
        if instance.reload_requested:
            instance.reload_requested = False
            instance.crashes_in_a_row = 0
        instance.tail.clear()
        instance.started_at = time.monotonic()
        try:
            process = await start_child(
                self.command(instance.label),
                environment=self.environment,
                directory=self.directory,
                capture=True,
            )
        except OSError as error:
            instance.tail.append(f"{type(error).__name__}: {error}")
            return 127, 0.0
        instance.process = process
        self.set_state(instance, State.STARTING)
        if self.stopping or instance.reload_requested or instance.removed:
            self.drain(instance)
        pumps = [
            asyncio.create_task(self.pump(instance, process.stdout, self.stdout)),  # type: ignore[arg-type]
            asyncio.create_task(self.pump(instance, process.stderr, self.stderr)),  # type: ignore[arg-type]
        ]
        returncode = await process.wait()
        ran = time.monotonic() - instance.started_at
        if instance.kill_timer is not None:
            instance.kill_timer.cancel()
            instance.kill_timer = None
        _, still_open = await asyncio.wait(pumps, timeout=PIPE_DRAIN_TIMEOUT)
        for task in still_open:
            task.cancel()
        return returncode, ran

    async def pump(self, instance: Instance, reader: asyncio.StreamReader, stream: TextIO) -> None:
        """Copy a child's output line by line, prefixed; notice when the service serves."""
        while True:
            try:
                line = await reader.readline()
            except ValueError:  # longer than LINE_LIMIT; the reader dropped it
                line = b"(a line too long to show was dropped)\n"
            if not line:
                return
            text = line.decode(errors="replace").rstrip("\r\n")
            self.write(stream, instance.name, text)
            instance.tail.append(text[:1000])
            if instance.state is State.STARTING and READY_MARKER in text:
                self.set_state(instance, State.RUNNING)

    # Reload and periodic status

    async def reload_on_changes(self) -> None:
        assert self.changes is not None
        try:
            async for reload in self.changes(self.ended):
                if self.stopping:
                    return
                self.apply(reload)
        except Exception as error:
            # Said, not swallowed: the instances run on, but no change reloads them any more.
            self.write(self.stderr, "supervisor", f"Reload stopped working: {error!r}")
            raise

    def apply(self, reload: Reload) -> None:
        """Stop the instances of services that are gone, start those of new ones, and drain
        and start again those the change concerns."""
        if reload.note:
            self.write(self.stderr, "supervisor", reload.note)
        # Instances still draining after their app went are not running it (it may be back).
        current = [instance for instance in self.instances if not instance.removed]
        running = list(dict.fromkeys(instance.label for instance in current))
        wanted = running if reload.services is None else reload.services
        removed = [label for label in running if label not in wanted]
        added = [label for label in wanted if label not in running]
        reloaded = [
            instance
            for instance in current
            if instance.label not in removed
            and (reload.restart is None or instance.label in reload.restart)
        ]
        actions = []
        for label in removed:
            gone = [instance for instance in current if instance.label == label]
            actions.append(f"stopping {names_of(gone)} (service app {label} is gone)")
        new = {
            label: [Instance(label, number) for number in range(1, self.instances_per_service + 1)]
            for label in added
        }
        for label, instances in new.items():
            actions.append(f"starting {names_of(instances)} (new service app {label})")
        if reloaded:
            every = reload.restart is None and len(reloaded) > 1
            actions.append(f"reloading {'every instance' if every else names_of(reloaded)}")
        self.say(f"Code changed ({reload.changed}); {'; '.join(actions) or 'nothing to reload'}.")
        for instance in current:
            if instance.label in removed:
                instance.removed = True
                self.drain(instance)
                instance.wake.set()
        for instance in reloaded:
            instance.reload_requested = True
            self.drain(instance)
            instance.wake.set()
        for instance in (instance for instances in new.values() for instance in instances):
            self.instances.append(instance)
            self.width = max(self.width, len(instance.name))
            self.start_keeper(instance)

    async def print_status_every(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.print_status()
