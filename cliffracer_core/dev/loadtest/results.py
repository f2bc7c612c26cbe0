"""What a run measured: every request's outcome, by second and by target, and the verdict.

Every request sent is accounted for exactly once: answered (``ok``), or an error under its code
(an error reply's ADR-32 code; 408 for a timeout, 503 when nothing answered). A run passes only
when at least one request succeeded and every ``--fail-on`` threshold holds: a run whose
requests all failed is a failure whatever the thresholds say.

Latency percentiles are of the successful requests; the error replies are counted, by code.
"""

from __future__ import annotations

import os
import platform
import socket
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cliffracer_core.dev.console import format_table
from cliffracer_core.dev.loadtest import baseline
from cliffracer_core.dev.loadtest.histogram import Histogram
from cliffracer_core.dev.loadtest.plan import OPEN, LoadPlan
from cliffracer_core.dev.loadtest.thresholds import Threshold
from cliffracer_core.dev.loadtest.units import format_seconds

OK = "ok"
# The outcome of a deliberately invalid request answered with a 4xx: "expected 400 invalid_json".
EXPECTED = "expected "
PERCENTILES = ("p50", "p90", "p95", "p99", "p99.9")
TIMELINE_PERCENTILES = ("p50", "p90", "p99")
LATENCY_SHOWN = ("p50", "p90", "p99", "max")
# The duration of a run bounded by its number of requests only.
UNBOUNDED = 86400.0


@dataclass
class Tally:
    """Requests, errors by code and latencies of one second, one target, or the whole run.

    ``expected`` counts the 4xx answers to deliberately invalid requests (``--invalid``): the
    service keeping its contract, counted apart from the errors.
    """

    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    latency: Histogram = field(default_factory=Histogram)
    expected: Counter[str] = field(default_factory=Counter)

    @property
    def requests(self) -> int:
        return self.ok + self.errors.total() + self.expected.total()

    def add(self, outcome: str, seconds: float) -> None:
        if outcome == OK:
            self.ok += 1
            self.latency.record(seconds)
        elif outcome.startswith(EXPECTED):
            self.expected[outcome.removeprefix(EXPECTED)] += 1
        else:
            self.errors[outcome] += 1

    def merge(self, other: Tally) -> None:
        self.ok += other.ok
        self.errors.update(other.errors)
        self.latency.merge(other.latency)
        self.expected.update(other.expected)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "errors": dict(self.errors),
            "expected": dict(self.expected),
            "latency": self.latency.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Tally:
        def counts(values: dict[str, Any]) -> Counter[str]:
            return Counter({str(key): int(count) for key, count in values.items()})

        return cls(
            ok=int(data["ok"]),
            errors=counts(data["errors"]),
            latency=Histogram.from_json(data["latency"]),
            expected=counts(data.get("expected") or {}),
        )


def error_code(outcome: str) -> str:
    """``"404 not_found"`` → ``"404"``."""
    return outcome.split(" ", 1)[0]


def is_server_error(outcome: str) -> bool:
    """A failure rather than a refusal: 5xx, no answer in time (408), or the client's own."""
    code = error_code(outcome)
    return not (code.isdigit() and 400 <= int(code) <= 499 and code != "408")


