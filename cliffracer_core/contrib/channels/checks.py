"""System checks for the WebSocket settings and subject rules (ids cliffracer.E1xx)."""

from __future__ import annotations

from typing import Any

from django.core.checks import Error, register

from cliffracer_core.core.settings import DEFAULTS, cliffracer_settings


@register("cliffracer")
def check_websocket(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    from cliffracer_core.contrib.channels.rules import configured_rules, subject_error

    errors: list[Any] = []
    limits = cliffracer_settings.WEBSOCKET
    unknown = set(limits) - set(DEFAULTS["WEBSOCKET"])
    if unknown:
        errors.append(
            Error(
                f"CLIFFRACER['WEBSOCKET'] has unknown keys: {', '.join(sorted(unknown))}.",
                hint=f"Known keys: {', '.join(sorted(DEFAULTS['WEBSOCKET']))}.",
                id="cliffracer.E101",
            )
        )
    for key, default in DEFAULTS["WEBSOCKET"].items():
        value = limits.get(key)
        if isinstance(default, int | float) and (
            isinstance(value, bool) or not isinstance(value, int | float) or value <= 0
        ):
            errors.append(
                Error(
                    f"CLIFFRACER['WEBSOCKET'][{key!r}] must be a positive number, not {value!r}.",
                    id="cliffracer.E102",
                )
            )
    if limits.get("SLOW_CLIENT_POLICY") not in ("close", "drop"):
        errors.append(
            Error(
                "CLIFFRACER['WEBSOCKET']['SLOW_CLIENT_POLICY'] must be 'close' or 'drop'.",
                id="cliffracer.E103",
            )
        )
    try:
        rules = configured_rules()
    except ValueError as error:
        errors.append(Error(str(error), id="cliffracer.E104"))
        return errors
    for rule in rules:
        subject = rule.subject.replace("{user_id}", "0")
        if problem := subject_error(subject, wildcards=True):
            errors.append(Error(f"Subject rule {rule.subject!r}: {problem}", id="cliffracer.E105"))
    return errors
