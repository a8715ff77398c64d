"""Driving Debian's Chromium from the tests (and the report benchmark) with Playwright — never a downloaded browser.

`open_page(url)` yields a page and what it logged: console errors, page errors, and every request's URL.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
HOW_TO_INSTALL = "Chromium is not installed: apt-get install chromium chromium-driver (.ci/run does it in CI)"


def chromium_path() -> str | None:
    found = next((path for path in CHROMIUM_CANDIDATES if Path(path).is_file()), None)
    return found or shutil.which("chromium")


def unavailable() -> str | None:
    """Why browser tests cannot run here, or None."""
    if chromium_path() is None:
        return HOW_TO_INSTALL
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (it is a dev dependency: make install)"
    return None


@contextlib.contextmanager
def open_page(url: str, viewport=(1400, 1000)):
    from playwright.sync_api import sync_playwright

    log = {"console_errors": [], "page_errors": [], "requests": []}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
            page.on("console", lambda m: log["console_errors"].append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: log["page_errors"].append(str(e)))
            page.on("request", lambda r: log["requests"].append(r.url))
            page.goto(url, wait_until="load")
            yield page, log
        finally:
            browser.close()


def load_every_image(page) -> None:
    """Scroll every lazy image into view and wait until each has loaded (or failed)."""
    page.evaluate(
        """async () => {
            for (const img of document.images) {
                img.loading = "eager";
            }
            await Promise.all(Array.from(document.images).filter(img => img.getAttribute("src")).map(img =>
                img.complete ? null :
                new Promise(done => { img.onload = done; img.onerror = done; })));
        }"""
    )
