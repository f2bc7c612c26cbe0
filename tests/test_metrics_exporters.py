"""Push exporters (``METRICS_EXPORTERS``): chosen by settings, off the handlers' path, retried
with backoff while their server is away; and the one reading every exporter shares."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.core.checks import run_checks
from django.test import override_settings

from cliffracer_core.contrib.metrics import cloudwatch, zabbix
from cliffracer_core.contrib.metrics.reading import Figures, Histogram, increase, read_figures
from cliffracer_core.core.figures import ServiceMetrics
from cliffracer_core.testing.polling import wait_for
from cliffracer_core.transports.nats.embedded import free_port
from tests.otlp_receiver import OtlpReceiver
from tests.test_metrics import requests

SETTINGS = {"DJANGO_SETTINGS_MODULE": "tests.exporters_settings"}


class Receiver:
    """A real HTTP server on ``port`` that keeps every JSON body posted to it."""

    def __init__(self, port: int) -> None:
        self.bodies: list[dict] = []
        received = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                received.append(json.loads(self.rfile.read(length)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *arguments) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def exporters_environment(port: int, interval: float = 0.2) -> dict[str, str]:
    entry = {
        "BACKEND": "tests.pushing.JsonExporter",
        "OPTIONS": {"URL": f"http://127.0.0.1:{port}/push", "INTERVAL": interval},
    }
    return {**SETTINGS, "TEST_METRICS_EXPORTERS": json.dumps([entry])}


def echo_count(body: dict) -> float:
    return sum(
        value
        for service, endpoint, code, value in body["requests"]
        if (service, endpoint, code) == ("metered", "echo", "200")
    )


def test_an_exporter_without_its_server_logs_why_retries_and_delivers_once_it_is_back(
    nats_server, runservice_process
):
    port = free_port("127.0.0.1")
    process = runservice_process("metered", **exporters_environment(port))
    # Nothing listens on the port: handlers answer as ever while the exporter fails.
    replies = requests(nats_server.url, [("rpc.metered.echo", b'{"text": "hi"}')] * 5)
    assert [reply.data for reply in replies] == [b'{"text":"hi"}'] * 5
    wait_for(lambda: "cannot push metrics" in process.output(), what="the failure logged")
    assert "Connection refused" in process.output()
    receiver = Receiver(port)
    try:
        # The backoff (1 s, 2 s …, at most the interval) brings the next attempt soon.
        body = wait_for(
            lambda: next((b for b in receiver.bodies if echo_count(b) == 5), None),
            what="the figures pushed once the server is back",
        )
        assert body["clock"] > 0
        wait_for(lambda: "pushes metrics again" in process.output(), what="the recovery logged")
    finally:
        process.stop()
        receiver.close()
    # One warning per outage, not one per attempt.
    assert process.output().count("cannot push metrics") == 1


def test_a_stopping_service_flushes_its_last_figures(nats_server, runservice_process):
    port = free_port("127.0.0.1")
    receiver = Receiver(port)
    try:
        # An interval far longer than the test: only the flush at stop can deliver.
        process = runservice_process("metered", **exporters_environment(port, interval=3600))
        requests(nats_server.url, [("rpc.metered.echo", b'{"text": "x"}')] * 3)
        process.stop()
        assert [echo_count(body) for body in receiver.bodies] == [3]
    finally:
        receiver.close()


def test_otlp_metrics_arrive_at_an_otlp_receiver(nats_server, runservice_process):
    receiver = OtlpReceiver()
    entry = {
        "BACKEND": "cliffracer_core.contrib.metrics.backends.otlp.OtlpMetricsExporter",
        "OPTIONS": {"ENDPOINT": f"{receiver.endpoint}/v1/metrics", "INTERVAL": 0.2},
    }
    try:
        runservice_process("metered", **SETTINGS, TEST_METRICS_EXPORTERS=json.dumps([entry]))
        requests(nats_server.url, [("rpc.metered.echo", b'{"text": "o"}')] * 3)

        def latest() -> dict:
            """The last request's metrics by name (the figures are cumulative)."""
            if not receiver.metrics:
                return {}
            (resource,) = receiver.metrics[-1].resource_metrics
            return {m.name: m for m in resource.scope_metrics[0].metrics}

        def echo_requests() -> int:
            metric = latest().get("cliffracer.rpc.requests")
            if metric is None:
                return 0
            return sum(
                point.as_int
                for point in metric.sum.data_points
                if {a.key: a.value.string_value for a in point.attributes}
                == {"service": "metered", "endpoint": "echo", "code": "200"}
            )

        wait_for(lambda: echo_requests() == 3, what="three echo requests over OTLP")
        # relay calls echo under a call policy: the calls by caller and target.
        requests(nats_server.url, [("rpc.metered.relay", b'{"text": "r"}')] * 2)
        calling = {"service": "metered", "target": "metered.echo"}

        def points(name: str, kind: str) -> list:
            metric = latest().get(name)
            if metric is None:
                return []
            return [
                point
                for point in getattr(metric, kind).data_points
                if {a.key: a.value.string_value for a in point.attributes} == calling
            ]

        wait_for(
            lambda: [p.as_int for p in points("cliffracer.calls", "sum")] == [2],
            what="two calls over OTLP",
        )
        assert [p.as_int for p in points("cliffracer.circuit_breaker.state", "gauge")] == [0]
        assert [p.as_int for p in points("cliffracer.call.retries", "sum")] == [0]
        metrics = latest()
        assert metrics["cliffracer.rpc.requests"].sum.is_monotonic
        (resource,) = receiver.metrics[-1].resource_metrics
        assert resource.resource.attributes[0].value.string_value == "metered"
        echo = next(
            point
            for point in metrics["cliffracer.rpc.duration"].histogram.data_points
            if any(a.value.string_value == "echo" for a in point.attributes)
        )
        assert echo.count == 5
        assert len(echo.bucket_counts) == len(echo.explicit_bounds) + 1
        assert metrics["cliffracer.timer.runs"].sum.data_points
    finally:
        receiver.close()