class Recorder:
    """Collects outcomes as they come; the figures are built from it at the end.

    Each answer is recorded once, in the tally of its second and target (the hot path of a
    run); the run's and each target's totals are merged from those when asked.
    """

    def __init__(self, *, warmup: float) -> None:
        self.warmup = warmup
        self.started_at = datetime.now(UTC)
        self.warmup_tally = Tally()
        self.tallies: dict[tuple[int, str], Tally] = {}
        # The tally the last answer went to: the next one is nearly always for the same
        # second and target, so the hot path skips building and hashing a key.
        self.last: tuple[int, str, Tally] = (-1, "", Tally())
        self.sent = 0
        self.errors = 0  # measured ones, for the live line
        self.in_flight = 0
        self.max_send_lag = 0.0
        self.sending_ended = 0.0  # seconds from the start when the last request was sent
        self.finished = 0.0  # ... and when the last answer came
        self.interrupted = False
        self.cpu_seconds = 0.0  # the generator's own CPU time over the run

    def sending(self, lag: float) -> None:
        """A request leaves ``lag`` seconds after its planned time."""
        self.sent += 1
        self.in_flight += 1
        if lag > self.max_send_lag:
            self.max_send_lag = lag

    def record(self, target: str, *, planned: float, answered: float, outcome: str) -> None:
        """One request's end: planned and answered are seconds from the run's start."""
        self.in_flight -= 1
        if planned < self.warmup:
            self.warmup_tally.add(outcome, answered - planned)
            return
        if outcome != OK:
            self.errors += 1
        second = int(answered)
        last_second, last_target, tally = self.last
        if second != last_second or target != last_target:
            key = (second, target)
            tally = self.tallies.get(key)
            if tally is None:
                tally = self.tallies[key] = Tally()
            self.last = (second, target, tally)
        tally.add(outcome, answered - planned)

    def to_json(self) -> dict[str, Any]:
        """What this process measured, for the process that merges the run's parts."""
        return {
            "tallies": [
                [second, target, tally.to_json()]
                for (second, target), tally in self.tallies.items()
            ],
            "warmup": self.warmup_tally.to_json(),
            "sent": self.sent,
            "max_send_lag": self.max_send_lag,
            "sending_ended": self.sending_ended,
            "finished": self.finished,
            "interrupted": self.interrupted,
            "cpu_seconds": self.cpu_seconds,
        }

    def merge_json(self, part: dict[str, Any]) -> None:
        """Add another process's part of the run (``to_json``) to this one."""
        for second, target, data in part["tallies"]:
            self.tallies.setdefault((int(second), str(target)), Tally()).merge(
                Tally.from_json(data)
            )
        self.warmup_tally.merge(Tally.from_json(part["warmup"]))
        self.sent += int(part["sent"])
        self.max_send_lag = max(self.max_send_lag, float(part["max_send_lag"]))
        self.sending_ended = max(self.sending_ended, float(part["sending_ended"]))
        self.finished = max(self.finished, float(part["finished"]))
        self.interrupted = self.interrupted or bool(part["interrupted"])
        self.cpu_seconds += float(part["cpu_seconds"])

    def grouped(self, by: int) -> dict[Any, Tally]:
        """The tallies merged by second (``by=0``) or by target (``by=1``)."""
        groups: dict[Any, Tally] = {}
        for key, tally in self.tallies.items():
            groups.setdefault(key[by], Tally()).merge(tally)
        return dict(sorted(groups.items()))

    @property
    def total(self) -> Tally:
        total = Tally()
        for tally in self.tallies.values():
            total.merge(tally)
        return total

    def by_target(self) -> dict[str, Tally]:
        return self.grouped(1)

    def by_second(self) -> dict[int, Tally]:
        return self.grouped(0)

    def second(self, number: int) -> Tally:
        """What was answered in second ``number`` (for the live line)."""
        total = Tally()
        for (second, _), tally in self.tallies.items():
            if second == number:
                total.merge(tally)
        return total


def latency_figures(histogram: Histogram, extra: set[str] = frozenset()) -> dict[str, Any]:
    figures: dict[str, Any] = {
        key: histogram.percentile(float(key[1:]) / 100)
        for key in sorted({*PERCENTILES, *extra}, key=lambda key: float(key[1:]))
    }
    figures["mean"] = histogram.mean
    figures["min"] = histogram.minimum / 1e6 if histogram.minimum is not None else None
    figures["max"] = histogram.maximum / 1e6 if histogram.count else None
    return figures


def tally_figures(tally: Tally, extra: set[str] = frozenset()) -> dict[str, Any]:
    return {
        "requests": tally.requests,
        "ok": tally.ok,
        "errors": tally.errors.total(),
        "server_errors": sum(n for outcome, n in tally.errors.items() if is_server_error(outcome)),
        "errors_by_code": dict(sorted(_by_code(tally.errors).items())),
        "errors_by_type": dict(sorted(tally.errors.items())),
        "expected_errors": tally.expected.total(),
        "expected_by_type": dict(sorted(tally.expected.items())),
        "latency": latency_figures(tally.latency, extra),
    }


def _by_code(errors: Counter[str]) -> Counter[str]:
    codes: Counter[str] = Counter()
    for outcome, count in errors.items():
        codes[error_code(outcome)] += count
    return codes


