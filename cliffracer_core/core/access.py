"""The access log: one line per RPC, event and timer run, written in batches.

A line is logged through the ``cliffracer.access`` logger (INFO) with the service, instance,
endpoint and correlation id of its message, as every other line is, so the logging
configuration decides where it goes and how it looks. What differs is when: the message's
handling only notes what happened (a tuple in a list, well under a microsecond), and the lines
are made and written together at most ``INTERVAL`` seconds later, or as soon as ``BATCH``
wait, or when the service stops. A handler that can write many records at once (``handle_many``,
as Cliffracer's ``StreamHandler`` does) gets them in one call and one write; any other handler
gets them one by one, as from ``logger.info``.

Building a record the standard way (``logger.info``: the caller's frame, the record's
constructor, a write and a flush per line) cost a service about 15 to 20 µs a request, more
than the rest of Cliffracer's own work on it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

from cliffracer_core.core.log import ConsoleFormatter, ContextFilter, StreamHandler

if TYPE_CHECKING:
    from cliffracer_core.core.handling import Finished

access_logger = logging.getLogger("cliffracer.access")

# Longest a line waits before it is written (seconds), and most lines that wait at once.
INTERVAL = 0.05
BATCH = 512


class Entry(NamedTuple):
    """One handled message, as noted on the hot path."""

    created: float  # time.time() when it finished
    kind: str
    service: str
    instance: str
    name: str
    outcome: str
    elapsed_ms: float
    correlation_id: str
    subject: str


_new_tuple = tuple.__new__

# The line of an RPC or timer run, and of an event.
CALL_LINE = "%s %s.%s %s in %.2f ms"
EVENT_LINE = "%s %s on %s by %s.%s in %.2f ms"


class AccessLog:
    """The access lines of one running service, written in batches on its event loop."""

    def __init__(self, instance: str = "-") -> None:
        self.instance = instance
        self.waiting: list[Entry] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.scheduled: asyncio.TimerHandle | None = None
        self.template: logging.LogRecord | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    @staticmethod
    def enabled() -> bool:
        return access_logger.isEnabledFor(logging.INFO)

    def add(self, finished: Finished) -> None:
        """Note a handled message; its line is written within ``INTERVAL`` seconds."""
        self.note(
            finished.kind,
            finished.service,
            finished.name,
            finished.outcome,
            finished.started,
            finished.correlation_id,
            finished.subject,
        )

    def note(
        self,
        kind: str,
        service: str,
        name: str,
        outcome: str,
        started: int,
        correlation_id: str,
        subject: str,
    ) -> None:
        """``add`` without a ``Finished``: for a message that went well and that nothing but
        the access log hears of (the runner's commonest case, so it skips making one)."""
        # tuple.__new__ makes the named tuple without the Python-level __new__ that
        # Entry(...) runs: this is the one step every handled message takes.
        self.waiting.append(
            _new_tuple(
                Entry,
                (
                    time.time(),
                    kind,
                    service,
                    self.instance,
                    name,
                    outcome,
                    (time.perf_counter_ns() - started) / 1e6,
                    correlation_id,
                    subject,
                ),
            )
        )
        if len(self.waiting) >= BATCH:
            self.flush()
        elif self.scheduled is None and self.loop is not None:
            self.scheduled = self.loop.call_later(INTERVAL, self.flush)
        elif self.loop is None:
            self.flush()

    def flush(self) -> None:
        """Write every waiting line now."""
        if self.scheduled is not None:
            self.scheduled.cancel()
            self.scheduled = None
        entries, self.waiting = self.waiting, []
        if entries:
            try:
                emit(self, entries)
            except Exception:  # noqa: BLE001  (a log that cannot be written must not stop work)
                logging.getLogger("cliffracer.runner").warning(
                    "Could not write %d access lines", len(entries), exc_info=True
                )

    def base(self) -> dict[str, Any]:
        """The fields every access record shares, as ``access_logger.info`` would set them."""
        if self.template is None:
            # The constructor looks up the thread, process and task names: once is enough.
            self.template = access_logger.makeRecord(
                access_logger.name, logging.INFO, __file__, 0, "", (), None, "add"
            )
        return self.template.__dict__

    def records(self, entries: list[Entry]) -> list[logging.LogRecord]:
        """One record per entry, as ``access_logger.info`` would make it."""
        base = self.base()
        made = []
        for entry in entries:
            record = logging.LogRecord.__new__(logging.LogRecord)
            values = base.copy()
            fill(values, entry)
            record.__dict__ = values
            made.append(record)
        return made

    def reused(self, entries: list[Entry]) -> Iterator[logging.LogRecord]:
        """The entries' records one at a time, as one record filled anew for each: for a
        handler that formats each record before it takes the next and keeps none
        (``handle_many``), which saves making a record per line."""
        record = logging.LogRecord.__new__(logging.LogRecord)
        values = self.base().copy()
        record.__dict__ = values
        for entry in entries:
            values.pop("subject", None)
            fill(values, entry)
            yield record


def message_of(entry: Entry) -> tuple[str, tuple[Any, ...]]:
    """The format and arguments of ``entry``'s line (a record's ``msg`` and ``args``)."""
    if entry.kind == "event":
        return EVENT_LINE, (
            entry.kind,
            entry.outcome,
            entry.subject,
            entry.service,
            entry.name,
            entry.elapsed_ms,
        )
    return CALL_LINE, (entry.kind, entry.service, entry.name, entry.outcome, entry.elapsed_ms)


def msecs_of(created: float) -> float:
    """A record's ``msecs`` for the time ``created``."""
    return int(created * 1000) % 1000 + 0.0


def fill(values: dict[str, Any], entry: Entry) -> None:
    """Set the fields of ``entry``'s record in ``values`` (a record's ``__dict__``)."""
    created = entry.created
    values["msg"], values["args"] = message_of(entry)
    if entry.kind == "event":
        values["subject"] = entry.subject
    values["duration_ms"] = round(entry.elapsed_ms, 3)
    values["outcome"] = entry.outcome
    values["created"] = created
    values["msecs"] = msecs_of(created)
    values["relativeCreated"] = (created - logging._startTime) * 1000  # type: ignore[attr-defined]
    values["service"] = entry.service
    values["instance"] = entry.instance
    values["endpoint"] = entry.name
    values["correlation_id"] = entry.correlation_id


def emit(log: AccessLog, entries: list[Entry]) -> None:
    """Hand ``entries``' records to the access logger's handlers as ``Logger.handle`` would:
    its filters, then every handler up the hierarchy whose level lets them through; all at
    once to a handler that can take many (``handle_many``), as one record filled anew for each
    line to one that says it keeps none (``reuses``, as Cliffracer's ``StreamHandler``)."""
    if access_logger.disabled:
        return
    records: list[logging.LogRecord] | None = None
    if access_logger.filters:
        # The logger's own filters may keep or change records: give them records of their own.
        records = [r for r in log.records(entries) if access_logger.filter(r)]
        if not records:
            return
    logger: logging.Logger | None = access_logger
    found = 0
    while logger is not None:
        for handler in logger.handlers:
            found += 1
            if handler.level > logging.INFO:
                continue
            handle_many = getattr(handler, "handle_many", None)
            if handle_many is not None and records is None and getattr(handler, "reuses", False):
                if (lines := direct_lines(handler, entries)) is not None:
                    handler.write_lines(lines)
                    continue
                # It formats each record before it takes the next and keeps none.
                handle_many(log.reused(entries))
                continue
            if records is None:
                records = log.records(entries)
            if handle_many is not None:
                handle_many(records)
                continue
            for record in records:
                handler.handle(record)
        logger = logger.parent if logger.propagate else None
    if not found and logging.lastResort is not None and logging.lastResort.level <= logging.INFO:
        for record in records if records is not None else log.records(entries):
            logging.lastResort.handle(record)


def direct_lines(handler: logging.Handler, entries: list[Entry]) -> list[str] | None:
    """The lines ``handler`` would write for ``entries``, made straight from them, or None when
    it is not sure to make these: only Cliffracer's ``StreamHandler`` (not a subclass that
    formats or filters its own way) with the console format as configured by default and no
    filter but ``ContextFilter`` (which lets access records through as they are).

    The default configuration writes these lines; making them without a record each and
    without ``Formatter.format``'s steps takes a third of the time.
    """
    formatter = handler.formatter
    if (
        type(handler) is not StreamHandler
        or type(formatter) is not ConsoleFormatter
        or not formatter.makes_default_lines()
        or any(type(found) is not ContextFilter for found in handler.filters)
    ):
        return None
    # The lines as ConsoleFormatter.format makes them (tests/test_access_log.py checks they
    # are the same), with its strftime-once-a-second and the message in one f-string.
    second, text = formatter.second
    head = " INFO    "
    end = f" {access_logger.name}: "
    terminator = handler.terminator
    lines = []
    for created, kind, service, instance, name, outcome, elapsed, correlation, subject in entries:
        if int(created) != second:
            formatter.asctime(created, 0.0)
            second, text = formatter.second
        milliseconds = int(created * 1000) % 1000
        if kind == "event":
            lines.append(
                f"{text},{milliseconds:03d}{head}{service}/{instance} {name} [{correlation}]"
                f"{end}{kind} {outcome} on {subject} by {service}.{name} in {elapsed:.2f} ms"
                f"{terminator}"
            )
        else:
            lines.append(
                f"{text},{milliseconds:03d}{head}{service}/{instance} {name} [{correlation}]"
                f"{end}{kind} {service}.{name} {outcome} in {elapsed:.2f} ms{terminator}"
            )
    return lines
