"""Latency histograms: one fixed set of buckets, re-binning, merging and quantiles.

The runner reports each endpoint's histogram in its ``$SRV.STATS`` ``data`` (counts per bucket,
with the buckets' upper bounds); the monitor stores counts on the bounds below, so that
histograms of any instance, in any language, add up.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence
from typing import Any

from cliffracer_core.core.figures import DURATION_BUCKETS

# Upper bounds in seconds; a histogram has one more count, for what is slower than the last.
BOUNDS: tuple[float, ...] = tuple(DURATION_BUCKETS)
SIZE = len(BOUNDS) + 1
# Counts beyond a 64-bit integer are nonsense from a reply, and kept from the database.
MAX_COUNT = 2**63 - 1


def empty() -> list[int]:
    return [0] * SIZE


def from_stats(data: Any) -> list[int] | None:
    """The counts of an endpoint's STATS ``data`` on ``BOUNDS``, or None when it has none.

    Counts on other bounds move to the first of ours at or above theirs, so a quantile read
    from them errs on the slow side.
    """
    histogram = data.get("latency_histogram") if isinstance(data, dict) else None
    if not isinstance(histogram, dict):
        return None
    bounds = histogram.get("bounds")
    counts = histogram.get("counts")
    if not isinstance(bounds, list) or not isinstance(counts, list):
        return None
    if len(counts) != len(bounds) + 1:
        return None
    try:
        counts = [_count(count) for count in counts]
        if [float(bound) for bound in bounds] == list(BOUNDS):
            return counts
        result = empty()
        for bound, count in zip([*bounds, float("inf")], counts, strict=True):
            index = bisect_left(BOUNDS, float(bound))
            result[index] = min(result[index] + count, MAX_COUNT)
    except (TypeError, ValueError, OverflowError):
        return None
    return result


def _count(value: Any) -> int:
    """A bucket's count from a reply: a whole number from 0 to MAX_COUNT (a float is cut)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{value!r} is not a count")
    return min(max(int(value), 0), MAX_COUNT)


def subtract(current: Sequence[int], previous: Sequence[int] | None) -> list[int]:
    """Counts added since ``previous``; a bucket that went down means the counts restarted."""
    if previous is None or len(previous) != len(current):
        return list(current)
    if any(now < before for now, before in zip(current, previous, strict=True)):
        return list(current)
    return [now - before for now, before in zip(current, previous, strict=True)]


def merge(histograms: Iterable[Sequence[int] | None]) -> list[int]:
    total = empty()
    for histogram in histograms:
        if histogram and len(histogram) == SIZE:
            for index, count in enumerate(histogram):
                total[index] += count
    return total


def quantile(counts: Sequence[int], q: float) -> float | None:
    """The ``q`` quantile in seconds, interpolated within its bucket (as Prometheus does).

    None when there are no counts; the last bound when the quantile is beyond it.
    """
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for index, count in enumerate(counts):
        if count and seen + count >= rank:
            if index >= len(BOUNDS):
                return BOUNDS[-1]
            lower = BOUNDS[index - 1] if index else 0.0
            upper = BOUNDS[index]
            return lower + (upper - lower) * (rank - seen) / count
        seen += count
    return BOUNDS[-1]
