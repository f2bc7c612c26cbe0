"""The operations console in the admin, over real services, NATS, the monitor and database."""

from __future__ import annotations

import json
import re
import threading
import xml.etree.ElementTree as ElementTree
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.test import Client
from django.utils import timezone

from cliffracer_core import RemoteError, call, publish
from cliffracer_core import client as client_module
from cliffracer_core.headers import CORRELATION_ID
from cliffracer_core.models import ErrorRecord, InstanceSnapshot, ServiceMinute
from cliffracer_core.monitor import histograms
from cliffracer_core.operations import charts, figures
from cliffracer_core.operations.examples import example_of
from cliffracer_core.rest.gateway import directory
from tests.monitoring import SECRET, make_fast_monitor, make_shop, sample, wait_until
from tests.roles import restore_roles

SVG = "{http://www.w3.org/2000/svg}"
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


def user_with(username: str, *codenames: str, staff: bool = True) -> User:
    user = User.objects.create_user(username, password="x", is_staff=staff)
    user.user_permissions.add(
        *Permission.objects.filter(
            content_type__app_label="cliffracer_core", codename__in=codenames
        )
    )
    return User.objects.get(pk=user.pk)


@pytest.fixture
def viewer(transactional_db) -> User:
    return user_with("viewer", "view_services")


@pytest.fixture
def operator(transactional_db) -> User:
    return user_with("operator", "view_services", "call_services")


def signed_in(user: User, **options) -> Client:
    client = Client(**options)
    client.force_login(user)
    return client


@pytest.fixture
def shop(transactional_db, start_service, unique_name, monkeypatch):
    """A running service, called through this process's own client loop (as a web process).

    The database comes first, so that it is flushed only after the services stopped."""
    monkeypatch.setattr(client_module, "service_loop", None)
    running = start_service(make_shop(unique_name))
    yield unique_name, running
    directory.clear()


def svg_charts(html: str) -> list[ElementTree.Element]:
    return [
        ElementTree.fromstring(svg)
        for svg in re.findall(r'<svg [^>]*class="cliffracer-chart".*?</svg>', html, re.S)
    ]


# Who may see it


PAGES = [
    "/admin/services/",
    "/admin/services/status.json",
    "/admin/services/orders/",
    "/admin/services/orders/status.json",
    "/admin/service-errors/",
    "/admin/service-errors/status.json",
]


@pytest.mark.django_db
@pytest.mark.parametrize("path", PAGES)
def test_anonymous_users_and_users_who_are_not_staff_are_refused(path):
    nobody = Client()
    not_staff = signed_in(user_with("customer", "view_services", "call_services", staff=False))
    for client in (nobody, not_staff):
        response = client.get(path)
        if path.endswith(".json"):
            assert response.status_code == 403
            assert response.json()["error"]["type"] == "permission_denied"
        else:
            assert response.status_code == 302
            assert response["Location"].startswith("/admin/login/?next=")


@pytest.mark.django_db
@pytest.mark.parametrize("path", PAGES)
def test_staff_without_the_permission_are_refused(path):
    response = signed_in(user_with("clerk")).get(path)
    assert response.status_code == 403


@pytest.mark.django_db
def test_the_admin_index_links_the_console_for_those_who_may_see_it():
    viewer = signed_in(user_with("viewer", "view_services"))
    index = viewer.get("/admin/").content.decode()
    assert 'href="/admin/cliffracer_core/servicesconsole/"' in index
    redirect = viewer.get("/admin/cliffracer_core/servicesconsole/")
    assert (redirect.status_code, redirect["Location"]) == (302, "/admin/services/")
    clerk = signed_in(user_with("clerk"))
    assert "servicesconsole" not in clerk.get("/admin/").content.decode()
    assert clerk.get("/admin/cliffracer_core/servicesconsole/").status_code == 403


