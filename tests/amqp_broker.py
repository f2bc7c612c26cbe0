"""The machine's RabbitMQ for the tests of the RabbitMQ transport: a vhost of the session's own.

The shared server (``AMQP_URL``, default ``amqp://guest:guest@127.0.0.1:5672/``) is never
reconfigured: the session adds a vhost of its own with ``rabbitmqctl`` (the management plugin
is not enabled here), gives the URL's user every permission on it and deletes it at the end,
so every exchange and queue a test made goes with it. Without a broker that answers, or
without ``rabbitmqctl``, the tests that need it skip, and fail under ``CI=true``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from urllib.parse import unquote, urlsplit, urlunsplit

import pytest

AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


def unavailable(message: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} Under CI=true the RabbitMQ transport must be tested.")
    pytest.skip(message)


def broker_answers(url: str = AMQP_URL) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), 2):
            return True
    except OSError:
        return False


def rabbitmqctl(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["rabbitmqctl", *arguments], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    """The URL of a vhost of this session's own on the machine's RabbitMQ."""
    if not broker_answers():
        unavailable(f"RabbitMQ does not answer at {AMQP_URL} (AMQP_URL).")
    if shutil.which("rabbitmqctl") is None:
        unavailable("rabbitmqctl is not installed: no vhost of the tests' own can be made.")
    parts = urlsplit(AMQP_URL)
    vhost = f"cliffracer-test-{uuid.uuid4().hex[:12]}"
    user = unquote(parts.username or "guest")
    made = rabbitmqctl("add_vhost", vhost)
    if made.returncode != 0:
        unavailable(f"rabbitmqctl add_vhost failed: {made.stderr.strip()[:300]}")
    try:
        allowed = rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
        if allowed.returncode != 0:
            unavailable(f"rabbitmqctl set_permissions failed: {allowed.stderr.strip()[:300]}")
        yield urlunsplit((parts.scheme, parts.netloc, f"/{vhost}", "", ""))
    finally:
        rabbitmqctl("delete_vhost", vhost)
