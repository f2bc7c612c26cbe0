"""What a service publishes and calls: as it declares it, and as its app's code shows it.

A service declares its outgoing traffic (``Service.publishes``, ``Service.calls_to``, and its
``streams``, whose subjects it publishes); broker permissions are generated from that
declaration alone, so that what a service may do is reviewable in one place. The code is read
too (its source, never run): every ``publish``, ``apublish``, ``publish_on_commit``, ``call``
and ``acall`` (also as ``self.``-methods) whose subject is a string literal, or an f-string
whose leading part is literal, in the app's modules. Such a subject that the declaration does
not cover is a system check warning (cliffracer.W040): deployed under generated permissions,
that publish would be refused by the broker. A subject computed some other way is not seen.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cliffracer_core.core.settings import cliffracer_settings
from cliffracer_core.transports.subjects import covers

if TYPE_CHECKING:
    from cliffracer_core.core.service import Service

PUBLISHERS = {"publish", "apublish", "publish_on_commit"}
CALLERS = {"call", "acall"}
# Modules of an app that are not its running code.
SKIPPED_PARTS = {"tests", "migrations", "management"}


@dataclass(frozen=True)
class Found:
    """A publish or call in an app's code: what kind, to which subject (a pattern when the
    code computes its tail), and where."""

    kind: str  # "publish" or "call"
    subject: str
    path: Path
    line: int


def declared_publishes(service_class: type[Service]) -> list[str]:
    """Subjects ``service_class`` publishes: its ``publishes`` and its streams' subjects."""
    subjects = list(service_class.publishes)
    for options in service_class.streams.values():
        subjects.extend(options.get("subjects", ()))
    return list(dict.fromkeys(subjects))


def declared_calls(service_class: type[Service]) -> list[str]:
    """Endpoints ``service_class`` calls, as RPC subjects (``rpc.inventory.reserve_stock``)."""
    prefix = str(cliffracer_settings.RPC_SUBJECT_PREFIX)
    return [f"{prefix}.{endpoint}" for endpoint in service_class.calls_to]


def found_in(directory: Path) -> list[Found]:
    """Every publish and call with a readable subject in the modules under ``directory``."""
    found: list[Found] = []
    for path in sorted(directory.rglob("*.py")):
        if SKIPPED_PARTS & set(path.relative_to(directory).parts[:-1]):
            continue
        try:
            tree = ast.parse(path.read_text(), filename=str(path))
        except (OSError, SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            name = _function_name(node.func)
            kind = "publish" if name in PUBLISHERS else "call" if name in CALLERS else None
            subject = _subject(node.args[0])
            if kind is None or subject is None:
                continue
            if kind == "call":
                subject = f"{cliffracer_settings.RPC_SUBJECT_PREFIX}.{subject}"
            found.append(Found(kind, subject, path, node.lineno))
    return found


def undeclared(service_class: type[Service], directory: Path) -> list[Found]:
    """What the code under ``directory`` publishes or calls that ``service_class`` does not
    declare."""
    publishes = declared_publishes(service_class)
    calls = declared_calls(service_class)
    missing = []
    for item in found_in(directory):
        allowed = publishes if item.kind == "publish" else calls
        if not any(covers(pattern, item.subject) for pattern in allowed):
            missing.append(item)
    return missing


def _function_name(function: ast.expr) -> str | None:
    if isinstance(function, ast.Name):
        return function.id
    if isinstance(function, ast.Attribute):
        return function.attr
    return None


def _subject(argument: ast.expr) -> str | None:
    """A literal subject; for an f-string, its pattern (``f"orders.{status}"`` is
    ``orders.*``: each computed part counts as whole tokens), if its first token is literal."""
    if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
        return argument.value or None
    if not isinstance(argument, ast.JoinedStr):
        return None
    pieces = [value.value if isinstance(value, ast.Constant) else "\0" for value in argument.values]
    tokens = ["*" if "\0" in token else token for token in "".join(map(str, pieces)).split(".")]
    return ".".join(tokens) if tokens and tokens[0] != "*" else None
