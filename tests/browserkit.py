"""Headless Chromium (Debian's, through Selenium) against a real `sharedroot serve`:
the server, the browser and the few moves every dashboard test makes."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from apikit import free_port
from conftest import SHAREDROOT
from sharedroot.model.access import ApiRole
from sharedroot.store.serverdb import ServerStore

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT = 20.0  # seconds for a page or a job (a loaded 2-core machine)


@dataclass(frozen=True)
class Server:
    url: str
    home: Path
    tokens: dict[ApiRole, str]


@contextmanager
def serving(home: Path) -> Iterator[str]:
    """`sharedroot serve` on a free loopback port, until the block ends; its URL."""
    port = free_port()
    with open(home / "serve.log", "wb") as log:
        proc = subprocess.Popen(
            [SHAREDROOT, "--home", str(home), "serve", "--host", "127.0.0.1", "--port", str(port)],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + WAIT
        try:
            while True:
                try:
                    urllib.request.urlopen(f"{url}/login", timeout=1).close()
                    break
                except OSError:
                    assert proc.poll() is None, (home / "serve.log").read_text()
                    assert time.monotonic() < deadline, "the server did not answer"
                    time.sleep(0.1)
            yield url
        finally:
            proc.terminate()
            proc.wait(10)


def add_tokens(home: Path, roles: Iterable[ApiRole]) -> dict[ApiRole, str]:
    store = ServerStore(home)
    try:
        return {role: store.add_token(role.value, role) for role in roles}
    finally:
        store.close()


@contextmanager
def chromium() -> Iterator[webdriver.Chrome]:
    # Debian's Chromium and its driver, named outright: Selenium Manager is skipped
    # (a driver path is given) and told to stay offline were it ever asked.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SE_OFFLINE", "true")
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
            options.add_argument(arg)
        options.add_argument("--window-size=1400,1000")
        driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
        driver.implicitly_wait(0)
        try:
            yield driver
        finally:
            driver.quit()


def artifact_dir(factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go: $SHAREDROOT_ARTIFACTS (CI keeps it), else a temporary dir."""
    where = os.environ.get("SHAREDROOT_ARTIFACTS")
    path = Path(where) if where else factory.mktemp("artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


def wait_for(
    driver: webdriver.Chrome,
    check: Callable[[webdriver.Chrome], object],
    what: str,
    within: float = WAIT,
) -> None:
    # a live page swaps its parts: an element read just as it was replaced is read again
    WebDriverWait(driver, within, ignored_exceptions=[StaleElementReferenceException]).until(
        check, message=what
    )


def sign_in(driver: webdriver.Chrome, server: Server, token: str, page: str = "/") -> None:
    driver.delete_all_cookies()
    driver.get(server.url + page)
    wait_for(driver, lambda d: "/login" in d.current_url, "sent to sign in")
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.ID, "sign-in").click()
    wait_for(driver, lambda d: "/login" not in d.current_url, "signed in")


def accept_confirm(driver: webdriver.Chrome) -> None:
    def alert(d: webdriver.Chrome) -> bool:
        try:
            d.switch_to.alert.accept()
            return True
        except NoAlertPresentException:
            return False

    wait_for(driver, alert, "a confirm dialog")


def texts(driver: webdriver.Chrome, css: str) -> list[str]:
    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, css)]


def chip_states(driver: webdriver.Chrome) -> dict[str, str]:
    """A rollout page's clones and the state each chip shows, read in one go (the live
    page may be drawn anew between two reads)."""
    got: dict[str, str] = driver.execute_script(
        "return Object.fromEntries([...document.querySelectorAll('.wave .chip')]"
        ".map((e) => [e.id.replace(/^chip-/, ''), e.dataset.state]));"
    )
    return got


def rollout_state(driver: webdriver.Chrome) -> str | None:
    """The state a rollout page shows."""
    return driver.find_element(By.ID, "rollout-body").get_attribute("data-state")
