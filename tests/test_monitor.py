"""The monitor: latency histograms in $SRV.STATS, error records, sampling into the database,
retention, and the monitor running as a service, all over a real nats-server and database."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from cliffracer_core import RemoteError, call, publish
from cliffracer_core.contrib.monitor import histograms, sampling
from cliffracer_core.contrib.monitor.checks import check_monitor_settings
from cliffracer_core.contrib.monitor.models import (
    EndpointMinute,
    ErrorRecord,
    InstanceSnapshot,
    ServiceMinute,
)
from cliffracer_core.contrib.monitor.records import ErrorReporter, errors_subject
from cliffracer_core.contrib.monitor.sampling import InstanceReport
from cliffracer_core.contrib.monitor.schemas import ErrorReport
from cliffracer_core.core.errors import Conflict, InternalError
from cliffracer_core.core.figures import DURATION_BUCKETS
from cliffracer_core.core.headers import CORRELATION_ID
from cliffracer_core.testing.plugin import run_async
from cliffracer_core.transports import connect
from tests.monitoring import SECRET, make_fast_monitor, make_shop, sample, wait_until


def stats_of(nats_url: str, name: str) -> dict:
    async def ask() -> dict:
        connection = await connect(nats_url)
        try:
            reply = await connection.request(f"$SRV.STATS.{name}", b"", timeout=2)
            return json.loads(reply.data)
        finally:
            await connection.close()

    return run_async(ask())


def call_quietly(target: str, data: dict | None = None, **options) -> None:
    with contextlib.suppress(RemoteError):
        call(target, data, **options)


# What the runner reports


def test_stats_carry_each_endpoints_latency_histogram(start_service, unique_name, nats_server):
    start_service(make_shop(unique_name))
    for number in range(3):
        call(f"{unique_name}.add", {"a": number, "b": 1})
    call_quietly(f"{unique_name}.fail", {"a": 1, "b": 1})
    reply = stats_of(nats_server.url, unique_name)
    endpoints = {endpoint["name"]: endpoint for endpoint in reply["endpoints"]}
    histogram = endpoints["add"]["data"]["latency_histogram"]
    assert histogram["bounds"] == list(DURATION_BUCKETS)
    assert len(histogram["counts"]) == len(DURATION_BUCKETS) + 1
    assert sum(histogram["counts"]) == endpoints["add"]["num_requests"] == 3
    assert sum(endpoints["fail"]["data"]["latency_histogram"]["counts"]) == 1
    # Which NATS server the instance is on, for the console.
    assert f"127.0.0.1:{nats_server.port}" in reply["metadata"]["nats_server"]


def test_stats_split_the_errors_into_client_and_server_errors(
    start_service, unique_name, nats_server
):
    start_service(make_shop(unique_name))
    call(f"{unique_name}.add", {"a": 1, "b": 1})
    for _ in range(2):
        call_quietly(f"{unique_name}.clash")
    call_quietly(f"{unique_name}.fail", {"a": 1, "b": 1})
    call_quietly(f"{unique_name}.add", {"a": "not a number", "b": 1})
    endpoints = {
        endpoint["name"]: endpoint
        for endpoint in stats_of(nats_server.url, unique_name)["endpoints"]
    }
    split = {
        name: (endpoint["data"]["client_errors"], endpoint["data"]["server_errors"])
        for name, endpoint in endpoints.items()
    }
    assert split == {"add": (1, 0), "clash": (2, 0), "fail": (0, 1), "guarded": (0, 0)}
    # ADR-32's own fields are as before, for tools in other languages: both classes counted.
    assert [endpoints[name]["num_errors"] for name in ("add", "clash", "fail")] == [1, 2, 1]
    assert endpoints["clash"]["last_error"].startswith("409:")


@pytest.fixture
def error_records(nats_server):
    """Collect what is published on ``_cliffracer.errors.<name>`` while a test runs."""

    class Collector:
        def __init__(self) -> None:
            self.records: list[dict] = []
            self.loop = asyncio.new_event_loop()
            self.connection = None

        def listen(self, name: str) -> Collector:
            async def start() -> None:
                self.connection = await connect(nats_server.url)

                async def received(message) -> None:
                    self.records.append(json.loads(message.data))

                await self.connection.subscribe(errors_subject(name), received)
                await self.connection.flush()

            self.loop.run_until_complete(start())
            import threading

            threading.Thread(target=self.loop.run_forever, daemon=True).start()
            return self

        def close(self) -> None:
            if self.connection is not None:
                asyncio.run_coroutine_threadsafe(self.connection.close(), self.loop).result(5)
            self.loop.call_soon_threadsafe(self.loop.stop)

    collector = Collector()
    yield collector
    collector.close()


def test_a_failed_call_publishes_an_error_record_without_traceback(
    start_service, unique_name, error_records
):
    running = start_service(make_shop(unique_name))
    records = error_records.listen(unique_name).records
    call(f"{unique_name}.add", {"a": 1, "b": 2})  # a success publishes nothing
    with pytest.raises(RemoteError) as failed:
        call(f"{unique_name}.fail", {"a": 1, "b": 2}, headers={CORRELATION_ID: "corr-fail-1"})
    assert failed.value.code == 500
    with pytest.raises(RemoteError):
        call(f"{unique_name}.clash", headers={CORRELATION_ID: "corr-clash-1"})
    assert wait_until(lambda: len(records) == 2)
    failure, clash = records
    assert failure == {
        "service": unique_name,
        "instance": running.runner.identity.id,
        "kind": "rpc",
        "endpoint": "fail",
        "subject": f"rpc.{unique_name}.fail",
        "code": 500,
        "type": "internal_error",
        "message": InternalError.default_message,
        "correlation_id": "corr-fail-1",
        "trace_id": "",
        "time": failure["time"],
        "dropped": 0,
    }
    assert abs(datetime.fromisoformat(failure["time"]) - datetime.now(UTC)) < timedelta(seconds=5)
    assert (clash["code"], clash["type"], clash["message"]) == (409, "conflict", "Already there.")
    assert clash["correlation_id"] == "corr-clash-1"
    text = json.dumps(records)
    assert SECRET not in text and "Traceback" not in text and "Bearer" not in text


def test_a_failed_event_handler_publishes_an_error_record(
    start_service, unique_name, error_records
):
    start_service(make_shop(unique_name))
    records = error_records.listen(unique_name).records
    publish(f"{unique_name}.happened", {"what": "fine", "number": 1})
    publish(f"{unique_name}.happened", {"what": "bad", "number": -1})
    assert wait_until(lambda: records)
    time.sleep(0.2)
    [record] = records
    assert record["kind"] == "event"
    assert record["endpoint"] == "on_happened"
    assert record["subject"] == f"{unique_name}.happened"
    assert (record["code"], record["type"]) == (500, "internal_error")
    assert SECRET not in json.dumps(record)


def test_error_records_are_rate_limited_per_process(
    start_service, unique_name, error_records, settings
):
    settings.CLIFFRACER = {**settings.CLIFFRACER, "MONITOR": {"ERRORS_PER_SECOND": 2}}
    start_service(make_shop(unique_name))
    records = error_records.listen(unique_name).records
    started = time.monotonic()
    for _ in range(30):
        call_quietly(f"{unique_name}.fail", {"a": 1, "b": 2})
    elapsed = time.monotonic() - started
    time.sleep(0.3)
    # A burst of 2, then 2 a second.
    assert 2 <= len(records) <= 2 + 2 * elapsed + 1
    time.sleep(0.6)
    call_quietly(f"{unique_name}.fail", {"a": 1, "b": 2})
    assert wait_until(lambda: records[-1]["dropped"] > 0)
    assert len(records) + sum(record["dropped"] for record in records) == 31


def test_the_reporter_bucket_refills_and_skips_its_own_subjects():
    now = [0.0]
    reporter = ErrorReporter(service="s", instance_id="i", rate=2, clock=lambda: now[0])
    fields = {"kind": "rpc", "endpoint": "e", "subject": "rpc.s.e", "correlation_id": "c"}
    sent = [reporter.record(error=Conflict(), **fields) for _ in range(4)]
    assert [body is not None for body in sent] == [True, True, False, False]
    now[0] += 0.5
    body = reporter.record(error=Conflict(), **fields)
    assert json.loads(body)["dropped"] == 2
    now[0] += 10
    fields["subject"] = errors_subject("monitor")
    assert reporter.record(error=InternalError(), **fields) is None
    assert (
        ErrorReporter(service="s", instance_id="i", rate=0).record(
            error=Conflict(), kind="rpc", endpoint="e", subject="rpc.s.e", correlation_id="c"
        )
        is None
    )


# Sampling into the database


@pytest.mark.django_db
def test_sampling_records_instances_and_the_traffic_between_samples(start_service, unique_name):
    running = start_service(make_shop(unique_name))
    call(f"{unique_name}.add", {"a": 1, "b": 2})
    # The monitor saw it start (it started within three sample intervals): what it did before
    # the first sample is counted too.
    assert sample() >= 1
    for number in range(3):
        call(f"{unique_name}.add", {"a": number, "b": 1})
    call_quietly(f"{unique_name}.fail", {"a": 1, "b": 1})
    sample()

    snapshot = InstanceSnapshot.objects.get(instance_id=running.runner.identity.id)
    assert snapshot.service == unique_name
    assert snapshot.version == "2.3.4"
    assert snapshot.description == "Sells things to the tests."
    assert snapshot.host == socket.gethostname()
    assert snapshot.pid == str(os.getpid())
    assert snapshot.nats_server
    assert snapshot.counted_since == snapshot.started
    endpoints = {endpoint["name"]: endpoint for endpoint in snapshot.info["endpoints"]}
    assert set(endpoints) == {"add", "guarded", "fail", "clash"}
    assert endpoints["guarded"]["metadata"]["permissions"] == '["auth.view_user"]'
    assert json.loads(endpoints["add"]["metadata"]["request_schema"])["required"] == ["a", "b"]
    assert [item["subject"] for item in snapshot.info["events"]] == [f"{unique_name}.happened"]
    assert snapshot.info["timers"] == [{"handler": "hourly", "seconds": 3600.0}]
    assert snapshot.stats["add"]["num_requests"] == 4
    assert snapshot.stats["fail"]["last_error"].startswith("500:")

    rows = EndpointMinute.objects.filter(instance_id=snapshot.instance_id)
    totals = {}
    for row in rows:
        total = totals.setdefault(row.endpoint, [0, 0, 0, histograms.empty()])
        total[0] += row.requests
        total[1] += row.errors
        total[2] += row.processing_time
        total[3] = histograms.merge([total[3], row.histogram])
    assert totals["add"][:2] == [4, 0]
    assert totals["fail"][:2] == [1, 1]
    assert sum(totals["add"][3]) == 4
    assert totals["add"][2] == snapshot.stats["add"]["processing_time"]
    assert "guarded" not in totals  # no traffic, no row
    # All endpoints together, for the charts.
    service_rows = ServiceMinute.objects.filter(instance_id=snapshot.instance_id)
    assert sum(row.requests for row in service_rows) == 5
    assert sum(row.errors for row in service_rows) == 1
    assert sum(row.client_errors for row in service_rows) == 0  # a 500: a server error
    assert sum(sum(row.histogram) for row in service_rows) == 5


def report(
    instance_id: str,
    requests: int,
    *,
    started: datetime,
    errors: int = 0,
    client_errors: int | None = None,
    name: str = "svc",
) -> InstanceReport:
    counts = histograms.empty()
    counts[3] = requests
    return InstanceReport(
        id=instance_id,
        name=name,
        version="1.0.0",
        metadata={"host": "h", "pid": "1"},
        started=started,
        endpoints=[{"name": "work", "subject": f"rpc.{name}.work", "queue_group": name}],
        stats=[
            {
                "name": "work",
                "num_requests": requests,
                "num_errors": errors,
                "processing_time": requests * 1_000_000,
                "last_error": "",
                "data": {
                    "latency_histogram": {"bounds": list(DURATION_BUCKETS), "counts": counts},
                    **({} if client_errors is None else {"client_errors": client_errors}),
                },
            }
        ],
    )


def minute_totals(instance_id: str) -> tuple[int, int]:
    rows = EndpointMinute.objects.filter(instance_id=instance_id)
    return sum(row.requests for row in rows), sum(row.errors for row in rows)


@pytest.mark.django_db
def test_an_instance_first_seen_long_after_it_started_is_only_a_baseline():
    now = timezone.now()
    sampling.record([report("old", 1000, started=now - timedelta(hours=3))], now=now)
    assert minute_totals("old") == (0, 0)
    snapshot = InstanceSnapshot.objects.get(instance_id="old")
    assert snapshot.counted_since == now
    later = now + timedelta(seconds=10)
    sampling.record([report("old", 1010, errors=2, started=now - timedelta(hours=3))], now=later)
    assert minute_totals("old") == (10, 2)
    [row] = EndpointMinute.objects.filter(instance_id="old")
    assert row.minute == later.replace(second=0, microsecond=0)
    assert row.histogram[3] == 10 and sum(row.histogram) == 10


@pytest.mark.django_db
def test_sampling_counts_client_errors_apart_and_errors_without_a_split_as_server_errors():
    now = timezone.now()
    started = now - timedelta(seconds=5)
    later = [now + timedelta(seconds=10 * step) for step in range(1, 4)]
    sampling.record([report("split", 10, started=started, errors=3, client_errors=2)], now=now)
    sampling.record([report("split", 20, started=started, errors=8, client_errors=6)], now=later[0])
    # A split that claims more errors than there are: never more client errors than errors.
    sampling.record(
        [report("split", 21, started=started, errors=9, client_errors=99)], now=later[1]
    )
    # A service in another language sends no split: its errors count as server errors.
    sampling.record([report("other", 4, started=started, errors=3)], now=now)
    rows = EndpointMinute.objects.filter(instance_id__in=["split", "other"])
    totals = {
        instance: (
            sum(row.errors for row in rows if row.instance_id == instance),
            sum(row.client_errors for row in rows if row.instance_id == instance),
        )
        for instance in ("split", "other")
    }
    assert totals == {"split": (9, 7), "other": (3, 0)}
    service_rows = ServiceMinute.objects.filter(instance_id="split")
    assert sum(row.client_errors for row in service_rows) == 7


@pytest.mark.django_db
def test_a_sample_is_counted_once_when_two_monitors_take_it():
    now = timezone.now()
    started = now - timedelta(seconds=5)
    sampling.record([report("twice", 5, started=started)], now=now)
    stale = InstanceSnapshot.objects.get(instance_id="twice")
    later = now + timedelta(seconds=10)
    # Two monitors read the same snapshot; the first to write wins, the other adds nothing.
    assert sampling._record_instance(report("twice", 8, started=started), stale, later) == 1
    assert sampling._record_instance(report("twice", 8, started=started), stale, later) == 0
    assert sampling.record([report("twice", 8, started=started)], now=later) == 0
    assert minute_totals("twice") == (8, 0)


@pytest.mark.django_db
def test_counters_that_restart_count_from_zero():
    now = timezone.now()
    started = now - timedelta(seconds=5)
    sampling.record([report("restarts", 50, started=started)], now=now)
    sampling.record([report("restarts", 3, started=started)], now=now + timedelta(seconds=10))
    assert minute_totals("restarts") == (53, 0)


def test_histograms_rebin_merge_and_give_quantiles():
    counts = histograms.empty()
    counts[4] = 100  # 100 requests between 1 ms and 2.5 ms
    p95 = histograms.quantile(counts, 0.95)
    assert 0.001 < p95 < 0.0025
    assert histograms.quantile(histograms.empty(), 0.95) is None
    # Another service's bounds land on ours, at or above theirs.
    other = {"latency_histogram": {"bounds": [0.002, 1.0], "counts": [1, 2, 3]}}
    rebinned = histograms.from_stats(other)
    assert rebinned[histograms.BOUNDS.index(0.0025)] == 1
    assert rebinned[histograms.BOUNDS.index(1.0)] == 2
    assert rebinned[-1] == 3
    assert histograms.from_stats({"latency_histogram": {"bounds": [1], "counts": [1]}}) is None
    assert histograms.from_stats(None) is None


# Storing error records and retention


@pytest.mark.django_db
def test_prune_deletes_what_is_past_retention(settings):
    settings.CLIFFRACER = {
        **settings.CLIFFRACER,
        "MONITOR": {
            "MINUTE_RETENTION": 7200,
            "ENDPOINT_MINUTE_RETENTION": 600,
            "RATE_WINDOW": 300,
            "ERROR_RETENTION": 7200,
            "INSTANCE_RETENTION": 600,
            "MAX_ERRORS": 3,
        },
    }
    now = timezone.now()
    for age, instance in ((timedelta(minutes=5), "fresh"), (timedelta(hours=2), "old")):
        EndpointMinute.objects.create(
            instance_id=instance, service="s", endpoint="e", minute=now - age, requests=1
        )
        ServiceMinute.objects.create(instance_id=instance, service="s", minute=now - age)
        ServiceMinute.objects.create(
            instance_id=instance, service="s", minute=now - age - timedelta(minutes=30)
        )
        InstanceSnapshot.objects.create(
            instance_id=instance,
            service="s",
            first_seen=now - age,
            last_seen=now - age,
            counted_since=now - age,
        )
    for minutes in (1, 2, 3, 4, 5, 300):
        ErrorRecord.objects.create(
            time=now - timedelta(minutes=minutes),
            service="s",
            kind="rpc",
            endpoint="e",
            code=500,
            type="internal_error",
            correlation_id=f"c{minutes}",
        )
    deleted = sampling.prune(now=now)
    assert deleted == {"minutes": 1, "endpoint_minutes": 1, "errors": 3, "instances": 1}
    assert list(EndpointMinute.objects.values_list("instance_id", flat=True)) == ["fresh"]
    kept = ServiceMinute.objects.values_list("instance_id", flat=True)
    assert sorted(kept) == ["fresh", "fresh", "old"]
    assert list(InstanceSnapshot.objects.values_list("instance_id", flat=True)) == ["fresh"]
    assert list(ErrorRecord.objects.values_list("correlation_id", flat=True)) == ["c1", "c2", "c3"]


# The monitor running as a service


@pytest.mark.django_db(transaction=True)
def test_the_monitor_service_samples_the_system_and_stores_error_records(
    start_service, unique_name
):
    shop = start_service(make_shop(unique_name))
    start_service(make_fast_monitor(f"{unique_name}-monitor"))
    call(f"{unique_name}.add", {"a": 1, "b": 2})

    def counted():
        rows = EndpointMinute.objects.filter(service=unique_name, endpoint="add")
        return sum(row.requests for row in rows) == 1

    assert wait_until(counted)
    snapshot = InstanceSnapshot.objects.get(instance_id=shop.runner.identity.id)
    assert snapshot.service == unique_name
    # The monitor sees itself too.
    assert wait_until(lambda: InstanceSnapshot.objects.filter(service=f"{unique_name}-monitor"))

    with pytest.raises(RemoteError):
        call(f"{unique_name}.fail", {"a": 1, "b": 2}, headers={CORRELATION_ID: "corr-stored"})
    record = wait_until(lambda: ErrorRecord.objects.filter(service=unique_name).first())
    assert record is not None
    assert (record.endpoint, record.code, record.type) == ("fail", 500, "internal_error")
    assert record.correlation_id == "corr-stored"
    assert record.instance_id == shop.runner.identity.id
    assert SECRET not in record.message


@pytest.mark.django_db(transaction=True)
def test_runservice_monitor_runs_the_installed_monitor(
    runservice_process, start_service, unique_name
):
    """The monitor is a service app of the project: ``runservice monitor`` samples at once."""
    shop = start_service(make_shop(unique_name))
    process = runservice_process("monitor")
    assert wait_until(
        lambda: InstanceSnapshot.objects.filter(instance_id=shop.runner.identity.id).exists(),
        timeout=20,
    ), process.output()[-3000:]
    assert wait_until(lambda: InstanceSnapshot.objects.filter(service="monitor").exists())
    monitor = InstanceSnapshot.objects.get(service="monitor")
    assert monitor.pid == str(process.pid)
    with pytest.raises(RemoteError):
        call(f"{unique_name}.clash", headers={CORRELATION_ID: "corr-process"})
    record = wait_until(lambda: ErrorRecord.objects.filter(correlation_id="corr-process").first())
    assert record is not None and record.code == 409


def test_names_that_are_not_subject_tokens_are_ignored(nats_server):
    """A foreign service answering with a name ADR-32 does not allow never reaches the pages."""

    async def discover_with_a_stranger():
        connection = await connect(nats_server.url)

        async def answer(message):
            reply = json.dumps({"name": "bad/name", "id": "x1"}).encode()
            await connection.publish(message.reply, reply)

        await connection.subscribe("$SRV.PING", answer)
        await connection.flush()
        try:
            return await sampling.discover(connection, window=0.3)
        finally:
            await connection.close()

    assert all(report.name != "bad/name" for report in run_async(discover_with_a_stranger()))
    with pytest.raises(ValueError):
        ErrorReport(
            service="bad/name", kind="rpc", endpoint="e", code=500, type="t", time=timezone.now()
        )


def test_the_monitor_settings_are_checked(settings):
    settings.CLIFFRACER = {
        **settings.CLIFFRACER,
        "MONITOR": {"SAMPLE_INTERVAL": 0, "RATE_WINDOW": "5m", "SAMPLE_EVERY": 3},
    }
    errors = check_monitor_settings()
    assert [error.id for error in errors] == [
        "cliffracer.E201",
        "cliffracer.E202",
        "cliffracer.E202",
    ]
    assert "SAMPLE_EVERY" in errors[0].msg
    settings.CLIFFRACER = {**settings.CLIFFRACER, "MONITOR": {"ERRORS_PER_SECOND": 0}}
    assert check_monitor_settings() == []
    # QUIET is a switch: False logs the monitor's every run; a number is a mistake.
    settings.CLIFFRACER = {**settings.CLIFFRACER, "MONITOR": {"QUIET": False}}
    assert check_monitor_settings() == []
    settings.CLIFFRACER = {**settings.CLIFFRACER, "MONITOR": {"QUIET": 1}}
    assert [error.id for error in check_monitor_settings()] == ["cliffracer.E203"]
