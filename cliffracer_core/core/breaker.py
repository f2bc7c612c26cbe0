"""The circuit breaker and the bulkhead of one call target, shared by every thread of a process.

A process calls from several event loops (a service's own loop, the sync client's background
loop, daphne's loop in a web process) and from worker threads through them, so the state here is
guarded by a ``threading.Lock``, never an asyncio primitive bound to one loop. A closed breaker
admits a call without taking the lock: the state is read as one attribute, which the GIL keeps
whole, and a call admitted in the instant the breaker opens is one more trial, not a fault.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable

CLOSED = "closed"
HALF_OPEN = "half_open"
OPEN = "open"
# What ``CircuitBreaker.admit`` says of a call.
REFUSED = 0
ADMITTED = 1
TRIAL = 2
# The breaker state as a number, for a gauge (docs/resilience.md).
STATE_VALUES = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}

# The failure window is a ring of this many buckets, each holding the calls and failures of a
# tenth of the window: recording is two additions, and old outcomes leave a bucket at a time.
BUCKETS = 10

StateListener = Callable[[str, str], None]


class CircuitBreaker:
    """Open after ``failure_ratio`` of at least ``min_calls`` calls in ``window`` seconds failed;
    after ``open_seconds`` let one trial call through (half-open); close when it succeeds."""

    def __init__(
        self,
        target: str,
        *,
        failure_ratio: float,
        min_calls: int,
        window: float,
        open_seconds: float,
        on_change: StateListener | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.target = target
        self.failure_ratio = failure_ratio
        self.min_calls = min_calls
        self.bucket_seconds = window / BUCKETS
        self.open_seconds = open_seconds
        self.on_change = on_change
        self.clock = clock
        self.lock = threading.Lock()
        self.state = CLOSED
        self.opened_at = 0.0
        self.trial_in_flight = False
        self.calls = [0] * BUCKETS
        self.failures = [0] * BUCKETS
        self.bucket = 0  # the number of the current bucket since the clock's origin
        self.times_opened = 0

    def admit(self) -> int:
        """``REFUSED``, ``ADMITTED``, or ``TRIAL`` for the one call of a half-open breaker."""
        if self.state is CLOSED:
            return ADMITTED
        changed = False
        with self.lock:
            if self.state is OPEN and self.clock() >= self.opened_at + self.open_seconds:
                self.state = HALF_OPEN
                changed = True
            if self.state is HALF_OPEN and not self.trial_in_flight:
                self.trial_in_flight = True
                admitted = TRIAL
            else:
                admitted = ADMITTED if self.state is CLOSED else REFUSED
        if changed:
            self._notify(HALF_OPEN)
        return admitted

    def record(self, failed: bool | None, admitted: int = ADMITTED) -> None:
        """Count the outcome of a call ``admit`` let through; ``failed`` None for a call that
        ended without one (cancelled, or refused by the bulkhead after the breaker)."""
        changed: str | None = None
        with self.lock:
            if admitted == TRIAL:
                # Only the trial decides a half-open breaker: a call admitted while it was
                # closed may end now, and says nothing about the target since.
                self.trial_in_flight = False
                if failed is not None and self.state is HALF_OPEN:
                    changed = self._open() if failed else self._close()
            elif self.state is CLOSED and failed is not None:
                bucket = int(self.clock() / self.bucket_seconds)
                if bucket != self.bucket:
                    self._rotate(bucket)
                slot = bucket % BUCKETS
                self.calls[slot] += 1
                if failed:
                    self.failures[slot] += 1
                    calls = sum(self.calls)
                    if calls >= self.min_calls and sum(self.failures) >= self.failure_ratio * calls:
                        changed = self._open()
        if changed:
            self._notify(changed)

    def _rotate(self, bucket: int) -> None:
        """Empty the buckets the clock has moved past, up to ``bucket``, the current one."""
        for number in range(max(self.bucket + 1, bucket - BUCKETS + 1), bucket + 1):
            self.calls[number % BUCKETS] = 0
            self.failures[number % BUCKETS] = 0
        self.bucket = bucket

    def _open(self) -> str:
        self.state = OPEN
        self.opened_at = self.clock()
        self.times_opened += 1
        return OPEN

    def _close(self) -> str:
        self.state = CLOSED
        self.calls = [0] * BUCKETS
        self.failures = [0] * BUCKETS
        return CLOSED

    def _notify(self, state: str) -> None:
        if self.on_change is not None:
            self.on_change(self.target, state)


class BulkheadFullError(Exception):
    """No slot for the call: ``max_in_flight`` calls run and ``max_waiting`` wait already."""


class Bulkhead:
    """At most ``max_in_flight`` calls at once, and ``max_waiting`` more waiting for a slot."""

    def __init__(self, *, max_in_flight: int, max_waiting: int) -> None:
        self.max_in_flight = max_in_flight
        self.max_waiting = max_waiting
        self.lock = threading.Lock()
        self.in_flight = 0
        self.waiting: deque[asyncio.Future[None]] = deque()

    def try_acquire(self) -> bool:
        """Take a slot if one is free and nobody waits for one (no await: the common case)."""
        with self.lock:
            if self.in_flight < self.max_in_flight and not self.waiting:
                self.in_flight += 1
                return True
        return False

    async def acquire(self, timeout: float) -> None:
        """Take a slot, waiting at most ``timeout`` seconds in the queue for one."""
        with self.lock:
            if self.in_flight < self.max_in_flight and not self.waiting:
                self.in_flight += 1
                return
            if len(self.waiting) >= self.max_waiting:
                raise BulkheadFullError
            waiter = asyncio.get_running_loop().create_future()
            self.waiting.append(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
        except (TimeoutError, asyncio.CancelledError) as error:
            with self.lock:
                if waiter in self.waiting:
                    self.waiting.remove(waiter)
            # A slot handed over as the wait ended is ours to give back: _grant does it when
            # the future was cancelled first, and here when it had been granted first.
            if waiter.done() and not waiter.cancelled():
                self.release()
            if isinstance(error, TimeoutError):
                raise BulkheadFullError from None
            raise

    def release(self) -> None:
        """Give the slot back, or hand it to the first waiter (on that waiter's loop)."""
        while True:
            with self.lock:
                if not self.waiting:
                    self.in_flight -= 1
                    return
                waiter = self.waiting.popleft()
            try:
                waiter.get_loop().call_soon_threadsafe(self._grant, waiter)
                return
            except RuntimeError:  # its loop is closed: nobody waits there any more
                continue

    def _grant(self, waiter: asyncio.Future[None]) -> None:
        if waiter.done():
            self.release()
        else:
            waiter.set_result(None)
