"""Reload on code changes: watch the project's Python files and restart services when they change.

``runservice --reload`` works like Django's ``runserver`` autoreloader: the command becomes a
small parent process that runs the real ``runservice`` (without ``--reload``) as a child and,
when a ``.py`` file changes, drains it (SIGTERM, as on any stop) and starts it again.
``runservices --reload`` hands the changes to its supervisor through
``service_apps.app_reloads``, which tells which instances a change concerns and which service
apps exist now.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from django.conf import settings
from django.utils.autoreload import get_child_arguments
from watchfiles import Change, DefaultFilter, awatch

from cliffracer_core.core.settings import cliffracer_settings
from cliffracer_core.dev.supervisor import (
    KILL_MARGIN,
    describe_changes,
    describe_exit,
    signal_child,
    start_child,
)

logger = logging.getLogger("cliffracer.reload")

# Directories under a watched directory that hold no code of the project (or far too many
# files to watch): virtualenvs, local state, caches, version control.
IGNORED_DIRECTORIES = frozenset(
    {".venv", "venv", "var", "__pycache__", ".git", "node_modules", "test-artifacts"}
)
# Set in the child of ``runservice --reload``: it serves, it does not reload again.
CHILD_ENVIRONMENT = "CLIFFRACER_RELOADER_CHILD"
RELOAD_OPTIONS = ("--reload",)
RELOAD_OPTIONS_WITH_VALUE = ("--reload-dir",)


def watched_paths(directory: Path, ignored: Sequence[Path] = ()) -> list[Path]:
    """Return what to watch in ``directory``: its ``.py`` files and its code subdirectories.

    Watching the directory itself would put a watch on every folder of ``.venv`` and ``var``;
    watching its parts leaves them out (a new top-level file is seen after a restart).
    """
    ignored_resolved = {path.resolve() for path in ignored}
    paths = []
    for child in sorted(directory.iterdir()):
        if child.is_dir():
            if (
                child.name in IGNORED_DIRECTORIES
                or child.name.startswith(".")
                or child.name.endswith(".egg-info")
                or (child / "pyvenv.cfg").exists()
                or child.resolve() in ignored_resolved
            ):
                continue
            paths.append(child)
        elif child.suffix == ".py":
            paths.append(child)
    return paths


def watched_directories(configured: Sequence[str | Path] | None = None) -> list[Path]:
    """The directories given (``--reload-dir``), or the project's ``BASE_DIR``."""
    return [Path(directory).resolve() for directory in configured or [settings.BASE_DIR]]


def local_state_directories() -> list[Path]:
    """Directories never to watch: the project's local state (``VAR_DIR``)."""
    var_dir = getattr(settings, "VAR_DIR", None)
    return [Path(var_dir)] if var_dir else []


class CodeFilter(DefaultFilter):
    """Let through changed Python files, and folders added or removed, outside hidden folders.

    A new service app arrives as a folder moved into place at once (``startservice`` writes it
    into a hidden ``.NAME-xxxx`` folder first): the move reports the folder alone, not the
    files in it. Nothing whose path below a watched directory has a part starting with ``.``
    (a staging folder, an editor's backup) or named ``__pycache__`` counts.
    """

    extensions = (".py", ".pyx", ".pyd")

    def __init__(self, directories: Sequence[Path], *, ignore_paths: Sequence[Path] = ()) -> None:
        super().__init__(ignore_paths=list(ignore_paths))
        self.directories = list(directories)

    def __call__(self, change: Change, path: str) -> bool:
        if not super().__call__(change, path):
            return False
        candidate = Path(path)
        parts = _relative_parts(candidate, self.directories)
        if any(part.startswith(".") or part == "__pycache__" for part in parts):
            return False
        if candidate.suffix in self.extensions:
            return True
        if change is Change.added:
            return candidate.is_dir()
        # A folder that is gone cannot be told from a file by looking; a name without a suffix
        # is taken for one.
        return change is Change.deleted and not candidate.suffix


async def code_changes(
    directories: Sequence[Path], stop: asyncio.Event
) -> AsyncIterator[set[Path]]:
    """Yield the changed ``.py`` files and folders each time some change, until ``stop``."""
    ignored = local_state_directories()
    paths = [path for directory in directories for path in watched_paths(directory, ignored)]
    if not paths:
        logger.warning("Nothing to watch for code changes in %s.", ", ".join(map(str, directories)))
        await stop.wait()
        return
    watch_filter = CodeFilter(directories, ignore_paths=ignored)
    async for changes in awatch(*paths, watch_filter=watch_filter, stop_event=stop):
        yield {Path(path) for _, path in changes}


def relative_names(paths: set[Path], directories: Sequence[Path]) -> set[str]:
    """The paths as names relative to the watched directory that holds each."""
    return {_relative(path, directories) for path in paths}