def test_read_figures_adds_up_the_runners_of_one_service():
    def metrics(instance: str) -> ServiceMetrics:
        made = ServiceMetrics(
            service="orders",
            version="1",
            instance_id=instance,
            endpoints=["create"],
            events=[("on_paid", "payments.*")],
            timers=["expire"],
            in_flight=lambda: 2,
            reconnects=lambda: 1,
        )
        made.endpoints["create"].record(300_000)  # 0.3 ms
        made.endpoints["create"].record(40_000_000, code=500)  # 40 ms
        made.events["on_paid"]["ok"] += 1
        return made

    figures = read_figures([metrics("a"), metrics("b")])
    assert figures.requests[("orders", "create", "200")] == 2
    assert figures.requests[("orders", "create", "500")] == 2
    assert figures.in_flight[("orders",)] == 4
    assert figures.events[("orders", "payments.*", "ok")] == 2
    histogram = figures.durations[("orders", "create")]
    assert histogram.count == 4
    assert histogram.total_seconds == pytest.approx(0.0806)
    assert histogram.quantile(0.5) == 0.0005
    assert histogram.quantile(0.95) == 0.05
    assert figures.services() == ["orders"]
    assert figures.endpoints("orders") == ["create"]
    assert Histogram([0] * 17, 0.0).quantile(0.95) is None


