"""System checks for Cliffracer's settings and service apps."""

from __future__ import annotations

import re
from typing import Any

from django.core.checks import Error, Warning, register

from cliffracer_core.settings import DEFAULTS, cliffracer_settings

NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")
SEMVER_PATTERN = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:[-+][0-9A-Za-z.+-]+)?$")


@register("cliffracer")
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    errors: list[Any] = []
    for key in cliffracer_settings.user_settings:
        if key not in DEFAULTS:
            errors.append(
                Warning(
                    f"CLIFFRACER[{key!r}] is not a Cliffracer setting.",
                    hint=f"Known settings: {', '.join(sorted(DEFAULTS))}.",
                    id="cliffracer.W001",
                )
            )
    url = str(cliffracer_settings.NATS_URL)
    for part in url.split(","):
        if not re.match(r"^(nats|tls|ws|wss)://[^\s/]+", part.strip()):
            errors.append(
                Error(
                    f"NATS_URL {part!r} is not a NATS URL.",
                    hint="Use nats://host:port (several separated by commas).",
                    id="cliffracer.E001",
                )
            )
    for key in ("CONCURRENCY", "THREADS", "MAX_REQUEST_BYTES"):
        value = getattr(cliffracer_settings, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            errors.append(
                Error(f"CLIFFRACER[{key!r}] must be a positive integer.", id="cliffracer.E002")
            )
    for key in ("GRACE_PERIOD", "RPC_TIMEOUT", "RECONNECT_WAIT"):
        value = getattr(cliffracer_settings, key)
        if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
            errors.append(
                Error(f"CLIFFRACER[{key!r}] must be a positive number.", id="cliffracer.E003")
            )
    prefix = cliffracer_settings.RPC_SUBJECT_PREFIX
    if not isinstance(prefix, str) or not re.match(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$", prefix):
        errors.append(
            Error(
                "CLIFFRACER['RPC_SUBJECT_PREFIX'] must be plain subject tokens.",
                id="cliffracer.E004",
            )
        )
    return errors


@register("cliffracer")
def check_services(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    from cliffracer_core.apps import service_app_configs

    errors: list[Any] = []
    names: dict[str, str] = {}
    for config in service_app_configs():
        service_class = config.service_class
        if service_class is None:
            errors.append(
                Error(
                    f"Service app {config.label!r} has no Service class in "
                    f"{config.name}.{config.service_module}.",
                    hint="Declare exactly one subclass of cliffracer_core.Service there.",
                    obj=config.label,
                    id="cliffracer.E010",
                )
            )
            continue
        name = service_class.service_name()
        if not NAME_PATTERN.match(name):
            errors.append(
                Error(
                    f"Service name {name!r} may only hold letters, digits, '-' and '_'.",
                    obj=config.label,
                    id="cliffracer.E011",
                )
            )
        if name in names:
            errors.append(
                Error(
                    f"Service name {name!r} is used by both {names[name]!r} and {config.label!r}.",
                    obj=config.label,
                    id="cliffracer.E012",
                )
            )
        names[name] = config.label
        if not SEMVER_PATTERN.match(service_class.service_version()):
            errors.append(
                Error(
                    f"Service {name!r} has version {service_class.service_version()!r}, "
                    "which is not a semantic version.",
                    obj=config.label,
                    id="cliffracer.E013",
                )
            )
        try:
            service_class.rpcs()
        except TypeError as error:
            errors.append(Error(str(error), obj=config.label, id="cliffracer.E014"))
    return errors


@register("cliffracer")
def check_metrics_settings(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    from cliffracer_core.metrics.exporter import parse_ports
    from cliffracer_core.metrics.views import allowed_networks

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
    return errors


@register("cliffracer")
def check_durable_events(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """Streams, durable handlers and their settings (cliffracer.E018-E023, docs/durable.md)."""
    from cliffracer_core.durable.checks import durable_errors

    return durable_errors()
