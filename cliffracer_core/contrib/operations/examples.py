"""A request body to start from, made from an endpoint's request JSON schema (pydantic's)."""

from __future__ import annotations

import math
from typing import Any

MAX_DEPTH = 6
# Lengths and item counts an example is made with, at most; and the numbers it copies.
MAX_SIZE = 100
MAX_NUMBER = 1e15
STRING_FORMATS = {
    "date-time": "2026-01-01T00:00:00Z",
    "date": "2026-01-01",
    "time": "00:00:00",
    "email": "someone@example.com",
    "uuid": "00000000-0000-0000-0000-000000000000",
    "uri": "https://example.com/",
}


def example_of(schema: Any) -> Any:
    """A value that fits ``schema``: its defaults and examples where it has them, else the
    simplest value of each type. Optional fields without a default are left out.

    The schema comes from whoever answered ``$SRV.INFO``: a keyword of the wrong type is
    ignored, and lengths and counts are capped, so any JSON gives an example.
    """
    if not isinstance(schema, dict):
        return {}
    definitions = schema.get("$defs")
    return _example(schema, definitions if isinstance(definitions, dict) else {}, 0)


def _example(schema: dict[str, Any], definitions: dict[str, Any], depth: int) -> Any:
    if depth > MAX_DEPTH:
        return None
    if "$ref" in schema:
        reference = schema["$ref"]
        name = reference.rsplit("/", 1)[-1] if isinstance(reference, str) else None
        target = definitions.get(name) if name is not None else None
        return _example(target, definitions, depth + 1) if isinstance(target, dict) else None
    if "default" in schema:
        return schema["default"]
    if isinstance(schema.get("examples"), list) and schema["examples"]:
        return schema["examples"][0]
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        options = schema.get(key)
        choices = [
            choice
            for choice in (options if isinstance(options, list) else [])
            if isinstance(choice, dict) and choice.get("type") != "null"
        ]
        if choices:
            return _example(choices[0], definitions, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((item for item in kind if isinstance(item, str) and item != "null"), None)
    properties = schema.get("properties")
    if kind == "object" or isinstance(properties, dict):
        properties = properties if isinstance(properties, dict) else {}
        required = schema.get("required")
        required = (
            {name for name in required if isinstance(name, str)}
            if isinstance(required, list)
            else set()
        )
        return {
            name: _example(field, definitions, depth + 1)
            for name, field in properties.items()
            if isinstance(field, dict) and (name in required or "default" in field)
        }
    if kind == "array":
        items = schema.get("items")
        item = _example(items, definitions, depth + 1) if isinstance(items, dict) else None
        return [item] * max(1, _size(schema.get("minItems"))) if item is not None else []
    if kind == "string":
        format_name = schema.get("format")
        if isinstance(format_name, str) and format_name in STRING_FORMATS:
            return STRING_FORMATS[format_name]
        return "x" * _size(schema.get("minLength"))
    if kind == "integer":
        minimum, exclusive = _number(schema.get("minimum")), _number(schema.get("exclusiveMinimum"))
        if minimum is not None:
            return math.ceil(minimum)
        return math.floor(exclusive) + 1 if exclusive is not None else 0
    if kind == "number":
        minimum = _number(schema.get("minimum"))
        return float(minimum) if minimum is not None else 0.0
    if kind == "boolean":
        return False
    return None


def _number(value: Any) -> float | int | None:
    """A finite number from the schema, or None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value if abs(value) <= MAX_NUMBER else None


def _size(value: Any) -> int:
    """``minItems``/``minLength``: a whole number from 0 to MAX_SIZE."""
    if isinstance(value, bool) or not isinstance(value, int):
        return 0
    return min(max(value, 0), MAX_SIZE)
