"""Polling for a condition in tests that watch other threads and processes."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any


def wait_for(
    condition: Callable[[], Any], timeout: float = 10.0, *, what: str = "", interval: float = 0.02
) -> Any:
    """Return ``condition()``'s first true value, polling for up to ``timeout`` seconds;
    fail the test (AssertionError naming ``what``) if it stays false."""
    deadline = time.monotonic() + timeout
    while True:
        if result := condition():
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"Timed out after {timeout:g}s waiting for {what or condition}.")
        time.sleep(interval)


async def wait_until(
    condition: Callable[[], Any], timeout: float = 10.0, *, what: str = "", interval: float = 0.02
) -> Any:
    """``wait_for`` on the running event loop: ``condition`` may be a coroutine function."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"Timed out after {timeout:g}s waiting for {what or condition}.")
        await asyncio.sleep(interval)
