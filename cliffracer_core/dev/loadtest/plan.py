"""What a run does: its targets, its load model and its stages.

Two load models. **Open**: requests arrive at a planned rate whether or not the earlier ones
were answered, as users of a public service do; each request's latency counts from the time it
was *planned* to be sent, so a server (or a generator) that stalls shows as latency instead of
as fewer requests: no coordinated omission. **Closed**: N virtual users, each sending its next
request when its last one is answered (after an optional think time), as a fixed pool of
callers does.

Stages change the level (requests per second, or users) linearly from the level before to
their own over their duration: ``0 → 200 over 60 s`` is a ramp, equal levels a plateau.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Literal

OPEN = "open"
CLOSED = "closed"
Model = Literal["open", "closed"]


@dataclass(frozen=True)
class Target:
    """One thing to send: an RPC endpoint (``service.method``), an event subject, or an HTTP
    URL (``subject`` is then the URL, and ``method`` its HTTP method)."""

    name: str
    kind: Literal["rpc", "event", "http"]
    subject: str
    body: bytes
    weight: float = 1.0
    public: bool = False  # declared public: called anonymously, as its usual callers do
    method: str = ""
    # A BodyTemplate (payloads.py) when the body varies: a new body per request, and ``body``
    # is the first one made.
    payload: Any = field(default=None, compare=False)

    def describe(self) -> dict[str, Any]:
        varying = {}
        if self.payload is not None:
            varying = {
                "body_varies": True,
                "body_bytes_min": self.payload.smallest,
                "body_bytes_max": self.payload.largest,
            }
        return {
            "name": self.name,
            "kind": self.kind,
            "subject": self.subject,
            "weight": self.weight,
            "body_bytes": len(self.body),
            "public": self.public,
            **({"method": self.method} if self.method else {}),
            **varying,
        }


@dataclass(frozen=True)
class Stage:
    """Over ``duration`` seconds, move linearly to ``level`` (req/s or users)."""

    duration: float
    level: float


@dataclass
class LoadPlan:
    """A whole run: who is sent what, how fast, for how long."""

    model: Model
    stages: list[Stage]
    targets: list[Target]
    timeout: float
    start_level: float | None = None  # None: the first stage's level (no ramp up to it)
    warmup: float = 0.0
    max_requests: int | None = None
    think_time: float = 0.0
    name: str = ""
    seed: int | None = None
    invalid_share: float = 0.0  # the share of requests sent with a malformed body (--invalid)
    # With --processes N, process ``share`` (0 to N-1) sends every N-th planned request (open
    # model) or runs every N-th user (closed model); its max_requests is its own part.
    share: int = 0
    shares: int = 1
    choices: random.Random = field(default_factory=random.Random, repr=False)

    def __post_init__(self) -> None:
        if self.seed is not None:
            self.choices.seed(self.seed + self.share)
        self.weights = [target.weight for target in self.targets]

    @property
    def duration(self) -> float:
        return sum(stage.duration for stage in self.stages)

    @property
    def first_level(self) -> float:
        return self.stages[0].level if self.start_level is None else self.start_level

    def level_at(self, elapsed: float) -> float:
        """The planned rate or number of users ``elapsed`` seconds into the run."""
        level, begun = self.first_level, 0.0
        for stage in self.stages:
            if elapsed < begun + stage.duration:
                share = (elapsed - begun) / stage.duration if stage.duration else 1.0
                return level + (stage.level - level) * share
            level, begun = stage.level, begun + stage.duration
        return level

    def planned_requests(self) -> float | None:
        """How many requests the open model plans (None for the closed model)."""
        if self.model != OPEN:
            return None
        total, level = 0.0, self.first_level
        for stage in self.stages:
            total += (level + stage.level) / 2 * stage.duration
            level = stage.level
        return total if self.max_requests is None else min(total, self.max_requests)

    def target_rate(self) -> float | None:
        """The open model's planned rate, averaged over the span its requests are planned in
        (None for the closed model)."""
        if self.model != OPEN:
            return None
        if self.max_requests is None:
            planned = self.planned_requests()
            return planned / self.duration if planned and self.duration else None
        # Bounded by a number of requests: the rate up to the last one of them.
        count, last = 0, 0.0
        for count, last in enumerate(self.send_times(), 1):  # noqa: B007
            if count >= self.max_requests:
                break
        return count / last if last else None

    def send_times(self) -> Iterator[float]:
        """The open model's planned send times, in seconds from the start.

        Within a stage the rate is r(t) = r0 + (r1 - r0) t / D, so the number planned by t is
        N(t) = r0 t + (r1 - r0) t² / 2D; the n-th request goes when N(t) = n.
        """
        begun, level, planned = 0.0, self.first_level, 0.0
        number = 1
        for stage in self.stages:
            start_rate, end_rate, length = level, stage.level, stage.duration
            in_stage = (start_rate + end_rate) / 2 * length
            while number <= planned + in_stage + 1e-9:
                if (number - 1) % self.shares == self.share:
                    yield begun + _time_of(number - planned, start_rate, end_rate, length)
                number += 1
            planned += in_stage
            begun += length
            level = end_rate

    def part(self, share: int, shares: int) -> LoadPlan:
        """The part of this plan that process ``share`` of ``shares`` runs."""
        requests = self.max_requests
        if requests is not None:
            requests = requests // shares + (1 if share < requests % shares else 0)
        return replace(
            self, share=share, shares=shares, max_requests=requests, choices=random.Random()
        )

    def takes_invalid(self, target: Target) -> bool:
        """Whether this request of ``target`` is one of the deliberately invalid ones."""
        if not self.invalid_share or target.kind == "event":
            return False
        if target.kind == "http" and target.method not in ("POST", "PUT", "PATCH"):
            return False
        return self.choices.random() < self.invalid_share

    def choose(self) -> Target:
        if len(self.targets) == 1:
            return self.targets[0]
        return self.choices.choices(self.targets, self.weights)[0]

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.model,
            "start_level": self.first_level,
            "stages": [{"duration": stage.duration, "level": stage.level} for stage in self.stages],
            "duration": self.duration,
            "warmup": self.warmup,
            "max_requests": self.max_requests,
            "think_time": self.think_time,
            "invalid_share": self.invalid_share,
            "timeout": self.timeout,
            "targets": [target.describe() for target in self.targets],
        }


def _time_of(count: float, start_rate: float, end_rate: float, length: float) -> float:
    """When, within a stage, ``count`` requests have been planned."""
    if length <= 0:
        return 0.0
    slope = (end_rate - start_rate) / length
    if abs(slope) < 1e-12:
        return count / start_rate
    # slope/2 t² + r0 t - count = 0, the root that is reached first
    discriminant = start_rate * start_rate + 2 * slope * count
    return (-start_rate + math.sqrt(max(0.0, discriminant))) / slope
