"""``manage.py startservice``: refusals write nothing; a scaffold is served and tested at once."""

import os
import shutil
import subprocess
import sys
import uuid
from importlib.util import find_spec
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from cliffracer_core import call
from cliffracer_core.testing.plugin import project_root

APPS = project_root() / "apps"
SCAFFOLD_FILES = {
    "__init__.py",
    "admin.py",
    "api.py",
    "apps.py",
    "migrations/__init__.py",
    "models.py",
    "schemas.py",
    "service.py",
    "tests/__init__.py",
    "tests/test_service.py",
}


def run_manage(*arguments: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *arguments],
        cwd=project_root(),
        env=dict(os.environ, DJANGO_SETTINGS_MODULE="settings.settings"),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def files_under(directory: Path) -> set[str]:
    return {
        path.relative_to(directory).as_posix()
        for path in directory.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("my-service", "not a valid Python identifier"),
        ("2fast", "not a valid Python identifier"),
        ("class", "a Python keyword"),
        ("Shipping", "must be at most 30 lowercase"),
        ("_shipping", "must be at most 30 lowercase"),
        ("a" * 31, "must be at most 30 lowercase"),
        ("orders", "label of an installed app"),
        ("auth", "label of an installed app"),
        ("json", "importable Python module"),
        ("django", "importable Python module"),
    ],
)
def test_a_bad_name_is_refused_and_nothing_is_written(tmp_path, name, reason):
    apps_before = sorted(APPS.iterdir())
    with pytest.raises(CommandError, match=reason) as raised:
        call_command("startservice", name, directory=tmp_path)
    assert raised.value.returncode == 2
    assert "\n" not in str(raised.value)
    assert list(tmp_path.iterdir()) == []
    assert sorted(APPS.iterdir()) == apps_before


def test_an_existing_folder_is_refused_and_left_alone(tmp_path):
    (tmp_path / "shipping").mkdir()
    (tmp_path / "shipping" / "notes.txt").write_text("mine")
    with pytest.raises(CommandError, match="already exists"):
        call_command("startservice", "shipping", directory=tmp_path)
    assert files_under(tmp_path) == {"shipping/notes.txt"}


def test_a_directory_whose_name_is_not_a_package_name_is_refused(tmp_path):
    directory = tmp_path / "not-a-package"
    directory.mkdir()
    with pytest.raises(CommandError, match="its name is not an identifier"):
        call_command("startservice", "shipping", directory=directory)
    assert list(directory.iterdir()) == []


def test_a_refusal_is_one_line_on_stderr_and_exit_code_2():
    result = run_manage("startservice", "my-service")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "CommandError: 'my-service' is not a valid Python identifier."
    ]


def test_scaffolds_every_file_of_a_service_app(tmp_path):
    package = tmp_path / "scaffolded"
    package.mkdir()
    call_command("startservice", "shipping_rates", directory=package)

    app = package / "shipping_rates"
    assert files_under(app) == SCAFFOLD_FILES
    assert [path.name for path in package.iterdir()] == ["shipping_rates"]  # no staging left
    apps_py = (app / "apps.py").read_text()
    assert "class ShippingRatesConfig(ServiceAppConfig):" in apps_py
    assert 'name = "scaffolded.shipping_rates"' in apps_py
    assert 'label = "shipping_rates"' in apps_py
    assert "class ShippingRatesService(Service):" in (app / "service.py").read_text()
    for path in app.rglob("*.py"):
        compile(path.read_text(), str(path), "exec")


def test_scaffold_then_serve_then_test(nats_server, runservice_process):
    """The real thing: a new folder in apps/ is installed, served and tested without edits."""
    # As long as a name may be, so the lint check below covers the longest lines.
    name = f"zz_scaffold_test_{uuid.uuid4().hex[:13]}"
    assert len(name) == 30
    app = APPS / name
    try:
        created = run_manage("startservice", name)
        assert created.returncode == 0, created.stderr
        assert files_under(app) == SCAFFOLD_FILES

        checked = run_manage("check")
        assert checked.returncode == 0, checked.stderr
        if find_spec("ruff") is not None:
            for ruff in (["check"], ["format", "--check"]):
                linted = subprocess.run(
                    [sys.executable, "-m", "ruff", *ruff, str(app)],
                    cwd=project_root(),
                    capture_output=True,
                    text=True,
                )
                assert linted.returncode == 0, linted.stdout + linted.stderr

        process = runservice_process(name)
        assert call(f"{name}.hello", {"name": "Ada"}) == {"message": "Hello, Ada!"}
        process.terminate()
        assert process.wait(30) == 0
        assert f"Service {name} stopped." in process.output()

        tested = subprocess.run(
            [sys.executable, "-m", "pytest", f"apps/{name}", "-q", "-p", "no:cacheprovider"],
            cwd=project_root(),
            env=dict(os.environ, DJANGO_SETTINGS_MODULE="settings.settings"),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert tested.returncode == 0, tested.stdout + tested.stderr
        assert "3 passed" in tested.stdout
    finally:
        shutil.rmtree(app, ignore_errors=True)
    assert not app.exists()
