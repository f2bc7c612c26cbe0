"""Settings with a bad call policy, for the check of tests/test_resilience_processes.py."""

from tests.settings import *  # noqa: F403

CLIFFRACER = {
    **CLIFFRACER,  # noqa: F405
    "CALLS": {"inventory": {"RETRIES": -1, "BREAKER": {"FAILURE_RATIO": 2}}},
}
