"""System checks of the metrics settings (cliffracer.E015-E017, E045; docs/metrics.md)."""

from __future__ import annotations

from typing import Any

from django.core.checks import Error, register
from django.core.exceptions import ImproperlyConfigured

from cliffracer_core.core.settings import cliffracer_settings


@register("cliffracer")
def check_metrics_settings(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    from cliffracer_core.contrib.metrics.exporter import parse_ports
    from cliffracer_core.contrib.metrics.views import allowed_networks

    errors: list[Any] = []
    try:
        parse_ports(cliffracer_settings.METRICS_PORTS)
    except ValueError as error:
        errors.append(
            Error(
                f"CLIFFRACER['METRICS_PORTS']: {error}.",
                hint="Use a range such as '9400-9499', one port, or 0 for none.",
                id="cliffracer.E015",
            )
        )
    for key, optional in (("METRICS_HOST", False), ("METRICS_ADVERTISED_HOST", True)):
        value = getattr(cliffracer_settings, key)
        if not (optional and value is None) and (not isinstance(value, str) or not value.strip()):
            errors.append(
                Error(
                    f"CLIFFRACER[{key!r}] must be a host name or address"
                    + (" (or None)." if optional else "."),
                    id="cliffracer.E016",
                )
            )
    try:
        allowed_networks()
    except (TypeError, ValueError) as error:
        errors.append(
            Error(
                f"CLIFFRACER['METRICS_ALLOWED_IPS']: {error}.",
                hint="List addresses or networks, e.g. ['127.0.0.1', '10.0.0.0/8'].",
                id="cliffracer.E017",
            )
        )
    try:
        from cliffracer_core.contrib.metrics.backends.base import make_exporters

        # Made, not started: constructors check their options and open no connection.
        make_exporters(_exporter_entries())
    except ImproperlyConfigured as error:
        errors.append(
            Error(
                f"CLIFFRACER['METRICS_EXPORTERS']: {error}.",
                hint='List {"BACKEND": "dotted.path.Class", "OPTIONS": {...}} dicts.',
                id="cliffracer.E045",
            )
        )
    return errors


def _exporter_entries() -> list[Any]:
    entries = cliffracer_settings.METRICS_EXPORTERS
    if not isinstance(entries, list | tuple):
        raise ImproperlyConfigured(f"{entries!r} is not a list")
    return list(entries)
