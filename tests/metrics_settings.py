"""Settings for the service processes of tests/test_metrics.py: the tests', plus ``metered``."""

from tests.settings import *  # noqa: F403

INSTALLED_APPS = [*INSTALLED_APPS, "tests.metricsapp"]  # noqa: F405
