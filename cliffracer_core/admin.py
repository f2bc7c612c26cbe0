"""The operations console's entry on the admin index, and the load-test reports
(``cliffracer_core.dev.loadtest.admin``).

``ServicesConsole`` has no table; registering it puts "Services" under "Cliffracer" on the
admin index (and in the admin's sidebar) for users with ``view_services``, and its list is a
redirect to the console at ``/admin/services/`` (``cliffracer_core.contrib.operations``).
That is the admin's own way of listing a page, with no custom AdminSite and no template
override.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import URLPattern, path

from cliffracer_core.contrib.operations.models import ServicesConsole
from cliffracer_core.dev.loadtest.admin import LoadTestReportAdmin
from cliffracer_core.dev.loadtest.models import LoadTestReport

admin.site.register(LoadTestReport, LoadTestReportAdmin)


@admin.register(ServicesConsole)
class ServicesConsoleAdmin(admin.ModelAdmin):
    def has_module_permission(self, request: HttpRequest) -> bool:
        return self.has_view_permission(request)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.is_active and request.user.has_perm("cliffracer_core.view_services")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_urls(self) -> list[URLPattern]:
        # Only the list, which is a redirect: there are no rows to add, change or delete.
        info = self.opts.app_label, self.opts.model_name
        return [
            path(
                "",
                self.admin_site.admin_view(self.changelist_view),
                name="{}_{}_changelist".format(*info),
            )
        ]

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        return redirect("operations:services")
