"""Driving the page in the system's headless Chromium with Selenium (no browser download).

Used by the plugin's browser tests and by ``scripts/screenshots.py`` (the pictures in docs/webui.md);
Selenium is imported only here, when a browser is driven (``pip install selenium``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def missing_browser() -> str | None:
    """Why the browser tests cannot run here, or None (install: apt-get install chromium chromium-driver)."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            return f"{path} is missing; apt-get install -y chromium chromium-driver"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def webui_server(args: list[str], *, env: dict[str, str] | None = None, log: Path, timeout: float = 120.0) -> Any:
    """``factory webui ARGS`` in a subprocess; yields its URL once the page answers, and stops it afterwards."""
    port = free_port()
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "factory.cli", "webui", f"port={port}", *args],
            stdout=out,
            stderr=out,
            env={**os.environ, **(env or {})},
        )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + timeout
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"factory webui exited with {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"factory webui did not answer within {timeout} s: {log.read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def chromium(width: int = 1400, height: int = 1000) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={width},{height}",
        "--lang=en-US",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


class Page:
    """The page as a user sees it: fields by their generated ids, buttons, tabs, text."""

    def __init__(self, driver: Any, url: str) -> None:
        self.driver, self.url = driver, url

    def open(self) -> None:
        self.driver.get(self.url)
        self.wait(lambda: self.driver.find_elements("css selector", "#train-start"), 60, "the page to load")

    def wait(self, condition: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = condition()
            except Exception:  # the element is being re-rendered
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            time.sleep(every)

    def find(self, css: str) -> Any:
        return self.driver.find_element("css selector", css)

    def tab(self, label: str) -> None:
        buttons = [
            b for b in self.driver.find_elements("css selector", "button[role='tab']") if b.text.strip() == label
        ]
        assert buttons, f"no tab {label!r}"
        buttons[0].click()
        time.sleep(0.5)

    def click(self, elem_id: str) -> None:
        element = self.find(f"#{elem_id}")
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
        element.click()

    def type(self, elem_id: str, value: str) -> None:
        """Replace a text field's value as a user would (select all, type)."""
        from selenium.webdriver.common.keys import Keys

        box = self.find(f"#{elem_id} textarea, #{elem_id} input")
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", box)
        box.click()
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(Keys.DELETE)
        box.send_keys(value)
        time.sleep(0.3)

    def choose(self, elem_id: str, label: str) -> None:
        """Pick the radio button ``label`` of a radio group."""
        options = [o for o in self.driver.find_elements("css selector", f"#{elem_id} label") if o.text.strip() == label]
        assert options, f"no choice {label!r} in #{elem_id}"
        options[0].click()

    def text(self, elem_id: str) -> str:
        return self.find(f"#{elem_id}").text

    def value(self, elem_id: str) -> str:
        return self.find(f"#{elem_id} textarea, #{elem_id} input").get_attribute("value")

    def open_accordion(self, elem_id: str) -> None:
        head = self.find(f"#{elem_id} .label-wrap")
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", head)
        if "open" not in (head.get_attribute("class") or ""):
            head.click()
            time.sleep(0.3)


TABS = ("Train", "Chat", "Evaluate", "Export", "Runs")
MAX_HEIGHT = 2200


def screenshots(page: Page, folder: Path, width: int = 1400) -> list[Path]:
    """One PNG per tab (palette-reduced to stay small), named after the tab."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for label in TABS:
        page.tab(label)
        page.driver.execute_script("window.scrollTo(0, 0);")
        time.sleep(1.5)
        # the whole tab, up to a limit (the Train tab's plugin sections would make a very tall picture)
        height = page.driver.execute_script("return document.documentElement.scrollHeight")
        page.driver.set_window_size(width, min(int(height) + 40, MAX_HEIGHT))
        time.sleep(1.5)
        path = folder / f"{label.lower()}.png"
        page.driver.save_screenshot(str(path))
        page.driver.set_window_size(width, 1000)
        Image.open(path).convert("RGB").quantize(colors=64).save(path, optimize=True)
        written.append(path)
    page.tab("Train")
    return written
