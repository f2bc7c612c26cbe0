"""Which service apps exist, and which of them a code change concerns.

The project's settings find its apps when they load (``discover_apps`` in
``settings/settings.py``), so a process knows the apps that existed when it started and no
others. A supervisor that must notice a service app added or removed while it runs asks a new
process: ``manage.py runservices --list`` prints ``service_apps()``, the function that also
decides what ``runservices`` runs when no app is named.

A changed file inside a service app's folder concerns that app and the apps with a module that
imports it, directly or through other modules (read from their ``import`` statements: a change
to ``apps/inventory/schemas.py`` reloads ``orders`` too, which imports it, while one to
``apps/inventory/logic.py`` reloads ``inventory`` alone). Any other change, in
``cliffracer_core/`` (its own service apps included), in ``settings/`` or elsewhere, concerns
every app.
"""

from __future__ import annotations

import ast
import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cliffracer_core.core.apps import service_app_configs
from cliffracer_core.dev.reload import code_changes, relative_names
from cliffracer_core.dev.supervisor import Reload, describe_changes, describe_exit

# The framework's folder: its service apps (the monitor) are imported by the framework itself,
# so a change there reloads everything.
FRAMEWORK_DIRECTORY = Path(__file__).resolve().parents[1]
# How long listing the service apps in a new process may take before it counts as failed.
LISTING_TIMEOUT = 60.0


@dataclass(frozen=True)
class ServiceApp:
    """An installed service app that declares a Service: what ``runservices`` runs."""

    label: str
    package: str
    path: Path

    def as_json(self) -> str:
        return json.dumps({"label": self.label, "package": self.package, "path": str(self.path)})

    @classmethod
    def from_json(cls, line: str) -> ServiceApp:
        data = json.loads(line)
        return cls(data["label"], data["package"], Path(data["path"]))


class ListingFailed(Exception):
    """The new process that lists the service apps failed (a syntax error in an app, say)."""


def service_apps() -> list[ServiceApp]:
    """The service apps this process knows that declare a Service, in INSTALLED_APPS order."""
    return [
        ServiceApp(config.label, config.name, Path(config.path).resolve())
        for config in service_app_configs()
        if config.service_class is not None
    ]


def list_service_apps(
    manage: Path, *, environment: dict[str, str] | None = None, directory: Path | None = None
) -> list[ServiceApp]:
    """``service_apps()`` as a new process finds them (``manage.py runservices --list``)."""
    try:
        result = subprocess.run(
            [sys.executable, str(manage), "runservices", "--list"],
            env=environment,
            cwd=directory,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=LISTING_TIMEOUT,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise ListingFailed(str(error)) from error
    if result.returncode != 0:
        raise ListingFailed(describe_exit(result.returncode, result.stderr.splitlines()))
    return [ServiceApp.from_json(line) for line in result.stdout.splitlines() if line.strip()]


def module_files(app: ServiceApp) -> dict[str, Path]:
    """The app's modules by dotted name, except its tests (no service process imports them)."""
    modules = {}
    for path in sorted(app.path.rglob("*.py")):
        parts = path.relative_to(app.path).parts
        if any(part.startswith(".") or part in ("__pycache__", "tests") for part in parts):
            continue
        modules[module_name(app, path)] = path
    return modules


def module_name(app: ServiceApp, path: Path) -> str:
    """The dotted name of a file (or folder) in an app's folder."""
    parts = list(path.relative_to(app.path).parts)
    if parts and parts[-1].endswith(".py"):
        parts[-1] = parts[-1].removesuffix(".py")
    if parts and parts[-1] == "__init__":
        parts.pop()
    return ".".join([app.package, *parts])


def imported_names(path: Path, module: str) -> set[str]:
    """The absolute names a module's ``import`` statements name (relative ones resolved)."""
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError, OSError):
        return set()  # the service shows the error when it starts
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(part for part in [*anchor, base] if part)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def importers(apps: Sequence[ServiceApp]) -> dict[str, set[str]]:
    """For each module of the apps, the modules of the apps that import it, directly or not.

    Importing ``a.b.c`` runs ``a/__init__.py`` and ``a/b/__init__.py`` too, so it counts as
    importing each of them.
    """
    files = {name: path for app in apps for name, path in module_files(app).items()}
    imported_by: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        for imported in imported_names(path, name):
            parts = imported.split(".")
            for length in range(1, len(parts) + 1):
                prefix = ".".join(parts[:length])
                if prefix in imported_by and prefix != name:
                    imported_by[prefix].add(name)
    closure: dict[str, set[str]] = {}
    for name in imported_by:
        found: set[str] = set()
        pending = [name]
        while pending:
            for importer in imported_by[pending.pop()] - found - {name}:
                found.add(importer)
                pending.append(importer)
        closure[name] = found
    return closure


def concerned_labels(changed: Iterable[Path], apps: Sequence[ServiceApp]) -> set[str] | None:
    """The labels of the apps a change concerns, or None when it concerns every app.

    A file in an app's folder concerns the app, and every app with a module that imports it.
    """
    own = [app for app in apps if not app.path.is_relative_to(FRAMEWORK_DIRECTORY)]
    labels: set[str] = set()
    changed_modules: set[str] = set()
    for path in changed:
        app = next((app for app in own if path.is_relative_to(app.path)), None)
        if app is None:
            return None
        labels.add(app.label)
        changed_modules.add(module_name(app, path))
    imported_by = importers(own)
    owners = sorted(own, key=lambda app: len(app.package), reverse=True)
    for module in changed_modules:
        for importer in imported_by.get(module, ()):
            owner = next(app for app in owners if f"{importer}.".startswith(f"{app.package}."))
            labels.add(owner.label)
    return labels


def merged(*lists: Sequence[ServiceApp]) -> list[ServiceApp]:
    """The apps of every list, each label once (the first list's app wins)."""
    apps: dict[str, ServiceApp] = {}
    for app in (app for apps_list in lists for app in apps_list):
        apps.setdefault(app.label, app)
    return list(apps.values())


async def app_reloads(
    directories: Sequence[Path],
    stop: asyncio.Event,
    *,
    apps: Sequence[ServiceApp],
    listing: Callable[[], list[ServiceApp]] | None = None,
) -> AsyncIterator[Reload]:
    """Turn each code change into a ``Reload`` for the supervisor.

    ``apps`` are the service apps known at the start. With ``listing`` (a supervisor started
    without an app list), the apps are listed again after each change and the ``Reload`` names
    the ones that should run now.
    """
    known = list(apps)
    async for changed in code_changes(directories, stop):
        shown = describe_changes(relative_names(changed, directories))
        if listing is None:
            yield Reload(changed=shown, restart=concerned_labels(changed, known))
            continue
        try:
            current = await asyncio.to_thread(listing)
        except ListingFailed as error:
            yield Reload(
                changed=shown,
                restart=concerned_labels(changed, known),
                note=f"Could not list the service apps ({error}); running the same ones.",
            )
            continue
        # A removed app's files map to it through the list from before the change.
        concerned = concerned_labels(changed, merged(current, known))
        known = current
        yield Reload(changed=shown, restart=concerned, services=[app.label for app in current])
