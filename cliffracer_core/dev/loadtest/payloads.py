"""Request bodies: from a file (``@order.json``), inline JSON, or an example built from the
endpoint's request schema, as ``$SRV.INFO`` publishes it (pydantic's JSON Schema).

The example is the smallest body the schema accepts: each required field (and each field with
a default or an example) filled with the schema's own default, example, const or first enum
value, else a plain value of its type that meets its bounds. It exercises the path a valid
request takes; a load test that needs realistic data gives a body.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class PayloadError(ValueError):
    """A body that cannot be read or built."""


def read_body(text: str, *, base: Path | None = None) -> Any:
    """The JSON value of ``text``: inline JSON, or ``@path`` for a file's (relative to
    ``base``, a scenario file's folder)."""
    if text.startswith("@"):
        path = Path(text[1:]).expanduser()
        if base is not None and not path.is_absolute():
            path = base / path
        try:
            source = path.read_text()
        except OSError as error:
            raise PayloadError(f"cannot read the body file {path}: {error.strerror}.") from None
        where = str(path)
    else:
        source, where = text, "the body"
    try:
        return json.loads(source)
    except json.JSONDecodeError as error:
        raise PayloadError(f"{where} is not valid JSON: {error}.") from None


def example_from_schema(schema: dict[str, Any] | None) -> Any:
    """A value the JSON Schema accepts ({} when there is no schema)."""
    if not schema:
        return {}
    return _example(schema, schema.get("$defs") or schema.get("definitions") or {}, depth=0)


def _example(schema: Any, definitions: dict[str, Any], *, depth: int) -> Any:
    if not isinstance(schema, dict) or depth > 20:
        return None
    reference = schema.get("$ref")
    if isinstance(reference, str):
        name = reference.rsplit("/", 1)[-1]
        return _example(definitions.get(name, {}), definitions, depth=depth + 1)
    for key in ("const", "default"):
        if key in schema:
            return schema[key]
    if schema.get("examples"):
        return schema["examples"][0]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        choices = [choice for choice in schema.get(key) or [] if choice.get("type") != "null"]
        if choices:
            return _example(choices[0], definitions, depth=depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((each for each in kind if each != "null"), None)
    if kind == "object" or "properties" in schema:
        properties = schema.get("properties") or {}
        required = set(schema.get("required") or [])
        return {
            name: _example(field, definitions, depth=depth + 1)
            for name, field in properties.items()
            if name in required
        }
    if kind == "array":
        item = _example(schema.get("items") or {}, definitions, depth=depth + 1)
        return [item] * max(1, int(schema.get("minItems") or 1))
    if kind == "string":
        return _string(schema)
    if kind in ("integer", "number"):
        return _number(schema, integer=kind == "integer")
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return {}


def _string(schema: dict[str, Any]) -> str:
    formats = {
        "email": "user@example.com",
        "date-time": "2025-01-01T00:00:00Z",
        "date": "2025-01-01",
        "uuid": "00000000-0000-4000-8000-000000000000",
        "uri": "https://example.com/",
    }
    text = formats.get(str(schema.get("format")), "example")
    minimum = int(schema.get("minLength") or 0)
    maximum = schema.get("maxLength")
    text = text.ljust(minimum, "x")
    return text[: int(maximum)] if maximum is not None else text


def _number(schema: dict[str, Any], *, integer: bool) -> float | int:
    value: float = 1
    if "minimum" in schema:
        value = max(value, schema["minimum"])
    if "exclusiveMinimum" in schema:
        value = max(value, schema["exclusiveMinimum"] + 1)
    if "maximum" in schema:
        value = min(value, schema["maximum"])
    if "exclusiveMaximum" in schema:
        value = min(value, schema["exclusiveMaximum"] - 1)
    return int(value) if integer else float(value)
