"""``--baseline previous.json``: this run against an earlier one, regressions marked.

Compared: the rate achieved, p50, p90 and p99 of the successful requests, and the share of
errors. A latency or error figure worse than the earlier one by more than the tolerance (10 %
by default; the error share by more than one percentage point too), or a rate lower by more
than it, is a regression, and a regression fails the run, as a missed threshold does. Machines
differ: compare runs of the same scenario on the same machine.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cliffracer_core.dev.loadtest.units import format_seconds

LATENCIES = ("p50", "p90", "p99")
# An error share may rise by this many percentage points before it counts as a regression.
ERROR_POINTS = 1.0


class BaselineError(ValueError):
    """A baseline file that cannot be read as an earlier run's JSON."""


def read_baseline(path: Path) -> dict[str, Any]:
    try:
        values = json.loads(path.read_text())
    except OSError as error:
        raise BaselineError(f"cannot read the baseline {path}: {error.strerror}.") from None
    except ValueError as error:
        raise BaselineError(f"the baseline {path} is not JSON: {error}.") from None
    if not isinstance(values, dict) or not {"latency", "achieved_rate", "requests"} <= set(values):
        raise BaselineError(f"{path} is not the --json output of a load test.")
    values["file"] = str(path)
    return values


def error_share(summary: dict[str, Any]) -> float | None:
    return 100.0 * summary["errors"] / summary["requests"] if summary.get("requests") else None


def compare(summary: dict[str, Any], baseline: dict[str, Any], tolerance: float) -> dict[str, Any]:
    """Each figure before and now, its change, and whether it regressed."""
    rows = []

    def add(name: str, before: float | None, now: float | None, *, higher_is_worse: bool) -> None:
        if before is None or now is None:
            rows.append({"figure": name, "before": before, "now": now, "change": None,
                         "regression": False})  # fmt: skip
            return
        if name == "errors":
            # A share: its change in percentage points, not relative to a share that may be 0.
            change = now - before
            worse = change > max(ERROR_POINTS, before * tolerance)
        else:
            change = (now - before) / before if before else 0.0
            worse = change > tolerance if higher_is_worse else change < -tolerance
        rows.append(
            {"figure": name, "before": before, "now": now, "change": change, "regression": worse}
        )

    add("rate", baseline["achieved_rate"], summary["achieved_rate"], higher_is_worse=False)
    for key in LATENCIES:
        add(key, baseline["latency"].get(key), summary["latency"].get(key), higher_is_worse=True)
    add("errors", error_share(baseline), error_share(summary), higher_is_worse=True)
    return {"file": baseline["file"], "started": baseline.get("started"), "tolerance": tolerance,
            "figures": rows}  # fmt: skip


def shown(name: str, value: float | None) -> str:
    if value is None:
        return "-"
    if name == "rate":
        return f"{value:.1f} req/s"
    if name == "errors":
        return f"{value:.2f}%"
    return format_seconds(value)


HEADINGS = ["FIGURE", "BEFORE", "NOW", "CHANGE", ""]


def heading(comparison: dict[str, Any]) -> str:
    """``Against the baseline FILE (when), tolerance 10%``."""
    return (
        f"Against the baseline {comparison['file']} ({comparison['started'] or '?'}), "
        f"tolerance {comparison['tolerance'] * 100:g}%"
    )


def shown_change(row: dict[str, Any]) -> str:
    if row["change"] is None:
        return "-"
    if row["figure"] == "errors":
        return f"{row['change']:+.2f} points"
    return f"{row['change'] * 100:+.1f}%"


def rows(comparison: dict[str, Any]) -> list[list[str]]:
    """One row per figure: name, before, now, change, and REGRESSION when it is one."""
    return [
        [
            row["figure"],
            shown(row["figure"], row["before"]),
            shown(row["figure"], row["now"]),
            shown_change(row),
            "REGRESSION" if row["regression"] else "",
        ]
        for row in comparison["figures"]
    ]