def test_call_figures_are_sent_per_interval_with_the_breaker_state_as_it_is():
    def at(clock: float, calls: int, refused: int, state: int) -> Figures:
        return Figures(
            clock=clock,
            info={("shop", "1", "i"): 1},
            calls={("shop", "stock.get"): calls},
            retries={("shop", "stock.get"): 1},
            rejections={("shop", "stock.get", "circuit_open"): refused},
            fallbacks={("shop", "stock.get"): 0},
            breakers={("shop", "stock.get"): state},
        )

    interval = increase(at(2.0, 10, 4, 2), at(1.0, 6, 1, 0))
    assert interval.calls == {("shop", "stock.get"): 4}
    assert interval.rejections == {("shop", "stock.get", "circuit_open"): 3}
    assert interval.retries == {("shop", "stock.get"): 0}
    assert interval.breakers == {("shop", "stock.get"): 2}
    sent = zabbix.values(interval, "shop")
    assert sent[zabbix.CALLS.format("stock.get")] == 4
    assert sent[zabbix.REJECTIONS.format("stock.get")] == 3
    assert sent[zabbix.BREAKER.format("stock.get")] == zabbix.BREAKER_OPEN
    lists = zabbix.discovery(interval, "shop")
    assert json.loads(lists[zabbix.CALLS_RULE]) == [{"{#TARGET}": "stock.get"}]
    data = {
        (datum["MetricName"], tuple(d["Value"] for d in datum["Dimensions"])): datum["Value"]
        for datum in cloudwatch.metric_data(interval)
    }
    assert data[("Calls", ("shop", "stock.get"))] == 4
    assert data[("CallRejections", ("shop", "stock.get", "circuit_open"))] == 3
    assert data[("CircuitBreakerState", ("shop", "stock.get"))] == 2
    # Another service's figures are not this one's.
    assert interval.only("orders").calls == {}


@pytest.mark.parametrize(
    "exporters",
    [
        "not a list",
        [{"OPTIONS": {}}],
        [{"BACKEND": "tests.pushing.Nowhere"}],
        [{"BACKEND": "tests.test_metrics_exporters.Receiver"}],
        [{"BACKEND": "tests.pushing.JsonExporter", "OPTIONS": {"NO_SUCH": 1}}],
        [{"BACKEND": "tests.pushing.JsonExporter", "OPTIONS": {"URL": "x", "INTERVAL": 0}}],
    ],
)
def test_bad_exporter_settings_are_a_system_check_error(exporters):
    with override_settings(CLIFFRACER={"METRICS_EXPORTERS": exporters}):
        ids = [message.id for message in run_checks(tags=["cliffracer"])]
    assert "cliffracer.E045" in ids


def test_good_exporter_settings_pass_the_checks():
    good = [{"BACKEND": "tests.pushing.JsonExporter", "OPTIONS": {"URL": "http://x/"}}]
    with override_settings(CLIFFRACER={"METRICS_EXPORTERS": good}):
        ids = [message.id for message in run_checks(tags=["cliffracer"])]
    assert "cliffracer.E045" not in ids


def rows(body: dict, series: str, *labels: str) -> list:
    """The values of ``series`` in a pushed body whose labels start with ``labels``."""
    return [row[-1] for row in body.get(series, []) if tuple(row[: len(labels)]) == labels]


def test_the_web_process_pushes_its_websocket_figures(transactional_db, web_process):
    import asyncio

    from django.contrib.auth.models import User

    from tests.test_websocket_processes import open_socket, token_for

    port = free_port("127.0.0.1")
    receiver = Receiver(port)
    entry = {
        "BACKEND": "tests.pushing.JsonExporter",
        "OPTIONS": {"URL": f"http://127.0.0.1:{port}/push", "INTERVAL": 0.2},
    }
    token = token_for(User.objects.create_user("ada", password="pw-ada-12345"))
    web = web_process(
        DJANGO_SETTINGS_MODULE="tests.websocket_settings",
        CLIFFRACER_TEST_OVERRIDES=json.dumps({"METRICS_EXPORTERS": [entry]}),
    )

    def pushed_with(condition) -> dict | None:
        return next((body for body in reversed(receiver.bodies) if condition(body)), None)

    async def scenario() -> dict:
        socket = await open_socket(web.ws_url, token)
        await socket.send(json.dumps({"type": "ping"}))
        await socket.recv()
        try:
            # Pushed from the daphne process's own exporter thread while the socket is open.
            return await asyncio.to_thread(
                wait_for,
                lambda: pushed_with(
                    lambda b: (
                        rows(b, "sockets", "web") == [1]
                        and rows(b, "frames_in", "web", "ping") == [1]
                    )
                ),
                what="the open socket and its ping pushed",
            )
        finally:
            await socket.close()

    try:
        body = asyncio.run(scenario())
        assert rows(body, "frames_in", "web", "auth") == [1]
        assert [row[0] for row in body["info"]] == ["web"]
        # The socket closed: the next pushes say so.
        wait_for(
            lambda: pushed_with(lambda b: rows(b, "sockets", "web") == [0]),
            what="the closed socket pushed",
        )
    finally:
        web.stop()
        receiver.close()
    assert "pushes metrics with JSON exporter" in web.output()


