"""Debian's chromium for the browser tests, driven by Playwright; never a downloaded browser.

Without ``/usr/bin/chromium`` a browser test is skipped with the reason, except under
``CI=true``, where it fails: ``.ci/run`` installs the package, so a missing browser there is a
broken set-up, not a missing part.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
# Headless, and without the background traffic a closed network refuses (many at a time).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def browser_path() -> Path:
    """The browser to drive; skips the test without one (fails it under ``CI=true``)."""
    if CHROMIUM.exists():
        return CHROMIUM
    message = (
        f"No browser: {CHROMIUM} is missing (apt-get install chromium); tests never download one."
    )
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} .ci/run installs it; under CI=true a browser test must run.")
    pytest.skip(message)


@contextmanager
def launch_chromium() -> Iterator[Any]:
    """Debian's chromium, headless, under Playwright's sync API.

    Django refuses database work while Playwright's event loop runs in the thread, so a test
    does its database work before it opens the browser or after it closes, or in a thread.
    """
    from playwright.sync_api import sync_playwright

    path = browser_path()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(path), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            browser.close()
