"""CloudWatch: a real service process pushes with PutMetricData to moto's server (a real
process on a free port), and the dashboard command puts its dashboard there.

moto stores a value/count array as one datum per count (it does not aggregate them as
CloudWatch does), so the latency check counts data points rather than reading a percentile.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys

import boto3

from cliffracer_core.testing.plugin import project_root
from cliffracer_core.testing.polling import wait_for
from tests.moto_server import CREDENTIALS, REGION
from tests.test_metrics import requests


def cloudwatch(url: str):
    return boto3.client(
        "cloudwatch",
        region_name=REGION,
        endpoint_url=url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def total(client, name: str, **dimensions: str) -> float:
    now = datetime.datetime.now(datetime.UTC)
    answer = client.get_metric_data(
        MetricDataQueries=[
            {
                "Id": "m",
                "MetricStat": {
                    "Metric": {
                        "Namespace": "Cliffracer",
                        "MetricName": name,
                        "Dimensions": [{"Name": k, "Value": v} for k, v in dimensions.items()],
                    },
                    "Period": 60,
                    "Stat": "Sum",
                },
            }
        ],
        StartTime=now - datetime.timedelta(minutes=10),
        EndTime=now + datetime.timedelta(minutes=1),
    )
    return sum(answer["MetricDataResults"][0]["Values"])


def test_a_service_pushes_its_figures_to_cloudwatch(moto_server, nats_server, runservice_process):
    exporter = {
        "BACKEND": "cliffracer_core.contrib.metrics.backends.cloudwatch.CloudWatchExporter",
        "OPTIONS": {"ENDPOINT_URL": moto_server, "REGION": REGION, "INTERVAL": 0.3},
    }
    runservice_process(
        "metered",
        DJANGO_SETTINGS_MODULE="tests.exporters_settings",
        TEST_METRICS_EXPORTERS=json.dumps([exporter]),
        **CREDENTIALS,
    )
    requests(
        nats_server.url,
        [("rpc.metered.echo", b'{"text": "c"}')] * 4
        + [("rpc.metered.echo", b"{}")]  # 422
        + [("rpc.metered.fail", b"")] * 2,  # 500
    )
    client = cloudwatch(moto_server)
    echo = {"Service": "metered", "Endpoint": "echo"}
    wait_for(lambda: total(client, "Requests", **echo) >= 5, 30, what="the requests")
    wait_for(
        lambda: total(client, "ServerErrors", Service="metered", Endpoint="fail") >= 2,
        30,
        what="the server errors",
    )
    assert total(client, "Requests", **echo) == 5
    assert total(client, "ClientErrors", **echo) == 1
    assert total(client, "ServerErrors", **echo) == 0
    assert total(client, "Responses", **echo, Code="422") == 1
    assert total(client, "Responses", **echo, Code="200") == 4
    # One latency datum per request (moto's way of storing value/count arrays).
    now = datetime.datetime.now(datetime.UTC)
    latency = client.get_metric_statistics(
        Namespace="Cliffracer",
        MetricName="Latency",
        Dimensions=[{"Name": k, "Value": v} for k, v in echo.items()],
        StartTime=now - datetime.timedelta(minutes=10),
        EndTime=now + datetime.timedelta(minutes=1),
        Period=60,
        Statistics=["SampleCount", "Maximum"],
    )
    assert sum(point["SampleCount"] for point in latency["Datapoints"]) == 5
    assert max(point["Maximum"] for point in latency["Datapoints"]) <= 10.0
    # relay calls echo under a call policy: the caller's call figures, by target.
    requests(nats_server.url, [("rpc.metered.relay", b'{"text": "r"}')] * 3)
    calls = {"Service": "metered", "Target": "metered.echo"}
    wait_for(lambda: total(client, "Calls", **calls) >= 3, 30, what="the calls")
    assert total(client, "Calls", **calls) == 3
    assert total(client, "CallRetries", **calls) == 0
    assert total(client, "CircuitBreakerState", **calls) == 0
    assert total(client, "Requests", **echo) == 8


def test_the_dashboard_command_puts_a_dashboard_of_the_services(moto_server):
    made = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "cloudwatch_dashboard",
            "--name",
            "shop",
            "--endpoint-url",
            moto_server,
        ],
        cwd=project_root(),
        env={**os.environ, **CREDENTIALS, "DJANGO_SETTINGS_MODULE": "tests.exporters_settings"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0, made.stderr
    body = json.loads(cloudwatch(moto_server).get_dashboard(DashboardName="shop")["DashboardBody"])
    titles = {widget["properties"]["title"] for widget in body["widgets"]}
    assert {"metered: Requests", "orders: Latency p95 (s)", "orders: Server errors (5xx)"} <= titles
    latency = next(
        w for w in body["widgets"] if w["properties"]["title"] == "metered: Latency p95 (s)"
    )
    assert ["Cliffracer", "Latency", "Service", "metered", "Endpoint", "echo", {"stat": "p95"}] in (
        latency["properties"]["metrics"]
    )


def test_the_dashboard_command_without_a_region_is_a_usage_error():
    environment = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    made = subprocess.run(
        [sys.executable, "manage.py", "cloudwatch_dashboard"],
        cwd=project_root(),
        env={**environment, "AWS_CONFIG_FILE": "/nonexistent"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 2
    assert "region" in made.stderr


def test_a_service_writes_embedded_metric_format_lines(tmp_path, nats_server, runservice_process):
    """EMF: what CloudWatch Logs would turn into metrics. moto does not extract metrics from
    logs, so the lines are checked against the format's rules and their values summed."""
    path = tmp_path / "emf.log"
    exporter = {
        "BACKEND": "cliffracer_core.contrib.metrics.backends.emf.EmfExporter",
        "OPTIONS": {"PATH": str(path), "INTERVAL": 0.3, "NAMESPACE": "Shop"},
    }
    process = runservice_process(
        "metered",
        DJANGO_SETTINGS_MODULE="tests.exporters_settings",
        TEST_METRICS_EXPORTERS=json.dumps([exporter]),
    )
    requests(
        nats_server.url,
        [("rpc.metered.echo", b'{"text": "e"}')] * 4 + [("rpc.metered.fail", b"")] * 2,
    )
    process.stop()  # the last figures are flushed at stop
    documents = [json.loads(line) for line in path.read_text().splitlines()]
    assert documents
    for document in documents:
        (directive,) = document["_aws"]["CloudWatchMetrics"]
        assert directive["Namespace"] == "Shop"
        assert isinstance(document["_aws"]["Timestamp"], int)
        for dimension in directive["Dimensions"][0]:
            assert isinstance(document[dimension], str)
        for metric in directive["Metrics"]:
            assert isinstance(document[metric["Name"]], int | float | list)

    def summed(name: str, **dimensions: str) -> float:
        total = 0.0
        for document in documents:
            if name in document and all(document.get(k) == v for k, v in dimensions.items()):
                value = document[name]
                total += len(value) if isinstance(value, list) else value
        return total

    echo = {"Service": "metered", "Endpoint": "echo"}
    assert summed("Requests", **echo) == 4
    assert summed("ServerErrors", Service="metered", Endpoint="fail") == 2
    # Latency: one value per request, each its bucket's upper bound.
    assert summed("Latency", **echo) == 4


def test_emf_latency_beyond_a_hundred_values_takes_several_documents():
    from cliffracer_core.contrib.metrics.backends.emf import documents

    where = [{"Name": "Service", "Value": "s"}, {"Name": "Endpoint", "Value": "e"}]
    data = [
        {
            "MetricName": "Requests",
            "Dimensions": where,
            "Timestamp": 1.5,
            "Unit": "Count",
            "Value": 151.0,
        },
        {
            "MetricName": "Latency",
            "Dimensions": where,
            "Timestamp": 1.5,
            "Unit": "Seconds",
            "Values": [0.001, 0.005],
            "Counts": [150.0, 1.0],
        },
    ]
    made = documents(data, "NS")
    assert [len(d["Latency"]) for d in made] == [100, 51]
    assert made[0]["Requests"] == 151.0 and "Requests" not in made[1]
    assert made[1]["Latency"][-1] == 0.005
    assert made[0]["_aws"]["Timestamp"] == 1500
