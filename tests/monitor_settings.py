"""Settings of a monitor process that samples every second (the tests' own settings besides),
so that a test sees the traffic between two samples without waiting the default 10 s."""

from tests.settings import *  # noqa: F403

CLIFFRACER = {**CLIFFRACER, "MONITOR": {"SAMPLE_INTERVAL": 1.0}}  # noqa: F405
