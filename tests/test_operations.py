"""The operations console in the admin, over real services, NATS, the monitor and database."""

from __future__ import annotations

import json
import re
import threading
import xml.etree.ElementTree as ElementTree
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.contrib.auth.models import Group, Permission, User
from django.test import Client, override_settings
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cliffracer_core import NoResponders, RemoteError, call, publish
from cliffracer_core.contrib.monitor import histograms, sampling
from cliffracer_core.contrib.monitor.models import ErrorRecord, InstanceSnapshot, ServiceMinute
from cliffracer_core.contrib.operations import charts, figures
from cliffracer_core.contrib.operations.examples import example_of
from cliffracer_core.contrib.rest.gateway import directory
from cliffracer_core.core import client as client_module
from cliffracer_core.core.headers import CORRELATION_ID
from cliffracer_core.testing.browser import browser_path, launch_chromium
from tests.monitoring import (
    SECRET,
    FakeService,
    make_fast_monitor,
    make_shop,
    sample,
    wait_until,
)
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


def dotted(text: str) -> str:
    """A subject or permission as the endpoints' table writes it: it may wrap after a dot."""
    return text.replace(".", ".<wbr>")


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


def states(client: Client, name: str) -> tuple[str, str]:
    """The service's state on the services page and on its own page."""
    [row] = [
        row
        for row in client.get("/admin/services/status.json").json()["services"]
        if row["name"] == name
    ]
    return row["state"], client.get(f"/admin/services/{name}/status.json").json()["service"][
        "state"
    ]


def test_refusals_leave_a_service_up_and_failures_degrade_it(shop, viewer, settings):
    name, _ = shop
    sample()
    call(f"{name}.add", {"a": 1, "b": 1})
    # Two 409 refusals in three requests: the service keeping its contract, not failing.
    for _ in range(2):
        with pytest.raises(RemoteError):
            call(f"{name}.clash")
    sample()
    client = signed_in(viewer)
    assert states(client, name) == ("up", "up")
    [row] = [
        row
        for row in client.get("/admin/services/status.json").json()["services"]
        if row["name"] == name
    ]
    assert row["client_errors_per_minute"] > 0 and row["server_errors_per_minute"] == 0
    assert (row["client_error_rate"], row["server_error_rate"]) == (2 / 3, 0)
    endpoints = {
        row["name"]: row
        for row in client.get(f"/admin/services/{name}/status.json").json()["service"]["endpoints"]
    }
    assert (endpoints["clash"]["client_errors"], endpoints["clash"]["server_errors"]) == (2, 0)
    assert endpoints["clash"]["errors"] == 2  # ADR-32's count, both classes

    # One 500 in four requests: over the 5% threshold of server errors.
    with pytest.raises(RemoteError):
        call(f"{name}.fail", {"a": 1, "b": 1})
    sample()
    assert states(client, name) == ("degraded", "degraded")
    endpoints = {
        row["name"]: row
        for row in client.get(f"/admin/services/{name}/status.json").json()["service"]["endpoints"]
    }
    assert (endpoints["fail"]["client_errors"], endpoints["fail"]["server_errors"]) == (0, 1)
    assert endpoints["fail"]["server_error_rate"] == 1.0

    # The pages show both classes apart: counts, and rates under them.
    html = client.get("/admin/services/").content.decode()
    services_row = re.search(rf'<tr data-service="{name}".*?</tr>', html, re.S).group()
    client_cell, server_cell = re.findall(
        r'<td class="number" data-class="\w+">(.*?)</td>', services_row, re.S
    )
    assert "50.0%" in client_cell and "25.0%" in server_cell
    html = client.get(f"/admin/services/{name}/").content.decode()
    clash_row = re.search(r'<tr data-endpoint="clash">.*?</tr>', html, re.S).group()
    assert re.search(r'data-class="client">2<div class="help">100.0%</div>', clash_row)
    assert re.search(r'data-class="server">0<div class="help">0.0%</div>', clash_row)
    instance_row = re.search(r"<tr data-instance=.*?</tr>", html, re.S).group()
    assert re.findall(r'data-class="(\w+)">(\d+)</td>', instance_row) == [
        ("client", "2"),
        ("server", "1"),
    ]
    errors_chart = svg_charts(html)[1]
    legends = [text.text for text in errors_chart.findall(f"{SVG}text")]
    assert "4xx" in legends and "5xx" in legends

    # The threshold is a setting: at 50%, one failure in four is not degraded.
    settings.CLIFFRACER = {**settings.CLIFFRACER, "MONITOR": {"DEGRADED_ERROR_RATE": 0.5}}
    assert states(client, name) == ("up", "up")


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
    assert f"<code>{dotted(f'rpc.{name}.add')}</code>" in html
    assert f"<code>{name}</code>" in html  # the queue group
    assert f"<code>{dotted('auth.view_user')}</code>" in html
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
    assert f"<code>{dotted('rpc.orders.create_order')}</code>" in html
    assert "cliffracer-state-down" in html
    assert client.get("/admin/services/no-such-service/").status_code == 404
    assert client.get("/admin/services/no.such/status.json").status_code == 404


