"""Compact records of failed messages, published for the monitor (docs/console.md).

``ErrorRecords``, a runner extension (``RUNNER_EXTENSIONS``), adds a finish hook to every
service that publishes one for each message that failed, so the runner itself knows nothing
of the monitor.


When a service replies with an error, or one of its event handlers or timers fails, the runner
publishes one small JSON record on ``_cliffracer.errors.<service>``: where it happened, the
error's code, type and message, the correlation id and the time. Never a traceback and never a
token: the message is the one the caller saw, and an unexpected exception is the generic 500.
Publishing is rate-limited per process by a token bucket, so an error storm cannot flood NATS;
records the limit dropped are counted in the next record that goes out.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from cliffracer_core.core import resilience, tracing
from cliffracer_core.core.auth.tokens import system_identity
from cliffracer_core.core.breaker import CLOSED, OPEN
from cliffracer_core.core.errors import ServiceError
from cliffracer_core.core.extensions import RunnerExtension
from cliffracer_core.core.handling import Finished
from cliffracer_core.core.headers import AUTHORIZATION
from cliffracer_core.core.ratelimit import TokenBucket
from cliffracer_core.core.settings import cliffracer_settings

if TYPE_CHECKING:
    from cliffracer_core.core.runner import ServiceRunner

logger = logging.getLogger("cliffracer.runner")

# Internal subjects start with "_": no WebSocket client may subscribe to them.
ERRORS_SUBJECT_PREFIX = "_cliffracer.errors"
MAX_MESSAGE_CHARS = 500


def errors_subject(service: str) -> str:
    return f"{ERRORS_SUBJECT_PREFIX}.{service}"


class ErrorReporter:
    """Build and publish the error records of one service instance, at most ``rate`` a second."""

    def __init__(
        self,
        *,
        service: str,
        instance_id: str,
        rate: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.service = service
        self.instance_id = instance_id
        self.subject = errors_subject(service)
        self.rate = max(0.0, float(rate))
        self.bucket = TokenBucket(self.rate, clock=clock)
        self.dropped = 0

    def allow(self) -> bool:
        """Take a token from the bucket; count the record as dropped when there is none."""
        if self.bucket.take():
            return True
        self.dropped += 1
        return False

    def record(
        self,
        *,
        kind: str,
        endpoint: str,
        subject: str,
        error: ServiceError,
        correlation_id: str,
    ) -> bytes | None:
        """The record's JSON, or None when records are off or the rate limit drops it."""
        # A failure while storing error records must not report itself, endlessly.
        if self.rate <= 0 or subject.startswith(f"{ERRORS_SUBJECT_PREFIX}."):
            return None
        if not self.allow():
            return None
        record: dict[str, Any] = {
            "service": self.service,
            "instance": self.instance_id,
            "kind": kind,
            "endpoint": endpoint,
            "subject": subject,
            "code": int(error.code),
            "type": str(error.type)[:100],
            "message": str(error.message)[:MAX_MESSAGE_CHARS],
            "correlation_id": correlation_id,
            # Links the record to its trace in the team's trace viewer (docs/tracing.md).
            "trace_id": tracing.current_trace_id(),
            "time": datetime.now(UTC).isoformat(),
            "dropped": self.dropped,
        }
        self.dropped = 0
        return json.dumps(record).encode()

    async def publish(self, transport: Any, **fields: Any) -> None:
        """Publish a record (see ``record`` for the fields) as the system identity, the only
        publisher the monitor takes records from; never raises."""
        try:
            body = self.record(**fields)
            if body is not None and transport is not None:
                authorization = system_identity.authorization()
                headers = {AUTHORIZATION: authorization} if authorization else None
                await transport.publish(self.subject, body, headers=headers)
        except Exception:  # noqa: BLE001  (a lost error record is not worth failing for)
            logger.debug("Could not publish an error record", exc_info=True)


class ErrorRecords(RunnerExtension):
    """Publish an error record for every failed request, event and timer run; rate-limited."""

    def __init__(self, runner: ServiceRunner) -> None:
        super().__init__(runner)
        self.reporter = ErrorReporter(
            service=runner.name,
            instance_id=runner.identity.id,
            rate=cliffracer_settings.MONITOR["ERRORS_PER_SECOND"],
        )
        runner.handling.failure_hooks.append(self.on_failed)
        self.publishing: set[asyncio.Future[None]] = set()

    async def start(self) -> None:
        resilience.breaker_listeners.append(self.on_breaker_changed)

    async def close(self) -> None:
        if self.on_breaker_changed in resilience.breaker_listeners:
            resilience.breaker_listeners.remove(self.on_breaker_changed)

    def on_breaker_changed(self, scope: str, state: str) -> None:
        """Record a breaker of this process's calls opening or closing (from any thread)."""
        if state == OPEN:
            error = ServiceError(
                f"Circuit breaker {scope} opened: calls to it fail fast for now.",
                code=503,
                type="circuit_open",
            )
        elif state == CLOSED:
            error = ServiceError(
                f"Circuit breaker {scope} closed: calls to it go through again.",
                code=200,
                type="circuit_closed",
            )
        else:
            return
        loop = self.runner.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._publish_change, scope, error)

    def _publish_change(self, scope: str, error: ServiceError) -> None:
        publishing = self.reporter.publish(
            self.runner.transport,
            kind="call",
            endpoint=scope,
            subject="",
            error=error,
            correlation_id="",
        )
        task = asyncio.ensure_future(publishing)
        # A reference until it ends: the loop keeps only weak ones.
        self.publishing.add(task)
        task.add_done_callback(self.publishing.discard)

    def on_failed(self, finished: Finished) -> Awaitable[None]:
        assert finished.error is not None
        return self.reporter.publish(
            self.runner.transport,
            kind=finished.kind,
            endpoint=finished.name,
            subject=finished.subject,
            error=finished.error,
            correlation_id=finished.correlation_id,
        )
