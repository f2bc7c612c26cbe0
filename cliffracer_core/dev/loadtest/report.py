"""The HTML report of a run: one self-contained page that opens offline.

No script, no stylesheet or font from elsewhere: the charts are inline SVG drawn here from the
run's figures (throughput, latency percentiles and errors over time, the latency by
percentile), so the file can be kept as a CI artifact or mailed and still show everything.
The run's whole JSON travels in the page too (``<script type="application/json">``), so a
report is also the data it was drawn from.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from html import escape
from typing import Any

from cliffracer_core.dev.loadtest import baseline
from cliffracer_core.dev.loadtest.histogram import Histogram
from cliffracer_core.dev.loadtest.results import (
    LATENCY_SHOWN,
    SERVER_HEADINGS,
    TARGET_HEADINGS,
    server_rows,
    shown_seconds,
    target_rows,
)

WIDTH, HEIGHT = 760, 260
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 28, 40
LEGEND_WIDTH = 80
COLOURS = ("#1f77b4", "#ff7f0e", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2")
SPECTRUM = (0, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 99.95, 99.99, 100)

Point = tuple[float, float | None]
Series = tuple[str, list[Point]]

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 820px; color: #222; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.1rem; margin-top: 2rem; }
table { border-collapse: collapse; margin: .5rem 0; }
td, th { padding: .2rem .7rem; border-bottom: 1px solid #ddd; text-align: left; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
.passed { color: #1a7f37; font-weight: bold; } .failed { color: #c62828; font-weight: bold; }
svg.chart { display: block; margin: .5rem 0 1rem; background: #fff; }
svg.chart text { font: 11px system-ui, sans-serif; fill: #444; }
svg.chart .grid { stroke: #e6e6e6; } svg.chart .axis { stroke: #888; }
"""


def nice_ceiling(value: float) -> float:
    """A round number at or above ``value`` for the top of an axis (1, 2, 2.5, 5 × 10^n)."""
    if value <= 0:
        return 1.0
    magnitude = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * magnitude:
            return step * magnitude
    return 10 * magnitude


