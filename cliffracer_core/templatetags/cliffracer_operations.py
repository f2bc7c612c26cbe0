"""Filters of the operations console's templates: latencies, rates, ages."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from django import template
from django.utils import timezone

from cliffracer_core.console import format_duration, format_latency

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
def duration(seconds: float | None) -> str:
    return DASH if seconds is None else format_duration(seconds)


@register.filter
def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=False)
