"""Settings of the processes of tests/test_resilience_processes.py: ``flaky`` and ``caller``,
and the call policies ``caller`` follows."""

from tests.settings import *  # noqa: F403

INSTALLED_APPS = [*INSTALLED_APPS, "tests.flakyapp", "tests.callerapp"]  # noqa: F405
CLIFFRACER = {
    **CLIFFRACER,  # noqa: F405
    "CALLS": {
        # Down, then back: no responders is retried, for ~10 s at most.
        "flaky.record": {"RETRIES": 30, "RETRY_DELAY": 0.1, "RETRY_MAX_DELAY": 0.5},
        "flaky.half": {
            "BREAKER": {"FAILURE_RATIO": 0.5, "MIN_CALLS": 10, "WINDOW": 60, "OPEN_SECONDS": 5}
        },
        "flaky.slow": {"TIMEOUT": 30},
        # The caller stops waiting for a crawl after TIMEOUT, not after RPC_TIMEOUT.
        "flaky.crawl": {"TIMEOUT": 0.5},
    },
}