def line_chart(
    title: str,
    series: Sequence[Series],
    *,
    unit: str,
    x_label: str,
    x_values: Sequence[str] | None = None,
    note: str = "",
) -> str:
    """An SVG line chart; a None value breaks its line (no answer that second). ``note`` is
    written across the plot (why it is empty)."""
    points = [point for _, values in series for point in values]
    xs = [x for x, _ in points] or [0.0, 1.0]
    ys = [y for _, y in points if y is not None] or [0.0]
    x_low, x_high = min(xs), max(xs)
    if x_high == x_low:
        x_high = x_low + 1
    y_high = nice_ceiling(max(ys))
    plot_width, plot_height = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def place(x: float, y: float) -> tuple[float, float]:
        return (
            LEFT + (x - x_low) / (x_high - x_low) * plot_width,
            TOP + plot_height - y / y_high * plot_height,
        )

    parts = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" '
        f'height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img">',
        f"<title>{escape(title)}</title>",
        f'<text x="{LEFT}" y="16" font-weight="bold">{escape(title)} ({escape(unit)})</text>',
    ]
    for step in range(5):
        value = y_high * step / 4
        _, y = place(x_low, value)
        parts.append(
            f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>'
        )
        parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{value:g}</text>')
    ticks = x_values or [f"{x_low + (x_high - x_low) * step / 5:g}" for step in range(6)]
    for index, label in enumerate(ticks):
        share = index / (len(ticks) - 1) if len(ticks) > 1 else 0
        x = LEFT + share * plot_width
        parts.append(
            f'<text x="{x:.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle">'
            f"{escape(label)}</text>"
        )
    parts.append(
        f'<line class="axis" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{TOP + plot_height}" '
        f'y2="{TOP + plot_height}"/>'
    )
    parts.append(
        f'<text x="{LEFT + plot_width / 2:.1f}" y="{HEIGHT - 6}" text-anchor="middle">'
        f"{escape(x_label)}</text>"
    )
    for index, (label, values) in enumerate(series):
        colour = COLOURS[index % len(COLOURS)]
        for segment in segments(values):
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in (place(px, py) for px, py in segment))
            if len(segment) == 1:
                x, y = place(*segment[0])
                parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2" fill="{colour}"/>')
            else:
                parts.append(
                    f'<polyline fill="none" stroke="{colour}" stroke-width="1.6" '
                    f'points="{path}"><title>{escape(label)}</title></polyline>'
                )
        # The legend sits in the heading's line, right-aligned, clear of the lines.
        legend_x = WIDTH - RIGHT - (len(series) - index) * LEGEND_WIDTH
        parts.append(
            f'<rect x="{legend_x}" y="7" width="10" height="10" fill="{colour}"/>'
            f'<text x="{legend_x + 14}" y="16">{escape(label)}</text>'
        )
    if note:
        parts.append(
            f'<text x="{LEFT + plot_width / 2:.1f}" y="{TOP + plot_height / 2:.1f}" '
            f'text-anchor="middle">{escape(note)}</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts)


def segments(values: Sequence[Point]) -> list[list[tuple[float, float]]]:
    """Runs of points with a value; None splits them."""
    runs: list[list[tuple[float, float]]] = [[]]
    for x, y in values:
        if y is None:
            if runs[-1]:
                runs.append([])
        else:
            runs[-1].append((x, y))
    return [run for run in runs if run]


def milliseconds(value: float | None) -> float | None:
    return None if value is None else value * 1000


def charts(summary: dict[str, Any]) -> list[str]:
    """The report's pictures, from the run's timeline and histogram."""
    rows = summary["timeline"]
    drawn = []
    throughput: list[Series] = [
        ("ok/s", [(row["second"], row["ok"]) for row in rows]),
        ("errors/s", [(row["second"], row["errors"]) for row in rows]),
    ]
    drawn.append(
        line_chart("Throughput", throughput, unit="requests per second", x_label="seconds")
    )
    # Beside the throughput: where the rate stops following the load, the system saturates.
    level = "requests per second" if summary["plan"]["model"] == "open" else "users"
    planned: list[Series] = [("planned", [(row["second"], row["level"]) for row in rows])]
    drawn.append(line_chart("Planned load", planned, unit=level, x_label="seconds"))
    latency: list[Series] = [
        (key, [(row["second"], milliseconds(row[key])) for row in rows]) for key in LATENCY_SHOWN
    ]
    drawn.append(
        line_chart("Latency percentiles", latency, unit="ms", x_label="seconds, by answer")
    )
    codes = sorted({code for row in rows for code in row["errors_by_code"]})
    errors: list[Series] = [
        (f"{code}", [(row["second"], row["errors_by_code"].get(code, 0)) for row in rows])
        for code in codes
    ] or [("errors", [(row["second"], 0) for row in rows])]
    drawn.append(line_chart("Errors by code", errors, unit="per second", x_label="seconds"))
    histogram = Histogram.from_json(summary["histogram"])
    spectrum = [
        (float(index), milliseconds(histogram.percentile(share / 100)))
        for index, share in enumerate(SPECTRUM)
    ]
    drawn.append(
        line_chart(
            "Latency by percentile",
            [("latency", spectrum)],
            unit="ms",
            x_label="percentile",
            x_values=[f"p{share:g}" for share in SPECTRUM],
            note="" if histogram.count else "No request succeeded: no latency to show.",
        )
    )
    return drawn


def table(headings: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{escape(str(heading))}</th>" for heading in headings)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="number">{escape(str(cell))}</td>'
            if isinstance(cell, int | float)
            else f"<td>{escape(str(cell))}</td>"
            for cell in row
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(summary: dict[str, Any], text: Sequence[str]) -> str:
    """The whole page; ``text`` is the terminal summary, shown as it was printed."""
    plan = summary["plan"]
    names = ", ".join(target["name"] for target in plan["targets"])
    verdict = (
        '<p class="passed">PASSED</p>'
        if summary["passed"]
        else f'<p class="failed">FAILED: {escape("; ".join(summary["failures"]))}</p>'
    )
    latency = summary["latency"]
    overview = table(
        ["requests", "ok", "errors", "achieved", "target", *LATENCY_SHOWN],
        [
            [
                summary["requests"],
                summary["ok"],
                summary["errors"],
                f"{summary['achieved_rate']:.1f} req/s",
                f"{summary['target_rate']:.1f} req/s" if summary["target_rate"] else "-",
                *(shown_seconds(latency.get(key)) for key in LATENCY_SHOWN),
            ]
        ],
    )
    sections = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Load test of {escape(names)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>Load test of {escape(names)}</h1>",
        f"<p>{escape(summary['started'])}, {escape(plan['model'])} model, "
        f"{escape(shown_seconds(plan['duration']))}"
        + (" (interrupted)" if summary["interrupted"] else "")
        + "</p>",
        verdict,
        overview,
        "<h2>Over time</h2>",
        *charts(summary),
    ]
    if summary["thresholds"]:
        rows = [
            [result["threshold"], result["shown"], "pass" if result["passed"] else "FAIL"]
            for result in summary["thresholds"]
        ]
        sections += ["<h2>Thresholds</h2>", table(["threshold", "measured", ""], rows)]
    if summary.get("baseline"):
        comparison = summary["baseline"]
        sections += [
            "<h2>Against the baseline</h2>",
            f"<p>{escape(baseline.heading(comparison))}.</p>",
            table([name.lower() for name in baseline.HEADINGS], baseline.rows(comparison)),
        ]
    if summary["errors_by_type"]:
        rows = [[outcome, count] for outcome, count in summary["errors_by_type"].items()]
        sections += ["<h2>Errors</h2>", table(["code and type", "count"], rows)]
    if summary["expected_by_type"]:
        rows = [[outcome, count] for outcome, count in summary["expected_by_type"].items()]
        sections += [
            "<h2>Expected errors</h2>",
            "<p>Answers to the requests sent invalid on purpose (<code>--invalid</code>).</p>",
            table(["code and type", "count"], rows),
        ]
    sections += [
        "<h2>By target</h2>",
        table([heading.lower() for heading in TARGET_HEADINGS], target_rows(summary)),
    ]
    if summary.get("server"):
        sections += [
            "<h2>The services' own view</h2>",
            "<p>From <code>$SRV.STATS</code> before and after the run (warm-up included): "
            "what the services counted, and their processing time without the network.</p>",
            table([heading.lower() for heading in SERVER_HEADINGS], server_rows(summary["server"])),
        ]
    sections += [
        "<h2>Summary as printed</h2>",
        f"<pre>{escape(chr(10).join(text))}</pre>",
        "<h2>Machine</h2>",
        table(list(summary["machine"]), [list(summary["machine"].values())]),
        # "</" inside the JSON would end the script element early.
        '<script type="application/json" id="loadtest-result">'
        + json.dumps(summary, default=str).replace("</", "<\\/")
        + "</script>",
        "</body></html>",
    ]
    return "\n".join(sections)