def test_the_celery_worker_pushes_its_tasks_as_the_endpoints_of_celery_worker(
    transactional_db, celery_worker_process
):
    from tests import jobs_tasks

    port = free_port("127.0.0.1")
    receiver = Receiver(port)
    entry = {
        "BACKEND": "tests.pushing.JsonExporter",
        "OPTIONS": {"URL": f"http://127.0.0.1:{port}/push", "INTERVAL": 0.2},
    }
    task = "tests.jobs_tasks.context_of_task"
    try:
        # The default prefork pool: the task runs in a pool process, the main process pushes.
        worker = celery_worker_process(
            "--include",
            "tests.jobs_tasks",
            DJANGO_SETTINGS_MODULE="tests.websocket_settings",
            CLIFFRACER_TEST_OVERRIDES=json.dumps({"METRICS_EXPORTERS": [entry]}),
        )
        jobs_tasks.context_of_task.delay().get(timeout=20)
        body = wait_for(
            lambda: next(
                (
                    b
                    for b in reversed(receiver.bodies)
                    if rows(b, "requests", "celery-worker", task, "200") == [1]
                ),
                None,
            ),
            what="the task's run pushed",
        )
        assert rows(body, "requests", "celery-worker", task, "500") == [0]
        assert rows(body, "durations", "celery-worker", task) == [1]
        assert rows(body, "in_flight", "celery-worker") == [0]
        assert [row[0] for row in body["info"]] == ["celery-worker"]
        worker.stop()
    finally:
        receiver.close()
    # Pushed from the worker's main process only: one exporter, one instance id.
    assert worker.output().count("pushes metrics with JSON exporter") == 1
    assert len({row[2] for b in receiver.bodies for row in b["info"]}) == 1


def test_task_counts_read_as_the_endpoints_of_celery_worker(monkeypatch):
    from cliffracer_core.contrib.jobs import metrics as task_metrics

    counts = task_metrics.TaskCounts(["shop.email"])
    monkeypatch.setattr(task_metrics, "counts", counts)
    for state in ("started", "started", "started", "started"):
        counts.count("shop.email", state)
    counts.finish("shop.email", "success", 3_000_000)  # 3 ms
    counts.finish("shop.email", "failure", 40_000_000_000)  # 40 s: beyond the services' buckets
    counts.finish("shop.email", "retry", 200_000_000)  # 200 ms
    counts.count("shop.email", "revoked")

    figures = Figures(clock=1.0, info={("celery-worker", "5", "i"): 1})
    task_metrics.read_into(figures, "celery-worker")
    assert {
        code: figures.requests[("celery-worker", "shop.email", code)]
        for code in ("200", "500", "503")
    } == {"200": 1, "500": 1, "503": 1}
    assert figures.dropped[("celery-worker", "shop.email", "revoked")] == 1
    # Four started, three ended: one in flight.
    assert figures.in_flight == {("celery-worker",): 1}
    histogram = figures.durations[("celery-worker", "shop.email")]
    assert histogram.count == 3
    assert histogram.buckets[-1] == 1  # the 40 s run, in +Inf
    assert histogram.quantile(0.5) == 0.25
    # Every exporter reads them as an endpoint's: Zabbix's items, CloudWatch's metrics.
    sent = zabbix.values(figures, "celery-worker")
    assert sent[zabbix.REQUESTS.format("shop.email")] == 3
    assert sent[zabbix.SERVER_ERRORS.format("shop.email")] == 2
    names = {datum["MetricName"] for datum in cloudwatch.metric_data(figures)}
    assert {"Requests", "ServerErrors", "Latency"} <= names