# Replies the console did not write: a service in another language, a buggy or hostile one


def well_formed(name: str) -> dict[str, dict]:
    """What the fake service says when nothing is odd: one endpoint, an event, a timer."""
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    return {
        "INFO": {
            "description": "Written by someone else.",
            "metadata": {
                "host": "fakehost",
                "pid": "77",
                "events": json.dumps(
                    [{"subject": "fake.happened", "handler": "on_happened", "queue_group": "q"}]
                ),
                "timers": json.dumps([{"handler": "hourly", "seconds": 3600}]),
            },
            "endpoints": [
                {
                    "name": "ok",
                    "subject": "fake.ok",
                    "queue_group": "q",
                    "metadata": {
                        "request_schema": json.dumps(schema),
                        "permissions": json.dumps(["auth.view_user"]),
                    },
                }
            ],
        },
        "STATS": {
            "started": timezone.now().isoformat(),
            "endpoints": [
                {"name": "ok", "subject": "fake.ok", "num_requests": 3, "processing_time": 10**6}
            ],
        },
    }


INFINITY = float("inf")
NAN = float("nan")


def odd_timers(replies: dict) -> None:
    replies["INFO"]["metadata"]["timers"] = json.dumps(
        [
            {"handler": "hourly", "seconds": 3600},
            {"handler": "tick", "seconds": "abc"},
            {"handler": "tock", "seconds": {"every": 5}},
            {"handler": "never", "seconds": None},
            {"handler": "forever", "seconds": INFINITY},
            {"handler": "nan", "seconds": NAN},
            {"handler": "huge", "seconds": 10**400},
            {"handler": "back", "seconds": -5},
            {"handler": {"a": 1}, "seconds": [1]},
            "not a timer",
            7,
        ]
    )


def events_not_json(replies: dict) -> None:
    replies["INFO"]["metadata"]["events"] = "{not json"


def odd_events(replies: dict) -> None:
    replies["INFO"]["metadata"]["events"] = json.dumps(
        [
            1,
            "x",
            None,
            {"subject": {"a": 1}, "handler": ["h"], "queue_group": 5},
            {"subject": "fake.happened", "handler": "on_happened", "queue_group": None},
        ]
    )


def metadata_not_strings(replies: dict) -> None:
    replies["INFO"]["metadata"].update(
        host={"a": 1}, pid=12.5, events=["not", "text"], timers={"x": 1}, nats_server=None
    )
    replies["PING"] = {**replies["PING"], "metadata": replies["INFO"]["metadata"]}


def metadata_not_a_dict(replies: dict) -> None:
    replies["INFO"]["metadata"] = ["x"]
    replies["STATS"]["metadata"] = "x"


def endpoints_missing_fields(replies: dict) -> None:
    replies["INFO"]["endpoints"] += [
        {},
        {"name": "bare"},
        {"name": "meta_list", "metadata": ["x"]},
        {"name": "meta_none", "metadata": None},
        {"name": 5},
        "text",
        None,
        {
            "name": "odd_values",
            "subject": {"a": 1},
            "queue_group": 7,
            "metadata": {
                "public": True,
                "permissions": '[1, {"a": 2}]',
                "request_schema": {"type": "object", "properties": {"b": {"type": "string"}}},
                "reply_schema": "not json",
                "description": ["x"],
            },
        },
    ]


