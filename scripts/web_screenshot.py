#!/usr/bin/env python3
"""Write the README's picture of the live view from a real page.

    python scripts/web_screenshot.py URL OUT.png

URL is what `distctl web` (or `up --web`) printed, token included. The page is loaded in
headless Chromium (Debian's `chromium`; another one with DISTCTL_CHROMIUM=PATH) through
Playwright, and photographed once its curves and log show. tests/test_web_browser.py runs
this into a temporary folder; `docs/live-view.png` comes from the same script.
"""

from __future__ import annotations

import os
import sys

from playwright.sync_api import sync_playwright

CHROMIUM = os.environ.get("DISTCTL_CHROMIUM", "/usr/bin/chromium")


def screenshot(url: str, out: str, timeout_ms: int = 60_000) -> None:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            page.goto(url)
            page.wait_for_function("() => window.distctlView && window.distctlView.drawn.size > 0 && "
                                   "document.getElementById('log').childElementCount > 0", timeout=timeout_ms)
            page.evaluate("() => new Promise(requestAnimationFrame)")  # the frame with the last delta drawn
            page.screenshot(path=out, full_page=True)
        finally:
            browser.close()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    screenshot(sys.argv[1], sys.argv[2])
