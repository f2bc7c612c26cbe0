#!/usr/bin/env python
"""How fast the operations console's pages render with many services, against admin pages.

Run from the repository root::

    .venv/bin/python benchmarks/admin_services.py [--services 20] [--endpoints 10]
        [--instances 1] [--hours 24] [--requests 50]

It needs nothing running: the pages read the monitor's rows, never NATS. It migrates a fresh
SQLite database in a temporary directory (the embedded default; DEBUG off), fills it as the
monitor would after ``--hours`` of sampling ``--services`` services of ``--endpoints``
endpoints each (per-minute rows of every instance for the charts and of every endpoint for
the last hour, 2,000 error records, and two rounds of ``sampling.record`` for the instances'
snapshots), then requests each page
``--requests`` times through Django's test client (view, queries and templates, no network):

* the baselines: the admin index ``/admin/`` and a plain changelist ``/admin/auth/user/``;
* ``/admin/services/`` (the bar: under 500 ms), its JSON ``/admin/services/status.json``,
  one service's page (instances, endpoints, a day of charts) and the recent errors.

It prints the median and p95 of each, their ratio to the admin index's median, and what one
sampling round (``sampling.record``) costs the monitor. A measurement, not a test: it exits 0
whatever the figures.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != HERE]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from datetime import timedelta  # noqa: E402

BAR_MS = 500.0


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=20)
    parser.add_argument("--endpoints", type=int, default=10)
    parser.add_argument("--instances", type=int, default=1, help="instances per service")
    parser.add_argument("--hours", type=float, default=24.0, help="history of per-minute rows")
    parser.add_argument("--requests", type=int, default=50, help="timed requests per page")
    parser.add_argument("--warmup", type=int, default=5)
    return parser.parse_args()


def setup_django(directory: Path) -> None:
    os.environ["DATABASE_URL"] = f"sqlite:///{directory / 'bench.sqlite3'}"
    os.environ["DEBUG"] = "0"
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ["DJANGO_SETTINGS_MODULE"] = "settings.settings"
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def request_schema(index: int) -> str:
    return json.dumps(
        {
            "properties": {
                "customer_id": {"title": "Customer Id", "type": "integer"},
                "lines": {
                    "items": {"$ref": "#/$defs/Line"},
                    "title": "Lines",
                    "type": "array",
                },
                "note": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
            },
            "$defs": {
                "Line": {
                    "properties": {"sku": {"type": "string"}, "quantity": {"type": "integer"}},
                    "required": ["sku", "quantity"],
                    "type": "object",
                }
            },
            "required": ["customer_id", "lines"],
            "title": f"Request{index}",
            "type": "object",
        }
    )


def reports(arguments: argparse.Namespace, *, started, scale: int) -> list:
    """One round of discovery as the monitor would gather it (cumulative counts × scale)."""
    from cliffracer_core.contrib.monitor.sampling import InstanceReport
    from cliffracer_core.core.figures import DURATION_BUCKETS

    found = []
    for service in range(arguments.services):
        name = f"svc-{service:02d}"
        for instance in range(arguments.instances):
            endpoints, stats = [], []
            for endpoint in range(arguments.endpoints):
                method = f"method_{endpoint:02d}"
                endpoints.append(
                    {
                        "name": method,
                        "subject": f"rpc.{name}.{method}",
                        "queue_group": name,
                        "metadata": {
                            "request_schema": request_schema(endpoint),
                            "reply_schema": request_schema(endpoint + 100),
                            "handler": "async",
                            "public": "false",
                            "permissions": json.dumps([f"{name}.call_{method}"]),
                            "description": "A benchmark endpoint.",
                        },
                    }
                )
                requests = 1000 * scale + endpoint
                counts = [0] * (len(DURATION_BUCKETS) + 1)
                counts[3], counts[5], counts[8] = requests - 20 * scale, 15 * scale, 5 * scale
                stats.append(
                    {
                        "name": method,
                        "subject": f"rpc.{name}.{method}",
                        "num_requests": requests,
                        "num_errors": 3 * scale,
                        "processing_time": requests * 1_500_000,
                        "last_error": "409:Already there.",
                        "data": {
                            "latency_histogram": {
                                "bounds": list(DURATION_BUCKETS),
                                "counts": counts,
                            }
                        },
                    }
                )
            found.append(
                InstanceReport(
                    id=f"{name}-instance-{instance}",
                    name=name,
                    version="1.4.2",
                    description="A benchmark service.",
                    metadata={
                        "host": f"host-{instance}",
                        "pid": str(1000 + service),
                        "nats_server": "nats-1 (10.0.0.1:4222)",
                        "events": json.dumps(
                            [{"subject": f"{name}.happened", "handler": "on_happened"}]
                        ),
                        "timers": json.dumps([{"handler": "tick", "seconds": 60.0}]),
                    },
                    started=started,
                    endpoints=endpoints,
                    stats=stats,
                )
            )
    return found


def fill(arguments: argparse.Namespace) -> float:
    """The monitor's rows for ``--hours`` of traffic; returns one sampling round's seconds."""
    from django.utils import timezone

    from cliffracer_core.contrib.monitor import sampling
    from cliffracer_core.contrib.monitor.models import EndpointMinute, ErrorRecord, ServiceMinute
    from cliffracer_core.core.figures import DURATION_BUCKETS

    now = timezone.now()
    started = now - timedelta(hours=arguments.hours + 1)
    # Two rounds of sampling make the snapshots (the second one is the timed one).
    sampling.record(reports(arguments, started=started, scale=1), now=now - timedelta(seconds=10))
    began = time.perf_counter()
    sampling.record(reports(arguments, started=started, scale=2), now=now)
    record_seconds = time.perf_counter() - began

    # The monitor keeps a row per instance and minute for the charts, and one per endpoint too
    # for as long as ENDPOINT_MINUTE_RETENTION.
    minutes = int(arguments.hours * 60)
    endpoint_minutes = min(minutes, int(sampling.setting("ENDPOINT_MINUTE_RETENTION") // 60))
    this_minute = now.replace(second=0, microsecond=0)
    histogram = [0] * (len(DURATION_BUCKETS) + 1)
    histogram[3], histogram[5], histogram[8] = 50, 8, 2
    totals = [count * arguments.endpoints for count in histogram]
    endpoint_rows, service_rows = [], []
    for service in range(arguments.services):
        for instance in range(arguments.instances):
            instance_id = f"svc-{service:02d}-instance-{instance}"
            for minute in range(1, minutes + 1):
                service_rows.append(
                    ServiceMinute(
                        instance_id=instance_id,
                        service=f"svc-{service:02d}",
                        minute=this_minute - timedelta(minutes=minute),
                        requests=60 * arguments.endpoints,
                        errors=minute % 7 == 0,
                        processing_time=60 * arguments.endpoints * 1_500_000,
                        histogram=totals,
                    )
                )
            for endpoint in range(arguments.endpoints):
                for minute in range(1, endpoint_minutes + 1):
                    endpoint_rows.append(
                        EndpointMinute(
                            instance_id=instance_id,
                            service=f"svc-{service:02d}",
                            endpoint=f"method_{endpoint:02d}",
                            minute=this_minute - timedelta(minutes=minute),
                            requests=60,
                            errors=minute % 7 == 0,
                            processing_time=60 * 1_500_000,
                            histogram=histogram,
                        )
                    )
    ServiceMinute.objects.bulk_create(service_rows, batch_size=2_000)
    EndpointMinute.objects.bulk_create(endpoint_rows, batch_size=2_000)
    ErrorRecord.objects.bulk_create(
        ErrorRecord(
            time=now - timedelta(seconds=30 * index),
            service=f"svc-{index % arguments.services:02d}",
            instance_id=f"svc-{index % arguments.services:02d}-instance-0",
            kind="rpc",
            endpoint=f"method_{index % arguments.endpoints:02d}",
            subject="",
            code=409 if index % 3 else 500,
            type="conflict" if index % 3 else "internal_error",
            message="Already there.",
            correlation_id=f"{index:032x}",
        )
        for index in range(2000)
    )
    return record_seconds


def measure(client, path: str, *, requests: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        response = client.get(path)
        assert response.status_code == 200, (path, response.status_code)
    timings = []
    for _ in range(requests):
        began = time.perf_counter()
        response = client.get(path)
        timings.append((time.perf_counter() - began) * 1000)
        assert response.status_code == 200, (path, response.status_code)
    return timings


def main() -> int:
    arguments = parse_arguments()
    with tempfile.TemporaryDirectory(prefix="cliffracer-admin-bench-") as directory:
        began = time.perf_counter()
        setup_django(Path(directory))
        from django.contrib.auth.models import User
        from django.db import connection
        from django.test import Client

        from cliffracer_core.contrib.monitor.models import EndpointMinute, ServiceMinute

        record_seconds = fill(arguments)
        User.objects.create_superuser("bench", password="x")
        for number in range(50):
            User.objects.create_user(f"user{number}", password="x")
        print(
            f"{arguments.services} services x {arguments.endpoints} endpoints x "
            f"{arguments.instances} instance(s), {arguments.hours:g} h of history "
            f"({ServiceMinute.objects.count():,} service and "
            f"{EndpointMinute.objects.count():,} endpoint rows), 2,000 error records; "
            f"{connection.vendor}, DEBUG off; set up in {time.perf_counter() - began:.1f} s"
        )
        client = Client()
        client.force_login(User.objects.get(username="bench"))
        pages = [
            ("admin index (baseline)", "/admin/"),
            ("user changelist (baseline)", "/admin/auth/user/"),
            ("/admin/services/", "/admin/services/"),
            ("/admin/services/status.json", "/admin/services/status.json"),
            ("one service's page", "/admin/services/svc-00/"),
            ("its status.json", "/admin/services/svc-00/status.json"),
            ("its status.json with charts", "/admin/services/svc-00/status.json?charts=1"),
            ("recent errors", "/admin/service-errors/"),
        ]
        results = {}
        for label, path in pages:
            results[label] = measure(
                client, path, requests=arguments.requests, warmup=arguments.warmup
            )
        baseline = statistics.median(results["admin index (baseline)"])
        print()
        print(f"{'page':34} {'median ms':>10} {'p95 ms':>8} {'x index':>8}")
        for label, timings in results.items():
            median = statistics.median(timings)
            p95 = sorted(timings)[max(0, int(len(timings) * 0.95) - 1)]
            print(f"{label:34} {median:10.1f} {p95:8.1f} {median / baseline:8.2f}")
        services_median = statistics.median(results["/admin/services/"])
        verdict = "PASS" if services_median < BAR_MS else "MISS"
        print()
        print(
            f"/admin/services/ median: {services_median:.1f} ms (bar < {BAR_MS:.0f} ms)  {verdict}"
        )
        print(
            f"one sampling round (sampling.record of {arguments.services * arguments.instances} "
            f"instances): {record_seconds * 1000:.0f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