def odd_schemas(replies: dict) -> None:
    schemas = [
        {"type": "object", "properties": [1], "required": 5, "$defs": []},
        {"type": "object", "properties": {"a": {"type": "string"}}, "required": [{"a": 1}]},
        {"type": "array", "minItems": 10**12, "items": {"type": "string", "minLength": 10**12}},
        {"type": "string", "minLength": "abc"},
        {"type": "integer", "minimum": "abc"},
        {"type": "integer", "exclusiveMinimum": "abc"},
        {"type": "integer", "minimum": INFINITY},
        {"type": "number", "minimum": NAN},
        {"type": "number", "minimum": [1]},
        {"anyOf": 5},
        {"$ref": 5, "$defs": {"5": {"$ref": "#/$defs/5"}}},
        {"type": ["null", {"a": 1}]},
        {"default": NAN},
    ]
    endpoints = [
        {"name": f"schema{index}", "metadata": {"request_schema": json.dumps(schema)}}
        for index, schema in enumerate(schemas)
    ]
    endpoints.append({"name": "deep", "metadata": {"request_schema": "[" * 100_000}})
    endpoints.append({"name": "deeper", "metadata": {"request_schema": "[" * 900 + "]" * 900}})
    replies["INFO"]["endpoints"] += endpoints


def endpoints_not_a_list(replies: dict) -> None:
    replies["INFO"]["endpoints"] = {"ok": {"subject": "fake.ok"}}
    replies["STATS"]["endpoints"] = "x"


def huge_strings(replies: dict) -> None:
    replies["INFO"]["description"] = "d" * 200_000
    replies["INFO"]["version"] = "v" * 50_000
    replies["INFO"]["metadata"]["host"] = "h" * 50_000
    replies["INFO"]["endpoints"].append(
        {"name": "n" * 50_000, "subject": "s" * 50_000, "metadata": {"description": "e" * 50_000}}
    )
    replies["STATS"]["endpoints"][0]["last_error"] = "500:" + "l" * 50_000


def odd_counts(replies: dict) -> None:
    replies["STATS"]["endpoints"] = [
        {"name": "ok", "num_requests": -5, "num_errors": "x", "processing_time": 10**40},
        {"name": "text", "num_requests": "7", "num_errors": None, "processing_time": "1"},
        {"name": "huge", "num_requests": 10**30, "num_errors": 10**30, "processing_time": 10**30},
        {"name": "floats", "num_requests": 1.5, "num_errors": True, "processing_time": INFINITY},
    ]


def odd_histograms(replies: dict) -> None:
    bounds = [0.005, 0.01]
    shapes = [
        {"latency_histogram": {"bounds": bounds, "counts": [INFINITY, 1, 1]}},
        {"latency_histogram": {"bounds": bounds, "counts": [NAN, 1, 1]}},
        {"latency_histogram": {"bounds": ["abc", 1], "counts": [1, 1, 1]}},
        {"latency_histogram": {"bounds": [NAN, INFINITY], "counts": [1, 1, 1]}},
        {"latency_histogram": {"bounds": bounds, "counts": [[1], [2], [3]]}},
        {"latency_histogram": {"bounds": bounds, "counts": [10**30, -4, 1]}},
        {"latency_histogram": {"bounds": bounds, "counts": [1]}},
        {"latency_histogram": [1, 2, 3]},
        {"latency_histogram": {"bounds": 5, "counts": "x"}},
        "x",
    ]
    replies["STATS"]["endpoints"] += [
        {"name": f"histogram{index}", "num_requests": 2, "data": data}
        for index, data in enumerate(shapes)
    ]


def started_not_text(replies: dict) -> None:
    replies["STATS"]["started"] = 12345


def started_out_of_range(replies: dict) -> None:
    replies["STATS"]["started"] = "9999-12-31T23:59:59-12:00"


def odd_last_errors(replies: dict) -> None:
    replies["STATS"]["endpoints"] += [
        {"name": "superscript", "num_requests": 1, "num_errors": 1, "last_error": "\u00b2:boom"},
        {"name": "long_code", "num_requests": 1, "num_errors": 1, "last_error": "9" * 450 + ":x"},
        {"name": "not_text", "num_requests": 1, "num_errors": 1, "last_error": {"a": 1}},
    ]


def not_json_at_all(replies: dict) -> None:
    replies["INFO"] = b"\xff\xfe"
    replies["STATS"] = b"[" * 100_000


