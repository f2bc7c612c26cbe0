"""The site root: what runs and where to go next, for a developer who just typed ``make run``.

With ``DEBUG`` on (``make run``) ``/`` is a small page, plain HTML and one stylesheet of this
site (no JavaScript, nothing from a CDN): the services that answer discovery now and the
installed service apps that do not, where NATS is, links to every page of the system, and the
command-line tools to try. With ``DEBUG`` off it redirects to the admin: a deployment's root
should not describe the system to whoever asks, and the admin asks who it is first.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import NoReverseMatch, reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from cliffracer_core.core.apps import service_app_configs
from cliffracer_core.core.client import run_sync, shared_transport
from cliffracer_core.core.discovery import is_name, request_all
from cliffracer_core.transports import make_transport

logger = logging.getLogger("cliffracer.index")

# Seconds the page waits for the services' $SRV.INFO answers (as the gateway does).
DISCOVERY_WINDOW = 0.25
# Only this site's stylesheet; no script, no frame, no form.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "style-src 'self'",
        "img-src 'self' data:",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
# The pages linked, by route name, with what each is for; a route the project lacks is left
# out (the framework imports nothing from apps/ and assumes none of its pages).
PAGES = [
    ("live", "Live page", "place orders and watch their events arrive (WebSocket)"),
    ("admin:index", "Admin", "users, groups, periodic tasks, dead letters"),
    ("operations:services", "Operations console", "every service: instances, traffic, errors"),
    ("operations:errors", "Service errors", "recent errors with their correlation ids"),
    ("swagger-ui", "API docs", "Swagger UI of the REST API and the RPC gateway"),
    ("schema", "OpenAPI schema", "the same as an OpenAPI document"),
    ("metrics", "/metrics", "Prometheus metrics of this web process"),
    ("healthz", "/healthz", "liveness: the process serves requests"),
    ("readyz", "/readyz", "readiness: the database and NATS answer"),
]


@dataclass
class ServiceRow:
    """One service: the instances that answered, and its installed app if it has one here."""

    name: str
    app: str = ""
    instances: int = 0
    versions: set[str] = field(default_factory=set)
    endpoints: set[str] = field(default_factory=set)
    # Endpoints whose request needs no field: ``call <service>.<endpoint> '{}'`` is valid.
    without_fields: set[str] = field(default_factory=set)

    @property
    def sorted_endpoints(self) -> list[str]:
        return sorted(self.endpoints)

    @property
    def sorted_versions(self) -> list[str]:
        return sorted(self.versions)


@never_cache
@require_safe
def index(request: HttpRequest) -> HttpResponse:
    """The start page with DEBUG on; a redirect to the admin otherwise."""
    if not settings.DEBUG:
        return HttpResponseRedirect(reverse("admin:index"))
    transport = make_transport()
    infos, answered = discover()
    services = service_rows(infos)
    context = {
        "transport": f"{transport.display_name} at {transport.redacted_location()}",
        "answered": answered,
        "services": services,
        "pages": pages(),
        "commands": commands(services),
    }
    response = render(request, "cliffracer/index.html", context)
    response["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    return response


def discover() -> tuple[list[dict[str, Any]], bool]:
    """Every running instance's ``$SRV.INFO`` reply, and whether the messaging system answered."""

    async def gather() -> list[dict[str, Any]]:
        return await request_all(await shared_transport(), "INFO", timeout=DISCOVERY_WINDOW)

    try:
        return run_sync(gather(), timeout=DISCOVERY_WINDOW + 5), True
    except Exception as error:  # noqa: BLE001  (the page still lists the installed apps)
        logger.warning("The start page's discovery failed: %s", error)
        return [], False


def service_rows(infos: list[dict[str, Any]]) -> list[ServiceRow]:
    """The services that answered and the installed ones that did not, by name."""
    rows: dict[str, ServiceRow] = {}
    for config in service_app_configs():
        if config.service_class is not None:
            name = config.service_class.service_name()
            rows[name] = ServiceRow(name=name, app=config.name)
    for info in infos:
        name = info.get("name")
        if not is_name(name):
            continue
        row = rows.setdefault(name, ServiceRow(name=name))
        row.instances += 1
        if isinstance(info.get("version"), str):
            row.versions.add(info["version"])
        for endpoint in info.get("endpoints") or []:
            if isinstance(endpoint, dict) and is_name(endpoint.get("name")):
                row.endpoints.add(endpoint["name"])
                if not required_fields(endpoint):
                    row.without_fields.add(endpoint["name"])
    return sorted(rows.values(), key=lambda row: row.name)


def required_fields(endpoint: dict[str, Any]) -> list[Any]:
    """The required fields of an endpoint's request, from its ``request_schema`` metadata
    (none for an endpoint that takes no request); a schema that cannot be read counts as
    having some."""
    metadata = endpoint.get("metadata")
    try:
        schema = json.loads(metadata["request_schema"])
        return [] if schema is None else list(schema.get("required") or [])
    except (TypeError, KeyError, ValueError, AttributeError):
        return ["?"]


def pages() -> list[tuple[str, str, str]]:
    """(title, URL, what it is for) of each page the project has."""
    found = []
    for route, title, purpose in PAGES:
        try:
            found.append((title, reverse(route), purpose))
        except NoReverseMatch:
            continue
    return found


def commands(services: list[ServiceRow]) -> list[tuple[str, str]]:
    """(command line, what it does) of the tools to try, with a real endpoint where one runs."""
    python = python_command()
    target, data = example_call(services)
    return [
        (f"{python} manage.py services", "the services and instances running now"),
        (f"{python} manage.py call {target} '{data}'", "call an RPC, print its reply"),
        (f"{python} manage.py listen '>'", "print every message as it passes"),
        (f"{python} manage.py shell", "Django's shell, with services.<name>.<method>(...)"),
    ]


def example_call(services: list[ServiceRow]) -> tuple[str, str]:
    """A running endpoint of this project that needs no field (the first by name), or the
    form of a call."""
    for row in services:
        if row.app and row.without_fields:
            return f"{row.name}.{min(row.without_fields)}", "{}"
    return "SERVICE.METHOD", json.dumps({"field": "value"})


def python_command() -> str:
    """This project's Python as the user types it: ``.venv/bin/python`` in a checkout."""
    executable, base = Path(sys.executable), Path(settings.BASE_DIR)
    return str(executable.relative_to(base)) if executable.is_relative_to(base) else "python"
