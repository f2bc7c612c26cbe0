"""Sending a plan's requests at their planned times and recording how each one ends.

The open model sends request n at the run's start plus its planned time; when the generator
falls behind (a slow loop, a full CPU) it sends what is due at once and the delay counts in the
latencies, measured from the planned time. The closed model runs one task per virtual user.
Either way the run ends by waiting for every request in flight, so each request sent is
counted once, as answered or as an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from http import HTTPStatus
from typing import Any

from cliffracer_core.core import codec
from cliffracer_core.core.context import new_correlation_id
from cliffracer_core.core.discovery import request_all
from cliffracer_core.core.errors import RemoteError
from cliffracer_core.core.headers import CORRELATION_ID, ERROR_CODE, TIMEOUT
from cliffracer_core.core.streams import publish_message
from cliffracer_core.dev.loadtest.plan import OPEN, LoadPlan, Target
from cliffracer_core.dev.loadtest.results import EXPECTED, OK, Recorder, is_server_error
from cliffracer_core.dev.loadtest.webclient import Endpoint
from cliffracer_core.transports.base import Transport

logger = logging.getLogger("cliffracer.loadtest")
# The body of a deliberately invalid request: JSON cut short, which any endpoint refuses.
INVALID_BODY = b'{"invalid": '
# How often the closed model adjusts its number of users to the plan's ramp.
USER_STEP = 0.1


def error_outcome(headers: dict[str, str], body: bytes) -> str:
    """``"<code> <type>"`` of an ADR-32 error reply."""
    error = codec.decode_error(headers, body)
    return f"{error.code} {error.type}"


def invalid_outcome(outcome: str) -> str:
    """A deliberately invalid request: a 4xx answer is expected, a success is a failure."""
    if outcome == OK:
        return "200 accepted_invalid"
    if not is_server_error(outcome):
        return EXPECTED + outcome
    return outcome


class Generator:
    """Runs one plan over one connection, recording into ``recorder``."""

    def __init__(
        self,
        plan: LoadPlan,
        transport: Transport,
        recorder: Recorder,
        *,
        headers: dict[str, str],
        stop: asyncio.Event,
        anonymous_headers: dict[str, str] | None = None,
    ) -> None:
        """``headers`` go to every target, ``anonymous_headers`` (default: the same) to those
        declared public."""
        self.plan = plan
        self.transport = transport
        self.recorder = recorder
        deadline = {TIMEOUT: str(max(1, int(plan.timeout * 1000)))}
        self.headers = {**headers, **deadline}
        self.anonymous_headers = {**(headers if anonymous_headers is None else anonymous_headers),
                                  **deadline}  # fmt: skip
        self.stop = stop
        self.tasks: set[asyncio.Task[None]] = set()
        self.client_failed = False
        self.endpoints = {
            target.name: Endpoint(target.subject)
            for target in plan.targets
            if target.kind == "http"
        }
        # Each RPC target's requests, their fixed headers encoded once where the transport can
        # (NATS): per request only the correlation id is added.
        self.requests = {
            target.name: transport.prepare_request(
                target.subject,
                headers=self.anonymous_headers if target.public else self.headers,
                timeout=plan.timeout,
            )
            for target in plan.targets
            if target.kind == "rpc"
        }
        self.loop = asyncio.get_running_loop()
        self.start = 0.0
        # --until-handled: the planned times of the events published (handled.py reads them).
        self.published: list[float] | None = None
        # --websocket: each event's correlation id and planned time (websocket.py matches the
        # frames to them).
        self.correlations: dict[str, float] | None = None
        if plan.seed is not None:
            # Each process of the run makes its own bodies, repeatably.
            for target in plan.targets:
                if target.payload is not None:
                    target.payload.seed(plan.seed * 1000 + plan.share)

    def elapsed(self) -> float:
        return self.loop.time() - self.start

    async def run(self, start_at: float | None = None) -> None:
        """Send the plan; ``start_at`` (a ``time.time()``) starts it then, in step with the
        other processes of the run."""
        if start_at is not None:
            await asyncio.sleep(max(0.0, start_at - time.time()))
        self.start = self.loop.time()
        cpu = time.process_time()
        try:
            if self.plan.model == OPEN:
                await self.run_open()
            else:
                await self.run_closed()
        finally:
            self.recorder.sending_ended = self.elapsed()
            if self.tasks:
                await asyncio.gather(*self.tasks, return_exceptions=True)
            self.recorder.finished = self.elapsed()
            for endpoint in self.endpoints.values():
                endpoint.close()
            self.recorder.cpu_seconds = time.process_time() - cpu

    def limit_reached(self) -> bool:
        limit = self.plan.max_requests
        return self.stop.is_set() or (limit is not None and self.recorder.sent >= limit)

    async def pause(self, seconds: float) -> None:
        """Sleep, waking early when the run is stopped (Ctrl-C)."""
        if seconds <= 0:
            return
        if seconds < 0.05:
            await asyncio.sleep(seconds)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), seconds)

    async def run_open(self) -> None:
        limit = self.plan.max_requests
        # Counted here, not by what was sent: a task made for a request may not have run yet.
        for scheduled, planned in enumerate(self.plan.send_times()):
            if self.stop.is_set() or (limit is not None and scheduled >= limit):
                return
            await self.pause(planned - self.elapsed())
            if self.stop.is_set():
                return
            task = self.loop.create_task(self.send(self.plan.choose(), planned))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def run_closed(self) -> None:
        users: list[asyncio.Task[None]] = []
        wanted, started = [0], 0
        while not self.limit_reached() and self.elapsed() < self.plan.duration:
            wanted[0] = round(self.plan.level_at(self.elapsed()))
            while started < wanted[0]:
                # Users are numbered over every process; this one runs its share of them.
                if started % self.plan.shares == self.plan.share:
                    users.append(self.loop.create_task(self.user(started, wanted)))
                started += 1
            await self.pause(min(USER_STEP, self.plan.duration - self.elapsed()))
        wanted[0] = 0
        await asyncio.gather(*users, return_exceptions=True)

    async def user(self, number: int, wanted: list[int]) -> None:
        """One virtual user: a request, its answer, the think time, again, while wanted.

        A user above the wanted number (the ramp went down) stays idle until wanted again.
        """
        # The hot loop of the closed model: what it reads per request is looked up once.
        plan, recorder, stop, send = self.plan, self.recorder, self.stop, self.send
        now = self.loop.time
        limit, think, end = plan.max_requests, plan.think_time, self.start + plan.duration
        while not stop.is_set() and (limit is None or recorder.sent < limit) and now() < end:
            if number >= wanted[0]:
                await self.pause(USER_STEP)
                continue
            await send(plan.choose(), now() - self.start)
            if think > 0:
                await self.pause(think)

    async def send(self, target: Target, planned: float) -> None:
        self.recorder.sending(self.loop.time() - self.start - planned)
        correlation_id = new_correlation_id()
        invalid = self.plan.invalid_share > 0 and self.plan.takes_invalid(target)
        if invalid:
            body = INVALID_BODY
        else:
            body = target.body if target.payload is None else target.payload.make()
        try:
            if target.kind == "rpc":
                message = await self.requests[target.name](body, {CORRELATION_ID: correlation_id})
                reply_headers = message.headers
                outcome = (
                    error_outcome(reply_headers, message.data)
                    if reply_headers and ERROR_CODE in reply_headers
                    else OK
                )
            elif target.kind == "http":
                headers = self.anonymous_headers if target.public else self.headers
                headers = {**headers, CORRELATION_ID: correlation_id}
                outcome = await self.send_http(target, headers, body)
            else:
                headers = self.anonymous_headers if target.public else self.headers
                headers = {**headers, CORRELATION_ID: correlation_id}
                if self.correlations is not None:
                    # Before the publish: its frame may come back before the publish returns.
                    self.correlations[correlation_id] = planned
                await publish_message(self.transport, target.subject, body, headers)
                outcome = OK
                if self.published is not None:
                    self.published.append(planned)
        except RemoteError as error:
            outcome = f"{error.code} {error.type}"
        except TimeoutError:
            outcome = "408 timeout"
        except Exception as error:  # the run goes on; the failure is counted by its kind
            outcome = f"client {type(error).__name__}"
            if not self.client_failed:
                self.client_failed = True
                logger.warning("%s: %s: %s (counted; no more are logged)", target.name,
                               type(error).__name__, error)  # fmt: skip
        if invalid:
            outcome = invalid_outcome(outcome)
        self.recorder.record(
            target.name, planned=planned, answered=self.loop.time() - self.start, outcome=outcome
        )

    async def send_http(self, target: Target, headers: dict[str, str], body: bytes) -> str:
        """One HTTP request; a 2xx or 3xx status is a success, any other an error by status."""
        async with asyncio.timeout(self.plan.timeout):
            status, _, _ = await self.endpoints[target.name].request(target.method, headers, body)
        if status < 400:
            return OK
        try:
            # The standard phrase, not the server's own reason text: one name per code.
            kind = "_".join(HTTPStatus(status).phrase.lower().split())
        except ValueError:
            kind = "http_error"
        return f"{status} {kind}"


async def service_stats(transport: Transport, names: set[str]) -> dict[str, dict[str, Any]]:
    """Per ``service.endpoint``: requests, errors and processing time (ns) summed over the
    instances answering ``$SRV.STATS`` now."""
    totals: dict[str, dict[str, Any]] = {}
    for name in sorted(names):
        for reply in await request_all(transport, "STATS", name, timeout=0.5):
            instance = str(reply.get("id"))
            for endpoint in reply.get("endpoints") or []:
                key = f"{name}.{endpoint.get('name')}"
                total = totals.setdefault(
                    key, {"num_requests": 0, "num_errors": 0, "processing_time": 0, "instances": {}}
                )
                total["num_requests"] += int(endpoint.get("num_requests") or 0)
                total["num_errors"] += int(endpoint.get("num_errors") or 0)
                total["processing_time"] += int(endpoint.get("processing_time") or 0)
                total["instances"][instance] = int(endpoint.get("num_requests") or 0)
    return totals


def stats_difference(
    before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """What the services counted between two ``service_stats`` readings.

    An instance that started during the run counts from zero; one that stopped is lost (its
    count is gone from the second reading), which the report says with the instance numbers.
    """
    endpoints: dict[str, Any] = {}
    for key, now in after.items():
        earlier = before.get(key, {"num_requests": 0, "num_errors": 0, "processing_time": 0})
        requests = now["num_requests"] - earlier["num_requests"]
        endpoints[key] = {
            "num_requests": requests,
            "num_errors": now["num_errors"] - earlier["num_errors"],
            "processing_time": now["processing_time"] - earlier["processing_time"],
            "average_processing_time": (
                (now["processing_time"] - earlier["processing_time"]) / requests / 1e9
                if requests > 0
                else None
            ),
            "instances": len(now["instances"]),
        }
    return {"endpoints": endpoints}
