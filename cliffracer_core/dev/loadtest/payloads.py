"""Request bodies: from a file (``@order.json``), inline JSON, or an example built from the
endpoint's request schema, as ``$SRV.INFO`` publishes it (pydantic's JSON Schema).

The example is the smallest body the schema accepts: each required field (and each field with
a default or an example) filled with the schema's own default, example, const or first enum
value, else a plain value of its type that meets its bounds. It exercises the path a valid
request takes; a load test that needs realistic data gives a body.
"""

from __future__ import annotations

import json
import math
import random
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cliffracer_core.core import codec


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


# Bodies that vary: generators in the body, and padding to a size range.
#
# A string value that is wholly a generator, e.g. "{int:1..5}", is replaced by a fresh value for
# each request; an array whose first item is "{repeat:A..B}" becomes A to B copies of its second
# item, each generated anew; "{pad}" is the one string field filled so that the encoded body
# reaches a size drawn from the target's size range (--body-size). A string that starts with
# "{{" is sent with one brace less, for the rare literal that looks like a generator.

GENERATOR = re.compile(r"^\{(int|float|choice|text|uuid|pad|repeat)(?::(.*))?\}$", re.DOTALL)
SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|KiB|MiB)?\s*$", re.IGNORECASE)
BYTES_PER_UNIT = {"b": 1, "kb": 1000, "mb": 1000_000, "kib": 1024, "mib": 1024 * 1024}
# A padded body may not exceed this: NATS's default max_payload is 1 MiB, headers included.
MAX_BODY_SIZE = 64 * 1024 * 1024
# "{text:A..B}" at most this many characters.
MAX_TEXT = MAX_BODY_SIZE

Make = Callable[[random.Random], Any]


def parse_size(text: str) -> int:
    """Bytes in ``"100B"``, ``"50KB"`` (1,000), ``"2KiB"`` (1,024), ``"1MB"``; a bare number
    is bytes. ValueError names what is wrong."""
    match = SIZE.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a size (examples: 100B, 50KB, 2KiB, 1MB).")
    return int(float(match.group(1)) * BYTES_PER_UNIT[(match.group(2) or "b").lower()])


def parse_range(text: str, parse: Callable[[str], Any], what: str) -> tuple[Any, Any]:
    """``"A..B"`` (or one value, for both) read with ``parse``; ValueError unless A <= B."""
    low_text, separator, high_text = text.partition("..")
    try:
        low = parse(low_text.strip())
        high = parse(high_text.strip()) if separator else low
    except ValueError as error:
        raise ValueError(f"{what} {text!r}: {error}") from None
    if low > high:
        raise ValueError(f"{what} {text!r}: the low end is above the high end.")
    return low, high


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number") from None


