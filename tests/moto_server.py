"""moto's server for the AWS tests (``cliffracer_core/testing/moto.py`` starts it).

``moto_server`` is a server of a test's own (the CloudWatch tests read everything it holds);
``shared_moto_server`` one for the whole session, for tests that keep apart by a prefix of
their own (the SNS/SQS transport's).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cliffracer_core.testing.moto import CREDENTIALS, REGION, running_moto_server

__all__ = ["CREDENTIALS", "REGION", "moto_server", "shared_moto_server"]


@pytest.fixture
def moto_server(tmp_path: Path) -> Iterator[str]:
    with running_moto_server(tmp_path / "moto.log") as url:
        yield url


@pytest.fixture(scope="session")
def shared_moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as url:
        yield url
