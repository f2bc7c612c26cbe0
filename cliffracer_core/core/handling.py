"""The work a service process does on its messages, shared by the runner and its extensions.

``Handling`` bounds how many messages are handled at once (``CONCURRENCY`` slots), starts each
in a task of its own, knows what each task handles (for inspection and the in-flight gauge),
runs plain ``def`` handlers in worker threads with Django's connection hygiene, and tells the
finish hooks about the messages that were handled: the access log, the monitor's error records
(``cliffracer_core.contrib.monitor``, failures only), and whatever an extension adds. The
runner and the durable consumers (``cliffracer_core.contrib.durable``) go through the same
object, so every handler runs the same way whichever part of Cliffracer delivered its message.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from cliffracer_core.core.access import AccessLog
from cliffracer_core.core.db import (
    MessageState,
    aclose_old_connections,
    message_state,
    run_with_connection_hygiene,
)
from cliffracer_core.core.errors import ServiceError

logger = logging.getLogger("cliffracer.runner")


class Slots(asyncio.Semaphore):
    """The handler slots: a semaphore that can also be taken without awaiting."""

    def take(self) -> bool:
        """Take a free slot now and return True, or return False when none is free."""
        # What acquire() does when it need not wait, without making and awaiting a
        # coroutine: the request path takes a slot this way for every request.
        if self.locked():
            return False
        self._value -= 1  # type: ignore[attr-defined]
        return True


@dataclass(slots=True)
class Finished:
    """One message handled (or refused): what a finish hook is told."""

    kind: str  # "rpc", "event" or "timer"
    service: str
    name: str  # the endpoint, event handler or timer
    outcome: str  # "ok", "duplicate", or "<code> <type>[, what happens next]"
    started: int  # time.perf_counter_ns() when it arrived
    correlation_id: str
    subject: str = ""  # the message's subject ("" for a timer run)
    error: ServiceError | None = None  # what the caller or the record is told, on failure
    quiet: bool = False  # no access line unless it failed (a quiet timer's run)


FinishHook = Callable[[Finished], Awaitable[None] | None]


class NoArgument:
    """The argument of a handler that takes none (a timer)."""


NO_ARGUMENT: Any = NoArgument()


class Handling:
    """Slots, tasks, threads and finish hooks of one running service."""

    def __init__(
        self, *, service: str, concurrency: int, threads: int, instance: str = "-"
    ) -> None:
        self.service = service
        self.concurrency = concurrency
        self.executor = ThreadPoolExecutor(
            max_workers=min(threads, concurrency), thread_name_prefix=f"cliffracer-{service}"
        )
        self.slots: Slots | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.in_flight: set[asyncio.Task[Any]] = set()
        # What each task handles: (kind, name, correlation id, monotonic start).
        self.current: dict[asyncio.Task[Any], tuple[str, str, str, float]] = {}
        # Called, in order, after the access log: for every message handled, and for those
        # that failed. A success nobody listens to costs nothing (see ``listening``).
        self.finish_hooks: list[FinishHook] = []
        self.failure_hooks: list[FinishHook] = []
        # One line per RPC, event and timer run (logger ``cliffracer.access``, INFO), with
        # duration and outcome, written in batches (core/access.py); an operator can silence
        # or route it apart from the rest, as web servers do with their access logs.
        self.access = AccessLog(instance)

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start serving on ``loop`` (the slots belong to it)."""
        self.loop = loop
        self.slots = Slots(self.concurrency)
        self.access.bind(loop)

    # Tasks

    def spawn(self, coroutine: Any) -> asyncio.Task[Any]:
        """Run ``coroutine`` in a task of its own, holding a slot the caller took."""
        # Started eagerly: a handler that never suspends finishes here, without a trip
        # through the event loop; one that awaits I/O goes on as an ordinary task.
        task = asyncio.eager_task_factory(self.loop, coroutine)
        if task.done():
            # Finished already: its slot is free now, without the done callback's trip
            # through the event loop (1.5 µs of a request that never suspends).
            self._done(task)
            return task
        self.in_flight.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.in_flight.discard(task)
        self.current.pop(task, None)
        self.slots.release()  # type: ignore[union-attr]

    def track(self, kind: str, name: str, correlation_id: str) -> None:
        """Say what the current task handles."""
        task = asyncio.current_task()
        if task is not None:
            self.current[task] = (kind, name, correlation_id, time.monotonic())

    def rpcs_in_flight(self) -> int:
        """RPC requests being handled now; safe to call from another thread (the exporter)."""
        # dict.copy() runs without releasing the GIL, so the loop thread cannot change the
        # dict halfway through it, as it could during a Python-level iteration.
        return sum(1 for kind, *_ in self.current.copy().values() if kind == "rpc")

    def in_flight_handlers(self) -> list[tuple[str, str, str, float]]:
        """(kind, name, correlation id, monotonic start) of every handler running now."""
        return [self.current[task] for task in list(self.in_flight) if task in self.current]

    # Running code

    async def invoke(self, handler: Callable[..., Any], is_async: bool, argument: Any) -> Any:
        """Run a handler: ``async`` ones here, plain ``def`` ones in a worker thread; both with
        the database connection hygiene of Django's request cycle."""
        arguments = () if argument is NO_ARGUMENT else (argument,)
        if not is_async:
            context = contextvars.copy_context()
            return await self.loop.run_in_executor(  # type: ignore[union-attr]
                self.executor, context.run, run_with_connection_hygiene, handler, *arguments
            )
        state = MessageState()
        message_state.set(state)
        try:
            return await handler(*arguments)
        finally:
            if state.database_used:
                await aclose_old_connections()

    async def in_thread(self, function: Callable[..., Any], *args: Any) -> Any:
        """Run sync code that may use the database in a worker thread, as handlers run."""
        context = contextvars.copy_context()
        return await self.loop.run_in_executor(  # type: ignore[union-attr]
            self.executor, context.run, run_with_connection_hygiene, function, *args
        )

    # Finishing

    def listening(self, error: ServiceError | None) -> bool:
        """Whether anything hears of a message that ended with ``error`` (None: it went well).

        The caller builds a ``Finished`` only then: most messages go well, with the access log
        off and no hook for successes, and then finishing one costs nothing.
        """
        return error is not None or bool(self.finish_hooks) or self.access.enabled()

    async def finished(self, finished: Finished) -> None:
        """Note the access line and tell the hooks; a hook that fails is logged, never raised."""
        if self.access.enabled() and not (finished.quiet and finished.error is None):
            self.access.add(finished)
        hooks = self.finish_hooks
        if finished.error is not None and self.failure_hooks:
            hooks = [*hooks, *self.failure_hooks]
        for hook in hooks:
            try:
                result = hook(finished)
                if result is not None:
                    await result
            except Exception:  # noqa: BLE001  (a hook must not fail the message)
                logger.exception("A finish hook of %s failed.", self.service)

    # Stopping

    async def drain(self, grace_period: float) -> int:
        """Wait for the handlers running now, up to ``grace_period``; cancel the rest and
        return how many there were."""
        if not self.in_flight:
            return 0
        _, pending = await asyncio.wait(set(self.in_flight), timeout=grace_period)
        for task in pending:
            task.cancel()
        return len(pending)

    def close(self) -> None:
        self.access.flush()
        self.executor.shutdown(wait=False, cancel_futures=True)
