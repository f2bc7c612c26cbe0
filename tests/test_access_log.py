"""The access log: one line per handled message, written in batches off the hot path."""

import asyncio
import io
import json
import logging
import time

import pytest

from cliffracer_core import Service, call, event, publish, rpc
from cliffracer_core.core import access
from cliffracer_core.core.access import AccessLog
from cliffracer_core.core.handling import Finished
from cliffracer_core.core.log import ConsoleFormatter, ContextFilter, JsonFormatter, StreamHandler
from cliffracer_core.testing import wait_for
from tests.models import Add, Total

pytestmark = pytest.mark.usefixtures("memory_transport")


class Batches(logging.Handler):
    """Keeps what it is handed: every batch (``handle_many``) and every single record."""

    def __init__(self) -> None:
        super().__init__()
        self.addFilter(ContextFilter())
        self.batches: list[list[logging.LogRecord]] = []
        self.singles: list[logging.LogRecord] = []

    def handle_many(self, records: list[logging.LogRecord]) -> None:
        self.batches.append(list(records))

    def emit(self, record: logging.LogRecord) -> None:
        self.singles.append(record)

    def records(self) -> list[logging.LogRecord]:
        return [record for batch in self.batches for record in batch] + self.singles


class Singles(logging.Handler):
    """A handler of the standard kind: one record at a time."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def access_logger():
    logger = logging.getLogger("cliffracer.access")
    level, propagate = logger.level, logger.propagate
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.setLevel(level)
    logger.propagate = propagate


def finished(number: int, kind: str = "rpc") -> Finished:
    return Finished(
        kind=kind,
        service="shop",
        name="place",
        outcome="ok" if number % 2 else "409 out_of_stock",
        started=time.perf_counter_ns() - 2_000_000,
        correlation_id=f"call-{number}",
        subject="rpc.shop.place" if kind == "rpc" else "orders.placed",
    )


def test_lines_wait_for_the_interval_then_go_in_one_batch(access_logger) -> None:
    handler = Batches()
    access_logger.addHandler(handler)

    async def scenario() -> None:
        log = AccessLog("instance-1")
        log.bind(asyncio.get_running_loop())
        for number in range(3):
            log.add(finished(number))
        assert handler.records() == []  # nothing written on the hot path
        await asyncio.sleep(access.INTERVAL * 4)

    asyncio.run(scenario())
    assert len(handler.batches) == 1 and handler.singles == []
    records = handler.batches[0]
    assert [record.correlation_id for record in records] == ["call-0", "call-1", "call-2"]
    assert {(record.service, record.instance, record.endpoint) for record in records} == {
        ("shop", "instance-1", "place")
    }
    assert [record.outcome for record in records] == ["409 out_of_stock", "ok", "409 out_of_stock"]
    assert all(record.duration_ms >= 2 for record in records)
    assert records[1].getMessage().startswith("rpc shop.place ok in ")


def test_a_full_batch_is_written_at_once(access_logger) -> None:
    handler = Batches()
    access_logger.addHandler(handler)

    async def scenario() -> None:
        log = AccessLog()
        log.bind(asyncio.get_running_loop())
        for number in range(access.BATCH):
            log.add(finished(number))
        # Written as the last one came, before the interval is up.
        assert len(handler.records()) == access.BATCH
        log.flush()

    asyncio.run(scenario())
    assert [len(batch) for batch in handler.batches] == [access.BATCH]


def test_a_plain_handler_gets_each_record_as_logger_info_makes_it(access_logger) -> None:
    handler = Singles()
    access_logger.addHandler(handler)
    log = AccessLog("instance-2")
    log.add(finished(1, kind="event"))  # no loop bound: written at once
    (record,) = handler.records
    assert record.name == "cliffracer.access" and record.levelno == logging.INFO
    assert record.getMessage().startswith("event ok on orders.placed by shop.place in ")
    assert record.subject == "orders.placed"
    assert abs(record.created - time.time()) < 60
    line = ConsoleFormatter().format(record)
    assert " shop/instance-2 place [call-1] cliffracer.access: event ok on orders.placed" in line
    entry = json.loads(JsonFormatter().format(record))
    assert entry["time"].endswith("+00:00") and entry["correlation_id"] == "call-1"
    assert (entry["outcome"], entry["subject"]) == ("ok", "orders.placed")


def test_a_silenced_access_log_notes_nothing(access_logger) -> None:
    handler = Batches()
    access_logger.addHandler(handler)
    access_logger.setLevel(logging.WARNING)
    log = AccessLog()
    assert not log.enabled()
    access_logger.setLevel(logging.INFO)
    assert log.enabled()


def test_the_stream_handler_writes_a_batch_with_one_write() -> None:
    class Counting(io.StringIO):
        writes = 0

        def write(self, text: str) -> int:
            Counting.writes += 1
            return super().write(text)

    stream = Counting()
    handler = StreamHandler(stream)
    handler.setFormatter(ConsoleFormatter())
    handler.addFilter(ContextFilter())
    log = AccessLog("instance-3")
    records = log.records([log_entry(number) for number in range(5)])
    handler.handle_many(records)
    lines = stream.getvalue().splitlines()
    assert Counting.writes == 1
    assert [line.split(" [")[1].split("]")[0] for line in lines] == [
        f"call-{number}" for number in range(5)
    ]
    # A filter that refuses a record leaves it out of the batch.
    handler.addFilter(lambda record: record.correlation_id != "call-2")
    stream.truncate(0)
    stream.seek(0)
    handler.handle_many(records)
    assert "call-2" not in stream.getvalue() and stream.getvalue().count("\n") == 4


def test_the_stream_handler_gets_one_record_filled_anew_for_each_line(access_logger) -> None:
    console, structured = io.StringIO(), io.StringIO()
    for stream, formatter in ((console, ConsoleFormatter()), (structured, JsonFormatter())):
        handler = StreamHandler(stream)
        handler.setFormatter(formatter)
        handler.addFilter(ContextFilter())
        access_logger.addHandler(handler)
    kept = Batches()  # a handle_many of another kind keeps what it gets: records of their own
    access_logger.addHandler(kept)
    log = AccessLog("instance-4")
    event_line = access.Entry(
        time.time(), "event", "shop", "instance-4", "on_paid", "ok", 2.0, "ev-1", "orders.paid"
    )
    for entry in (event_line, log_entry(1), log_entry(2)):
        log.waiting.append(entry)
    log.flush()

    lines = console.getvalue().splitlines()
    assert [line.split(" [")[1].split("]")[0] for line in lines] == ["ev-1", "call-1", "call-2"]
    assert "event ok on orders.paid by shop.on_paid in 2.00 ms" in lines[0]
    assert lines[1].endswith("rpc shop.place ok in 1.50 ms")
    entries = [json.loads(line) for line in structured.getvalue().splitlines()]
    assert [(e["correlation_id"], e.get("subject")) for e in entries] == [
        ("ev-1", "orders.paid"),
        ("call-1", None),  # an event's subject does not stay for the calls after it
        ("call-2", None),
    ]
    assert [record.correlation_id for record in kept.records()] == ["ev-1", "call-1", "call-2"]
    assert len({id(record) for record in kept.records()}) == 3


def log_entry(number: int) -> access.Entry:
    return access.Entry(
        time.time(), "rpc", "shop", "instance-3", "place", "ok", 1.5, f"call-{number}", "x"
    )


class Counter(Service):
    name = "accesscounter"

    @rpc(public=True)
    async def add(self, request: Add) -> Total:
        return Total(total=request.a + request.b)

    @event("accesscounter.noted", public=True)
    async def on_noted(self, payload: Add) -> None:
        return None


def test_a_service_writes_one_line_per_message_and_the_rest_when_it_stops(
    start_service, access_logger
) -> None:
    handler = Batches()
    access_logger.addHandler(handler)
    running = start_service(Counter)
    for number in range(10):
        headers = {"X-Correlation-ID": f"n-{number}"}
        call("accesscounter.add", {"a": number, "b": 1}, headers=headers)
    publish("accesscounter.noted", {"a": 1, "b": 2}, headers={"X-Correlation-ID": "ev-1"})
    wait_for(lambda: any(r.correlation_id == "ev-1" for r in handler.records()), what="event line")
    mine = [r for r in handler.records() if r.service == "accesscounter"]
    assert [r.correlation_id for r in mine if r.endpoint == "add"] == [f"n-{n}" for n in range(10)]
    assert {r.instance for r in mine} == {running.runner.identity.id}
    # A line noted just before the service stops is written by the stop, not lost.
    call("accesscounter.add", {"a": 1, "b": 1}, headers={"X-Correlation-ID": "last"})
    running.stop()
    assert any(r.correlation_id == "last" for r in handler.records())


def test_lines_made_straight_from_entries_are_those_the_records_make() -> None:
    """The default console handler gets its lines without a record each: the same text."""
    handler = StreamHandler(io.StringIO())
    handler.setFormatter(ConsoleFormatter())
    handler.addFilter(ContextFilter())
    log = AccessLog("instance-5")
    now = time.time()
    fields = [
        ("rpc", "place", "ok", 1.234, "c-1", "rpc.shop.x"),
        ("rpc", "place", "409 out_of_stock", 0.5, "c-2", ""),
        ("event", "on_paid", "ok", 2.0, "e-1", "orders.paid"),
        ("timer", "sweep", "ok", 12.3456, "t-1", ""),
    ]
    entries = [
        access.Entry(now + n * 0.61, kind, "shop", "instance-5", name, outcome, ms, cid, subject)
        for n, (kind, name, outcome, ms, cid, subject) in enumerate(fields)
    ]
    made = [handler.format(record) + "\n" for record in log.records(entries)]
    assert access.direct_lines(handler, entries) == made


def test_a_handler_with_its_own_format_or_filter_gets_records(access_logger) -> None:
    plain = StreamHandler(io.StringIO())
    plain.setFormatter(ConsoleFormatter("%(correlation_id)s %(message)s"))
    filtered = StreamHandler(io.StringIO())
    filtered.setFormatter(ConsoleFormatter())
    filtered.addFilter(lambda record: record.correlation_id != "call-2")
    for handler in (plain, filtered):
        assert access.direct_lines(handler, [log_entry(1)]) is None
        access_logger.addHandler(handler)
    log = AccessLog("instance-6")
    log.waiting.extend(log_entry(number) for number in (1, 2))
    log.flush()
    assert plain.stream.getvalue().splitlines() == [
        "call-1 rpc shop.place ok in 1.50 ms",
        "call-2 rpc shop.place ok in 1.50 ms",
    ]
    assert "call-1" in filtered.stream.getvalue() and "call-2" not in filtered.stream.getvalue()
