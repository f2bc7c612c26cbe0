"""Filters of the operations console's templates: latencies, rates, ages."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from django import template
from django.utils import timezone
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from cliffracer_core.core.errors import error_class as class_of_code
from cliffracer_core.core.settings import cliffracer_settings
from cliffracer_core.dev.console import format_duration, format_latency

register = template.Library()

DASH = "–"


@register.filter
def ms(value: float | None) -> str:
    """Milliseconds, with a precision that suits them."""
    return DASH if value is None else format_latency(value * 1e6)


@register.filter
def per_minute(value: float | None) -> str:
    if value is None:
        return DASH
    if value == 0:
        return "0"
    return f"{value:.2f}" if value < 10 else f"{value:,.0f}"


@register.filter
def percent(value: float | None) -> str:
    return DASH if value is None else f"{value:.1%}"


@register.filter
def ago(value: datetime | None) -> str:
    if value is None:
        return DASH
    return f"{format_duration((timezone.now() - value).total_seconds())} ago"


@register.filter
def duration(seconds: Any) -> str:
    """Seconds as ``3m12s``; a dash for anything that is not a finite number."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        return DASH
    try:
        return format_duration(seconds)
    except (ValueError, OverflowError):  # NaN, infinity
        return DASH


@register.filter
def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=False)


@register.filter
def error_class(code: Any) -> str:
    """``client`` for a 4xx error code, ``server`` for any other (core.errors.error_class)."""
    return class_of_code(code) if isinstance(code, int) else ""


@register.filter
def dotted_breaks(value: Any) -> SafeString:
    """Text that may wrap after each dot (subjects, permissions), so a narrow column breaks
    ``rpc.inventory.reserve_stock`` between its tokens rather than pushing the table wide."""
    return mark_safe(escape(value).replace(".", ".<wbr>"))  # noqa: S308  (escaped first)


@register.filter
def trace_url(trace_id: Any) -> str:
    """The trace viewer's URL of ``trace_id`` (``CLIFFRACER["TRACE_URL"]``), or ""."""
    template = cliffracer_settings.TRACE_URL
    if not template or not isinstance(trace_id, str) or not trace_id:
        return ""
    return str(template).replace("{trace_id}", trace_id)
