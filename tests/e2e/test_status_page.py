"""The status page at / in a real headless browser (Debian's chromium through chromedriver): what a person
sees with a client held, a harvester flagged and one hang-up, and the forget button doing its job.

The browser is never downloaded: without /usr/bin/chromium and /usr/bin/chromedriver (``make system-deps``)
these tests skip. A screenshot is kept in test-artifacts/status-page.png (gitignored) for a human to look at.
"""

from __future__ import annotations

import json
import os
import smtplib
import socket
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from tests.e2e.conftest import ServerFactory
from tests.e2e.helpers import RunningServer

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
TOKEN = "s3cret-token"
WIDTH, HEIGHT = 1280, 900
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    f"--window-size={WIDTH},{HEIGHT}",
)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    for tool in (CHROMIUM, CHROMEDRIVER):
        if not os.access(tool, os.X_OK):
            pytest.skip(f"{tool} is missing (Debian: apt-get install chromium chromium-driver)")
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    # An explicit driver path: selenium-manager is never asked to find or download anything.
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    try:
        yield driver
    finally:
        driver.quit()  # stops the chromedriver (and its chromium) that this fixture started


def _admin(make_server: ServerFactory, **overrides: dict[str, Any]) -> tuple[RunningServer, str]:
    server = make_server(**overrides)
    found = server.wait_for_log(r"admin HTTP on (\S+) port (\d+)")
    return server, f"http://{found.group(1)}:{found.group(2)}"


def _status(base: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{base}/status", timeout=10) as response:
        answer: dict[str, Any] = json.loads(response.read())
    return answer


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never saw {what}")
        time.sleep(0.05)


def _held(server: RunningServer, source: str, recipient: str) -> socket.socket:
    """A raw session that sends RCPT to an unknown address and never reads the (delayed) 550."""
    sock = socket.create_connection((server.host, server.port), timeout=10, source_address=(source, 0))
    reader = sock.makefile("rb")
    assert reader.readline().startswith(b"220")
    sock.sendall(f"HELO bot.test\r\nMAIL FROM:<s@r.test>\r\nRCPT TO:<{recipient}>\r\n".encode())
    assert reader.readline().startswith(b"250") and reader.readline().startswith(b"250")
    reader.close()
    return sock


def _harvest(server: RunningServer, recipients: list[str]) -> list[int]:
    """RCPT to each of ``recipients`` (all unknown) from 127.0.1.2; the reply codes."""
    with smtplib.SMTP(server.host, server.port, timeout=10, source_address=("127.0.1.2", 0)) as smtp:
        smtp.ehlo("harvester.test")
        smtp.mail("s@remote.test")
        return [smtp.rcpt(recipient)[0] for recipient in recipients]


def _offender_rows(driver: WebDriver) -> dict[str, WebElement]:
    rows = driver.find_elements(By.CSS_SELECTOR, "#offenders tr")
    return {cells[0].text: row for row in rows if (cells := row.find_elements(By.TAG_NAME, "td"))}


def _screenshot(driver: WebDriver, tmp_path: Path) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    for path in (ARTIFACTS / "status-page.png", tmp_path / "status-page.png"):
        assert driver.save_screenshot(str(path))
        data = path.read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5 * 1024


def _fits_the_window(driver: WebDriver) -> None:
    """Everything is visible in the 1280x900 window at once: no scrolling either way, the chart inside."""
    page = driver.execute_script(
        "const chart = document.getElementById('hangups').getBoundingClientRect();"
        "const root = document.documentElement;"
        "return [root.scrollWidth, root.scrollHeight, chart.right, chart.bottom, innerWidth, innerHeight];"
    )
    width, height, chart_right, chart_bottom, view_width, view_height = page
    assert width <= view_width and chart_right <= view_width, page
    assert height <= view_height and chart_bottom <= view_height, page


def test_status_page_shows_the_tar_pit_and_forgets_a_client(
    make_server: ServerFactory, browser: WebDriver, tmp_path: Path
) -> None:
    server, base = _admin(
        make_server,
        admin={"listen": "127.0.0.1:0", "token": TOKEN},
        tarpit={"delay": 30},
        harvest={"threshold": 2, "delay": 0},
        reputation={"half_life": "1h"},
    )
    # A harvester from 127.0.1.2: its first unknown recipient is held 30 s, and it hangs up (the one hang-up
    # of the chart); it comes back for a second address, is flagged, and gets a 450 at once (harvest delay 0).
    impatient = _held(server, "127.0.1.2", "a@example.test")
    _wait_for(lambda: _status(base)["tarpitted"] == 1, "the harvester held")
    impatient.close()
    _wait_for(lambda: sum(_status(base)["hangups"]["counts"]) == 1, "the hang-up measured")
    assert _harvest(server, ["b@example.test"]) == [450]
    held = _held(server, "127.0.0.1", "nobody@example.test")
    try:
        _wait_for(lambda: _status(base)["tarpitted"] == 1, "a session held in the tar pit")
        browser.get(f"{base}/")

        card = browser.find_element(By.ID, "tarpitted")
        assert "held in the tar pit now" in card.text
        assert card.find_element(By.TAG_NAME, "b").text == "1"

        row = _offender_rows(browser)["ip:127.0.1.2"]
        assert row.find_element(By.CSS_SELECTOR, ".flag").text.startswith("flagged")

        chart = browser.find_element(By.ID, "hangups")
        bars = chart.find_elements(By.CSS_SELECTOR, "rect.bar")
        assert len(bars) == len(_status(base)["hangups"]["counts"])
        bars = [bar for bar in bars if bar.get_attribute("data-count") != "0"]
        assert [bar.get_attribute("data-count") for bar in bars] == ["1"]
        assert float(bars[0].get_attribute("height") or 0) > 0
        assert "1" in [label.text for label in chart.find_elements(By.CSS_SELECTOR, "text.count")]

        _fits_the_window(browser)
        _screenshot(browser, tmp_path)

        browser.find_element(By.ID, "token").send_keys(TOKEN)
        row.find_element(By.TAG_NAME, "button").click()
        WebDriverWait(browser, 10).until(expected_conditions.staleness_of(row))  # 303 back to /
        WebDriverWait(browser, 10).until(expected_conditions.presence_of_element_located((By.TAG_NAME, "h1")))
        assert browser.current_url.rstrip("/") == base
        assert "ip:127.0.1.2" not in _offender_rows(browser)
        assert "ip:127.0.1.2" not in {client["key"] for client in _status(base)["top_clients"]}
        assert "127.0.1.2" in server.wait_for_log(r"admin: forgot (\S+)").group(1)
    finally:
        held.close()


def test_forget_buttons_are_disabled_without_a_token(make_server: ServerFactory, browser: WebDriver) -> None:
    server, base = _admin(
        make_server,
        admin={"listen": "127.0.0.1:0"},
        harvest={"threshold": 2, "delay": 0},
        reputation={"half_life": "1h"},
    )
    assert _harvest(server, ["a@example.test", "b@example.test"]) == [550, 450]
    browser.get(f"{base}/")
    assert "ip:127.0.1.2" in _offender_rows(browser)
    buttons = browser.find_elements(By.CSS_SELECTOR, "#offenders button")
    assert buttons and not any(button.is_enabled() for button in buttons)
    assert not browser.find_elements(By.ID, "token")
    assert "[admin] token" in browser.find_element(By.TAG_NAME, "body").text
