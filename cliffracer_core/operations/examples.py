"""A request body to start from, made from an endpoint's request JSON schema (pydantic's)."""

from __future__ import annotations

from typing import Any

MAX_DEPTH = 6
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
    simplest value of each type. Optional fields without a default are left out."""
    if not isinstance(schema, dict):
        return {}
    return _example(schema, schema.get("$defs") or {}, 0)


def _example(schema: dict[str, Any], definitions: dict[str, Any], depth: int) -> Any:
    if depth > MAX_DEPTH:
        return None
    if "$ref" in schema:
        name = str(schema["$ref"]).rsplit("/", 1)[-1]
        target = definitions.get(name)
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
        choices = [
            choice
            for choice in schema.get(key) or []
            if isinstance(choice, dict) and choice.get("type") != "null"
        ]
        if choices:
            return _example(choices[0], definitions, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((item for item in kind if item != "null"), None)
    if kind == "object" or "properties" in schema:
        required = set(schema.get("required") or [])
        return {
            name: _example(field, definitions, depth + 1)
            for name, field in (schema.get("properties") or {}).items()
            if isinstance(field, dict) and (name in required or "default" in field)
        }
    if kind == "array":
        items = schema.get("items")
        minimum = schema.get("minItems") or 0
        item = _example(items, definitions, depth + 1) if isinstance(items, dict) else None
        return [item] * max(1, minimum) if item is not None else []
    if kind == "string":
        if schema.get("format") in STRING_FORMATS:
            return STRING_FORMATS[schema["format"]]
        return "x" * max(1, int(schema.get("minLength") or 0)) if schema.get("minLength") else ""
    if kind == "integer":
        return int(schema.get("minimum", schema.get("exclusiveMinimum", -1) + 1))
    if kind == "number":
        return float(schema.get("minimum", 0))
    if kind == "boolean":
        return False
    return None