def summarize(
    recorder: Recorder,
    plan: LoadPlan,
    thresholds: list[Threshold],
    *,
    server: dict[str, Any] | None = None,
    earlier: dict[str, Any] | None = None,
    tolerance: float = 0.1,
) -> dict[str, Any]:
    """Every figure of the run as JSON values, with the thresholds' results and the verdict."""
    extra = {threshold.metric for threshold in thresholds if threshold.metric.startswith("p")}
    total = recorder.total
    summary = tally_figures(total, extra)
    window = max(1e-9, recorder.sending_ended - min(recorder.warmup, recorder.sending_ended))
    summary.update(
        {
            "tool": "cliffracer loadtest",
            "started": recorder.started_at.isoformat(timespec="seconds").replace("+00:00", "Z"),
            "plan": plan.describe(),
            "sent": recorder.sent,
            "warmup_requests": recorder.warmup_tally.requests,
            "interrupted": recorder.interrupted,
            "elapsed": recorder.finished,
            "measured_seconds": window,
            "target_rate": plan.target_rate(),
            "achieved_rate": summary["requests"] / window if summary["requests"] else 0.0,
            "max_send_lag": recorder.max_send_lag,
            # Near measured_seconds: the generator was busy all the time, maybe the bottleneck.
            "generator_cpu_seconds": recorder.cpu_seconds,
            "targets": {name: tally_figures(tally) for name, tally in recorder.by_target().items()},
            "timeline": timeline(recorder, plan),
            "histogram": total.latency.to_json(),
            "server": server,
            "machine": machine(),
        }
    )
    results = [threshold.check(summary) for threshold in thresholds]
    reasons = [
        f"{result['threshold']} failed ({result['shown']})"
        for result in results
        if not result["passed"]
    ]
    if summary["requests"] == 0:
        reasons.insert(0, "no request was measured")
    elif summary["ok"] == 0 and summary["expected_errors"] == 0:
        reasons.insert(0, f"every request failed ({summary['errors']} errors)")
    if earlier is not None:
        summary["baseline"] = baseline.compare(summary, earlier, tolerance)
        reasons += [
            f"{row['figure']} regressed against the baseline"
            for row in summary["baseline"]["figures"]
            if row["regression"]
        ]
    summary["thresholds"] = results
    summary["passed"] = not reasons
    summary["failures"] = reasons
    return summary


def timeline(recorder: Recorder, plan: LoadPlan) -> list[dict[str, Any]]:
    """One row per second of the run (by when the answers came), gaps included, with the
    plan's level (req/s or users) in the middle of that second."""
    by_second = recorder.by_second()
    if not by_second:
        return []
    first, last = min(by_second), max(by_second)
    rows = []
    for second in range(first, last + 1):
        tally = by_second.get(second, Tally())
        row: dict[str, Any] = {
            "second": second,
            "level": plan.level_at(second + 0.5),
            "ok": tally.ok,
            "errors": tally.errors.total(),
            "expected": tally.expected.total(),
            "errors_by_code": dict(_by_code(tally.errors)),
        }
        for key in TIMELINE_PERCENTILES:
            row[key] = tally.latency.percentile(float(key[1:]) / 100)
        row["max"] = tally.latency.maximum / 1e6 if tally.latency.count else None
        rows.append(row)
    return rows


