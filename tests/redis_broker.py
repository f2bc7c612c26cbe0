"""Redis for the Redis transport's tests: the machine's server under a key prefix of a test's
own (cleaned up after), or a private ``redis-server`` on a free port (for restarts)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.certificates import Certificates

# Database 0 of the machine's Redis, as the channel-layer tests use; a prefix keeps tests apart
# (pub/sub channels ignore the database number).
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def redis_answers(url: str = REDIS_URL) -> bool:
    address = urlsplit(url)
    try:
        socket.create_connection((address.hostname, address.port or 6379), timeout=1).close()
    except OSError:
        return False
    return True


def require_redis(url: str = REDIS_URL) -> None:
    """Skip when Redis does not answer; under CI=true fail instead."""
    if redis_answers(url):
        return
    message = f"Redis does not answer at {url} (REDIS_URL)."
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} Under CI=true the Redis transport must be tested.")
    pytest.skip(message)


def delete_prefixed(url: str, prefix: str) -> None:
    """Delete every key that starts with ``prefix``."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=prefix.replace("*", "\\*") + "*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@contextmanager
def prefixed_url(url: str = REDIS_URL) -> Iterator[str]:
    """``url`` with a key prefix of its own; its keys are deleted afterwards."""
    require_redis(url)
    prefix = f"cliffracer-test-{uuid.uuid4().hex[:12]}:"
    separator = "&" if "?" in url else "?"
    try:
        yield f"{url}{separator}prefix={prefix}"
    finally:
        delete_prefixed(url, prefix)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PrivateRedis:
    """A ``redis-server`` of a test's own on a free port, that it may stop and start again."""

    def __init__(
        self, directory: Path | None = None, *, certificates: Certificates | None = None
    ) -> None:
        self.binary = shutil.which("redis-server")
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        # With a directory, an append-only file written on every command (a restart loses
        # nothing); without, nothing is kept.
        self.directory = directory
        # With certificates, it speaks TLS only (``rediss://``), clients not asked for theirs.
        self.certificates = certificates

    @property
    def url(self) -> str:
        if self.certificates is not None:
            return f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={self.certificates.authority}"
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        if self.binary is None:
            message = "redis-server is not installed."
            if os.environ.get("CI") == "true":
                pytest.fail(f"{message} Under CI=true the Redis transport must be tested.")
            pytest.skip(message)
        if self.directory is None:
            persistence = ["--save", "", "--appendonly", "no"]
        else:
            self.directory.mkdir(parents=True, exist_ok=True)
            persistence = ["--save", "", "--appendonly", "yes", "--appendfsync", "always"]
            persistence += ["--dir", str(self.directory)]
        listen = ["--port", str(self.port)]
        if self.certificates is not None:
            listen = ["--port", "0", "--tls-port", str(self.port), "--tls-auth-clients", "no"]
            listen += ["--tls-cert-file", str(self.certificates.certificate)]
            listen += ["--tls-key-file", str(self.certificates.key)]
            listen += ["--tls-ca-cert-file", str(self.certificates.authority)]
        self.process = subprocess.Popen(
            [self.binary, *listen, "--bind", "127.0.0.1", *persistence],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not redis_answers(self.url):
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"redis-server did not start on port {self.port}.")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> PrivateRedis:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
