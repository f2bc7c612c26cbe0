"""Call policies: what ``CLIFFRACER["CALLS"]`` and a service's ``calls`` say about a target.

A policy is keyed by a service (``"inventory"``), a method (``"inventory.reserve"``) or
``"default"``; the policy of one call merges them field by field from the least to the most
specific, the project's settings first and the calling service's declaration over them at each
level. ``policy_errors`` reads either source and names each mistake for the system checks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from django.utils.module_loading import import_string

DEFAULT = "default"
CACHED = "cached"

BREAKER_DEFAULTS: dict[str, float] = {
    "FAILURE_RATIO": 0.5,
    "MIN_CALLS": 20,
    "WINDOW": 10.0,
    "OPEN_SECONDS": 5.0,
}
# MAX_WAITING None: as many may wait as may run.
BULKHEAD_DEFAULTS: dict[str, int | None] = {"MAX_IN_FLIGHT": 20, "MAX_WAITING": None}
KEYS = ("TIMEOUT", "RETRIES", "RETRY_DELAY", "RETRY_MAX_DELAY", "BREAKER", "BULKHEAD", "FALLBACK")


@dataclass(frozen=True)
class BreakerPolicy:
    failure_ratio: float
    min_calls: int
    window: float
    open_seconds: float


@dataclass(frozen=True)
class BulkheadPolicy:
    max_in_flight: int
    max_waiting: int


@dataclass(frozen=True)
class Policy:
    """What applies to calls to one target; ``timeout`` None is the ``RPC_TIMEOUT`` setting."""

    timeout: float | None = None
    retries: int = 0
    retry_delay: float = 0.1
    retry_max_delay: float = 2.0
    breaker: BreakerPolicy | None = None
    bulkhead: BulkheadPolicy | None = None
    # "cached" (the last good reply to the same request) or an import string.
    fallback: str | None = None

    def is_empty(self) -> bool:
        return self == EMPTY


EMPTY = Policy()


def scopes(target: str) -> tuple[str, str]:
    """The service and the method key of ``"service.method"``."""
    service = target.partition(".")[0]
    return service, target


def resolve(target: str, layers: Sequence[Mapping[str, Any]]) -> tuple[Policy, str]:
    """The policy of calls to ``target`` and the key its breaker and bulkhead belong to: the
    method when some layer names it, else the service (the default is per service too)."""
    service, method = scopes(target)
    merged: dict[str, Any] = {}
    for key in (DEFAULT, service, method):
        for layer in layers:
            for name, value in (layer.get(key) or {}).items():
                if name in ("BREAKER", "BULKHEAD") and isinstance(value, Mapping):
                    value = {**(merged.get(name) or {}), **value}
                merged[name] = value
    scope = method if any(method in layer for layer in layers) else service
    return build(merged), scope


def build(values: Mapping[str, Any]) -> Policy:
    """A ``Policy`` from one validated, merged dict of ``KEYS``."""
    breaker = values.get("BREAKER")
    bulkhead = values.get("BULKHEAD")
    if breaker:
        breaker = {**BREAKER_DEFAULTS, **(breaker if isinstance(breaker, Mapping) else {})}
    if bulkhead:
        bulkhead = {**BULKHEAD_DEFAULTS, **(bulkhead if isinstance(bulkhead, Mapping) else {})}
    return Policy(
        timeout=values.get("TIMEOUT"),
        retries=int(values.get("RETRIES") or 0),
        retry_delay=float(values.get("RETRY_DELAY", Policy.retry_delay)),
        retry_max_delay=float(values.get("RETRY_MAX_DELAY", Policy.retry_max_delay)),
        breaker=BreakerPolicy(
            failure_ratio=float(breaker["FAILURE_RATIO"]),
            min_calls=int(breaker["MIN_CALLS"]),
            window=float(breaker["WINDOW"]),
            open_seconds=float(breaker["OPEN_SECONDS"]),
        )
        if breaker
        else None,
        bulkhead=BulkheadPolicy(
            max_in_flight=int(bulkhead["MAX_IN_FLIGHT"]),
            max_waiting=int(
                bulkhead["MAX_IN_FLIGHT"]
                if bulkhead["MAX_WAITING"] is None
                else bulkhead["MAX_WAITING"]
            ),
        )
        if bulkhead
        else None,
        fallback=values.get("FALLBACK"),
    )


def _number(value: Any, *, integer: bool = False, minimum: float = 0, above: bool = True) -> bool:
    if isinstance(value, bool) or not isinstance(value, int if integer else int | float):
        return False
    return value > minimum if above else value >= minimum


def policy_errors(calls: Any, where: str) -> list[str]:
    """What is wrong in a ``CALLS``-shaped dict; ``where`` names it in each message."""
    if not isinstance(calls, Mapping):
        return [f"{where} must be a dict of targets to policies."]
    errors: list[str] = []
    for target, values in calls.items():
        at = f"{where}[{target!r}]"
        parts = target.split(".") if isinstance(target, str) else []
        if not (len(parts) in (1, 2) and all(parts) and "*" not in target and ">" not in target):
            errors.append(f"{at}: a target is 'default', 'service' or 'service.method'.")
            continue
        if not isinstance(values, Mapping):
            errors.append(f"{at} must be a dict of {', '.join(KEYS)}.")
            continue
        errors += [f"{at}: unknown key {name!r}." for name in values if name not in KEYS]
        errors += _value_errors(at, values)
    return errors


def _section(
    at: str, values: Mapping[str, Any], key: str, defaults: Mapping[str, Any]
) -> tuple[Mapping[str, Any] | None, list[str]]:
    """A ``BREAKER`` or ``BULKHEAD`` dict to check further (None: off, defaults or not a
    dict), and the errors of its shape and keys."""
    section = values.get(key)
    if section in (None, False, True):
        return None, []
    if not isinstance(section, Mapping):
        return None, [f"{at}[{key!r}] must be a dict, True (the defaults) or None."]
    return section, [
        f"{at}[{key!r}]: unknown key {name!r}." for name in section if name not in defaults
    ]


def _value_errors(at: str, values: Mapping[str, Any]) -> list[str]:
    errors: list[str] = []
    if "TIMEOUT" in values and values["TIMEOUT"] is not None and not _number(values["TIMEOUT"]):
        errors.append(f"{at}['TIMEOUT'] must be a positive number of seconds or None.")
    if "RETRIES" in values and not _number(values["RETRIES"], integer=True, above=False):
        errors.append(f"{at}['RETRIES'] must be an integer of 0 or more.")
    for name in ("RETRY_DELAY", "RETRY_MAX_DELAY"):
        if name in values and not _number(values[name], above=False):
            errors.append(f"{at}[{name!r}] must be a number of seconds, 0 or more.")
    breaker, found = _section(at, values, "BREAKER", BREAKER_DEFAULTS)
    errors += found
    if breaker is not None:
        ratio = breaker.get("FAILURE_RATIO", 0.5)
        if not _number(ratio) or ratio > 1:
            errors.append(f"{at}['BREAKER']['FAILURE_RATIO'] must be above 0 and at most 1.")
        if not _number(breaker.get("MIN_CALLS", 1), integer=True):
            errors.append(f"{at}['BREAKER']['MIN_CALLS'] must be a positive integer.")
        for name in ("WINDOW", "OPEN_SECONDS"):
            if not _number(breaker.get(name, 1)):
                errors.append(f"{at}['BREAKER'][{name!r}] must be a positive number.")
    bulkhead, found = _section(at, values, "BULKHEAD", BULKHEAD_DEFAULTS)
    errors += found
    if bulkhead is not None:
        if not _number(bulkhead.get("MAX_IN_FLIGHT", 1), integer=True):
            errors.append(f"{at}['BULKHEAD']['MAX_IN_FLIGHT'] must be a positive integer.")
        waiting = bulkhead.get("MAX_WAITING")
        if waiting is not None and not _number(waiting, integer=True, above=False):
            errors.append(f"{at}['BULKHEAD']['MAX_WAITING'] must be 0 or more, or None.")
    fallback = values.get("FALLBACK")
    if fallback is not None and fallback != CACHED:
        try:
            function = import_string(fallback) if isinstance(fallback, str) else None
        except ImportError:
            function = None
        if not callable(function):
            errors.append(
                f"{at}['FALLBACK'] must be 'cached' or the import string of a function "
                f"(got {fallback!r})."
            )
    return errors
