"""A latency histogram that merges and serializes, with percentiles to 0.1 %.

HDR histograms' layout in a few lines: a value (in microseconds) below 2048 has a bucket of its
own; a larger one shares a bucket with the values that agree in their top 11 bits, so any
percentile is within 1/1024 of the true value up to any latency. Buckets are a sparse dict, so
histograms of one-second windows stay small, and two histograms merge by adding counts
(the windows into a run's total, the processes of one run into one).
"""

from __future__ import annotations

import math
from typing import Any

SIGNIFICANT_BITS = 11


def bucket_of(value: int) -> int:
    shift = max(0, value.bit_length() - SIGNIFICANT_BITS)
    return (shift << SIGNIFICANT_BITS) | (value >> shift)


def value_of(bucket: int) -> int:
    """The highest value a bucket holds (HDR reports the bucket's upper edge too)."""
    shift = bucket >> SIGNIFICANT_BITS
    mantissa = bucket & ((1 << SIGNIFICANT_BITS) - 1)
    return ((mantissa + 1) << shift) - 1 if shift else mantissa


class Histogram:
    """Counts of latencies in microseconds; exact count, minimum, maximum and total."""

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.count = 0
        self.total = 0
        self.minimum: int | None = None
        self.maximum = 0

    def record(self, seconds: float) -> None:
        # Once per answer: bucket_of inlined, and comparisons instead of min() and max().
        value = round(seconds * 1_000_000)
        if value < 0:
            value = 0
        shift = value.bit_length() - SIGNIFICANT_BITS
        bucket = (shift << SIGNIFICANT_BITS) | (value >> shift) if shift > 0 else value
        buckets = self.buckets
        buckets[bucket] = buckets.get(bucket, 0) + 1
        self.count += 1
        self.total += value
        if value > self.maximum:
            self.maximum = value
        if self.minimum is None or value < self.minimum:
            self.minimum = value

    def merge(self, other: Histogram) -> None:
        for bucket, count in other.buckets.items():
            self.buckets[bucket] = self.buckets.get(bucket, 0) + count
        self.count += other.count
        self.total += other.total
        self.maximum = max(self.maximum, other.maximum)
        if other.minimum is not None:
            self.minimum = (
                other.minimum if self.minimum is None else min(self.minimum, other.minimum)
            )

    def percentile(self, fraction: float) -> float | None:
        """The latency in seconds that ``fraction`` (0.99 for p99) of the values do not
        exceed; None when empty."""
        if not self.count:
            return None
        # The rank of the value sought; the small margin keeps 0.99 * 100 from rounding up.
        rank = max(1, math.ceil(fraction * self.count - 1e-9))
        seen = 0
        for bucket in sorted(self.buckets):
            seen += self.buckets[bucket]
            if seen >= rank:
                return min(value_of(bucket), self.maximum) / 1_000_000
        return self.maximum / 1_000_000

    @property
    def mean(self) -> float | None:
        return self.total / self.count / 1_000_000 if self.count else None

    def to_json(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "total_us": self.total,
            "min_us": self.minimum,
            "max_us": self.maximum,
            "buckets": {str(bucket): count for bucket, count in sorted(self.buckets.items())},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Histogram:
        histogram = cls()
        histogram.buckets = {int(bucket): int(count) for bucket, count in data["buckets"].items()}
        histogram.count = int(data["count"])
        histogram.total = int(data["total_us"])
        histogram.minimum = data.get("min_us")
        histogram.maximum = int(data["max_us"])
        return histogram
