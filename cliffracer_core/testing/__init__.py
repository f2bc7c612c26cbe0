"""Helpers for testing services against a real nats-server."""

from cliffracer_core.testing.polling import wait_for
from cliffracer_core.testing.services import RunningService, run_service_in_thread

__all__ = ["RunningService", "run_service_in_thread", "wait_for"]
