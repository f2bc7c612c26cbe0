"""Shared fixtures of the framework tests; the NATS fixtures come from cliffracer_core.testing."""

import itertools

import pytest

# moto's server for the AWS tests (CloudWatch, the SNS/SQS transport).
from tests.moto_server import moto_server, shared_moto_server  # noqa: F401  (fixtures)

_counter = itertools.count()


@pytest.fixture
def unique_name() -> str:
    """A service name no other test uses, so tests never hear each other's messages."""
    return f"t{next(_counter)}"