ODD_REPLIES = {
    function.__name__: function
    for function in (
        odd_timers,
        events_not_json,
        odd_events,
        metadata_not_strings,
        metadata_not_a_dict,
        endpoints_missing_fields,
        odd_schemas,
        endpoints_not_a_list,
        huge_strings,
        odd_counts,
        odd_histograms,
        started_not_text,
        started_out_of_range,
        odd_last_errors,
        not_json_at_all,
    )
}


@pytest.fixture
def fake_service(transactional_db, nats_server, unique_name):
    fake = FakeService(nats_server.url, unique_name, f"{unique_name}-fake")
    for verb, reply in well_formed(unique_name).items():
        fake.replies[verb].update(reply)
    yield fake.start()
    fake.stop()


@pytest.mark.parametrize("case", list(ODD_REPLIES))
def test_the_console_shows_what_it_can_read_of_odd_discovery_replies(case, fake_service, viewer):
    name = fake_service.name
    ODD_REPLIES[case](fake_service.replies)
    # Twice: the first sample creates the instance's snapshot, the second updates it and
    # counts the traffic in between.
    sample()
    sample()
    client = signed_in(viewer)
    for path in ("/admin/services/", "/admin/services/status.json", f"/admin/services/{name}/"):
        assert client.get(path).status_code == 200, path
    status = client.get(f"/admin/services/{name}/status.json")
    assert status.status_code == 200
    instances = status.json()["service"]["instances"]
    assert [instance["id"] for instance in instances] == [fake_service.id]
    html = client.get(f"/admin/services/{name}/").content.decode()
    assert f'data-instance="{fake_service.id}"' in html
    if case not in ("endpoints_not_a_list", "not_json_at_all"):
        assert f"<code>{dotted('fake.ok')}</code>" in html
    unreadable_events = ("events_not_json", "metadata_not_strings", "metadata_not_a_dict")
    if case not in (*unreadable_events, "not_json_at_all"):
        assert "<code>fake.happened</code>" in html
    if case not in ("metadata_not_strings", "metadata_not_a_dict", "not_json_at_all"):
        assert "hourly" in html and "1h00m" in html
    if case == "odd_timers":
        # The timers that have no readable interval are listed without one.
        assert "tick" in html and "tock" in html and "forever" in html
    if case == "huge_strings":
        # Long texts are cut to a length a page can show.
        assert "d" * 1000 in html and "d" * 5000 not in html
        assert "n" * 5000 not in html and "e" * 5000 not in html
    if case == "odd_last_errors":
        overview = client.get("/admin/services/status.json").json()
        [row] = [row for row in overview["services"] if row["name"] == name]
        assert row["last_error"] is not None


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats()
    | st.text(max_size=30)
    | st.sampled_from(["500:boom", "\u00b2:x", "2026-01-01T00:00:00Z", "\x00", "abc"]),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
# JSON text, as metadata carries events, timers and schemas; or text that is not JSON.
JSON_TEXT = JSON_VALUES.map(json.dumps) | st.text(max_size=30)
# Where a reply's odd value goes, and what kind of value it is.
REPLY_FIELDS = [
    (("INFO", "description"), JSON_VALUES),
    (("INFO", "version"), JSON_VALUES),
    (("INFO", "metadata"), JSON_VALUES),
    (("INFO", "metadata", "host"), JSON_VALUES),
    (("INFO", "metadata", "timers"), JSON_TEXT),
    (("INFO", "metadata", "events"), JSON_TEXT),
    (("INFO", "endpoints"), JSON_VALUES),
    (("INFO", "endpoints", 0), JSON_VALUES),
    (("INFO", "endpoints", 0, "name"), JSON_VALUES),
    (("INFO", "endpoints", 0, "metadata"), JSON_VALUES),
    (("INFO", "endpoints", 0, "metadata", "request_schema"), JSON_TEXT),
    (("INFO", "endpoints", 0, "metadata", "permissions"), JSON_TEXT),
    (("STATS", "started"), JSON_VALUES),
    (("STATS", "endpoints"), JSON_VALUES),
    (("STATS", "endpoints", 0, "num_requests"), JSON_VALUES),
    (("STATS", "endpoints", 0, "processing_time"), JSON_VALUES),
    (("STATS", "endpoints", 0, "last_error"), JSON_VALUES),
    (("STATS", "endpoints", 0, "data"), JSON_VALUES),
    (("STATS", "endpoints", 0, "data"), st.fixed_dictionaries({"latency_histogram": JSON_VALUES})),
]


