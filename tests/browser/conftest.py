"""A real headless Chromium for the page tests: Debian's `chromium` driven by Playwright, nothing downloaded.

The tests skip, saying why, where no Chromium is installed, and fail under CI (`.ci/run` installs it with apt).
CHROMIUM_PATH points at another binary.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # The machine has no network: Chromium's own background connections would only be refused.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str | None:
    configured = os.environ.get("CHROMIUM_PATH")
    if configured:
        return configured
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[object]:
    """One Chromium for the whole session (Playwright's async API, on the tests' event loop); each test opens its
    own context, so cookies, storage and origins stay apart."""
    executable = chromium_path()
    if executable is None:
        reason = "no Chromium installed (apt-get install chromium, or set CHROMIUM_PATH)"
        if os.environ.get("CI"):
            pytest.fail(reason)  # CI installs it: a missing browser there is a broken run, not a skip
        pytest.skip(reason)
    async_api = pytest.importorskip("playwright.async_api")
    async with async_api.async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    """Where a test saves what the page showed (kept with the test's tmp dir)."""
    folder = tmp_path / "screenshots"
    folder.mkdir()
    return folder