@pytest.mark.django_db(transaction=True)
def test_the_roles_grant_the_console_permissions():
    restore_roles()
    staff = Group.objects.get(name="staff").permissions.filter(
        content_type__app_label="cliffracer_core"
    )
    operator = Group.objects.get(name="operator").permissions.filter(
        content_type__app_label="cliffracer_core"
    )
    assert set(staff.values_list("codename", flat=True)) == {"view_services"}
    assert set(operator.values_list("codename", flat=True)) == {"view_services", "call_services"}


# What it shows


def test_the_services_page_shows_live_services_and_down_ones(shop, viewer):
    name, running = shop
    sample()
    for number in range(4):
        call(f"{name}.add", {"a": number, "b": 1})
    with pytest.raises(RemoteError):
        call(f"{name}.fail", {"a": 1, "b": 1})
    sample()
    client = signed_in(viewer)

    page = client.get("/admin/services/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'id="cliffracer-services"' in html
    assert f'href="/admin/services/{name}/"' in html
    assert "admin/css/base.css" in html  # the admin's own look
    assert "cliffracer/operations/console.js" in html

    status = client.get("/admin/services/status.json").json()
    services = {row["name"]: row for row in status["services"]}
    row = services[name]
    # 1 error in 5 requests is over the 5% threshold: degraded.
    assert (row["state"], row["instances"], row["versions"]) == ("degraded", 1, ["2.3.4"])
    assert row["requests_per_minute"] > 0 and row["errors_per_minute"] > 0
    assert row["average_ms"] > 0 and row["p95_ms"] > 0
    assert row["last_error"]["code"] == 500
    # A service app of the project with no live instance is down.
    assert services["orders"]["state"] == "down"
    assert services["orders"]["instances"] == 0
    assert status["fragments"]["services"].count("<tr data-service=") == len(services)
    # No monitor service answers in this test: the page says its figures are stale.
    assert "The monitor is not running" in status["fragments"]["monitor"]


def test_a_healthy_service_is_up_and_a_stopped_one_goes_down(shop, viewer):
    name, running = shop
    call(f"{name}.add", {"a": 1, "b": 1})
    sample()
    client = signed_in(viewer)
    rows = {
        row["name"]: row for row in client.get("/admin/services/status.json").json()["services"]
    }
    assert rows[name]["state"] == "up"
    running.stop()
    later = timezone.now() + figures.stale_after() + timedelta(seconds=1)
    rows = {row.name: row for row in figures.overview(now=later).services}
    assert (rows[name].state, rows[name].instances) == ("down", 0)


def test_the_service_page_shows_instances_endpoints_and_their_figures(shop, viewer):
    name, running = shop
    sample()
    for number in range(3):
        call(f"{name}.add", {"a": number, "b": 1})
    with pytest.raises(RemoteError):
        call(f"{name}.fail", {"a": 1, "b": 1})
    sample()
    client = signed_in(viewer)
    page = client.get(f"/admin/services/{name}/")
    assert page.status_code == 200
    html = page.content.decode()
    instance = running.runner.identity.id
    assert f'data-instance="{instance}"' in html
    assert running.runner.metadata["host"] in html
    assert f"<code>rpc.{name}.add</code>" in html
    assert f"<code>{name}</code>" in html  # the queue group
    assert "<code>auth.view_user</code>" in html
    assert "&quot;required&quot;: [\n    &quot;a&quot;,\n    &quot;b&quot;\n  ]" in html
    assert f"<code>{name}.happened</code>" in html and "hourly" in html and "1h00m" in html
    # The viewer may not call: no console; the event tail is for every viewer.
    assert "data-rpc-console" not in html
    assert 'data-event-tail data-socket-path="/ws/events/"' in html

    status = client.get(f"/admin/services/{name}/status.json").json()
    endpoints = {row["name"]: row for row in status["service"]["endpoints"]}
    assert (endpoints["add"]["requests"], endpoints["add"]["errors"]) == (3, 0)
    assert (endpoints["fail"]["requests"], endpoints["fail"]["errors"]) == (1, 1)
    assert endpoints["fail"]["error_rate"] == 1.0
    assert endpoints["add"]["average_ms"] > 0 and endpoints["add"]["p95_ms"] > 0
    assert endpoints["guarded"]["permissions"] == ["auth.view_user"]
    assert endpoints["add"]["requests_per_minute"] > 0
    assert status["service"]["instances"] == [
        {
            "id": instance,
            "host": running.runner.metadata["host"],
            "pid": str(running.runner.metadata["pid"]),
            "live": True,
        }
    ]
    assert set(status["fragments"]) == {"monitor", "instances", "endpoints"}
    assert (
        "charts" in client.get(f"/admin/services/{name}/status.json?charts=1").json()["fragments"]
    )


def test_the_charts_are_svg_drawn_from_the_samples(shop, viewer):
    name, _ = shop
    sample()
    for number in range(5):
        call(f"{name}.add", {"a": number, "b": 1})
    sample()
    html = signed_in(viewer).get(f"/admin/services/{name}/").content.decode()
    drawn = svg_charts(html)
    assert len(drawn) == 6  # requests, errors, latency; for the last hour and the last day
    titles = [svg.find(f"{SVG}title").text for svg in drawn]
    assert titles == ["Requests", "Errors", "Latency"] * 2
    requests_hour = drawn[0]
    marks = requests_hour.findall(f"{SVG}polyline") + requests_hour.findall(f"{SVG}circle")
    assert marks, "the requests of the last hour are drawn"
    assert "no requests" not in ElementTree.tostring(requests_hour, encoding="unicode")
    errors_hour = ElementTree.tostring(drawn[1], encoding="unicode")
    assert "no errors" in errors_hour


@pytest.mark.django_db
def test_a_service_never_seen_shows_its_endpoints_from_the_code():
    client = signed_in(user_with("viewer", "view_services"))
    page = client.get("/admin/services/orders/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "as its code declares them" in html
    assert "<code>rpc.orders.create_order</code>" in html
    assert "cliffracer-state-down" in html
    assert client.get("/admin/services/no-such-service/").status_code == 404
    assert client.get("/admin/services/no.such/status.json").status_code == 404


# Recent errors


def test_recent_errors_show_failed_calls_with_their_correlation_id(
    shop, start_service, unique_name, viewer, operator
):
    name, _ = shop
    start_service(make_fast_monitor(f"{name}-monitor"))
    # The operator calls through the gateway with a session, as the console does.
    client = signed_in(operator)
    response = client.post(
        f"/api/rpc/{name}/fail",
        data=json.dumps({"a": 1, "b": 2}),
        content_type="application/json",
        HTTP_X_CORRELATION_ID="corr-console-1",
    )
    assert response.status_code == 502  # the gateway's answer to a service's 500
    with pytest.raises(RemoteError):
        call(f"{name}.clash", headers={CORRELATION_ID: "corr-clash-2"})
    assert wait_until(lambda: ErrorRecord.objects.filter(service=name).count() == 2)

    page = signed_in(viewer).get(f"/admin/service-errors/?service={name}")
    assert page.status_code == 200
    html = page.content.decode()
    assert "corr-console-1" in html and "corr-clash-2" in html
    assert "internal_error" in html and "Already there." in html
    assert SECRET not in html and "Traceback" not in html
    only_conflicts = signed_in(viewer).get("/admin/service-errors/status.json?code=409").json()
    assert [error["correlation_id"] for error in only_conflicts["errors"]] == ["corr-clash-2"]
    by_endpoint = (
        signed_in(viewer)
        .get(f"/admin/service-errors/status.json?service={name}&endpoint=fail")
        .json()
    )
    assert [error["code"] for error in by_endpoint["errors"]] == [500]
    # The services page shows the last error with its time.
    assert wait_until(lambda: InstanceSnapshot.objects.filter(service=name).exists())
    overview = signed_in(viewer).get("/admin/services/status.json").json()
    [row] = [row for row in overview["services"] if row["name"] == name]
    assert row["last_error"]["correlation_id"] in {"corr-console-1", "corr-clash-2"}
    assert row["last_error"]["time"]


# The RPC console


def test_the_rpc_console_calls_through_the_gateway_with_session_and_csrf(shop, operator):
    name, _ = shop
    sample()
    client = signed_in(operator, enforce_csrf_checks=True)
    html = client.get(f"/admin/services/{name}/").content.decode()
    assert "data-rpc-console" in html
    assert f'data-gateway="/api/rpc/{name}/METHOD"' in html
    examples = json.loads(
        re.search(r'<script id="rpc-examples" type="application/json">(.*?)</script>', html, re.S)[
            1
        ]
    )
    assert json.loads(examples["add"]) == {"a": 0, "b": 0}
    token = client.cookies["csrftoken"].value
    body = json.dumps({"a": 2, "b": 3})
    refused = client.post(f"/api/rpc/{name}/add", data=body, content_type="application/json")
    assert refused.status_code == 403  # no CSRF token
    reply = client.post(
        f"/api/rpc/{name}/add", data=body, content_type="application/json", HTTP_X_CSRFTOKEN=token
    )
    assert reply.status_code == 200 and reply.json() == {"total": 5}
    assert reply["X-Correlation-ID"]
    # The service checks the caller's own permission: the operator lacks auth.view_user.
    denied = client.post(
        f"/api/rpc/{name}/guarded",
        data=body,
        content_type="application/json",
        HTTP_X_CSRFTOKEN=token,
    )
    assert denied.status_code == 403
    assert denied.json()["error"]["details"] == {"missing_permissions": ["auth.view_user"]}


def test_request_examples_follow_the_schema():
    schema = {
        "$defs": {
            "Line": {
                "properties": {"sku": {"type": "string", "minLength": 2}},
                "required": ["sku"],
                "type": "object",
            }
        },
        "properties": {
            "lines": {"items": {"$ref": "#/$defs/Line"}, "type": "array"},
            "note": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
            "count": {"type": "integer", "minimum": 1},
            "when": {"type": "string", "format": "date-time"},
            "optional": {"type": "string"},
        },
        "required": ["lines", "count", "when"],
        "type": "object",
    }
    assert example_of(schema) == {
        "lines": [{"sku": "xx"}],
        "note": None,
        "count": 1,
        "when": "2026-01-01T00:00:00Z",
    }


# Charts and figures, directly


def test_a_chart_is_valid_svg_with_its_data():
    svg = charts.line_chart(
        title="Latency <ms>",
        unit="ms",
        series=[
            charts.Series("average", [1.0, 2.0, None, 4.0, 3.0], charts.BLUE),
            charts.Series("p95", [2.0, 5.0, None, None, 7.5], charts.ORANGE),
        ],
        x_labels=[(0, "12:00"), (4, "now")],
    )
    root = ElementTree.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    assert root.find(f"{SVG}title").text == "Latency <ms>"
    polylines = root.findall(f"{SVG}polyline")
    # average: two segments around the gap; p95: one segment and one lone point.
    assert len(polylines) == 3
    assert len(root.findall(f"{SVG}circle")) == 1
    labels = [text.text for text in root.iter(f"{SVG}text")]
    assert "10" in labels and "12:00" in labels and "now" in labels
    empty = ElementTree.fromstring(
        charts.line_chart(title="Errors", series=[charts.Series("errors", [0, 0])], x_labels=[])
    )
    assert "no data" in [text.text for text in empty.iter(f"{SVG}text")]


@pytest.mark.django_db
def test_history_puts_minutes_into_points():
    now = timezone.now().replace(second=30, microsecond=0)
    counts = histograms.empty()
    counts[5] = 60
    for minutes_ago, requests in ((0, 60), (1, 30), (90, 600)):
        ServiceMinute.objects.create(
            instance_id="i",
            service="svc",
            minute=(now - timedelta(minutes=minutes_ago)).replace(second=0),
            requests=requests,
            errors=requests // 30,
            processing_time=requests * 2_000_000,
            histogram=counts,
        )
    hour = figures.history("svc", span=timedelta(hours=1), step=timedelta(minutes=1), now=now)
    assert len(hour) == 60
    assert [point.requests_per_minute for point in hour[-2:]] == [30, 60]
    assert hour[-1].average_ms == 2.0 and 2.5 < hour[-1].p95_ms <= 5
    assert hour[0].average_ms is None
    day = figures.history("svc", span=timedelta(days=1), step=timedelta(minutes=15), now=now)
    assert len(day) == 96
    assert sum(point.requests_per_minute * 15 for point in day) == 690


# The pages' JavaScript, in a real browser


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
TIMEOUT_MS = 20_000


def in_thread(function, *args):
    """Run database work off the thread where Playwright's event loop runs."""
    result = []
    worker = threading.Thread(target=lambda: result.append(function(*args)))
    worker.start()
    worker.join()
    return result[0] if result else None


@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"No browser: {CHROMIUM} is missing.")
def test_the_console_calls_tails_events_and_refreshes_in_a_browser(shop, web_process):
    sync_api = pytest.importorskip("playwright.sync_api")
    expect = sync_api.expect
    name, _ = shop
    User.objects.create_superuser("root", password="x")
    olga = user_with("olga", "view_services", "call_services")
    olga.set_password("x")
    olga.save()
    sample()
    web = web_process("web")

    def open_as(browser, username: str):
        page = browser.new_context(viewport={"width": 1300, "height": 1000}).new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.problems = []
        page.on("pageerror", lambda error: page.problems.append(str(error)))
        page.goto(f"{web.url}/admin/login/?next=/admin/services/{name}/")
        page.fill("#id_username", username)
        page.fill("#id_password", "x")
        page.click("input[type=submit]")
        expect(page.locator("#cliffracer-endpoints")).to_be_visible()
        return page

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            page = open_as(browser, "olga")
            # The RPC console: prefilled from the schema, called through the gateway.
            expect(page.locator("#rpc-body")).to_have_value('{\n  "a": 0,\n  "b": 0\n}')
            page.fill("#rpc-body", '{"a": 2, "b": 3}')
            page.click("#rpc-console input[type=submit]")
            summary = page.locator("[data-rpc-summary]")
            expect(summary).to_contain_text("200 OK in")
            expect(summary).to_contain_text("correlation id")
            expect(page.locator("[data-rpc-reply]")).to_contain_text('"total": 5')
            page.select_option("#rpc-endpoint", "guarded")
            page.click("#rpc-console input[type=submit]")
            expect(summary).to_contain_text("Error 403 permission_denied")

            # The tables refresh without a reload: the monitor samples the call made above.
            in_thread(sample)
            cell = page.locator('#cliffracer-endpoints tr[data-endpoint="add"] td').nth(3)
            expect(cell).to_have_text("1", timeout=TIMEOUT_MS)

            # The event tail: no subject rule lets olga see these events; a refusal shows.
            page.fill("#tail-subject", f"{name}.*")
            page.click("#event-tail input[type=submit]")
            expect(page.locator("[data-tail-state]")).to_contain_text(
                "Refused (403 permission_denied)"
            )
            assert page.problems == []

            # A superuser passes the rules and watches the events arrive.
            root = open_as(browser, "root")
            root.fill("#tail-subject", f"{name}.*")
            root.click("#event-tail input[type=submit]")
            expect(root.locator("[data-tail-state]")).to_contain_text(f"Listening on {name}.*")
            in_thread(publish, f"{name}.happened", {"what": "watched", "number": 7})
            row = root.locator("[data-tail-events] tr").first
            expect(row).to_contain_text(f"{name}.happened")
            expect(row).to_contain_text('"what":"watched"')
            assert root.problems == []
            ARTIFACTS.mkdir(exist_ok=True)
            root.screenshot(path=str(ARTIFACTS / "console-service.png"), full_page=True)
            root.goto(f"{web.url}/admin/services/")
            expect(root.locator(f'tr[data-service="{name}"]')).to_contain_text("2.3.4")
            root.screenshot(path=str(ARTIFACTS / "console-services.png"), full_page=True)
        finally:
            browser.close()
