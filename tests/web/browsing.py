"""Driving the page in a real headless Chromium (Debian's chromium and chromium-driver through
Selenium): serving ``shaping web`` in its own process, the browser, screenshots, and a
trainer's morning as people do it (shared by the embedded and the Kafka browser tests)."""

from __future__ import annotations

import shutil
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from tests.support.ops import free_port
from tests.support.processes import shaping_process
from tests.web.conftest import PASSWORDS, Lab

REPO = Path(__file__).resolve().parents[2]
SHOTS = REPO / ".cache" / "screenshots" / "web"


def wait_up(url: str, log: Path, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2) as response:
                if response.read() == b"ok":
                    return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"shaping web did not answer at {url}:\n{log.read_text()}")


def chromium() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if browser is None or not Path(driver).exists():
        pytest.fail(
            "headless Chromium or chromedriver is missing: run infra/chromium/chromium.sh "
            "ensure (make test does)"
        )
    return browser, driver


@contextmanager
def serving(args: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """`shaping web ARGS` on a free port in its own process; its base URL once it answers."""
    port = free_port()
    with shaping_process(["web", "--port", str(port), *args], log, env):
        url = f"http://127.0.0.1:{port}"
        wait_up(url, log)
        yield url


def embedded_args(lab: Lab) -> list[str]:
    """The options serving ``lab`` with the embedded write path."""
    return [
        "--db-url",
        lab.db_url,
        "--embedded-log",
        str(lab.log_path),
        "--users-file",
        str(lab.users_path),
        "--secret-file",
        str(lab.secret_path),
    ]


def chrome() -> WebDriver:
    """A headless Chromium (fails, saying how to install it, when it is missing)."""
    binary, driver_path = chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    options.add_argument("--window-size=1280,1400")
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.implicitly_wait(5)
    return driver


def shot(driver: WebDriver, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    driver.set_window_size(1280, 800)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, max(800, min(int(height) + 40, 6000)))
    assert driver.save_screenshot(str(path)), f"no screenshot {path}"
    print(f"screenshot: {path}")
    return path


def go(driver: WebDriver, by: str, what: str) -> None:
    """Clicks a button or link and waits until the next page has replaced this one."""
    page = driver.find_element(By.TAG_NAME, "html")
    driver.find_element(by, what).click()
    wait_replaced(driver, page)


def wait_replaced(driver: WebDriver, page: WebElement) -> None:
    """Waits until the document of ``page`` (its ``html`` element) has been replaced."""
    WebDriverWait(driver, 30).until(lambda _: _replaced(page))


def _replaced(page: WebElement) -> bool:
    """Whether the document ``page`` belonged to is gone. Selenium's ``staleness_of`` expects
    StaleElementReferenceException; while the old document is being torn down, Chromium may
    say the same thing as an inspector error ("Node with given id does not belong to the
    document"), which is an answer too, not a failure."""
    try:
        page.is_enabled()
    except StaleElementReferenceException:
        return True
    except WebDriverException as exc:
        if "does not belong to the document" in str(exc):
            return True
        raise
    return False


def log_in_as(driver: WebDriver, url: str, name: str) -> None:
    """Logs ``name`` in through the login form."""
    driver.get(url + "/login")
    driver.find_element(By.ID, "name").send_keys(name)
    driver.find_element(By.ID, "password").send_keys(PASSWORDS[name])
    go(driver, By.ID, "login")
    assert driver.find_element(By.ID, "whoami").text.startswith(name)


def row_of(driver: WebDriver, mouse: str) -> WebElement:
    """The overview's row of ``mouse``."""
    return driver.find_element(By.CSS_SELECTOR, f'#mice tbody tr[data-mouse="{mouse}"]')


def until_shown(driver: WebDriver, css: str, timeout_s: float = 60.0) -> WebElement:
    """Reloads the page until it shows an element matching ``css`` (what another service
    writes, e.g. an alert on Kafka, reaches the tables a moment later); returns it."""
    deadline = time.monotonic() + timeout_s
    driver.implicitly_wait(0)
    try:
        while True:
            found = driver.find_elements(By.CSS_SELECTOR, css)
            if found:
                return found[0]
            if time.monotonic() > deadline:
                pytest.fail(f"the page never showed {css} within {timeout_s:g} s")
            time.sleep(0.5)
            page = driver.find_element(By.TAG_NAME, "html")
            driver.refresh()
            wait_replaced(driver, page)
    finally:
        driver.implicitly_wait(5)


def morning(driver: WebDriver, url: str, mouse: str, prefix: str) -> None:
    """The morning as people do it in the browser, ``mouse`` restricted at 25 g and weighed
    24 g: hugo (husbandry) weighs it 19.5 g, is refused until he confirms the jump, sees it
    held, with its critical weight alert, and gives 1 mL; alice (trainer) releases it with a
    reason and sees it cleared.
    Screenshots ``PREFIX-1-...`` to ``PREFIX-6-...``."""
    log_in_as(driver, url, "hugo")
    assert row_of(driver, mouse).get_attribute("data-gate") == "cleared"
    shot(driver, f"{prefix}-1-overview")

    go(driver, By.LINK_TEXT, mouse)
    assert driver.find_element(By.ID, "mouse-title").text == mouse
    assert "Cleared" in driver.find_element(By.ID, "gate").text
    assert not driver.find_elements(By.ID, "release-form")  # husbandry records, may not release
    driver.find_element(By.ID, "weigh-grams").send_keys("19.5")
    go(driver, By.ID, "weigh-submit")
    refused = driver.find_element(By.CSS_SELECTOR, ".flash.error").text
    assert "18.8 % below the last weight" in refused and "confirm" in refused
    shot(driver, f"{prefix}-2-jump-refused")
    driver.find_element(By.ID, "weigh-grams").send_keys("19.5")
    driver.find_element(By.ID, "weigh-confirm").click()
    go(driver, By.ID, "weigh-submit")
    assert f"weight of {mouse} recorded: 19.5 g (confirmed)" in (
        driver.find_element(By.CSS_SELECTOR, ".flash.ok").text
    )
    gate = driver.find_element(By.ID, "gate")
    assert gate.get_attribute("class") == "gate-state held"
    assert "19.5 g is 78.0 % of expected 25.0 g (minimum 80 %)" in gate.text
    assert driver.find_elements(By.CSS_SELECTOR, "svg.weight circle.point")
    assert driver.find_elements(By.CSS_SELECTOR, "svg.weight polyline.limit.warning")
    driver.find_element(By.ID, "water-ml").send_keys("1")
    go(driver, By.ID, "water-submit")
    assert f"water for {mouse} recorded: 1 mL water (supplement)" in (
        driver.find_element(By.CSS_SELECTOR, ".flash.ok").text
    )
    assert driver.find_elements(By.CSS_SELECTOR, "svg.water rect.bar.supplement")
    # the alert rules raise a critical weight alert (the alerts table, on the mouse's page)
    alert = until_shown(driver, "#alerts li.alert.critical")
    assert "weight" in alert.text and "weighs 78.0 % of its expected weight" in alert.text
    shot(driver, f"{prefix}-3-held")

    go(driver, By.LINK_TEXT, "Lab")
    first = driver.find_elements(By.CSS_SELECTOR, "#mice tbody tr")[0]
    assert first.get_attribute("data-mouse") == mouse  # held: first
    assert first.get_attribute("data-gate") == "held"
    assert "78.0 %" in first.text and "held" in first.text
    assert "critical" in first.find_element(By.CSS_SELECTOR, "td.alerts").text.lower()
    assert "1 held" in driver.find_element(By.ID, "summary").text
    shot(driver, f"{prefix}-4-overview-held")
    go(driver, By.ID, "logout")

    log_in_as(driver, url, "alice")
    go(driver, By.LINK_TEXT, mouse)
    assert not driver.find_elements(By.ID, "weigh-form")  # a trainer decides, does not weigh
    driver.find_element(By.ID, "release-reason").send_keys("vet checked: bright and active")
    shot(driver, f"{prefix}-5-release-form")
    go(driver, By.ID, "release-submit")
    assert f"{mouse} released for today: vet checked: bright and active" in (
        driver.find_element(By.CSS_SELECTOR, ".flash.ok").text
    )
    assert "Cleared" in driver.find_element(By.ID, "gate").text
    timeline = driver.find_element(By.ID, "timeline").text
    assert "release the welfare hold for today" in timeline and "web/alice" in timeline
    shot(driver, f"{prefix}-6-released")
    go(driver, By.LINK_TEXT, "Lab")
    assert row_of(driver, mouse).get_attribute("data-gate") == "cleared"
