"""``--until-handled``: how long events take from publish to their handlers' completion.

Nothing on the wire says "this event's handlers are done" (an event has no reply), so this
reads the services' own counts: each instance's ``$SRV.STATS`` carries, as metadata, how many
events each of its handlers finished (``event_outcomes``: ok, rejected, error, refused,
duplicate). The handlers that take a published subject are found in ``$SRV.INFO`` (their
subject patterns and queue groups) before the run; during and after it, every instance is asked
by its id every ``POLL_INTERVAL`` and the handled counts are compared with what was published.

The k-th event (in planned order) counts as handled at the first reading where every handler
that takes it has finished at least k events (a queue-group handler k, a broadcast one k per
instance): the time until the counts caught up. Its latency is that reading's time (when its
last answer came) minus the event's planned send time, so it is an upper bound, at most one
poll interval and a STATS round trip late; and it is the time to the k-th completion, not
event k's own, when handlers finish events out of order. It assumes the run is the only
publisher on the subject: events from elsewhere would be counted as the run's.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from cliffracer_core.core.discovery import control_subject, request_all
from cliffracer_core.dev.loadtest.histogram import Histogram
from cliffracer_core.dev.loadtest.results import latency_figures
from cliffracer_core.transports.base import Transport
from cliffracer_core.transports.subjects import subject_matches

# How often the instances are asked for their counts: the figures' resolution.
POLL_INTERVAL = 0.05
# How long one instance may take to answer $SRV.STATS before the reading goes without it.
STATS_WAIT = 1.0
OUTCOMES = ("ok", "rejected", "error", "refused", "duplicate")


class HandledError(ValueError):
    """Nothing that runs handles the events to be published."""


@dataclass
class Handler:
    """One event handler of one service, and the instances whose counts add up to it."""

    service: str
    name: str
    pattern: str
    broadcast: bool
    instances: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.service}.{self.name}"

    @property
    def per_event(self) -> int:
        """How many times the handler finishes one event: once for its queue group, or on
        each instance when it is a broadcast handler."""
        return len(self.instances) if self.broadcast else 1


async def find_handlers(transport: Transport, subjects: list[str]) -> list[Handler]:
    """The handlers that take events on ``subjects``, from ``$SRV.INFO`` of every instance."""
    handlers: dict[str, Handler] = {}
    for reply in await request_all(transport, "INFO", timeout=0.5):
        service, instance = str(reply.get("name")), str(reply.get("id"))
        try:
            events = json.loads((reply.get("metadata") or {}).get("events") or "[]")
        except ValueError:
            continue
        for event in events if isinstance(events, list) else []:
            pattern = str(event.get("subject") or "")
            if not any(subject_matches(pattern, subject) for subject in subjects):
                continue
            handler = handlers.setdefault(
                f"{service}.{event.get('handler')}",
                Handler(
                    service=service,
                    name=str(event.get("handler")),
                    pattern=pattern,
                    broadcast=event.get("queue_group") is None,
                ),
            )
            handler.instances.append(instance)
    if not handlers:
        raise HandledError(
            f"--until-handled: no running service handles events on {', '.join(subjects)} "
            "(`manage.py services` lists what runs)."
        )
    return sorted(handlers.values(), key=lambda handler: handler.key)


class HandledWatch:
    """Reads the handlers' counts while a run publishes, and turns them into latencies."""

    def __init__(self, transport: Transport, handlers: list[Handler]) -> None:
        self.transport = transport
        self.handlers = handlers
        self.instances = sorted({(h.service, i) for h in handlers for i in h.instances})
        self.start: dict[str, int] = {}
        self.first: dict[str, dict[str, int]] = {}
        # (seconds from the run's start when the reading was complete, events handled by then)
        self.readings: list[tuple[float, int]] = []
        self.outcomes: dict[str, dict[str, int]] = {}
        self.missing_answers = 0

    async def counts(self) -> dict[str, dict[str, int]]:
        """Per handler, its outcomes summed over the instances that answered."""
        answers = await asyncio.gather(
            *(self.stats_of(service, instance) for service, instance in self.instances)
        )
        totals: dict[str, dict[str, int]] = {
            h.key: dict.fromkeys(OUTCOMES, 0) for h in self.handlers
        }
        for (service, _), outcomes in zip(self.instances, answers, strict=True):
            if outcomes is None:
                self.missing_answers += 1
                continue
            for handler in self.handlers:
                if handler.service != service:
                    continue
                for outcome, count in (outcomes.get(handler.name) or {}).items():
                    if outcome in totals[handler.key]:
                        totals[handler.key][outcome] += int(count)
        return totals

    async def stats_of(self, service: str, instance: str) -> dict[str, Any] | None:
        try:
            message = await self.transport.request(
                control_subject("STATS", service, instance), b"", timeout=STATS_WAIT
            )
            metadata = json.loads(message.data).get("metadata") or {}
            return json.loads(metadata.get("event_outcomes") or "{}")
        except Exception:  # noqa: BLE001  (an instance that does not answer is left out)
            return None

    def handled(self, totals: dict[str, dict[str, int]]) -> int:
        """Events every handler has finished since the start."""
        done = []
        for handler in self.handlers:
            finished = sum(totals[handler.key].values()) - self.start.get(handler.key, 0)
            done.append(finished // max(1, handler.per_event))
        return min(done)

    async def begin(self) -> None:
        totals = await self.counts()
        self.start = {key: sum(values.values()) for key, values in totals.items()}
        self.first = totals

    async def watch(self, clock: Any, published: list[float], done: asyncio.Event) -> None:
        """Read the counts every POLL_INTERVAL until ``done`` is set and every published event
        is handled (or the caller gives up and cancels)."""
        while True:
            totals = await self.counts()
            handled = self.handled(totals)
            self.readings.append((clock(), handled))
            self.outcomes = {
                key: {o: values[o] - self.first[key][o] for o in OUTCOMES}
                for key, values in totals.items()
            }
            if done.is_set() and handled >= len(published):
                return
            await asyncio.sleep(POLL_INTERVAL)

    def summary(self, published: list[float], *, warmup: float, waited: float) -> dict[str, Any]:
        """The figures: latencies of the measured events, the time to catch up after the last
        publish, per-second rows, and whether every event was handled."""
        planned = sorted(published)
        latency = Histogram()
        per_second: dict[int, Histogram] = {}
        reading = 0
        caught_up_at = None
        handled = self.readings[-1][1] if self.readings else 0
        for number, sent_at in enumerate(planned, 1):
            while reading < len(self.readings) and self.readings[reading][1] < number:
                reading += 1
            if reading == len(self.readings):
                break
            at = self.readings[reading][0]
            caught_up_at = at
            if sent_at >= warmup:
                seconds = max(0.0, at - sent_at)
                latency.record(seconds)
                per_second.setdefault(int(sent_at), Histogram()).record(seconds)
        all_handled = handled >= len(planned)
        return {
            "method": "counts in $SRV.STATS (event_outcomes), read every "
            f"{POLL_INTERVAL * 1000:g} ms",
            "poll_interval": POLL_INTERVAL,
            "handlers": [
                {
                    "handler": h.key,
                    "subject": h.pattern,
                    "broadcast": h.broadcast,
                    "instances": len(h.instances),
                    "outcomes": self.outcomes.get(h.key, {}),
                }
                for h in self.handlers
            ],
            "published": len(planned),
            "handled": min(handled, len(planned)),
            "all_handled": all_handled,
            "waited": waited,
            # From the last planned publish to the reading where every event was handled.
            "catch_up": (caught_up_at - planned[-1]) if all_handled and planned else None,
            "latency": latency_figures(latency),
            "histogram": latency.to_json(),
            "timeline": [
                {"second": second, "events": h.count, **_percentiles(h)}
                for second, h in sorted(per_second.items())
            ],
            "readings": len(self.readings),
            "unanswered_readings": self.missing_answers,
        }


def _percentiles(histogram: Histogram) -> dict[str, Any]:
    return {
        "p50": histogram.percentile(0.5),
        "p99": histogram.percentile(0.99),
        "max": histogram.maximum / 1e6 if histogram.count else None,
    }
