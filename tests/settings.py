"""Settings for service processes the framework tests start: the project's, plus a test app."""

from settings.settings import *  # noqa: F403

INSTALLED_APPS = [*INSTALLED_APPS, "tests.serviceapp"]  # noqa: F405
