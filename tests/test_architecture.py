"""The layers of docs/architecture.md, checked on the import graph of ``cliffracer_core``.

Every module's imports are read from its source (top-level and inside functions alike) and
each is placed in its part: the core, the transport seam, a transport backend, an integration
(``contrib.<app>``), the developer tools, the testing helpers, or the root package (the public
API and the Django app). The rules are the architecture's; a violation names the module and
the import.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = "cliffracer_core"
SOURCE = Path(__file__).resolve().parents[1] / PACKAGE
# The transport backends; everything else of ``transports`` is the seam (the base class, the
# subject matcher, the handler that loads a backend by its import string).
BACKENDS = ("nats", "memory", "amqp", "redis", "sqs")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SOURCE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports (``from a import b`` counts ``a`` and ``a.b``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                origin = ".".join([*base, node.module] if node.module else base)
            else:
                origin = node.module or ""
            found.add(origin)
            found.update(f"{origin}.{alias.name}" for alias in node.names)
    return found


def part_of(module: str) -> str | None:
    """The part of the architecture ``module`` belongs to (None: not Cliffracer's)."""
    if module != PACKAGE and not module.startswith(f"{PACKAGE}."):
        return None
    parts = module.split(".")
    if len(parts) == 1:
        return "root"
    second = parts[1]
    if second == "core":
        return "core"
    if second == "transports":
        if len(parts) > 2 and parts[2] in BACKENDS:
            return f"transports.{parts[2]}"
        return "seam"
    if second == "contrib":
        return f"contrib.{parts[2]}" if len(parts) > 2 else "contrib"
    if second in ("dev", "testing"):
        return second
    return "root"


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    """Each module of cliffracer_core and the modules it imports."""
    modules: dict[str, set[str]] = {}
    for path in SOURCE.rglob("*.py"):
        if "migrations" in path.parts:
            continue
        modules[module_name(path)] = imports_of(path)
    return modules


def violations(graph: dict[str, set[str]], part: str, allowed: set[str]) -> list[str]:
    found = []
    for module, imported in sorted(graph.items()):
        if part_of(module) != part:
            continue
        for name in sorted(imported):
            other = part_of(name)
            if other is not None and other != part and other not in allowed:
                found.append(f"{module} imports {name} ({other})")
    return found


def test_only_the_nats_backend_imports_nats(graph):
    found = [
        f"{module} imports {name}"
        for module, imported in sorted(graph.items())
        if part_of(module) != "transports.nats"
        for name in sorted(imported)
        if name == "nats" or name.startswith("nats.")
    ]
    assert found == []


def test_only_the_redis_backend_imports_redis_py(graph):
    found = [
        f"{module} imports {name}"
        for module, imported in sorted(graph.items())
        if part_of(module) != "transports.redis"
        for name in sorted(imported)
        if name == "redis" or name.startswith("redis.")
    ]
    assert found == []


def test_the_core_imports_no_backend_no_integration_and_no_tool(graph):
    assert violations(graph, "core", {"seam"}) == []


def test_the_seam_imports_the_core_only(graph):
    assert violations(graph, "seam", {"core"}) == []


def test_only_the_amqp_backend_imports_aio_pika(graph):
    libraries = ("aio_pika", "aiormq", "pamqp")
    found = [
        f"{module} imports {name}"
        for module, imported in sorted(graph.items())
        if part_of(module) != "transports.amqp"
        for name in sorted(imported)
        if name.split(".")[0] in libraries
    ]
    assert found == []


def test_only_the_sqs_backend_imports_aiobotocore(graph):
    # botocore itself is shared: the CloudWatch exporter's boto3 is built on it too.
    found = [
        f"{module} imports {name}"
        for module, imported in sorted(graph.items())
        if part_of(module) != "transports.sqs"
        for name in sorted(imported)
        if name.split(".")[0] == "aiobotocore"
    ]
    assert found == []


@pytest.mark.parametrize("backend", [f"transports.{backend}" for backend in BACKENDS])
def test_a_backend_imports_the_core_and_the_seam_only(graph, backend):
    assert violations(graph, backend, {"core", "seam"}) == []


def test_integrations_import_the_core_and_the_seam_not_the_public_facade(graph):
    found = []
    for part in sorted({part_of(module) for module in graph} - {None}):
        if part.startswith("contrib."):
            others = {p for p in map(part_of, graph) if p and p.startswith("contrib.")}
            found += violations(graph, part, {"core", "seam", *others})
    assert found == []


def test_no_import_cycle_between_parts(graph):
    # The seam belongs with the core: the core talks through it and the seam raises the core's
    # errors; they are one layer, which every backend implements and no part below reaches past.
    def layer(name: str) -> str | None:
        part = part_of(name)
        return "core" if part == "seam" else part

    edges: dict[str, set[str]] = defaultdict(set)
    for module, imported in graph.items():
        source = layer(module)
        for name in imported:
            target = layer(name)
            # The root package is the public facade: it may import every part; a part that
            # imports it back would make a cycle, so the root counts as a part too.
            if target is not None and target != source:
                edges[source].add(target)  # type: ignore[index]
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        for target in sorted(edges.get(node, ())):
            if target in path:
                cycle = path[path.index(target) :] + [target]
                if min(cycle[:-1]) == cycle[0]:  # each cycle once
                    cycles.append(" -> ".join(cycle))
            else:
                visit(target, [*path, target])

    for start in sorted(edges):
        visit(start, [start])
    assert cycles == []