def machine() -> dict[str, Any]:
    from cliffracer_core.core import VERSION

    return {
        "host": socket.gethostname(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cliffracer": VERSION,
    }


def shown_seconds(value: float | None) -> str:
    return "-" if value is None else format_seconds(value)


def render(summary: dict[str, Any]) -> list[str]:
    """The text summary printed at the end of a run."""
    plan = summary["plan"]
    names = ", ".join(target["name"] for target in plan["targets"])
    level = "req/s" if plan["model"] == OPEN else "users"
    steps = [stage["level"] for stage in plan["stages"]]
    if plan["start_level"] != steps[0]:
        steps.insert(0, plan["start_level"])
    levels = " → ".join(f"{step:g}" for step in steps)
    span = format_seconds(plan["duration"])
    if plan["max_requests"]:
        span = f"{plan['max_requests']} requests" + (
            f" within {span}" if plan["duration"] < UNBOUNDED else ""
        )
    heading = f"Load test of {names}: {plan['model']} model, {levels} {level}, {span}"
    if plan["warmup"]:
        heading += f" (first {format_seconds(plan['warmup'])} warm-up, not counted)"
    if summary["interrupted"]:
        heading += " (interrupted)"
    counts = f"{summary['ok']} ok, {summary['errors']} errors"
    if summary["expected_errors"]:
        counts += f", {summary['expected_errors']} expected errors"
    if summary["server_errors"]:
        counts += f", {summary['server_errors']} of them 5xx or unanswered"
    lines = [heading, "", f"requests   {summary['requests']}  ({counts})"]
    if summary["errors_by_type"]:
        lines.append(
            "errors     "
            + ", ".join(
                f"{outcome}: {count}" for outcome, count in summary["errors_by_type"].items()
            )
        )
    if summary["expected_by_type"]:
        expected = summary["expected_by_type"].items()
        lines.append("expected   " + ", ".join(f"{kind}: {count}" for kind, count in expected))
    rate = f"{summary['achieved_rate']:.1f} req/s"
    if summary["target_rate"]:
        rate += f" (target {summary['target_rate']:.1f} req/s)"
    lines.append(f"rate       {rate}")
    latency = summary["latency"]
    lines.append(
        "latency    "
        + "  ".join(f"{key} {shown_seconds(latency.get(key))}" for key in LATENCY_SHOWN)
    )
    if summary["max_send_lag"] > 0.1:
        lines.append(
            f"note       the generator sent up to {format_seconds(summary['max_send_lag'])} late "
            "(counted in the latencies): it may be the bottleneck."
        )
    if summary.get("handled"):
        lines += render_handled(summary["handled"])
    if summary.get("websocket"):
        lines += render_websocket(summary["websocket"])
    if len(summary["targets"]) > 1:
        lines += ["", *format_table(TARGET_HEADINGS, target_rows(summary))]
    if summary.get("server"):
        lines += ["", *render_server(summary["server"])]
    if summary.get("baseline"):
        comparison = summary["baseline"]
        lines += [
            "",
            f"{baseline.heading(comparison)}:",
            *format_table(baseline.HEADINGS, baseline.rows(comparison), indent="  "),
        ]
    lines.append("")
    for result in summary["thresholds"]:
        mark = "pass" if result["passed"] else "FAIL"
        lines.append(f"{mark}  {result['threshold']}  ({result['shown']})")
    lines.append("PASSED" if summary["passed"] else "FAILED: " + "; ".join(summary["failures"]))
    return lines


TARGET_HEADINGS = ["TARGET", "REQUESTS", "ERRORS", "P50", "P99"]
SERVER_HEADINGS = ["ENDPOINT", "REQUESTS", "ERRORS", "AVG PROCESSING", "INSTANCES"]


def target_rows(summary: dict[str, Any]) -> list[list[Any]]:
    """Per target: requests, errors, p50 and p99 (the text summary's table and the report's)."""
    return [
        [
            name,
            figures["requests"],
            figures["errors"],
            shown_seconds(figures["latency"]["p50"]),
            shown_seconds(figures["latency"]["p99"]),
        ]
        for name, figures in summary["targets"].items()
    ]


def server_rows(server: dict[str, Any]) -> list[list[Any]]:
    """The services' counts of the targeted endpoints and of any other that was called."""
    return [
        [
            name,
            figures["num_requests"],
            figures["num_errors"],
            shown_seconds(figures["average_processing_time"]),
            figures["instances"],
        ]
        for name, figures in sorted(server["endpoints"].items())
        if figures["num_requests"] or name in server.get("targets", ())
    ]


def render_handled(handled: dict[str, Any]) -> list[str]:
    """--until-handled: how many events the handlers finished, and how long that took."""
    names = ", ".join(handler["handler"] for handler in handled["handlers"])
    lines = [f"handled    {handled['handled']} of {handled['published']} events by {names}"]
    latency = handled["latency"]
    if handled["handled"]:
        lines.append(
            "until handled  "
            + "  ".join(f"{key} {shown_seconds(latency.get(key))}" for key in LATENCY_SHOWN)
            + f"  (each at most {format_seconds(handled['poll_interval'])} and a STATS round "
            "trip late)"
        )
    if handled["catch_up"] is not None:
        lines.append(f"caught up  {shown_seconds(handled['catch_up'])} after the last publish")
    return lines


def render_websocket(websocket: dict[str, Any]) -> list[str]:
    """--websocket: the frames the subscribed clients got, and how long they took."""
    lines = [
        f"websocket  {websocket['delivered']} of {websocket['expected']} event frames to "
        f"{websocket['clients']} clients on {websocket['url']}"
    ]
    latency = websocket["latency"]
    if websocket["delivered"]:
        lines.append(
            "delivery   "
            + "  ".join(f"{key} {shown_seconds(latency.get(key))}" for key in LATENCY_SHOWN)
            + "  (publish to frame)"
        )
    return lines


def render_server(server: dict[str, Any]) -> list[str]:
    return [
        "The services' own count over the run ($SRV.STATS before and after, warm-up included):",
        *format_table(SERVER_HEADINGS, server_rows(server), indent="  "),
    ]
