"""Load-test reports in the admin: what was measured, when, and the run's own HTML report.

The list is for the admin's staff with ``view_loadtestreport`` (superusers have it). The
stored report page is served by the admin itself, behind the same login and permission, with a
Content-Security-Policy that lets it run nothing: the page has no script of its own (its charts
are inline SVG and its JSON a data block), and text a service put in an error type must not
become code on the admin's origin.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html

from cliffracer_core.dev.loadtest.models import LoadTestReport
from cliffracer_core.dev.loadtest.units import format_seconds

# The report page may show its inline styles and nothing else: no script, no fetch, no frame.
REPORT_POLICY = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; sandbox"


class LoadTestReportAdmin(admin.ModelAdmin):
    list_display = (
        "started",
        "what",
        "model",
        "requests",
        "errors",
        "shown_rate",
        "shown_p50",
        "shown_p99",
        "passed",
        "report_link",
    )
    list_filter = ("passed", "model", "interrupted")
    search_fields = ("name", "targets", "host")
    date_hierarchy = "started"
    fields = (
        "started",
        "recorded",
        "name",
        "targets",
        "model",
        "elapsed",
        "requests",
        "errors",
        "expected_errors",
        "shown_rate",
        "shown_p50",
        "shown_p99",
        "passed",
        "interrupted",
        "host",
        "command",
        "report_link",
        "result_link",
    )
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="what", ordering="name")
    def what(self, report: LoadTestReport) -> str:
        return f"{report.name}: {report.targets}" if report.name else report.targets

    @admin.display(description="req/s", ordering="rate")
    def shown_rate(self, report: LoadTestReport) -> str:
        return f"{report.rate:.1f}"

    @admin.display(description="p50", ordering="p50")
    def shown_p50(self, report: LoadTestReport) -> str:
        return "-" if report.p50 is None else format_seconds(report.p50)

    @admin.display(description="p99", ordering="p99")
    def shown_p99(self, report: LoadTestReport) -> str:
        return "-" if report.p99 is None else format_seconds(report.p99)

    @admin.display(description="report")
    def report_link(self, report: LoadTestReport) -> str:
        if not report.report_html:
            return "-"
        return format_html('<a href="{}">report</a>', self.url("report", report))

    @admin.display(description="JSON result")
    def result_link(self, report: LoadTestReport) -> str:
        return format_html('<a href="{}">result.json</a>', self.url("result", report))

    def url(self, view: str, report: LoadTestReport) -> str:
        return reverse(
            f"{self.admin_site.name}:cliffracer_core_loadtestreport_{view}", args=[report.pk]
        )

    def get_urls(self) -> list[URLPattern]:
        wrap = self.admin_site.admin_view
        return [
            path(
                "<int:report_id>/report/",
                wrap(self.report_view),
                name="cliffracer_core_loadtestreport_report",
            ),
            path(
                "<int:report_id>/result.json",
                wrap(self.result_view),
                name="cliffracer_core_loadtestreport_result",
            ),
            *super().get_urls(),
        ]

    def viewable(self, request: HttpRequest, report_id: int) -> LoadTestReport:
        """The report, for a user who may view it (404 for one that is not there)."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        report = LoadTestReport.objects.filter(pk=report_id).first()
        if report is None:
            raise Http404(f"No load-test report {report_id}.")
        return report

    def report_view(self, request: HttpRequest, report_id: int) -> HttpResponse:
        report = self.viewable(request, report_id)
        if not report.report_html:
            raise Http404("This run wrote no HTML report (run it with --report).")
        response = HttpResponse(report.report_html, content_type="text/html; charset=utf-8")
        response["Content-Security-Policy"] = REPORT_POLICY
        return response

    def result_view(self, request: HttpRequest, report_id: int) -> JsonResponse:
        report = self.viewable(request, report_id)
        response = JsonResponse(report.result, json_dumps_params={"indent": 2})
        response["Content-Disposition"] = f'inline; filename="loadtest-{report.pk}.json"'
        return response
