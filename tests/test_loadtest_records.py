"""Load-test records: ``manage.py loadtest`` (a real process on the test database) saves each
run, and the admin lists them and serves their reports to its staff only (Django's test
client through the project's URLs)."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client

from cliffracer_core.dev.loadtest.admin import REPORT_POLICY
from cliffracer_core.dev.loadtest.models import LoadTestReport
from cliffracer_core.dev.loadtest.records import shown_command
from cliffracer_core.testing.plugin import child_environment, project_root

# The module's runservice testservice, shared with the runs' tests (used by name below).
from tests.test_loadtest_runs import figures, loadtest_command, testservice  # noqa: F401

LIST = "/admin/cliffracer_core/loadtestreport/"


def run(environment: dict[str, str], *arguments: str, record: bool = True):
    return subprocess.run(
        loadtest_command(*arguments, record=record),
        cwd=project_root(),
        env=environment,
        capture_output=True,
        text=True,
        timeout=90,
    )


def user_with(username: str, *codenames: str, staff: bool = True) -> User:
    user = User.objects.create_user(username, password="x", is_staff=staff)
    user.user_permissions.add(
        *Permission.objects.filter(
            content_type__app_label="cliffracer_core", codename__in=codenames
        )
    )
    return User.objects.get(pk=user.pk)


def signed_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def a_record(**fields) -> LoadTestReport:
    values = dict(
        started=datetime(2026, 12, 6, 12, 0, tzinfo=UTC),
        targets="orders.get_order",
        model="open",
        elapsed=1.0,
        requests=10,
        errors=0,
        rate=10.0,
        p50=0.002,
        p99=0.004,
        passed=True,
        result={"requests": 10},
        report_html="<html><body><h1>the stored report</h1></body></html>",
    )
    values.update(fields)
    return LoadTestReport.objects.create(**values)


@pytest.mark.usefixtures("testservice")
@pytest.mark.django_db(transaction=True)
def test_a_run_is_recorded_and_the_admin_lists_it_and_serves_its_report(nats_server, tmp_path):
    environment = child_environment(nats_server, {})
    report = tmp_path / "echo.html"
    result = run(
        environment, "testservice.echo", "--rate", "20", "-d", "1s", "--report", str(report),
        "--json", "-H", "X-Note=not-for-the-record",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = figures(result)
    record = LoadTestReport.objects.get()
    assert f"recorded: load-test report {record.pk} (in the admin)" in result.stderr
    assert record.requests == summary["requests"] == record.result["sent"] == 20
    assert (record.errors, record.passed, record.model) == (0, True, "open")
    assert record.targets == "testservice.echo"
    assert record.p50 == summary["latency"]["p50"]
    assert record.result["timeline"] == summary["timeline"]
    assert record.report_html == report.read_text()
    assert "X-Note=redacted" in record.command and "not-for-the-record" not in record.command

    staff = signed_in(user_with("operator", "view_loadtestreport"))
    listing = staff.get(LIST)
    assert listing.status_code == 200
    page = listing.content.decode()
    assert "testservice.echo" in page
    report_url = f"{LIST}{record.pk}/report/"
    assert f'href="{report_url}"' in page
    served = staff.get(report_url)
    assert served.status_code == 200
    assert served.content.decode() == report.read_text()
    assert served["Content-Security-Policy"] == REPORT_POLICY
    result_json = staff.get(f"{LIST}{record.pk}/result.json")
    assert json.loads(result_json.content)["requests"] == 20
    assert staff.get(f"{LIST}{record.pk}/change/").status_code == 200
    assert 'href="/admin/cliffracer_core/loadtestreport/"' in staff.get("/admin/").content.decode()

    # Without --report the record has the JSON and no page; --no-record adds none.
    plain = run(environment, "testservice.echo", "-n", "5")
    assert plain.returncode == 0, plain.stderr
    without_page = LoadTestReport.objects.latest("id")
    assert (without_page.requests, without_page.report_html) == (5, "")
    assert staff.get(f"{LIST}{without_page.pk}/report/").status_code == 404
    assert run(environment, "testservice.echo", "-n", "5", record=False).returncode == 0
    assert LoadTestReport.objects.count() == 2


@pytest.mark.django_db(transaction=True)
def test_the_reports_are_refused_to_users_who_are_not_staff_or_lack_the_permission():
    record = a_record()
    pages = [LIST, f"{LIST}{record.pk}/report/", f"{LIST}{record.pk}/result.json"]
    not_staff = signed_in(user_with("customer", "view_loadtestreport", staff=False))
    for client in (Client(), not_staff):
        for page in pages:
            response = client.get(page)
            assert response.status_code == 302, page
            assert response["Location"].startswith("/admin/login/?next=")
            assert b"the stored report" not in response.content
    clerk = signed_in(user_with("clerk"))
    for page in pages:
        assert clerk.get(page).status_code == 403, page
    assert "loadtestreport" not in clerk.get("/admin/").content.decode()
    superuser = User.objects.create_superuser("root", password="x")
    served = signed_in(superuser).get(pages[1])
    assert served.status_code == 200
    assert b"the stored report" in served.content


@pytest.mark.usefixtures("testservice")
def test_a_run_whose_database_is_unreachable_still_prints_its_result(nats_server):
    # Nothing listens on port 1: connecting to the database fails at once.
    environment = child_environment(
        nats_server, {"DATABASE_URL": "postgres://nobody@127.0.0.1:1/nothing"}
    )
    result = run(environment, "testservice.echo", "-n", "10", "--json")
    assert result.returncode == 0, result.stderr
    assert figures(result)["ok"] == 10
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("warning: the run is not recorded in the database: ")


def test_the_recorded_command_leaves_out_header_values_and_url_passwords():
    shown = shown_command(
        ["loadtest", "a.b", "-H", "Authorization=Bearer abc", "--header=X-Key=k1",
         "--url", "nats://ops:hunter2@nats:4222"]
    )  # fmt: skip
    assert "abc" not in shown and "k1" not in shown and "hunter2" not in shown
    assert shown == (
        "loadtest a.b -H Authorization=redacted --header=X-Key=redacted --url nats://ops:redacted@nats:4222"
    )
