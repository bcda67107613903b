"""Headless Debian Chromium driven by Selenium through Debian's chromedriver (nothing downloaded).

Also makes the README's screenshot: ``python -m tests.visual.browser REPORT.html docs/report.png``.
"""

import contextlib
import shutil
import sys
import tempfile

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars",
)


def missing_browser():
    """Why no browser test can run here, or None."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not shutil.which(path):
            return f"{path} not installed (Debian: apt-get install chromium chromium-driver)"
    return None


@contextlib.contextmanager
def open_browser(width=1280, height=900):
    """A headless Chromium with a fresh profile that records console messages."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    with tempfile.TemporaryDirectory(prefix="gradcamo-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in FLAGS + (f"--user-data-dir={profile}", f"--window-size={width},{height}"):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        try:
            yield driver
        finally:
            driver.quit()


@contextlib.contextmanager
def open_page(path, width=1280, height=900):
    """A headless Chromium (:func:`open_browser`) showing a local HTML file."""
    with open_browser(width, height) as driver:
        driver.get(f"file://{path}")
        yield driver


def screenshot(report, png, width=1280, height=1500):
    """Save the top ``width`` x ``height`` pixels of an HTML file as PNG."""
    with open_page(report, width, height) as driver:
        driver.save_screenshot(str(png))


if __name__ == "__main__":
    screenshot(*sys.argv[1:3])