def _decimal(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None


def _length(text: str) -> int:
    """A text length: characters, or a size (``1KB``), which for ASCII text is the same."""
    return parse_size(text) if not text.isdigit() else int(text)


class BodyTemplate:
    """A body with generators, made anew for each request (``make``).

    Making a body costs a JSON encoding (two with padding) and a few random draws; text comes
    as slices of one random block made at the start, so a 50 KB field costs a copy, not 50,000
    draws. ``smallest`` and ``largest`` are the sizes made so far (for the summary).
    """

    def __init__(self, value: Any, *, size: tuple[int, int] | None = None) -> None:
        self.pads = 0
        self.longest_text = 0
        self.make_value = self._compile(value)
        if self.pads > 1:
            raise PayloadError("give {pad} to one field only.")
        if self.pads and size is None:
            raise PayloadError("a {pad} field needs a size range (--body-size or body_size).")
        if size is not None and not self.pads:
            raise PayloadError(
                'a size range needs a string field to pad: mark it "{pad}", e.g. {"text": "{pad}"}.'
            )
        if size is not None and size[1] > MAX_BODY_SIZE:
            raise PayloadError(f"a body may be at most {MAX_BODY_SIZE:,} bytes.")
        self.size = size
        self.random = random.Random()
        block = max(self.longest_text, size[1] if size else 0)
        self.block = self.random.randbytes(block // 2 + 1).hex()[:block] if block else ""
        self.pad_length = 0
        self.smallest: int | None = None
        self.largest: int | None = None

    def seed(self, seed: int) -> None:
        """Make the same bodies in the same order again (``--seed``)."""
        self.random.seed(seed)

    def make(self) -> bytes:
        """A new body, encoded."""
        if self.size is None:
            body = codec.encode(self.make_value(self.random))
        else:
            low, high = self.size
            # Log-uniform: as many bodies between 100 B and 1 KB as between 5 KB and 50 KB, so
            # the range is spanned, not only its top decade.
            wanted = round(math.exp(self.random.uniform(math.log(max(1, low)), math.log(high))))
            self.pad_length = 0
            value = self.make_value(self.random)
            bare = len(codec.encode(value))
            self.pad_length = max(0, wanted - bare)
            body = codec.encode(self.make_value_again(value))
        length = len(body)
        if self.smallest is None or length < self.smallest:
            self.smallest = length
        if self.largest is None or length > self.largest:
            self.largest = length
        return body

    def make_value_again(self, value: Any) -> Any:
        """``value`` with its pad field filled to ``pad_length``."""
        return _fill(value, self.text(self.pad_length))

    def text(self, length: int) -> str:
        if length <= 0:
            return ""
        start = self.random.randrange(0, len(self.block) - length + 1)
        return self.block[start : start + length]

    def _compile(self, value: Any) -> Make:
        if isinstance(value, dict):
            parts = [(key, self._compile(item)) for key, item in value.items()]
            return lambda rng: {key: make(rng) for key, make in parts}
        if isinstance(value, list):
            head = value[0] if value else None
            match = GENERATOR.match(head) if isinstance(head, str) else None
            if match and match.group(1) == "repeat":
                if len(value) != 2:
                    raise PayloadError(f'["{head}", item]: a repeat takes exactly one item.')
                low, high = self._range(match.group(2), _whole_number, "{repeat}")
                if low < 0:
                    raise PayloadError("{repeat}: a count cannot be negative.")
                item = self._compile(value[1])
                return lambda rng: [item(rng) for _ in range(rng.randint(low, high))]
            items = [self._compile(item) for item in value]
            return lambda rng: [make(rng) for make in items]
        if isinstance(value, str):
            if value.startswith("{{"):
                literal = value[1:]
                return lambda rng: literal
            match = GENERATOR.match(value)
            if match:
                return self._generator(match.group(1), match.group(2), value)
        return lambda rng: value

    def _range(self, text: str | None, parse: Callable[[str], Any], what: str) -> tuple[Any, Any]:
        if not text:
            raise PayloadError(f"{what} needs a range, e.g. {what[:-1]}:1..5}}.")
        try:
            return parse_range(text, parse, what)
        except ValueError as error:
            raise PayloadError(str(error)) from None

    def _generator(self, kind: str, argument: str | None, written: str) -> Make:
        if kind == "int":
            low, high = self._range(argument, _whole_number, "{int}")
            return lambda rng: rng.randint(low, high)
        if kind == "float":
            low, high = self._range(argument, _decimal, "{float}")
            return lambda rng: rng.uniform(low, high)
        if kind == "text":
            low, high = self._range(argument, _length, "{text}")
            if high > MAX_TEXT:
                raise PayloadError(f"{written}: at most {MAX_TEXT:,} characters.")
            self.longest_text = max(self.longest_text, high)
            return lambda rng: self.text(rng.randint(low, high))
        if kind == "choice":
            options = [_option(option) for option in (argument or "").split(",")]
            if not argument:
                raise PayloadError("{choice} needs options, e.g. {choice:A,B,C}.")
            return lambda rng: rng.choice(options)
        if kind == "uuid":
            return lambda rng: str(uuid.UUID(int=rng.getrandbits(128), version=4))
        if kind == "pad":
            self.pads += 1
            return lambda rng: PAD
        raise PayloadError(f'{written}: a repeat goes first in an array: ["{written}", item].')


class _Pad(str):
    """The pad field's place until its length is known."""


PAD = _Pad("")


def _fill(value: Any, text: str) -> Any:
    if value is PAD:
        return text
    if isinstance(value, dict):
        return {key: _fill(item, text) for key, item in value.items()}
    if isinstance(value, list):
        return [_fill(item, text) for item in value]
    return value


def _option(text: str) -> Any:
    """A choice's option: its JSON value (``1``, ``true``, ``null``) or else the text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def is_template(value: Any) -> bool:
    """Whether ``value`` holds a generator (or an escaped literal) anywhere."""
    if isinstance(value, dict):
        return any(is_template(item) for item in value.values())
    if isinstance(value, list):
        return any(is_template(item) for item in value)
    return isinstance(value, str) and (value.startswith("{{") or bool(GENERATOR.match(value)))
