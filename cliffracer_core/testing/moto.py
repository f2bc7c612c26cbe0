"""moto's server (the AWS emulator of the ``moto[server]`` dev extra) as a real process on a
free port: for the AWS tests (CloudWatch, the SNS/SQS transport) and the SQS benchmark."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cliffracer_core.testing.polling import wait_for
from cliffracer_core.transports.nats.embedded import free_port

REGION = "eu-west-1"
# moto accepts any credentials; these are its documented test values, no secret.
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION,
}


@contextmanager
def running_moto_server(log_path: Path) -> Iterator[str]:
    """Start ``moto_server`` on a free port; yield its URL; stop it."""
    port = free_port("127.0.0.1")
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                os.path.join(os.path.dirname(sys.executable), "moto_server"),
                "-H",
                "127.0.0.1",
                "-p",
                str(port),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"

        def answers() -> bool:
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=1).close()
            except OSError:
                return False
            return True

        try:
            wait_for(answers, 30, what="moto's server")
            yield url
        finally:
            process.terminate()
            process.wait(10)
