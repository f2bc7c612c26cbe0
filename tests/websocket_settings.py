"""Settings for web processes the WebSocket tests start: the tests' own, plus overrides.

``CLIFFRACER_TEST_OVERRIDES`` (JSON) replaces keys of ``CLIFFRACER``, so a test can give a
real daphne process its own subject rules and limits.
"""

import json
import os

from tests.settings import *  # noqa: F403

CLIFFRACER = {  # noqa: F405
    **CLIFFRACER,  # noqa: F405
    **json.loads(os.environ.get("CLIFFRACER_TEST_OVERRIDES") or "{}"),
}
