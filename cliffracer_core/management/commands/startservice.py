"""``manage.py startservice <name>``: scaffold a working service app under ``apps/``.

The files come from ``cliffracer_core/dev/scaffold/`` (``*.py-tpl``, so neither Python nor ruff
treats them as code), rendered with Django's template engine as ``startapp`` does. Everything
is rendered and written into a hidden folder first and moved into place last, so a refusal or a
failure leaves nothing behind.
"""

from __future__ import annotations

import keyword
import os
import re
import shutil
import tempfile
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.template import Context, Engine

from cliffracer_core.dev.console import USAGE_ERROR

SCAFFOLD = Path(__file__).resolve().parents[2] / "dev" / "scaffold"
TEMPLATE_SUFFIX = "-tpl"
# Lowercase because the name is at once the app label, the service's name on NATS (subjects
# are case-sensitive: "Orders" and "orders" would be two services) and the prefix of its
# database tables; starting with a letter because the settings skip folders starting with "_";
# at most 30 characters, which keeps table names short and the generated code within 100 columns.
NAME = re.compile(r"[a-z][a-z0-9_]{0,29}")


class Command(BaseCommand):
    help = (
        "Create a service app: apps/<name>/ with a sample RPC, an event handler and a test "
        "that calls the RPC over NATS. `runservice <name>` serves it at once."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "name",
            help="The app label and service name: at most 30 lowercase letters, digits and "
            "underscores, starting with a letter.",
        )
        parser.add_argument(
            "--directory",
            type=Path,
            help="The folder of service apps (default: apps/ in the project). The app's "
            "dotted name is <folder name>.<name>.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        name = options["name"]
        directory: Path = options["directory"] or default_directory()
        check_name(name)
        if not directory.is_dir():
            raise CommandError(f"{directory} is not a directory.", returncode=USAGE_ERROR)
        if not directory.resolve().name.isidentifier():
            raise CommandError(
                f"{directory} cannot hold Python packages: its name is not an identifier.",
                returncode=USAGE_ERROR,
            )
        target = directory / name
        if target.exists() or target.is_symlink():
            raise CommandError(f"{target} already exists.", returncode=USAGE_ERROR)

        context = template_context(name, package=f"{directory.resolve().name}.{name}")
        files = render(context)
        write(files, target)
        shown = os.path.relpath(target) if target.is_relative_to(Path.cwd()) else target
        self.stdout.write(
            f"Created the service app {context['package']} in {shown}/. Try:\n"
            f"  manage.py runservice {name}\n"
            f'  manage.py call {name}.hello \'{{"name": "Ada"}}\'\n'
            f"  pytest {shown}"
        )


def default_directory() -> Path:
    base = getattr(settings, "BASE_DIR", None)
    return Path(base) / "apps" if base else Path.cwd() / "apps"


def check_name(name: str) -> None:
    """Refuse a name that cannot be a service app's label, with a one-line reason."""
    if not name.isidentifier() or keyword.iskeyword(name):
        reason = "a Python keyword" if keyword.iskeyword(name) else "not a valid Python identifier"
        raise CommandError(f"{name!r} is {reason}.", returncode=USAGE_ERROR)
    if not NAME.fullmatch(name):
        raise CommandError(
            f"{name!r} must be at most 30 lowercase letters, digits and underscores, starting "
            f"with a letter (try {suggestion(name)!r}).",
            returncode=USAGE_ERROR,
        )
    if name in {config.label for config in apps.get_app_configs()}:
        raise CommandError(
            f"{name!r} is the label of an installed app; choose another name.",
            returncode=USAGE_ERROR,
        )
    if find_spec(name) is not None:
        raise CommandError(
            f"{name!r} is the name of an importable Python module; choose another name.",
            returncode=USAGE_ERROR,
        )


def suggestion(name: str) -> str:
    snake = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower().lstrip("_")[:30]
    return snake if NAME.fullmatch(snake) else "my_service"


def template_context(name: str, *, package: str) -> dict[str, str]:
    return {
        "name": name,
        "package": package,
        "camel_case_name": "".join(part.capitalize() for part in name.split("_")),
        "verbose_name": name.replace("_", " ").capitalize(),
    }


def render(context: dict[str, str]) -> dict[Path, str]:
    """Every file of the scaffold, by its path inside the new app, rendered."""
    engine = Engine()
    files = {}
    for template in sorted(SCAFFOLD.rglob(f"*{TEMPLATE_SUFFIX}")):
        relative = template.relative_to(SCAFFOLD)
        path = relative.with_name(relative.name.removesuffix(TEMPLATE_SUFFIX))
        source = template.read_text(encoding="utf-8")
        files[path] = engine.from_string(source).render(Context(context, autoescape=False))
    return files


def write(files: dict[Path, str], target: Path) -> None:
    """Write ``files`` into a hidden sibling folder, then move it to ``target`` at once."""
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        for path, content in files.items():
            destination = staging / path
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_text(content, encoding="utf-8")
        staging.chmod(0o777 & ~_umask())
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current
