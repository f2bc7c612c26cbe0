"""Compact records of failed messages, published for the monitor (docs/console.md).

When a service replies with an error, or one of its event handlers or timers fails, the runner
publishes one small JSON record on ``_cliffracer.errors.<service>``: where it happened, the
error's code, type and message, the correlation id and the time. Never a traceback and never a
token: the message is the one the caller saw, and an unexpected exception is the generic 500.
Publishing is rate-limited per process by a token bucket, so an error storm cannot flood NATS;
records the limit dropped are counted in the next record that goes out.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from cliffracer_core.errors import ServiceError

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
        self.burst = max(1.0, self.rate)
        self.clock = clock
        self.tokens = self.burst
        self.updated = clock()
        self.dropped = 0

    def allow(self) -> bool:
        """Take a token from the bucket; count the record as dropped when there is none."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
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
            "type": str(error.type),
            "message": str(error.message)[:MAX_MESSAGE_CHARS],
            "correlation_id": correlation_id,
            "time": datetime.now(UTC).isoformat(),
            "dropped": self.dropped,
        }
        self.dropped = 0
        return json.dumps(record).encode()

    async def publish(self, connection: Any, **fields: Any) -> None:
        """Publish a record (see ``record`` for the fields); never raises."""
        try:
            body = self.record(**fields)
            if body is not None and connection is not None:
                await connection.publish(self.subject, body)
        except Exception:  # noqa: BLE001  (a lost error record is not worth failing for)
            logger.debug("Could not publish an error record", exc_info=True)