@st.composite
def odd_replies(draw) -> dict:
    replies = well_formed("fuzzed")
    for verb in replies:
        replies[verb].update(name="fuzzed", id="fuzzed-1")
    replies["PING"] = {"name": "fuzzed", "id": "fuzzed-1"}
    for index in draw(st.sets(st.integers(0, len(REPLY_FIELDS) - 1), min_size=1, max_size=4)):
        path, values = REPLY_FIELDS[index]
        *parents, key = path
        target = replies
        for step in parents:
            try:
                target = target[step]
            except (KeyError, IndexError, TypeError):
                break
        else:
            in_dict = isinstance(target, dict) and isinstance(key, str)
            in_list = isinstance(target, list) and isinstance(key, int) and key < len(target)
            if in_dict or in_list:
                target[key] = draw(values)
    # As the wire carries them: NaN and Infinity included, as Python's json reads them.
    return {verb: [json.loads(json.dumps(reply))] for verb, reply in replies.items()}


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(answers=odd_replies())
def test_any_shape_of_discovery_reply_is_sampled_and_shown(answers, viewer):
    """The sampler and the pages over replies of any shape (the wire is in the test above)."""
    reports = sampling.read_replies(answers)
    assert [report.id for report in reports] == ["fuzzed-1"]
    sampling.record(reports)
    sampling.record(reports, now=timezone.now() + timedelta(seconds=1))
    client = signed_in(viewer)
    for path in (
        "/admin/services/",
        "/admin/services/status.json",
        "/admin/services/fuzzed/",
        "/admin/services/fuzzed/status.json",
    ):
        assert client.get(path).status_code == 200, path


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
    # Refusals (4xx) and failures (5xx) apart: a query parameter, the page's form without JS.
    conflict, failure = (409, "client"), (500, "server")
    for of_class, expected in (
        ("client", [conflict]),
        ("server", [failure]),
        ("", [conflict, failure]),
    ):
        listed = signed_in(viewer).get(
            "/admin/service-errors/status.json", {"service": name, "class": of_class}
        )
        found = sorted((error["code"], error["class"]) for error in listed.json()["errors"])
        assert found == expected, of_class
    html = (
        signed_in(viewer)
        .get(f"/admin/service-errors/?service={name}&class=server")
        .content.decode()
    )
    assert "internal_error" in html and "Already there." not in html
    assert '<select id="errors-class" name="class">' in html
    assert '<option value="server" selected>' in html
    assert re.findall(r'<tr data-class="(\w+)">', html) == ["server"]
    # The services page shows the last error with its time.
    assert wait_until(lambda: InstanceSnapshot.objects.filter(service=name).exists())
    overview = signed_in(viewer).get("/admin/services/status.json").json()
    [row] = [row for row in overview["services"] if row["name"] == name]
    assert row["last_error"]["correlation_id"] in {"corr-console-1", "corr-clash-2"}
    assert row["last_error"]["time"]


def test_errors_link_to_their_trace_when_a_trace_viewer_is_set(
    shop, start_service, unique_name, viewer
):
    name, _ = shop
    start_service(make_fast_monitor(f"{name}-monitor"))
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    with pytest.raises(RemoteError):
        call(f"{name}.clash", headers={"traceparent": f"00-{trace}-00f067aa0ba902b7-01"})
    assert wait_until(lambda: ErrorRecord.objects.filter(service=name, trace_id=trace).exists())
    listed = signed_in(viewer).get(f"/admin/service-errors/status.json?service={name}").json()
    assert [error["trace_id"] for error in listed["errors"]] == [trace]
    # Without TRACE_URL, no link; with it, the trace viewer's URL of the trace.
    assert "/trace/" not in signed_in(viewer).get("/admin/service-errors/").content.decode()
    viewer_url = "https://jaeger.example.com/trace/{trace_id}"
    with override_settings(CLIFFRACER={**django_settings.CLIFFRACER, "TRACE_URL": viewer_url}):
        html = signed_in(viewer).get(f"/admin/service-errors/?service={name}").content.decode()
    assert f'href="https://jaeger.example.com/trace/{trace}"' in html


