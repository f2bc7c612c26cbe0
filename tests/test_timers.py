"""Timers run periodically inside the service, without overlap or drift piling up."""

import asyncio
import re
import time

import pytest

from cliffracer_core import Service, timer
from cliffracer_core.testing.polling import wait_for


def test_timer_runs_periodically(start_service, unique_name):
    class Ticker(Service):
        name = unique_name

        def __init__(self) -> None:
            self.ticks: list[float] = []

        @timer(seconds=0.1, immediate=True)
        async def tick(self) -> None:
            self.ticks.append(time.monotonic())

    running = start_service(Ticker)
    time.sleep(0.65)
    ticks = list(running.service.ticks)
    assert 4 <= len(ticks) <= 8
    assert running.runner.timer_runs >= 4


def test_slow_timer_never_overlaps_and_skips_missed_ticks(start_service, unique_name):
    class SlowTicker(Service):
        name = unique_name

        def __init__(self) -> None:
            self.active = 0
            self.peak = 0
            self.starts: list[float] = []

        @timer(seconds=0.1, immediate=True)
        async def slow(self) -> None:
            self.active += 1
            self.peak = max(self.peak, self.active)
            self.starts.append(time.monotonic())
            await asyncio.sleep(0.25)
            self.active -= 1

    running = start_service(SlowTicker)
    time.sleep(1.2)
    service = running.service
    assert service.peak == 1
    starts = service.starts
    gaps = [later - earlier for earlier, later in zip(starts, starts[1:], strict=False)]
    # Each run takes 0.25 s, so runs start on the 0.1 s grid at least 0.25 s apart: missed
    # ticks were skipped instead of being run back to back to catch up.
    assert gaps and all(gap >= 0.25 for gap in gaps)
    assert len(service.starts) <= 5


def test_failing_timer_keeps_running(start_service, unique_name, caplog):
    class Flaky(Service):
        name = unique_name

        def __init__(self) -> None:
            self.calls = 0

        @timer(seconds=0.05, immediate=True)
        def flaky(self) -> None:
            self.calls += 1
            raise RuntimeError("timer broke")

    running = start_service(Flaky)
    time.sleep(0.4)
    assert running.service.calls >= 3
    assert running.runner.timer_failures >= 3
    assert any("timer broke" in str(r.exc_info[1]) for r in caplog.records if r.exc_info)


@pytest.mark.django_db(transaction=True)
def test_a_quiet_timer_writes_access_lines_for_its_failures_only(runservice_process):
    process = runservice_process(
        "testservice", DJANGO_SETTINGS_MODULE="tests.settings", TESTSERVICE_TIMER_SECONDS="0.1"
    )
    # Several runs of each: the failing one logs its error and its access line every time.
    wait_for(lambda: "quiet tick 3" in process.output(), what="three quiet ticks")
    failure_line = re.compile(r"timer testservice\.quiet_failure 500 internal_error in ")
    wait_for(lambda: len(failure_line.findall(process.output())) >= 3, what="failure lines")
    output = process.output()
    assert "Timer testservice.quiet_failure failed" in output
    assert "the quiet timer broke" in output
    assert "testservice.quiet_tick" not in output


def test_the_monitor_routine_is_quiet_by_default():
    from cliffracer_core.contrib.monitor.service import MonitorService

    assert {(timer.attribute, timer.quiet) for timer in MonitorService.timers()} == {
        ("sample", True),
        ("prune", True),
    }
