"""Reaching a subscription's or an attachment's event loop from whichever thread publishes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


def call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[..., Any], *args: Any) -> bool:
    """Call ``callback`` on ``loop`` from any thread; False when that loop is closed."""
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:
        return False
    return True


def cancel(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` from any thread (at once when it is on this thread's loop)."""
    try:
        here = asyncio.get_running_loop()
    except RuntimeError:  # called outside any loop
        here = None
    if task.get_loop() is here:
        task.cancel()
    else:
        call_soon(task.get_loop(), task.cancel)
