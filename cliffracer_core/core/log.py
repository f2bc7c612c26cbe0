"""Log records that say where they come from: service, instance, endpoint, correlation id.

``ContextFilter`` adds those four fields to every record from the context of the code that
logged it; ``ConsoleFormatter`` prints them on one line for development and
``JsonFormatter`` as one JSON object per line (``LOG_FORMAT=json``) for log collectors;
``StreamHandler`` writes a batch of records (the access log's, ``core/access.py``) at once.
"""

from __future__ import annotations

import contextvars
import json
import logging
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from cliffracer_core.core import context
from cliffracer_core.core.context import current_headers
from cliffracer_core.core.headers import CORRELATION_ID

# Who is logging: a service instance ("orders", its instance id) or another process ("web").
current_service: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
    "cliffracer_current_service", default=None
)
# What is being handled: "rpc:create_order", "event:on_payment", "timer:expire".
current_endpoint: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "cliffracer_current_endpoint", default=None
)


class RateLimitedLog:
    """Log at most one line per ``interval`` seconds for each key (a flood of refused messages
    must not become a flood of log lines); the next line says how many were held back."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self.logger = logger
        self.interval = interval
        self.last: dict[str, float] = {}
        self.held: dict[str, int] = {}

    def log(self, level: int, key: str, message: str, *args: Any) -> None:
        if not self.logger.isEnabledFor(level):
            return
        now = time.monotonic()
        if now - self.last.get(key, -self.interval) < self.interval:
            self.held[key] = self.held.get(key, 0) + 1
            return
        self.last[key] = now
        held = self.held.pop(key, 0)
        if held:
            message += f" ({held} more like it in the last {self.interval:g}s not logged)"
        self.logger.log(level, message, *args)

    def warning(self, key: str, message: str, *args: Any) -> None:
        self.log(logging.WARNING, key, message, *args)


class ContextFilter(logging.Filter):
    """Add ``service``, ``instance``, ``endpoint`` and ``correlation_id`` to every record that
    does not carry them already (the access log's records bring their own: they are written
    after their message, out of its context)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if hasattr(record, "correlation_id"):
            return True
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
        # (second, its text): strftime once a second rather than on every line.
        self.second: tuple[int, str] = (-1, "")
        # The format string when a plain line can be made without Formatter.format's steps
        # (which ask the style whether it uses the time on every line): %-style, no defaults.
        style = self._style
        plain = type(style) is logging.PercentStyle and not style._defaults  # type: ignore[attr-defined]
        self.plain: str | None = style._fmt if plain else None  # type: ignore[attr-defined]
        self.uses_time = self.usesTime()

    def format(self, record: logging.LogRecord) -> str:
        _ensure_context(record)
        if self.plain is None or record.exc_info or record.exc_text or record.stack_info:
            return super().format(record)
        record.message = record.getMessage()
        if self.uses_time:
            record.asctime = self.formatTime(record, self.datefmt)
        return self.plain % record.__dict__

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        if datefmt:
            return super().formatTime(record, datefmt)
        return self.asctime(record.created, record.msecs)

    def asctime(self, created: float, msecs: float) -> str:
        """``%(asctime)s`` without a date format: strftime once a second."""
        whole = int(created)
        second, text = self.second
        if second != whole:
            text = time.strftime(self.default_time_format, self.converter(created))
            self.second = (whole, text)
        return self.default_msec_format % (text, msecs)

    def makes_default_lines(self) -> bool:
        """Whether it formats as ``default_format`` with the default time format."""
        return self.plain == self.default_format and not self.datefmt


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the traceback (if any) as a string field."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.second: tuple[int, str] = (-1, "")

    def iso_time(self, created: float) -> str:
        """``created`` in ISO 8601, UTC, to the millisecond."""
        whole = int(created)
        second, text = self.second
        if second != whole:
            text = datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self.second = (whole, text)
        return f"{text}.{int(created * 1000) % 1000:03d}+00:00"

    def format(self, record: logging.LogRecord) -> str:
        _ensure_context(record)
        entry: dict[str, Any] = {
            "time": self.iso_time(record.created),
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


class StreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """``logging.StreamHandler`` that can also write many records with one write and flush."""

    # The access log may hand it one record filled anew for each line: it keeps none.
    reuses = True

    def handle_many(self, records: Iterable[logging.LogRecord]) -> None:
        """Filter, format and write ``records`` with one write. Each is formatted before the
        next is taken and none is kept, so the records may be one record filled anew for
        each line (the access log's, ``core/access.py``)."""
        lines = []
        last: logging.LogRecord | None = None
        for record in records:
            passed = self.filter(record)
            if not passed:
                continue
            if isinstance(passed, logging.LogRecord):
                record = passed
            last = record
            try:
                lines.append(self.format(record) + self.terminator)
            except Exception:  # noqa: BLE001  (as Handler.emit: reported, never raised)
                self.handleError(record)
        if lines:
            self.write_lines(lines, last)

    def write_lines(self, lines: list[str], last: logging.LogRecord | None = None) -> None:
        """Write formatted ``lines`` (each with its terminator) with one write and flush; a
        failure is reported as ``Handler.emit`` reports one (about ``last``), never raised."""
        with self.lock:  # type: ignore[union-attr]
            try:
                self.stream.write("".join(lines))
                self.flush()
            except RecursionError:
                raise
            except Exception:  # noqa: BLE001
                if last is None:
                    last = logging.makeLogRecord({"msg": "%d lines", "args": (len(lines),)})
                self.handleError(last)
