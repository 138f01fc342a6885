"""Headless Chromium for browser tests: Debian's chromium driven by Debian's chromedriver
(`make browser` installs both; nothing is downloaded), and screenshots kept in artifacts/."""
from __future__ import annotations

from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"


def headless_chromium(window: str, page_load_timeout_s: float) -> webdriver.Chrome:
    """A new browser (``window`` as "WIDTHxHEIGHT" becomes "W,H"); the caller quits it."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-dev-shm-usage", f"--window-size={window.replace('x', ',')}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(page_load_timeout_s)
    return driver


def screenshot(driver, name: str) -> Path:
    """Keep what the browser shows as artifacts/<name>.png."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path
