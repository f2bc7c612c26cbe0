"""Prometheus metrics of a Celery worker: tasks by name and state, and how long they ran.

Celery's default pool runs tasks in child processes that the worker forks, and the worker's
own process receives them; both count into ``TaskCounts``, an array in memory shared across
the fork, so the one exporter of the worker's process (``components``) serves the figures of
all of them. The array is made when the worker starts (``worker_init``), before the pool forks,
with a row per registered task; the threads and solo pools use it the same way.

``read_into`` gives the same counts to the worker's push exporters, in the shape every
exporter already knows (``reading.Figures``): the worker is a service named ``celery-worker``
whose endpoints are its tasks. A run that ended is a request answered, with the code a
service would give: success ``200``, failure ``500``, retry ``503`` (it will run again);
revoked, rejected and ignored tasks are requests dropped, by that reason; tasks started and
not yet ended are in flight; run times go into the services' latency buckets (the task
buckets up to 10 s are among them; longer runs count in +Inf).
"""

from __future__ import annotations

import ctypes
import multiprocessing
import threading
import time
from bisect import bisect_left
from collections.abc import Iterable
from typing import Any

from celery import signals
from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from cliffracer_core.contrib.metrics.reading import Figures, Histogram
from cliffracer_core.core.figures import DURATION_BUCKETS as RPC_BUCKETS

# Task states counted, as Celery names them (lower case): received by the worker, started by a
# pool process, and how each run ended.
STATES = ("received", "started", "success", "failure", "retry", "revoked", "rejected", "ignored")
# Upper bounds of the duration histogram, in seconds: tasks run from milliseconds to minutes.
DURATION_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
)
BOUNDS_NS: tuple[int, ...] = tuple(round(bound * 1e9) for bound in DURATION_BUCKETS)
# Tasks registered after the worker started share one row, so no series appear at will.
OTHER_TASK = "(other)"

TASKS = "cliffracer_celery_tasks"
TASK_DURATION = "cliffracer_celery_task_duration_seconds"
HELP = {
    TASKS: "Celery tasks by task name and state: received, started, and how runs ended "
    "(success, failure, retry, revoked, rejected, ignored).",
    TASK_DURATION: "Seconds a Celery task ran, from start to end, by task name.",
}

_BUCKET_LABELS: tuple[str, ...] = (*map(floatToGoString, DURATION_BUCKETS), "+Inf")
# Per task: a count per state, a count per bucket (+Inf last), the total run time in ns.
_STATE_SLOTS = len(STATES)
_BUCKET_SLOTS = len(BOUNDS_NS) + 1
_ROW = _STATE_SLOTS + _BUCKET_SLOTS + 1


class TaskCounts:
    """Counts by task and state and a duration histogram by task, shared across ``fork()``."""

    def __init__(self, task_names: Iterable[str]) -> None:
        self.names: tuple[str, ...] = (*sorted(set(task_names) - {OTHER_TASK}), OTHER_TASK)
        self.index = {name: number for number, name in enumerate(self.names)}
        self.values = multiprocessing.RawArray(ctypes.c_int64, len(self.names) * _ROW)
        self.lock = multiprocessing.Lock()

    def _row(self, task: str) -> int:
        return self.index.get(task, len(self.names) - 1) * _ROW

    def count(self, task: str, state: str) -> None:
        """Count one task entering ``state``."""
        if state not in STATES:
            return
        slot = self._row(task) + STATES.index(state)
        with self.lock:
            self.values[slot] += 1

    def finish(self, task: str, state: str, elapsed_ns: int) -> None:
        """Count a run that ended in ``state`` after ``elapsed_ns``."""
        row = self._row(task)
        bucket = row + _STATE_SLOTS + bisect_left(BOUNDS_NS, elapsed_ns)
        with self.lock:
            if state in STATES:
                self.values[row + STATES.index(state)] += 1
            self.values[bucket] += 1
            self.values[row + _ROW - 1] += elapsed_ns

    def snapshot(self) -> dict[str, tuple[dict[str, int], list[int], int]]:
        """Per task: counts by state, counts per bucket (not cumulative), total run time (ns)."""
        with self.lock:
            values = self.values[:]
        result = {}
        for number, name in enumerate(self.names):
            row = values[number * _ROW : (number + 1) * _ROW]
            states = dict(zip(STATES, row[:_STATE_SLOTS], strict=True))
            buckets = list(row[_STATE_SLOTS : _STATE_SLOTS + _BUCKET_SLOTS])
            result[name] = (states, buckets, row[-1])
        return result

    def by_state(self) -> dict[str, dict[str, int]]:
        """Counts by task and state, leaving out tasks that never ran and zero counts."""
        return {
            name: {state: count for state, count in states.items() if count}
            for name, (states, _, _) in self.snapshot().items()
            if any(states.values())
        }


