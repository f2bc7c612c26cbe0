"""Settings for the service processes of the durable-events tests: the tests', plus
``durabletest``, with short delays so that retries and redeliveries happen within a test."""

from tests.settings import *  # noqa: F403

INSTALLED_APPS = [*INSTALLED_APPS, "tests.durableapp"]  # noqa: F405

CLIFFRACER = {
    **CLIFFRACER,  # noqa: F405
    "DURABLE_RETRY_DELAYS": [0.2, 0.5],
    "DURABLE_ACK_WAIT": 2.0,
    # Few threads: every handler writes to one SQLite file, which takes one writer at a time.
    "THREADS": 4,
}
CLIFFRACER["OUTBOX_POLL_INTERVAL"] = 30.0  # noqa: F405  (a commit elsewhere must wake it)
