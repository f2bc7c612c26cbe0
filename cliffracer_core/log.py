"""Log records that say where they come from: service, instance, endpoint, correlation id.

``ContextFilter`` adds those four fields to every record from the context of the code that
logged it; ``ConsoleFormatter`` prints them on one line for development and
``JsonFormatter`` as one JSON object per line (``LOG_FORMAT=json``) for log collectors.
"""

from __future__ import annotations

import contextvars
import json
import logging
from datetime import UTC, datetime
from typing import Any

from cliffracer_core import context
from cliffracer_core.context import current_headers
from cliffracer_core.headers import CORRELATION_ID

# Who is logging: a service instance ("orders", its instance id) or another process ("web").
current_service: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
    "cliffracer_current_service", default=None
)
# What is being handled: "rpc:create_order", "event:on_payment", "timer:expire".
current_endpoint: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "cliffracer_current_endpoint", default=None
)


class ContextFilter(logging.Filter):
    """Add ``service``, ``instance``, ``endpoint`` and ``correlation_id`` to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        service = current_service.get()
        record.service, record.instance = service if service else (context.process_role, "-")
        record.endpoint = current_endpoint.get() or "-"
        headers = current_headers.get()
        record.correlation_id = (headers.get(CORRELATION_ID) if headers else None) or "-"
        return True


class ConsoleFormatter(logging.Formatter):
    """One readable line per record, context first."""

    default_format = (
        "%(asctime)s %(levelname)-7s %(service)s/%(instance)s %(endpoint)s "
        "[%(correlation_id)s] %(name)s: %(message)s"
    )

    def __init__(self, fmt: str | None = None, **kwargs: Any) -> None:
        super().__init__(fmt or self.default_format, **kwargs)

    def format(self, record: logging.LogRecord) -> str:
        _ensure_context(record)
        return super().format(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the traceback (if any) as a string field."""

    def format(self, record: logging.LogRecord) -> str:
        _ensure_context(record)
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "service": record.service,
            "instance": record.instance,
            "endpoint": record.endpoint,
            "correlation_id": record.correlation_id,
        }
        for key in ("duration_ms", "outcome", "subject"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str)


def _ensure_context(record: logging.LogRecord) -> None:
    # Records from handlers configured without the filter still format.
    if not hasattr(record, "correlation_id"):
        ContextFilter().filter(record)
