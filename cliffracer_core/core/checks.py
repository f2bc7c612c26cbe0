"""System checks for Cliffracer's settings and service apps."""

from __future__ import annotations

import re
from typing import Any

from django.core.checks import Error, Warning, register

from cliffracer_core.core.policies import policy_errors
from cliffracer_core.core.settings import DEFAULTS, cliffracer_settings

NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")
PREFIX_PATTERN = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
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
    for key in (
        "CONCURRENCY",
        "THREADS",
        "MAX_REQUEST_BYTES",
        "MAX_HEADER_BYTES",
        "MAX_WAITING_REQUESTS",
        "MAX_WAITING_BYTES",
    ):
        value = getattr(cliffracer_settings, key)
        if value is None and DEFAULTS[key] is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            errors.append(
                Error(f"CLIFFRACER[{key!r}] must be a positive integer.", id="cliffracer.E002")
            )
    for key in ("GRACE_PERIOD", "RPC_TIMEOUT", "RECONNECT_WAIT", "USER_CHECK_INTERVAL"):
        value = getattr(cliffracer_settings, key)
        if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
            errors.append(
                Error(f"CLIFFRACER[{key!r}] must be a positive number.", id="cliffracer.E003")
            )
    try:  # the environment gives it as text
        ping_interval = float(cliffracer_settings.NATS_PING_INTERVAL)
    except (TypeError, ValueError):
        ping_interval = 0.0
    if ping_interval <= 0:
        errors.append(
            Error(
                "CLIFFRACER['NATS_PING_INTERVAL'] (NATS_PING_INTERVAL) must be a positive "
                "number of seconds.",
                id="cliffracer.E003",
            )
        )
    for key in ("DEFAULT_RPC_ACCESS", "DEFAULT_EVENT_ACCESS"):
        if getattr(cliffracer_settings, key) not in ("authenticated", "public"):
            errors.append(
                Error(
                    f'CLIFFRACER[{key!r}] must be "authenticated" or "public".',
                    hint='"authenticated" (a valid access token) is the safe choice.',
                    id="cliffracer.E005",
                )
            )
    prefix = cliffracer_settings.RPC_SUBJECT_PREFIX
    if not isinstance(prefix, str) or not PREFIX_PATTERN.fullmatch(prefix):
        errors.append(
            Error(
                "CLIFFRACER['RPC_SUBJECT_PREFIX'] must be plain subject tokens.",
                id="cliffracer.E004",
            )
        )
    return errors


@register("cliffracer")
def check_services(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    from cliffracer_core.core.apps import service_app_configs

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
        if not NAME_PATTERN.fullmatch(name):
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
        if not SEMVER_PATTERN.fullmatch(service_class.service_version()):
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
            continue
        errors += _feature_errors(config.label, service_class)
        errors += [
            Error(
                message,
                hint="See docs/resilience.md for the keys of a call policy.",
                obj=config.label,
                id="cliffracer.E026",
            )
            for message in policy_errors(service_class.calls, f"{service_class.__name__}.calls")
        ]
        errors += _publish_warnings(config, service_class)
    return errors


def _publish_warnings(config: Any, service_class: Any) -> list[Any]:
    """Publishes and calls in the app's code that the service does not declare
    (cliffracer.W040): generated broker permissions would refuse them."""
    from pathlib import Path

    from cliffracer_core.core.publishes import undeclared

    warnings = []
    for found in undeclared(service_class, Path(config.path)):
        attribute = "publishes" if found.kind == "publish" else "calls_to"
        shown = found.subject
        if found.kind == "call":
            shown = shown.split(".", 1)[1]
        verb = "publishes to" if found.kind == "publish" else "calls"
        warnings.append(
            Warning(
                f"{found.path.name}:{found.line} {verb} {shown!r}, which "
                f"{service_class.__name__}.{attribute} does not declare.",
                hint=f"Add {shown!r} (or a pattern covering it) to {service_class.__name__}."
                f"{attribute}; broker permissions generated by `manage.py nats_permissions` "
                "allow only what is declared (docs/deployment.md#broker-permissions).",
                obj=config.label,
                id="cliffracer.W040",
            )
        )
    return warnings


@register("cliffracer")
def check_call_policies(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """The CALLS setting holds valid call policies (cliffracer.E025)."""
    return [
        Error(
            message,
            hint="See docs/resilience.md for the keys of a call policy.",
            id="cliffracer.E025",
        )
        for message in policy_errors(cliffracer_settings.CALLS, "CLIFFRACER['CALLS']")
    ]


def _feature_errors(label: str, service_class: Any) -> list[Any]:
    """A service that needs what the configured transport lacks (cliffracer.E006)."""
    from cliffracer_core.transports import transport_class as configured_class

    try:
        transport_class = configured_class()
    except Exception:  # noqa: BLE001  (reported as cliffracer.E007)
        return []
    needed = service_class.needed_features()
    return [
        Error(
            f"Service {service_class.service_name()} needs the transport feature {name!r} "
            f"({needed[name]}), which the {transport_class.__name__} transport lacks.",
            hint="Choose a transport that has it (docs/transports.md), or change the handler.",
            obj=label,
            id="cliffracer.E006",
        )
        for name in transport_class.features.missing(needed)
    ]


@register("cliffracer")
def check_transport(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """The TRANSPORT setting names a backend that can be imported (cliffracer.E007)."""
    from cliffracer_core.transports import transport_class

    configured = cliffracer_settings.TRANSPORT
    if configured is not None and (
        not isinstance(configured, dict) or set(configured) - {"BACKEND", "LOCATION", "OPTIONS"}
    ):
        return [
            Error(
                "CLIFFRACER['TRANSPORT'] must be a dict of BACKEND, LOCATION and OPTIONS.",
                hint='E.g. {"LOCATION": "nats://127.0.0.1:4222"} (docs/transports.md).',
                id="cliffracer.E007",
            )
        ]
    try:
        backend = transport_class()
    except Exception as error:  # noqa: BLE001  (any failure to load it is the same mistake)
        return [
            Error(
                f"The transport cannot be loaded: {error}",
                hint="Use a nats://, tls:// or memory:// URL, or a BACKEND import string "
                "(docs/transports.md).",
                id="cliffracer.E007",
            )
        ]
    # The backend's own settings, e.g. NATS credentials files (docs/deployment.md).
    return [Error(message, hint=hint, id="cliffracer.E040") for message, hint in backend.check()]
