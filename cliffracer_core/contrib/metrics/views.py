"""The web process's ``/metrics``: django-prometheus's page, for allowed addresses only."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from django.http import HttpRequest, HttpResponse, HttpResponseForbidden
from django_prometheus.exports import ExportToDjangoView

# The web process calls services too: its call policies' figures are in its /metrics.
from cliffracer_core.contrib.metrics import calls  # noqa: F401
from cliffracer_core.core.settings import cliffracer_settings

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def allowed_networks(value: str | Iterable[str] | None = None) -> list[Network]:
    """``METRICS_ALLOWED_IPS`` as networks: a list, or one comma-separated string (as the
    environment gives it). A malformed entry raises ``ValueError``."""
    if value is None:
        value = cliffracer_settings.METRICS_ALLOWED_IPS
    if isinstance(value, str):
        value = value.split(",")
    return [ipaddress.ip_network(str(item).strip(), strict=False) for item in value]


def request_addresses(request: HttpRequest) -> list[str]:
    """The address the request came from and every address its ``X-Forwarded-For`` names."""
    addresses = [request.META.get("REMOTE_ADDR") or ""]
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR") or ""
    addresses += [part.strip() for part in forwarded.split(",") if part.strip()]
    return addresses


def is_allowed(address: str, networks: list[Network]) -> bool:
    try:
        parsed = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return False
    # An IPv4 client of a dual-stack socket shows up as ::ffff:a.b.c.d.
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        parsed = parsed.ipv4_mapped
    return any(parsed in network for network in networks)


def metrics(request: HttpRequest) -> HttpResponse:
    """Serve the process's Prometheus metrics to allowed addresses; 403 to anyone else.

    Every hop counts, not only the last: behind a reverse proxy on the same host, REMOTE_ADDR
    is the proxy's (loopback, allowed), and only X-Forwarded-For shows who asked. A client
    that forges X-Forwarded-For can only add addresses that must pass too, so it gains nothing.
    """
    networks = allowed_networks()
    if not all(is_allowed(address, networks) for address in request_addresses(request)):
        return HttpResponseForbidden(
            "Metrics are not served to this address.", content_type="text/plain"
        )
    return ExportToDjangoView(request)
