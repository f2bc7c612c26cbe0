"""System checks of the MONITOR settings (cliffracer.E201, E202, E203)."""

from __future__ import annotations

from typing import Any

from django.core.checks import Error, register

from cliffracer_core.core.settings import DEFAULTS, cliffracer_settings

# The keys that are switches, not numbers.
SWITCHES = ("QUIET",)


@register("cliffracer")
def check_monitor_settings(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    values = cliffracer_settings.MONITOR
    errors = []
    unknown = sorted(set(values) - set(DEFAULTS["MONITOR"]))
    if unknown:
        errors.append(
            Error(
                f"CLIFFRACER['MONITOR'] has unknown keys: {', '.join(unknown)}.",
                id="cliffracer.E201",
            )
        )
    for key in DEFAULTS["MONITOR"]:
        value = values.get(key)
        if key in SWITCHES:
            if not isinstance(value, bool):
                errors.append(
                    Error(
                        f"CLIFFRACER['MONITOR'][{key!r}] must be True or False.",
                        id="cliffracer.E203",
                    )
                )
            continue
        allowed_zero = key in ("ERRORS_PER_SECOND", "DEGRADED_ERROR_RATE")
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or value < 0
            or (value == 0 and not allowed_zero)
        ):
            errors.append(
                Error(
                    f"CLIFFRACER['MONITOR'][{key!r}] must be a positive number.",
                    id="cliffracer.E202",
                )
            )
    return errors
