"""The console's pages and the JSON views they poll; staff with ``view_services`` only.

Every page has a JSON twin (``.../status.json``) that the page fetches every few seconds: it
carries the figures and the page's tables already rendered, which the page swaps in. So the
pages stay live without a reload and without a second renderer in JavaScript.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from functools import wraps
from typing import Any

from django.contrib import admin
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.template.loader import render_to_string
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.views.decorators.cache import never_cache

from cliffracer_core.contrib.operations import charts, figures
from cliffracer_core.core.discovery import is_name
from cliffracer_core.core.errors import error_class

VIEW_SERVICES = "cliffracer_core.view_services"
CALL_SERVICES = "cliffracer_core.call_services"
# How often the pages poll their JSON, and the charts theirs (seconds).
POLL_SECONDS = 5
CHARTS_POLL_SECONDS = 60
TEMPLATES = "cliffracer/operations"
ERROR_CODE = re.compile(r"[0-9]{1,3}")


def console_view(*, json: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Let through active staff users with ``view_services``.

    A page sends anyone else to the admin's login (which says who may not enter) or answers
    403; a JSON view answers 403 with an error body, which the polling page shows.
    """

    def decorator(view: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(view)
        @never_cache
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            user = request.user
            staff = user.is_active and user.is_staff
            if staff and user.has_perm(VIEW_SERVICES):
                return view(request, *args, **kwargs)
            if json:
                return JsonResponse(
                    {
                        "error": {
                            "code": 403,
                            "type": "permission_denied",
                            "message": "Staff users with the permission to view services only.",
                            "details": None,
                        }
                    },
                    status=403,
                )
            if not staff:
                return redirect_to_login(request.get_full_path(), reverse("admin:login"))
            raise PermissionDenied

        return wrapper

    return decorator


def page_context(request: HttpRequest, **values: Any) -> dict[str, Any]:
    return {
        **admin.site.each_context(request),
        "poll_seconds": POLL_SECONDS,
        "can_call": request.user.has_perm(CALL_SERVICES),
        **values,
    }


def fragment(name: str, context: dict[str, Any], request: HttpRequest) -> str:
    return render_to_string(f"{TEMPLATES}/{name}", context, request=request)


def monitor_dict(status: figures.MonitorStatus) -> dict[str, Any]:
    return {
        "installed": status.installed,
        "running": status.running,
        "last_sample": status.last_sample.isoformat() if status.last_sample else None,
    }


# All services


@console_view()
def services(request: HttpRequest) -> HttpResponse:
    overview = figures.overview()
    context = page_context(request, title="Services", overview=overview)
    return render(request, f"{TEMPLATES}/services.html", context)


@console_view(json=True)
def services_status(request: HttpRequest) -> JsonResponse:
    overview = figures.overview()
    context = {"overview": overview, "monitor": overview.monitor, "now": overview.now}
    return JsonResponse(
        {
            "generated_at": overview.now.isoformat(),
            "monitor": monitor_dict(overview.monitor),
            "services": [row.as_dict() for row in overview.services],
            "fragments": {
                "monitor": fragment("_monitor.html", context, request),
                "services": fragment("_services.html", context, request),
            },
        }
    )


# One service


def detail_or_404(name: str) -> figures.ServiceDetail:
    detail = figures.service_detail(name) if is_name(name) else None
    if detail is None:
        raise Http404(f"No service {name!r} is installed or was seen.")
    return detail


def service_charts(name: str) -> dict[str, list[Any]]:
    now = timezone.now()
    return {
        "hour": charts.service_charts(
            figures.history(name, span=timedelta(hours=1), step=timedelta(minutes=1), now=now),
            time_format="%H:%M",
        ),
        "day": charts.service_charts(
            figures.history(name, span=timedelta(days=1), step=timedelta(minutes=15), now=now),
            time_format="%H:%M",
        ),
    }


@console_view()
def service(request: HttpRequest, name: str) -> HttpResponse:
    detail = detail_or_404(name)
    try:
        # The console's calls go through the gateway; the page fills in the method.
        gateway_url = reverse("rpc-gateway", kwargs={"service": name, "method": "METHOD"})
    except NoReverseMatch:
        gateway_url = ""
    context = page_context(
        request,
        title=f"Service {name}",
        detail=detail,
        gateway_url=gateway_url,
        examples={endpoint.name: endpoint.example for endpoint in detail.endpoints},
        monitor=detail.monitor,
        charts=service_charts(name),
        charts_poll_seconds=CHARTS_POLL_SECONDS,
        tail_subject=f"{name}.*",
        now=timezone.now(),
    )
    return render(request, f"{TEMPLATES}/service.html", context)


@console_view(json=True)
def service_status(request: HttpRequest, name: str) -> JsonResponse:
    detail = detail_or_404(name)
    context = {"detail": detail, "monitor": detail.monitor, "now": timezone.now()}
    fragments = {
        "monitor": fragment("_monitor.html", context, request),
        "instances": fragment("_instances.html", context, request),
        "endpoints": fragment("_endpoints.html", context, request),
    }
    if request.GET.get("charts"):
        fragments["charts"] = fragment("_charts.html", {"charts": service_charts(name)}, request)
    return JsonResponse(
        {
            "generated_at": context["now"].isoformat(),
            "service": {
                "name": detail.name,
                "state": detail.state,
                "instances": [
                    {"id": row.id, "host": row.host, "pid": row.pid, "live": row.live}
                    for row in detail.instances
                ],
                "endpoints": [row.as_dict() for row in detail.endpoints],
            },
            "fragments": fragments,
        }
    )


# Recent errors


def error_filters(request: HttpRequest) -> dict[str, Any]:
    code = request.GET.get("code", "").strip()
    of_class = request.GET.get("class", "").strip()
    return {
        "service": request.GET.get("service", "").strip()[:64],
        "endpoint": request.GET.get("endpoint", "").strip()[:128],
        # ASCII digits only: "²".isdigit() holds, and int() refuses it.
        "code": int(code) if ERROR_CODE.fullmatch(code) else None,
        # "client" (4xx) or "server" (5xx and any other code); anything else: both.
        "of_class": of_class if of_class in figures.ERROR_CLASSES else "",
    }


@console_view()
def errors(request: HttpRequest) -> HttpResponse:
    filters = error_filters(request)
    context = page_context(
        request,
        title="Recent errors",
        filters=filters,
        records=figures.recent_errors(**filters),
        choices=figures.error_choices(filters["service"]),
        query=request.GET.urlencode(),
    )
    return render(request, f"{TEMPLATES}/errors.html", context)


@console_view(json=True)
def errors_status(request: HttpRequest) -> JsonResponse:
    filters = error_filters(request)
    records = figures.recent_errors(**filters)
    return JsonResponse(
        {
            "generated_at": timezone.now().isoformat(),
            "errors": [
                {
                    "time": record.time.isoformat(),
                    "service": record.service,
                    "instance": record.instance_id,
                    "kind": record.kind,
                    "endpoint": record.endpoint,
                    "code": record.code,
                    "class": error_class(record.code),
                    "type": record.type,
                    "message": record.message,
                    "correlation_id": record.correlation_id,
                    "trace_id": record.trace_id,
                }
                for record in records
            ],
            "fragments": {
                "errors": fragment(
                    "_errors.html", {"records": records, "filters": filters}, request
                )
            },
        }
    )
