"""Line charts as inline SVG, drawn on the server: no JavaScript library, no CDN, no build step."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe
from django.utils.timezone import localtime

if TYPE_CHECKING:
    from cliffracer_core.contrib.operations.figures import HistoryPoint

WIDTH = 380
HEIGHT = 170
LEFT, RIGHT, TOP, BOTTOM = 44, 10, 26, 22

# Colours readable on the admin's light and dark themes.
BLUE = "#2f7dbf"
RED = "#d0452f"
ORANGE = "#d98b1c"
GREY = "#8a8a8a"


@dataclass
class Series:
    """One line: a value per point (None where there is none: the line breaks there)."""

    label: str
    values: Sequence[float | None]
    color: str = BLUE


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 times a power of ten at or above ``value``."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * power * (1 + 1e-9):
            return step * power
    return 10 * power


def format_number(value: float) -> str:
    if value >= 1_000_000:
        return f"{value / 1_000_000:.3g}M"
    if value >= 1000:
        return f"{value / 1000:.3g}k"
    if value == 0:
        return "0"
    return f"{value:.3g}"


def line_chart(
    *,
    title: str,
    series: Sequence[Series],
    x_labels: Sequence[tuple[int, str]],
    unit: str = "",
    empty_text: str = "no data",
    width: int = WIDTH,
    height: int = HEIGHT,
) -> SafeString:
    """An SVG line chart of ``series`` (all of the same length), with ``x_labels`` as
    (point index, text) under the axis and the y axis from 0 to a round maximum."""
    points = max((len(line.values) for line in series), default=0)
    top_value = max(
        (value for line in series for value in line.values if value is not None), default=0.0
    )
    y_max = nice_ceiling(top_value)
    plot_width = width - LEFT - RIGHT
    plot_height = height - TOP - BOTTOM

    def x_of(index: int) -> float:
        return LEFT + (plot_width * index / (points - 1) if points > 1 else plot_width / 2)

    def y_of(value: float) -> float:
        return TOP + plot_height * (1 - value / y_max)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="cliffracer-chart" role="img" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'aria-label="{escape(title)}" font-family="sans-serif" font-size="11">',
        f"<title>{escape(title)}</title>",
        f'<text x="{LEFT}" y="14" fill="currentColor" font-weight="bold">{escape(title)}'
        + (f" ({escape(unit)})" if unit else "")
        + "</text>",
    ]
    # Legend, right-aligned on the title line.
    legend_x = width - RIGHT
    for line in reversed(series):
        parts.append(
            f'<text x="{legend_x}" y="14" text-anchor="end" fill="{line.color}">'
            f"{escape(line.label)}</text>"
        )
        legend_x -= 8 + 6.5 * len(line.label)
    # Grid and y labels at 0, half and the top.
    for fraction in (0.0, 0.5, 1.0):
        y = y_of(y_max * fraction)
        parts.append(
            f'<line x1="{LEFT}" y1="{y:.1f}" x2="{width - RIGHT}" y2="{y:.1f}" '
            f'stroke="{GREY}" stroke-opacity="0.35" stroke-width="1"/>'
        )
        parts.append(
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" fill="currentColor">'
            f"{format_number(y_max * fraction)}</text>"
        )
    for index, label in x_labels:
        if 0 <= index < max(points, 1):
            anchor = "start" if index == 0 else "end" if index == points - 1 else "middle"
            parts.append(
                f'<text x="{x_of(index):.1f}" y="{height - 6}" text-anchor="{anchor}" '
                f'fill="currentColor">{escape(label)}</text>'
            )
    for line in series:
        segment: list[str] = []
        segments: list[list[str]] = []
        for index, value in enumerate(line.values):
            if value is None:
                if segment:
                    segments.append(segment)
                segment = []
                continue
            segment.append(f"{x_of(index):.1f},{y_of(value):.1f}")
        if segment:
            segments.append(segment)
        for coordinates in segments:
            if len(coordinates) == 1:
                x, y = coordinates[0].split(",")
                parts.append(f'<circle cx="{x}" cy="{y}" r="2" fill="{line.color}"/>')
            else:
                parts.append(
                    f'<polyline fill="none" stroke="{line.color}" stroke-width="1.5" '
                    f'stroke-linejoin="round" points="{" ".join(coordinates)}">'
                    f"<title>{escape(line.label)}</title></polyline>"
                )
    if top_value == 0:
        parts.append(
            f'<text x="{LEFT + plot_width / 2:.1f}" y="{TOP + plot_height / 2:.1f}" '
            f'text-anchor="middle" fill="{GREY}">{escape(empty_text)}</text>'
        )
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308  (every text above is escaped)


def service_charts(points: Sequence[HistoryPoint], *, time_format: str) -> list[SafeString]:
    """Requests, errors (4xx and 5xx apart) and latency of one service over ``points``
    (figures.history)."""
    last = len(points) - 1
    labels = [(0, f"{localtime(points[0].start):{time_format}}"), (last, "now")] if points else []
    if len(points) > 2:
        labels.insert(1, (last // 2, f"{localtime(points[last // 2].start):{time_format}}"))
    return [
        line_chart(
            title="Requests",
            unit="per minute",
            series=[Series("requests", [p.requests_per_minute for p in points], BLUE)],
            x_labels=labels,
            empty_text="no requests",
        ),
        line_chart(
            title="Errors",
            unit="per minute",
            series=[
                Series("4xx", [p.client_errors_per_minute for p in points], ORANGE),
                Series("5xx", [p.server_errors_per_minute for p in points], RED),
            ],
            x_labels=labels,
            empty_text="no errors",
        ),
        line_chart(
            title="Latency",
            unit="ms",
            series=[
                Series("average", [p.average_ms for p in points], BLUE),
                Series("p95", [p.p95_ms for p in points], ORANGE),
            ],
            x_labels=labels,
            empty_text="no requests",
        ),
    ]
