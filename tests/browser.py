"""Debian's Chromium driven through Playwright's sync API, for tests of the pages a person uses.

`open_page()` starts Chromium on a fresh temporary profile and yields a Page and the `PageEvents` it
recorded. The page may talk to 127.0.0.1 / localhost only: any other request is recorded and aborted
before it leaves, so a test shows what the page tried to reach without touching the network.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Page, sync_playwright

# Everything Chromium does on its own (updates, sync, background fetches, QUIC) is switched off: the
# only traffic should be the page's own, to the live server.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # tests run as root in containers, where Chromium's sandbox cannot start
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
DEBIAN_CHROMIUM = "/usr/bin/chromium"
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
# Playwright's default of 30 s hides a hung page for a long time; the admin answers in well under 1 s.
TIMEOUT_MS = 10_000
SKIP_MESSAGE = ("Chromium not found: install Debian's chromium (apt-get install chromium) or set "
                "ENGAGEMENT_CHROMIUM to run the browser tests")


def find_chromium() -> str | None:
    """The first of $ENGAGEMENT_CHROMIUM, /usr/bin/chromium, `chromium` on PATH that exists."""
    for candidate in (os.environ.get("ENGAGEMENT_CHROMIUM"), DEBIAN_CHROMIUM, shutil.which("chromium")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def browser_required() -> bool:
    # CI sets ENGAGEMENT_REQUIRE_BROWSER so that a missing Chromium fails the run instead of skipping.
    return os.environ.get("ENGAGEMENT_REQUIRE_BROWSER", "").strip().lower() in ("1", "true")


def chromium_or_skip() -> str:
    executable = find_chromium()
    if executable is None:
        if browser_required():
            pytest.fail(f"ENGAGEMENT_REQUIRE_BROWSER is set but {SKIP_MESSAGE}", pytrace=False)
        pytest.skip(SKIP_MESSAGE)
    return executable


@dataclass
class PageEvents:
    """What the page did besides rendering: dialogs it opened, console errors, requests off this machine."""

    dialogs: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    external_requests: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        """Dialogs and off-machine requests: what a test must fail on (console errors are for reading)."""
        return ([f"a dialog opened: {d}" for d in self.dialogs]
                + [f"a request for another host (blocked): {url}" for url in self.external_requests])


def is_local(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme in ("data", "blob", "about"):
        return True
    return (parts.hostname or "") in LOCAL_HOSTS


@contextmanager
def open_page(events: PageEvents | None = None) -> Iterator[tuple[Page, PageEvents]]:
    """A Page in a headless Chromium on a fresh profile, its events recorded into `events` (a new
    PageEvents by default); the browser is closed and its profile deleted afterwards.

    Skips (or fails, when ENGAGEMENT_REQUIRE_BROWSER is set) if Chromium is not installed.
    """
    executable = chromium_or_skip()
    events = events if events is not None else PageEvents()

    def on_dialog(dialog) -> None:
        events.dialogs.append(f"{dialog.type}({dialog.message!r})")
        dialog.dismiss()  # with a listener attached Playwright no longer dismisses it, and the page would hang

    def on_console(message) -> None:
        if message.type == "error":
            events.console_errors.append(message.text)

    def guard(route) -> None:
        url = route.request.url
        if is_local(url):
            route.continue_()
        else:
            events.external_requests.append(url)
            route.abort("blockedbyclient")

    with tempfile.TemporaryDirectory(prefix="engagement-chromium-") as profile, sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=executable, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 800},
        )
        try:
            context.set_default_timeout(TIMEOUT_MS)
            context.route("**/*", guard)
            context.on("dialog", on_dialog)
            context.on("console", on_console)
            context.on("weberror", lambda error: events.console_errors.append(f"uncaught: {error.error}"))
            page = context.pages[0] if context.pages else context.new_page()
            yield page, events
        finally:
            context.close()