# How a task's end maps onto the request series of a service (see the module's docstring).
RUN_CODES = {"success": "200", "failure": "500", "retry": "503"}
DROPPED_STATES = ("revoked", "rejected", "ignored")
# Each task bucket's index among the services' buckets (+Inf for bounds beyond theirs).
_RPC_BUCKET_OF = tuple(
    RPC_BUCKETS.index(bound) if bound in RPC_BUCKETS else len(RPC_BUCKETS)
    for bound in DURATION_BUCKETS
) + (len(RPC_BUCKETS),)


def read_into(figures: Figures, process: str) -> None:
    """Add the worker's task figures to ``figures`` as the service ``process``."""
    if counts is None:
        return
    running = 0
    for name, (states, buckets, total_ns) in counts.snapshot().items():
        if name == OTHER_TASK and not any(states.values()):
            continue
        for state, code in RUN_CODES.items():
            figures.requests[(process, name, code)] = states[state]
        for state in DROPPED_STATES:
            figures.dropped[(process, name, state)] = states[state]
        latency = [0] * (len(RPC_BUCKETS) + 1)
        for index, count in zip(_RPC_BUCKET_OF, buckets, strict=True):
            latency[index] += count
        figures.durations[(process, name)] = Histogram(latency, total_ns / 1e9)
        running += max(states["started"] - sum(buckets), 0)
    figures.in_flight[(process,)] = running


class TaskCollector(Collector):
    """Exports a ``TaskCounts`` as Prometheus families."""

    def __init__(self, counts: TaskCounts) -> None:
        self.counts = counts

    def describe(self) -> Iterable[Metric]:
        return list(families().values())

    def collect(self) -> Iterable[Metric]:
        exported = families()
        for name, (states, buckets, total_ns) in self.counts.snapshot().items():
            if name == OTHER_TASK and not any(states.values()):
                continue
            for state, count in states.items():
                exported[TASKS].add_metric([name, state], count)
            cumulative = 0
            points: list[tuple[str, float]] = []
            for bound, count in zip(_BUCKET_LABELS, buckets, strict=True):
                cumulative += count
                points.append((bound, cumulative))
            exported[TASK_DURATION].add_metric([name], points, total_ns / 1e9)
        return list(exported.values())


def families() -> dict[str, Metric]:
    return {
        TASKS: CounterMetricFamily(TASKS, HELP[TASKS], labels=["task", "state"]),
        TASK_DURATION: HistogramMetricFamily(TASK_DURATION, HELP[TASK_DURATION], labels=["task"]),
    }


# The worker's counts (None outside a worker), and when each task running in this process
# started, by task id.
counts: TaskCounts | None = None
_collector: TaskCollector | None = None
_started: dict[str, tuple[str, int]] = {}
_started_lock = threading.Lock()


def install(task_names: Iterable[str]) -> TaskCounts:
    """Make the worker's shared counts and export them from the default registry."""
    global counts, _collector
    if _collector is not None:
        REGISTRY.unregister(_collector)
    counts = TaskCounts(task_names)
    _collector = TaskCollector(counts)
    REGISTRY.register(_collector)
    return counts


def on_task_received(request: Any = None, **kwargs: Any) -> None:
    if counts is not None and request is not None:
        counts.count(str(getattr(request, "name", "") or ""), "received")


def on_task_prerun(task_id: str | None = None, task: Any = None, **kwargs: Any) -> None:
    if counts is None or task_id is None or task is None:
        return
    with _started_lock:
        _started[task_id] = (task.name, time.perf_counter_ns())
    counts.count(task.name, "started")


def on_task_postrun(task_id: str | None = None, state: str | None = None, **kwargs: Any) -> None:
    if counts is None or task_id is None:
        return
    with _started_lock:
        started = _started.pop(task_id, None)
    if started is not None:
        name, began = started
        counts.finish(name, (state or "").lower(), time.perf_counter_ns() - began)


def on_task_revoked(request: Any = None, **kwargs: Any) -> None:
    if counts is not None and request is not None:
        counts.count(str(getattr(request, "name", "") or ""), "revoked")


def connect() -> None:
    for signal, receiver in (
        (signals.task_received, on_task_received),
        (signals.task_prerun, on_task_prerun),
        (signals.task_postrun, on_task_postrun),
        (signals.task_revoked, on_task_revoked),
    ):
        signal.connect(receiver, weak=False, dispatch_uid=f"cliffracer_jobs_{receiver.__name__}")