@pytest.mark.django_db
@pytest.mark.parametrize("code", ["\u00b2", "9" * 5000, "-1", "abc"])
def test_the_errors_page_ignores_a_code_filter_it_cannot_read(code):
    client = signed_in(user_with("viewer", "view_services"))
    for path in ("/admin/service-errors/", "/admin/service-errors/status.json"):
        assert client.get(path, {"code": code}).status_code == 200
        assert client.get(path, {"class": code}).status_code == 200


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


SCHEMA_KEYWORDS = [
    "type", "properties", "required", "items", "minItems", "minLength", "minimum",
    "exclusiveMinimum", "format", "default", "examples", "const", "enum", "anyOf", "oneOf",
    "allOf", "$ref", "$defs",
]  # fmt: skip
SCHEMAS = st.recursive(
    st.dictionaries(st.sampled_from(SCHEMA_KEYWORDS), JSON_VALUES, max_size=4),
    lambda children: st.dictionaries(
        st.sampled_from(SCHEMA_KEYWORDS),
        children | st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children),
        max_size=4,
    ),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(schema=SCHEMAS)
def test_a_request_example_is_made_from_any_json_schema(schema):
    """Whoever answers $SRV.INFO writes the schema: any JSON gives an example a page shows."""
    example = example_of(json.loads(json.dumps(schema)))
    assert len(json.dumps(example, indent=2)) < 1_000_000


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


TIMEOUT_MS = 20_000


def in_thread(function, *args):
    """Run database work off the thread where Playwright's event loop runs."""
    result = []
    worker = threading.Thread(target=lambda: result.append(function(*args)))
    worker.start()
    worker.join()
    return result[0] if result else None


def test_the_console_calls_tails_events_and_refreshes_in_a_browser(shop, web_process):
    from playwright.sync_api import expect

    browser_path()  # before anything starts: skipped (failed under CI=true) without one
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

    with launch_chromium() as browser:
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
        expect(page.locator("[data-tail-state]")).to_contain_text("Refused (403 permission_denied)")
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


# Where each table's columns end: the table, its scroll box, the content box beside the
# admin's sidebar, and the window; after the box is scrolled to its end.
TABLE_EDGES = """() => {
  const content = document.querySelector("#content").getBoundingClientRect();
  return [...document.querySelectorAll("table.cliffracer-table")].map((table) => {
    const box = table.closest(".cliffracer-scroll");
    const before = table.querySelector("thead th:last-child").getBoundingClientRect();
    if (box) box.scrollLeft = box.scrollWidth;
    const after = table.querySelector("thead th:last-child").getBoundingClientRect();
    const edges = box && box.getBoundingClientRect();
    return {
      table: table.id || table.querySelector("thead th").textContent,
      in_box: Boolean(box),
      box_left: edges && edges.left,
      box_right: edges && edges.right,
      scrolls: Boolean(box) && box.scrollWidth > box.clientWidth,
      last_right: before.right,
      last_right_scrolled: after.right,
      content_left: content.left,
      content_right: content.right,
      window_width: document.documentElement.clientWidth,
      page_width: document.scrollingElement.scrollWidth,
    };
  });
}"""
# The tables whose last columns (error rates, latency, last error) must show without scrolling.
MUST_FIT = {"cliffracer-services", "cliffracer-endpoints", "cliffracer-instances"}
EDGE = 0.5  # a fraction of a pixel of rounding


