"""When runsystem restarts the web server and the Celery worker: the service apps changed."""

from __future__ import annotations

import os
import shutil
from functools import partial
from pathlib import Path

from django.core.management import call_command

from cliffracer_core.dev.service_apps import list_service_apps
from cliffracer_core.dev.webreload import ServiceAppsWatch, apps_change
from cliffracer_core.testing.plugin import project_root
from cliffracer_core.testing.polling import wait_for


def test_a_change_of_the_service_apps_is_named():
    assert apps_change(["orders"], ["orders"]) is None
    assert apps_change(["orders", "inventory"], ["inventory", "orders"]) is None
    assert apps_change(["orders"], ["orders", "shipping"]) == "Service app shipping added"
    assert apps_change(["a", "b"], []) == "Service apps a, b removed"
    assert apps_change(["a"], ["b"]) == "Service app b added and service app a removed"


def test_the_watch_reports_service_apps_added_and_removed(tmp_path: Path):
    project = tmp_path / "project"
    apps = project / "treeapps"
    apps.mkdir(parents=True)
    call_command("startservice", "alpha", directory=apps)
    environment = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.apps_tree_settings",
        "TEST_APPS_DIR": str(apps),
        "PYTHONPATH": os.pathsep.join([str(project), str(project_root())]),
    }
    listing = partial(
        list_service_apps,
        project_root() / "manage.py",
        environment=environment,
        directory=project_root(),
    )
    assert [app.label for app in listing()] == ["alpha"]
    watch = ServiceAppsWatch([project], ["alpha"], listing=listing)
    watch.start()
    try:
        # The watch begins in its thread a moment after start: change code until it is seen.
        def code_change_seen() -> bool:
            (apps / "alpha" / "logic.py").write_text(f"VALUE = {watch.changes_seen}\n")
            return watch.changes_seen > 0

        wait_for(code_change_seen, 60, what="a change to be seen", interval=0.5)
        assert watch.take_change() is None  # the same service apps: no news
        call_command("startservice", "beta", directory=apps)
        assert wait_for(watch.take_change, 60, what="beta") == "Service app beta added"
        shutil.rmtree(apps / "beta")
        assert wait_for(watch.take_change, 60, what="beta gone") == "Service app beta removed"
    finally:
        watch.stop()
    assert watch.take_change() is None