def _relative(path: Path, directories: Sequence[Path]) -> str:
    for directory in directories:
        if path.is_relative_to(directory):
            return str(path.relative_to(directory))
    return str(path)


def _relative_parts(path: Path, directories: Sequence[Path]) -> tuple[str, ...]:
    for directory in directories:
        if path.is_relative_to(directory):
            return path.relative_to(directory).parts
    return path.parts


def without_reload_options(arguments: Sequence[str]) -> list[str]:
    """Drop ``--reload`` and ``--reload-dir DIR`` from a command line."""
    kept: list[str] = []
    skip_next = False
    for argument in arguments:
        if skip_next:
            skip_next = False
        elif argument in RELOAD_OPTIONS:
            pass
        elif argument in RELOAD_OPTIONS_WITH_VALUE:
            skip_next = True
        elif argument.startswith(tuple(f"{option}=" for option in RELOAD_OPTIONS_WITH_VALUE)):
            pass
        else:
            kept.append(argument)
    return kept


def is_reloader_child() -> bool:
    """Tell whether this process is the child that ``runservice --reload`` started."""
    return os.environ.get(CHILD_ENVIRONMENT) == "1"


class Reloader:
    """Run a command as a child; drain and start it again whenever the code changes."""

    def __init__(
        self,
        arguments: Sequence[str],
        *,
        name: str,
        directories: Sequence[Path],
        grace_period: float,
    ) -> None:
        self.arguments = list(arguments)
        self.name = name
        self.directories = list(directories)
        self.grace_period = grace_period
        self.process: asyncio.subprocess.Process | None = None
        self.kill_timer: asyncio.TimerHandle | None = None
        self.reload_requested = False
        self.stop_requested = asyncio.Event()
        self.ended = asyncio.Event()
        self.wake = asyncio.Event()

    async def run(self) -> int:
        """Run until SIGTERM or SIGINT, then drain the child; return the exit code."""
        loop = asyncio.get_running_loop()
        for number in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(number, self.request_stop)
        watcher = asyncio.create_task(self.reload_on_changes())
        environment = {**os.environ, CHILD_ENVIRONMENT: "1"}
        try:
            while not self.stop_requested.is_set():
                self.reload_requested = False
                self.wake.clear()
                self.process = await start_child(self.arguments, environment=environment)
                logger.info(
                    "Started %s (pid %d); reloading on code changes.", self.name, self.process.pid
                )
                if self.stop_requested.is_set():
                    self.drain()
                returncode = await self.process.wait()
                if self.kill_timer is not None:
                    self.kill_timer.cancel()
                    self.kill_timer = None
                if self.stop_requested.is_set() or self.reload_requested:
                    continue
                if returncode == 0:
                    logger.info("%s exited with code 0.", self.name)
                    break
                logger.error(
                    "%s ended (%s); it starts again when the code changes.",
                    self.name,
                    describe_exit(returncode, ()),
                )
                await self.wake.wait()
        finally:
            self.ended.set()
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            for number in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(number)
        return 0

    def request_stop(self) -> None:
        if self.stop_requested.is_set() and self.process is not None:
            logger.warning("Second stop signal: killing %s now.", self.name)
            signal_child(self.process, signal.SIGKILL)
        self.stop_requested.set()
        self.drain()
        self.wake.set()

    def drain(self) -> None:
        """SIGTERM the child (it drains); kill it if it still runs after the grace period."""
        process = self.process
        if process is None or process.returncode is not None or self.kill_timer is not None:
            return
        signal_child(process, signal.SIGTERM)
        self.kill_timer = asyncio.get_running_loop().call_later(
            self.grace_period + KILL_MARGIN, self.kill_late, process
        )

    def kill_late(self, process: asyncio.subprocess.Process) -> None:
        if process.returncode is None:
            logger.warning(
                "%s did not stop within %gs; killing it.",
                self.name,
                self.grace_period + KILL_MARGIN,
            )
            signal_child(process, signal.SIGKILL)

    async def reload_on_changes(self) -> None:
        async for changed in code_changes(self.directories, self.ended):
            if self.stop_requested.is_set():
                return
            shown = describe_changes(relative_names(changed, self.directories))
            logger.info("Code changed (%s); reloading %s.", shown, self.name)
            self.reload_requested = True
            self.drain()
            self.wake.set()


def run_with_reloader(
    name: str,
    *,
    directories: Sequence[str | Path] | None = None,
    grace_period: float | None = None,
) -> int:
    """Run this command again as a child, without ``--reload``, restarting it on code changes.

    Like Django's autoreloader, the child's command line is this process's own.
    """
    arguments = without_reload_options([str(argument) for argument in get_child_arguments()])
    reloader = Reloader(
        arguments,
        name=name,
        directories=watched_directories(directories),
        grace_period=cliffracer_settings.GRACE_PERIOD if grace_period is None else grace_period,
    )
    return asyncio.run(reloader.run())
