"""Durations as people type them on a command line or in a scenario file."""

from __future__ import annotations

import re

DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(us|µs|ms|s|m|h)?\s*$")
SECONDS_PER_UNIT = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str | float | int, *, default_unit: str = "s") -> float:
    """Seconds in ``"60s"``, ``"2m"``, ``"500ms"``, ``"1.5h"``; a bare number is in
    ``default_unit``. ValueError names what is wrong."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        return float(text) * SECONDS_PER_UNIT[default_unit]
    match = DURATION.match(str(text))
    if match is None:
        raise ValueError(f"{text!r} is not a duration (examples: 60s, 2m, 250ms, 1h).")
    return float(match.group(1)) * SECONDS_PER_UNIT[match.group(2) or default_unit]


def format_seconds(seconds: float) -> str:
    """``250 ms``, ``1.50 s``, ``2m00s``: a latency or a span of a run."""
    if seconds < 1:
        return f"{seconds * 1000:.3g} ms" if seconds * 1000 < 100 else f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest:02d}s"
