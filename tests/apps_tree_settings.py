"""Settings for processes over a test's own folder of service apps: the framework's apps and
the packages in the folder ``TEST_APPS_DIR`` names (its parent on ``PYTHONPATH``), no others,
so that a supervisor given no app list runs those alone."""

import os
from pathlib import Path

from settings.settings import discover_apps
from tests.settings import *  # noqa: F403

TEST_APPS_DIR = Path(os.environ["TEST_APPS_DIR"])
# The example's apps (and the live page they serve) and the monitor would run as services too.
EXCLUDED = ("apps.", "tests.serviceapp", "cliffracer_core.contrib.monitor")
INSTALLED_APPS = [
    *(app for app in INSTALLED_APPS if not app.startswith(EXCLUDED)),  # noqa: F405
    *discover_apps(TEST_APPS_DIR),
]
ROOT_URLCONF = "tests.apps_tree_urls"
