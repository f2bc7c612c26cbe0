"""``--fail-on 'p99<250ms,errors<1%'``: the conditions a run must meet to pass.

A malformed expression is refused before any load is sent (``ThresholdError`` names the part
that is wrong), so CI never runs for minutes to fail on a typo.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cliffracer_core.dev.loadtest.units import format_seconds, parse_duration

COMPARISONS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "<": operator.lt,
    ">": operator.gt,
}
EXPRESSION = re.compile(r"^\s*([A-Za-z][A-Za-z0-9_.]*)\s*(<=|>=|<|>)\s*([^\s<>=]+)\s*$")
PERCENTILE = re.compile(r"^p(\d{1,2}(?:\.\d+)?)$")
LATENCY_ALIASES = {"median": "p50", "mean": "mean", "avg": "mean", "max": "max", "min": "min"}
ERROR_METRICS = {"errors", "server_errors"}
RATE_METRICS = {"rps", "throughput"}
COUNT_METRICS = {"requests"}
EXAMPLE = "p99<250ms,errors<1%,rps>=100"


class ThresholdError(ValueError):
    """A ``--fail-on`` expression that cannot be read."""


@dataclass(frozen=True)
class Threshold:
    """One condition: ``metric`` (p99, errors, rps ...) compared with ``limit``."""

    text: str
    metric: str
    comparison: str
    limit: float
    share: bool = False  # errors given as a percentage of the requests

    def measure(self, summary: dict[str, Any]) -> float | None:
        """The figure this threshold judges, from a run's summary (None: nothing measured)."""
        if self.metric in ERROR_METRICS:
            count = summary["errors"] if self.metric == "errors" else summary["server_errors"]
            if not self.share:
                return float(count)
            return 100.0 * count / summary["requests"] if summary["requests"] else None
        if self.metric in RATE_METRICS:
            return summary["achieved_rate"]
        if self.metric in COUNT_METRICS:
            return float(summary["requests"])
        return summary["latency"].get(self.metric)

    def check(self, summary: dict[str, Any]) -> dict[str, Any]:
        value = self.measure(summary)
        # Nothing measured (no request answered) meets no threshold.
        passed = value is not None and COMPARISONS[self.comparison](value, self.limit)
        return {"threshold": self.text, "value": value, "shown": self.show(value), "passed": passed}

    def show(self, value: float | None) -> str:
        if value is None:
            return "not measured"
        if self.metric in ERROR_METRICS:
            return f"{value:.2f}%" if self.share else f"{value:.0f}"
        if self.metric in RATE_METRICS:
            return f"{value:.1f} req/s"
        if self.metric in COUNT_METRICS:
            return f"{value:.0f}"
        return format_seconds(value)


def latency_key(name: str) -> str | None:
    """``p99`` → ``p99``, ``median`` → ``p50``; None for a name that is no latency figure."""
    name = LATENCY_ALIASES.get(name, name)
    if name in ("mean", "max", "min"):
        return name
    match = PERCENTILE.match(name)
    if match and 0 < float(match.group(1)) < 100:
        return f"p{match.group(1)}"
    return None


def parse_threshold(text: str) -> Threshold:
    match = EXPRESSION.match(text)
    if match is None:
        raise ThresholdError(
            f"{text.strip()!r} is not a threshold: write METRIC<VALUE, e.g. {EXAMPLE}."
        )
    name, comparison, value = match.group(1).lower(), match.group(2), match.group(3)
    if name in ERROR_METRICS or name in RATE_METRICS or name in COUNT_METRICS:
        share = value.endswith("%")
        if share and name not in ERROR_METRICS:
            raise ThresholdError(f"{text.strip()!r}: only errors take a percentage.")
        number = value.removesuffix("%").removesuffix("/s").removesuffix("req")
        try:
            limit = float(number)
        except ValueError:
            raise ThresholdError(f"{text.strip()!r}: {value!r} is not a number.") from None
        if share and not 0 <= limit <= 100:
            raise ThresholdError(f"{text.strip()!r}: a percentage is between 0 and 100.")
        return Threshold(text.strip(), name, comparison, limit, share=share)
    key = latency_key(name)
    if key is None:
        raise ThresholdError(
            f"{text.strip()!r}: unknown metric {name!r}; use p50, p90, p95, p99, p99.9, mean, "
            "max, errors, server_errors, rps or requests."
        )
    try:
        limit = parse_duration(value, default_unit="ms")
    except ValueError:
        raise ThresholdError(
            f"{text.strip()!r}: {value!r} is not a latency (examples: 250ms, 1.5s)."
        ) from None
    return Threshold(text.strip(), key, comparison, limit)


def parse_thresholds(text: str) -> list[Threshold]:
    """Every threshold of a comma-separated ``--fail-on`` expression."""
    parts = [part for part in text.split(",")]
    if not text.strip() or any(not part.strip() for part in parts):
        raise ThresholdError(f"--fail-on {text!r} has an empty condition; e.g. {EXAMPLE}.")
    return [parse_threshold(part) for part in parts]
