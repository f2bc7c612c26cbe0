"""Which service apps exist and which a change concerns; a supervisor started without an app
list over a folder of service apps of the test's own, as ``make run`` starts it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from django.core.management import call_command
from watchfiles import Change

from cliffracer_core import call
from cliffracer_core.dev.reload import CodeFilter
from cliffracer_core.dev.service_apps import FRAMEWORK_DIRECTORY, ServiceApp, concerned_labels
from cliffracer_core.testing.polling import wait_for
from tests import test_supervisor
from tests.test_supervisor import assert_all_gone, pid_alive, ping

manage = test_supervisor.manage  # the fixture that runs manage.py commands


def write(path: Path, text: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A project folder holding ``treeapps/``, a folder of service apps (none yet)."""
    (tmp_path / "project" / "treeapps").mkdir(parents=True)
    return tmp_path / "project"


def test_a_change_concerns_its_app_and_every_app_that_imports_the_changed_module(tree: Path):
    apps = [ServiceApp(label, f"treeapps.{label}", tree / "treeapps" / label) for label in "abc"]
    for app in apps:
        write(app.path / "__init__.py")
        write(app.path / "schemas.py")
        write(app.path / "logic.py")
    write(tree / "treeapps" / "b" / "service.py", "from treeapps.a.schemas import Thing\n")
    write(tree / "treeapps" / "c" / "logic.py", "from treeapps.b import service\n")
    write(tree / "treeapps" / "c" / "service.py", "from . import logic\n")
    # Tests are not loaded by a service: what they import does not count.
    write(tree / "treeapps" / "a" / "tests" / "test_x.py", "from treeapps.c import logic\n")
    a, b, c = (tree / "treeapps" / label for label in "abc")

    assert concerned_labels({a / "logic.py"}, apps) == {"a"}
    assert concerned_labels({a / "schemas.py"}, apps) == {"a", "b", "c"}  # c through b.service
    assert concerned_labels({b / "service.py"}, apps) == {"b", "c"}
    assert concerned_labels({c / "logic.py"}, apps) == {"c"}
    assert concerned_labels({a / "__init__.py"}, apps) == {"a", "b", "c"}
    assert concerned_labels({c / "templates"}, apps) == {"c"}  # a folder in it
    assert concerned_labels({a / "logic.py", c / "logic.py"}, apps) == {"a", "c"}
    # Anything else concerns every app: settings, the framework (its own service apps too).
    assert concerned_labels({tree / "settings" / "settings.py"}, apps) is None
    assert concerned_labels({a / "logic.py", tree / "manage.py"}, apps) is None
    monitor = ServiceApp("monitor", "x.monitor", FRAMEWORK_DIRECTORY / "contrib" / "monitor")
    assert concerned_labels({monitor.path / "service.py"}, [*apps, monitor]) is None


def test_python_files_and_folders_count_but_nothing_in_hidden_folders(tree: Path):
    allowed = CodeFilter([tree])
    apps = tree / "treeapps"
    (apps / "shipping").mkdir()
    (apps / ".shipping-x1y2").mkdir()
    assert allowed(Change.modified, str(apps / "alpha" / "service.py"))
    assert allowed(Change.added, str(apps / "shipping"))  # a new app, moved into place
    assert allowed(Change.deleted, str(apps / "gone"))  # a folder removed
    assert not allowed(Change.added, str(apps / ".shipping-x1y2"))
    assert not allowed(Change.added, str(apps / ".shipping-x1y2" / "service.py"))
    assert not allowed(Change.modified, str(apps / "alpha" / "__pycache__" / "x.py"))
    assert not allowed(Change.modified, str(apps / "alpha" / "README.md"))
    assert not allowed(Change.deleted, str(apps / "alpha" / "notes.txt"))
    # Hidden parts above the watched folder do not count.
    assert CodeFilter([tree / ".hidden" / "project"])(
        Change.modified, str(tree / ".hidden" / "project" / "a.py")
    )


def test_a_supervisor_without_an_app_list_follows_the_service_apps(manage, tree: Path):
    apps = tree / "treeapps"
    call_command("startservice", "alpha", directory=apps)
    supervisor = manage(
        "runservices",
        "--reload",
        "--reload-dir",
        str(tree),
        DJANGO_SETTINGS_MODULE="tests.apps_tree_settings",
        TEST_APPS_DIR=str(apps),
        PYTHONPATH=str(tree),
    )
    alpha = supervisor.wait_running("alpha.1")

    # A new app, written into a hidden folder and moved into place: it starts, alone.
    write(apps / ".scratch" / "notes.py", "X = 1\n")
    call_command("startservice", "beta", directory=apps)
    beta = supervisor.wait_running("beta.1")
    assert call("beta.hello", {"name": "Ada"}, timeout=10) == {"message": "Hello, Ada!"}
    reloads = [line for line in supervisor.output().splitlines() if "Code changed (" in line]
    assert reloads, supervisor.output()
    assert all("starting beta.1 (new service app beta)" in line for line in reloads), reloads
    assert not any("/." in line or "(." in line for line in reloads), reloads
    assert [status.state for status in supervisor.statuses("alpha.1")] == ["starting", "running"]

    # A change inside one app reloads that app alone.
    write(apps / "alpha" / "logic.py", "VALUE = 2\n")
    alpha_again = supervisor.wait_running("alpha.1", other_than={alpha})
    assert "Code changed (treeapps/alpha/logic.py); reloading alpha.1." in supervisor.output()
    assert [status.state for status in supervisor.statuses("beta.1")] == ["starting", "running"]
    assert pid_alive(beta) and not pid_alive(alpha)

    # An app removed: its instance is drained and forgotten; the others run on.
    shutil.rmtree(apps / "beta")
    supervisor.wait_until(lambda: supervisor.state("beta.1") == "stopped")
    assert "stopping beta.1 (service app beta is gone)" in supervisor.output()
    assert_all_gone({beta})
    wait_for(lambda: ping("beta") == [], what="beta to stop answering")
    assert [reply["name"] for reply in ping("alpha")] == ["alpha"]
    assert supervisor.statuses("alpha.1")[-1].pid == alpha_again

    assert supervisor.stop() == 0
    assert_all_gone({alpha_again})