def test_websocket_figures_go_to_cloudwatch_otlp_and_zabbix():
    from cliffracer_core.contrib.metrics.backends.otlp import OtlpMetricsExporter

    figures = Figures(
        clock=2.0,
        info={("web", "0.1", "i"): 1},
        sockets={("web",): 3},
        socket_subscriptions={("web",): 2},
        frames_in={("web", "ping"): 5},
        frames_out={("web", "event"): 7},
        socket_closes={("web", "4401"): 1},
        socket_dropped_events={("web",): 0},
    )
    data = {
        (datum["MetricName"], tuple(d["Value"] for d in datum["Dimensions"])): datum["Value"]
        for datum in cloudwatch.metric_data(figures)
    }
    assert data[("WebSocketConnections", ("web",))] == 3
    assert data[("WebSocketFramesIn", ("web", "ping"))] == 5
    assert data[("WebSocketCloses", ("web", "4401"))] == 1
    sent = zabbix.values(figures, "web")
    assert sent["cliffracer.websocket.connections"] == 3
    assert sent["cliffracer.websocket.frames_in"] == 5
    assert "cliffracer.websocket.connections" not in zabbix.values(figures, "orders")
    keys = {
        item["key"] for item in zabbix.template(["web"])["zabbix_export"]["templates"][0]["items"]
    }
    assert set(zabbix.WEBSOCKET_ITEMS) <= keys
    request = OtlpMetricsExporter(endpoint="http://127.0.0.1:9/v1/metrics").request(figures)
    metrics = {m.name: m for m in request.resource_metrics[0].scope_metrics[0].metrics}
    assert metrics["cliffracer.websocket.connections"].gauge.data_points[0].as_int == 3
    assert [p.as_int for p in metrics["cliffracer.websocket.frames_out"].sum.data_points] == [7]
    # The figures of a service, which has no sockets, carry no WebSocket metrics.
    service = Figures(clock=2.0, info={("orders", "1", "i"): 1})
    request = OtlpMetricsExporter(endpoint="http://127.0.0.1:9/v1/metrics").request(service)
    names = {m.name for m in request.resource_metrics[0].scope_metrics[0].metrics}
    assert not any(name.startswith("cliffracer.websocket") for name in names)


def test_each_worker_of_a_preloading_wsgi_server_pushes_its_own_figures(
    transactional_db, nats_server, tmp_path
):
    import sys

    from cliffracer_core.testing.plugin import ChildProcess, child_environment

    port = free_port("127.0.0.1")
    receiver = Receiver(port)
    entry = {
        "BACKEND": "tests.pushing.JsonExporter",
        "OPTIONS": {"URL": f"http://127.0.0.1:{port}/push", "INTERVAL": 0.2},
    }
    # gunicorn loads settings.wsgi in its master, then forks the workers: the exporters'
    # threads stay behind in the master, and each worker must start its own.
    server = ChildProcess(
        "gunicorn",
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--preload",
            "--workers",
            "2",
            "--bind",
            f"127.0.0.1:{free_port('127.0.0.1')}",
            "settings.wsgi:application",
        ],
        log_path=tmp_path / "gunicorn.log",
        env=child_environment(
            nats_server,
            {
                "DJANGO_SETTINGS_MODULE": "tests.websocket_settings",
                "CLIFFRACER_TEST_OVERRIDES": json.dumps({"METRICS_EXPORTERS": [entry]}),
            },
        ),
    )

    def instances() -> set[str]:
        return {row[2] for body in list(receiver.bodies) for row in body["info"]}

    try:
        # The master's instance and one of each worker.
        wait_for(lambda: len(instances()) == 3, what="three processes pushing")
    finally:
        server.stop()
        receiver.close()
    # A WSGI worker has no sockets: no WebSocket series.
    assert all(not body["sockets"] for body in receiver.bodies)
