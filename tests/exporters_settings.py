"""Settings for service processes with push exporters: ``tests.metrics_settings`` plus the
exporters named (as JSON) in ``TEST_METRICS_EXPORTERS``."""

import json
import os

from tests.metrics_settings import *  # noqa: F403

CLIFFRACER = {  # noqa: F405
    **CLIFFRACER,  # noqa: F405
    "METRICS_EXPORTERS": json.loads(os.environ.get("TEST_METRICS_EXPORTERS", "[]")),
}
