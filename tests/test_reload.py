"""``runservice --reload`` and ``runservices --reload``: drain and restart on a code change."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cliffracer_core import call
from cliffracer_core.dev.reload import watched_paths, without_reload_options
from tests import test_supervisor
from tests.test_supervisor import assert_all_gone, ping

manage = test_supervisor.manage  # the fixture that runs manage.py commands


@pytest.fixture
def code(tmp_path: Path) -> Path:
    """A directory to watch, holding one Python module the test changes."""
    directory = tmp_path / "code"
    directory.mkdir()
    (directory / "module.py").write_text("VALUE = 1\n")
    return directory


def instance_ids() -> set[str]:
    return {reply["id"] for reply in ping("testservice")}


def test_reload_options_are_dropped_from_the_child_command_line():
    arguments = ["python", "manage.py", "runservice", "orders", "--reload", "--reload-dir", "a"]
    arguments += ["--reload-dir=b", "--grace-period", "3"]
    assert without_reload_options(arguments) == [
        "python",
        "manage.py",
        "runservice",
        "orders",
        "--grace-period",
        "3",
    ]


def test_only_code_is_watched(tmp_path: Path):
    for name in ("apps", "settings", ".venv", ".git", "var", "__pycache__", "env", "x.egg-info"):
        (tmp_path / name).mkdir()
    (tmp_path / "env" / "pyvenv.cfg").touch()
    (tmp_path / "manage.py").touch()
    (tmp_path / "README.md").touch()
    assert [path.name for path in watched_paths(tmp_path)] == ["apps", "manage.py", "settings"]


def test_runservice_reload_drains_and_restarts_the_service(manage, code):
    parent = manage("runservice", "testservice", "--reload", "--reload-dir", str(code))
    parent.wait_until(lambda: " serving " in parent.output())
    parent.wait_until(lambda: len(instance_ids()) == 1)
    (first,) = instance_ids()

    (code / "module.py").write_text("VALUE = 2\n")
    parent.wait_until(lambda: (ids := instance_ids()) and first not in ids and len(ids) == 1)
    output = parent.output()
    assert "Code changed (module.py); reloading runservice testservice." in output
    assert "Service testservice stopped." in output  # drained, not killed
    children = {
        int(pid) for pid in re.findall(r"Started runservice testservice \(pid (\d+)\)", output)
    }
    assert len(children) == 2
    assert call("testservice.echo", {"text": "reloaded"}) == {"text": "reloaded"}

    assert parent.stop() == 0
    assert_all_gone(children)
    assert instance_ids() == set()


def test_runservices_reload_drains_and_restarts_every_instance(manage, code):
    supervisor = manage("runservices", "testservice=2", "--reload", "--reload-dir", str(code))
    before = {supervisor.wait_running("testservice.1"), supervisor.wait_running("testservice.2")}
    supervisor.wait_until(lambda: len(instance_ids()) == 2)
    first_ids = instance_ids()

    (code / "module.py").write_text("VALUE = 2\n")
    supervisor.wait_until(lambda: "Code changed (module.py)" in supervisor.output())
    after = {
        supervisor.wait_running("testservice.1", other_than=before),
        supervisor.wait_running("testservice.2", other_than=before),
    }
    supervisor.wait_until(lambda: len(ids := instance_ids()) == 2 and not ids & first_ids)
    output = supervisor.output()
    assert (
        len(re.findall(r"^testservice\.\d +\| .*Service testservice stopped\.", output, re.M)) == 2
    )
    # A reload is not a crash.
    assert supervisor.statuses("testservice.1")[-1].restarts == 0
    assert supervisor.stop() == 0
    assert_all_gone(before | after)


def test_a_failed_service_starts_again_when_the_code_changes(manage, code, tmp_path):
    marker = tmp_path / "crash"
    marker.touch()
    supervisor = manage(
        "runservices",
        "testservice",
        "--max-restarts",
        "0",
        "--reload",
        "--reload-dir",
        str(code),
        TESTSERVICE_CRASH_IF_EXISTS=str(marker),
    )
    supervisor.wait_until(lambda: supervisor.state("testservice.1") == "failed")
    marker.unlink()  # "fix the code"
    (code / "module.py").write_text("VALUE = 2\n")
    supervisor.wait_running("testservice.1")
    assert supervisor.stop() == 0
    assert_all_gone(supervisor.child_pids())