def test_the_tables_fit_or_scroll_within_their_box_at_1280_pixels_and_up(
    shop, start_service, web_process
):
    """Screenshots of each page at each width: test-artifacts/console-<page>-<width>.png."""
    from playwright.sync_api import expect

    browser_path()
    name, _ = shop
    start_service(make_fast_monitor(f"{name}-monitor"))
    User.objects.create_superuser("root", password="x")
    call(f"{name}.add", {"a": 1, "b": 1})
    with pytest.raises(RemoteError):
        call(f"{name}.clash")
    with pytest.raises(RemoteError):
        call(f"{name}.fail", {"a": 1, "b": 1})
    assert wait_until(lambda: ErrorRecord.objects.filter(service=name).count() == 2)
    assert wait_until(
        lambda: InstanceSnapshot.objects.filter(service=name, stats__fail__num_errors=1).exists()
    )
    web = web_process("web")
    # The example's services as their code declares them: long subjects, permissions and
    # descriptions, which once pushed the last columns out of sight.
    pages = {
        "services": "/admin/services/",
        "service": f"/admin/services/{name}/",
        "inventory": "/admin/services/inventory/",
        "orders": "/admin/services/orders/",
        "errors": "/admin/service-errors/",
    }
    ARTIFACTS.mkdir(exist_ok=True)
    measured = []
    with launch_chromium() as browser:
        for width in (1280, 1400):
            page = browser.new_context(viewport={"width": width, "height": 900}).new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(f"{web.url}/admin/login/?next=/admin/services/")
            page.fill("#id_username", "root")
            page.fill("#id_password", "x")
            page.click("input[type=submit]")
            expect(page.locator("#cliffracer-services")).to_be_visible()
            for label, path in pages.items():
                page.goto(f"{web.url}{path}")
                expect(page.locator("table.cliffracer-table").first).to_be_visible()
                page.screenshot(
                    path=str(ARTIFACTS / f"console-{label}-{width}.png"), full_page=True
                )
                measured += [(width, label, edges) for edges in page.evaluate(TABLE_EDGES)]
    tables = {(width, label, edges["table"]) for width, label, edges in measured}
    assert (1280, "service", "cliffracer-endpoints") in tables
    assert (1400, "errors", "cliffracer-errors") in tables
    for width, label, edges in measured:
        where = f"{edges['table']} on the {label} page at {width} px: {edges}"
        # The page never scrolls sideways, and every table sits in a box within the content.
        assert edges["page_width"] <= edges["window_width"], where
        assert edges["content_right"] <= edges["window_width"] + EDGE, where
        assert edges["in_box"], where
        assert edges["box_left"] >= edges["content_left"] - EDGE, where
        assert edges["box_right"] <= edges["content_right"] + EDGE, where
        if edges["table"] in MUST_FIT:
            assert not edges["scrolls"], where
            assert edges["last_right"] <= edges["box_right"] + EDGE, where
        else:
            # It fits, or its box scrolls to show the last column.
            assert edges["last_right_scrolled"] <= edges["box_right"] + EDGE, where


def test_the_service_page_shows_open_breakers_and_the_retry_rate(
    transactional_db, start_service, unique_name, viewer
):
    """The calls this process makes are the shop's (one process); its breaker opens."""
    shop = start_service(make_shop(unique_name))
    start_service(make_fast_monitor(f"{unique_name}-monitor"))
    target = f"{unique_name}-gone"
    policy = {
        "RETRIES": 1,
        "RETRY_DELAY": 0.01,
        "BREAKER": {"MIN_CALLS": 2, "FAILURE_RATIO": 1.0, "OPEN_SECONDS": 1},
    }
    with override_settings(CLIFFRACER={"CALLS": {target: policy}}):
        with pytest.raises(NoResponders):
            call(f"{target}.anything")
        # Both attempts failed: the breaker opened, and the shop recorded it.
        record = wait_until(
            lambda: ErrorRecord.objects.filter(service=unique_name, kind="call").first()
        )
        assert (record.endpoint, record.code, record.type) == (target, 503, "circuit_open")

        def sampled_open() -> dict | None:
            snapshot = InstanceSnapshot.objects.filter(instance_id=shop.runner.identity.id).first()
            figures = snapshot.calls.get(target) if snapshot else None
            return figures if figures and figures["state"] == "open" else None

        assert wait_until(sampled_open) == {
            "state": "open",
            "calls": 1,
            "retries": 1,
            "rejected": 0,
            "fallbacks": 0,
        }
        html = signed_in(viewer).get(f"/admin/services/{unique_name}/").content.decode()
        assert f"Open circuit breakers: {target}." in html
        assert "Retry rate: 100.0% of calls." in html
        # The target comes up; after OPEN_SECONDS a trial call succeeds and the breaker closes.
        start_service(make_shop(target))
        wait_until(lambda: _answers(f"{target}.add"))
        closed = wait_until(
            lambda: ErrorRecord.objects.filter(
                service=unique_name, kind="call", type="circuit_closed"
            ).first()
        )
        assert closed.endpoint == target
    errors = signed_in(viewer).get(f"/admin/service-errors/?service={unique_name}")
    text = errors.content.decode()
    assert f"Circuit breaker {target} opened" in text
    assert f"Circuit breaker {target} closed" in text


def _answers(target: str) -> bool:
    try:
        call(target, {"a": 1, "b": 2})
    except RemoteError:
        return False
    return True
