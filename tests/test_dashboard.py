"""The dashboard in a real headless Chromium, against a real `sharedroot serve`.

The site is made by `init` and `define` (read-only clones, linked to the gold slots as
clonero leaves them); nothing is installed or booted. The jobs started are ones that
really run on such a site: `mnt2tst` (copies the maintenance disks) and `verify`
(refused at once: the clone was never filled).
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from browserkit import (
    WAIT,
    Server,
    accept_confirm,
    add_tokens,
    artifact_dir,
    chip_states,
    chromium,
    rollout_state,
    serving,
    sign_in,
    texts,
    wait_for,
)
from sharedroot.cli.main import main
from sharedroot.model.access import ApiRole
from sharedroot.model.layout import gold_ro_address
from sharedroot.model.types import Mode
from sharedroot.workflows.context import Site

# clone -> the gold holder it links (slot 1 is current and holds generation 1)
CLONES = {"LNX001": "S10GOLD", "LNX002": "S10GOLD", "LNX003": "S10GOLD2", "LNX004": None}


def make_site(home: Path) -> None:
    assert main(["--home", str(home), "init", "--layout", "paper"]) == 0
    for name in CLONES:
        assert main(["--home", str(home), "define", name, "--ro"]) == 0
    site = Site.open(home)
    with site.state.transaction():
        for name, holder in CLONES.items():
            for d in site.config.layout.shared if holder else ():
                site.hv.link(name, d.address, holder, gold_ro_address(d.address), Mode.RR)
        site.state.add_generation(1, "S10ROGLD", {}, {})
        site.state.set_current_slot(1)
    site.state.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("dash") / "site"
    make_site(home)
    tokens = add_tokens(home, ApiRole)
    with serving(home) as url:
        yield Server(url, home, tokens)


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    with chromium() as driver:
        yield driver


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return artifact_dir(tmp_path_factory)


def test_overview_shows_the_slots_and_their_clones(
    browser: webdriver.Chrome, server: Server, artifacts: Path
) -> None:
    sign_in(browser, server, server.tokens[ApiRole.ADMIN])
    assert browser.current_url == server.url + "/"
    slot1 = browser.find_element(By.ID, "slot-1")
    assert "current" in slot1.get_attribute("class").split()  # type: ignore[union-attr]
    assert slot1.find_element(By.CSS_SELECTOR, ".gen").text == "1"
    assert texts(browser, "#slot-1 .chip") == ["LNX001", "LNX002"]
    assert texts(browser, "#slot-2 .chip") == ["LNX003"]
    assert texts(browser, "#slot-1 .count") == ["2 clones"]
    assert "current" not in texts(browser, "#slot-2 .badge")
    assert browser.find_element(By.ID, "curgold").text == "1"
    assert {b.text.rstrip(" →") for b in browser.find_elements(By.CSS_SELECTOR, "button.op")} >= {
        "mnt2tst",
        "ro2gold",
    }
    browser.save_screenshot(str(artifacts / "overview.png"))


def test_mnt2tst_from_the_overview_runs_live_on_its_job_page(
    browser: webdriver.Chrome, server: Server, artifacts: Path
) -> None:
    sign_in(browser, server, server.tokens[ApiRole.OPERATOR])
    browser.find_element(By.ID, "op-mnt2tst").click()
    accept_confirm(browser)
    wait_for(browser, lambda d: "/jobs/" in d.current_url, "on the job's page")
    job = browser.current_url.rsplit("/", 1)[1]
    live = browser.find_element(By.ID, "live")
    wait_for(browser, lambda d: live.text.startswith("ended"), "the job's end")
    assert live.get_attribute("data-status") == "succeeded", live.text
    steps = texts(browser, "#events li.step")
    assert steps[0] == "copy S10RWMNT 01B0 to S10RWTST 01B0"
    assert "copy S10RWMNT 01B8 to S10RWTST 01B8" in steps
    assert texts(browser, "#events li.end") == ["succeeded"]
    bar = browser.find_element(By.ID, "bar")
    assert bar.get_attribute("value") == bar.get_attribute("max")
    # the summary is fetched anew once the job has ended
    wait_for(browser, lambda d: "succeeded" in d.find_element(By.ID, "job-summary").text, "summary")
    # every event the API holds reached the page, in order
    events = api(server, f"/api/v1/jobs/{job}", ApiRole.VIEWER)
    assert events["status"] == "succeeded" and events["user"] == "operator"
    browser.save_screenshot(str(artifacts / "job.png"))


def test_guest_list_filters_and_bulk_verify(
    browser: webdriver.Chrome, server: Server, artifacts: Path
) -> None:
    sign_in(browser, server, server.tokens[ApiRole.OPERATOR], "/guests")
    assert browser.current_url == server.url + "/guests"
    names = texts(browser, "#guest-table tbody td:nth-child(2)")
    assert {"S10RWMNT", "S10GOLD", *CLONES} <= set(names)
    browser.save_screenshot(str(artifacts / "guests.png"))
    browser.get(server.url + "/guests?slot=1")
    assert texts(browser, "#guest-table tbody td:nth-child(2)") == ["LNX001", "LNX002"]
    Select(browser.find_element(By.NAME, "slot")).select_by_value("2")
    wait_for(browser, lambda d: d.find_element(By.ID, "shown").text == "1 of 11", "slot 2")
    assert texts(browser, "#guest-table tbody td:nth-child(2)") == ["LNX003"]
    # the text filter narrows the list as one types (htmx swaps the table in place)
    browser.get(server.url + "/guests?role=ro")
    browser.find_element(By.ID, "q").send_keys("lnx00")
    wait_for(browser, lambda d: "q=lnx00" in d.current_url, "the filter in the address")
    wait_for(browser, lambda d: d.find_element(By.ID, "shown").text == "4 of 11", "filtered")
    assert texts(browser, "#guest-table tbody td:nth-child(2)") == sorted(CLONES)
    for box in browser.find_elements(By.CSS_SELECTOR, "input.pick"):
        if box.get_attribute("value") in ("LNX003", "LNX004"):
            box.click()
    browser.find_element(By.ID, "bulk-verify").click()
    accept_confirm(browser)
    wait_for(browser, lambda d: len(texts(d, "#results .note")) == 2, "two jobs listed")
    notes = texts(browser, "#results .note")
    assert sorted(n.split(": ", 1)[1].split(" (")[0] for n in notes) == [
        "verify LNX003",
        "verify LNX004",
    ], notes
    # the job ends (refused: never cloned) and shows in the guest's verify history
    job = browser.find_element(By.CSS_SELECTOR, "#results .note a").get_attribute("href")
    assert job is not None
    wait_for_job(server, int(job.rsplit("/", 1)[1]))
    browser.get(server.url + "/guests/LNX004")
    history = browser.find_element(By.XPATH, "//h2[.='Verify history']/following-sibling::table")
    wait_for(browser, lambda d: "failed" in history.text, "a verify in the history")
    assert "clonero LNX004" in history.text


def test_a_viewer_sees_no_action_buttons(browser: webdriver.Chrome, server: Server) -> None:
    sign_in(browser, server, server.tokens[ApiRole.VIEWER])
    assert browser.find_elements(By.CSS_SELECTOR, "button.op") == []
    assert texts(browser, "span.op")  # the pipeline's arrows, named but not buttons
    for page in ("/guests", "/guests/LNX001", "/slots", "/jobs", "/rollouts"):
        browser.get(server.url + page)
        actions = browser.find_elements(By.CSS_SELECTOR, "input.pick, [data-bulk], [hx-post]")
        assert [a.get_attribute("hx-post") for a in actions] == ["/logout"], page
    assert "Tokens" not in browser.find_element(By.TAG_NAME, "nav").text
    browser.get(server.url + "/tokens")
    assert "admin token is needed" in browser.page_source
    browser.get(server.url + "/")
    browser.find_element(By.XPATH, "//button[.='sign out']").click()
    wait_for(browser, lambda d: "/login" in d.current_url, "signed out")
    browser.get(server.url + "/guests")
    assert "/login" in browser.current_url


def test_a_rollout_from_its_form_pauses_shows_the_failed_log_and_aborts(
    browser: webdriver.Chrome, server: Server, artifacts: Path
) -> None:
    """Gold slot 2 holds nothing here, so each clone's migrate is refused by the CLI:
    the canary fails, for real, and the rollout pauses after it."""
    sign_in(browser, server, server.tokens[ApiRole.OPERATOR], "/rollouts")
    assert "on" in (browser.find_element(By.LINK_TEXT, "Rollouts").get_attribute("class") or "")
    assert texts(browser, "#rollout-table tbody td") == ["no rollout yet"]
    Select(browser.find_element(By.ID, "ro-from")).select_by_value("1")
    Select(browser.find_element(By.ID, "ro-slot")).select_by_value("2")
    for field, value in (("ro-wave", "2"), ("ro-max", "5")):
        browser.find_element(By.ID, field).clear()
        browser.find_element(By.ID, field).send_keys(value)
    browser.find_element(By.ID, "ro-pause").click()
    browser.find_element(By.ID, "ro-start").click()
    accept_confirm(browser)
    wait_for(browser, lambda d: "/rollouts/" in d.current_url, "on the rollout's page")
    rollout = int(browser.current_url.rsplit("/", 1)[1])
    wait_for(browser, lambda d: rollout_state(d) == "paused", "paused after the canary")
    assert chip_states(browser) == {"LNX001": "failed", "LNX002": "pending"}
    wait_for(
        browser, lambda d: texts(d, ".wave-title") == ["wave 1", "wave 2 (planned)"], "the waves"
    )
    assert browser.find_element(By.ID, "rollout-message").text == "paused after wave 1"
    assert browser.find_element(By.ID, "live").text == "live"
    made = api(server, f"/api/v1/rollouts/{rollout}")
    assert (made["selection"], made["slot"], made["wave_size"], made["max_failures"]) == (
        {"from_slot": 1},
        2,
        2,
        5,
    )
    assert made["pause_after_each_wave"] is True and made["user"] == "operator"
    browser.save_screenshot(str(artifacts / "rollout-failed-canary.png"))
    # the failed clone's log, one click away
    browser.find_element(By.CSS_SELECTOR, "#chip-LNX001 a.log").click()
    wait_for(browser, lambda d: "/clones/LNX001/log" in d.current_url, "the clone's log")
    log = browser.find_element(By.TAG_NAME, "pre").text
    assert "> sharedroot migrate LNX001 --slot 2 --reboot --parallel 1 --yes" in log
    assert "gold slot 2 (S10GOLD2) holds nothing yet" in log
    browser.back()
    wait_for(browser, lambda d: d.find_elements(By.ID, "rollout-abort"), "the page again")
    wait_for(
        browser,
        lambda d: texts(d, "#rollout-actions button") == ["resume", "abort", "retry"],
        "actions",
    )
    browser.find_element(By.ID, "rollout-abort").click()
    accept_confirm(browser)
    wait_for(browser, lambda d: rollout_state(d) == "aborted", "aborted")
    wait_for(browser, lambda d: d.find_element(By.ID, "live").text == "ended: aborted", "ended")
    wait_for(browser, lambda d: texts(d, ".wave-title") == ["wave 1", "not reached"], "the waves")
    wait_for(browser, lambda d: texts(d, "#rollout-actions button") == [], "no action left")
    browser.get(server.url + "/rollouts")
    row = texts(browser, "#rollout-table tbody tr")
    assert len(row) == 1 and row[0].startswith(f"{rollout} aborted 2 2 1 1 failed 1 pending")
    # a viewer sees the rollout, and neither the form nor its buttons
    sign_in(browser, server, server.tokens[ApiRole.VIEWER], f"/rollouts/{rollout}")
    assert chip_states(browser) == {"LNX001": "failed", "LNX002": "pending"}
    assert browser.find_elements(By.CSS_SELECTOR, "#rollout-actions, #new-rollout") == []


def test_a_bad_token_is_refused(browser: webdriver.Chrome, server: Server) -> None:
    browser.delete_all_cookies()
    browser.get(server.url + "/login")
    browser.find_element(By.ID, "token").send_keys("sr_" + "x" * 43)
    browser.find_element(By.ID, "sign-in").click()
    wait_for(browser, lambda d: d.find_elements(By.ID, "login-error"), "refused")
    assert browser.get_cookies() == []
    browser.get(server.url + "/guests")
    assert "/login" in browser.current_url
    with pytest.raises(urllib.error.HTTPError) as err:  # an API client: JSON and 401
        post(server, "/login", b"token=sr_" + b"x" * 43)
    assert err.value.code == 401


def test_tokens_page_adds_shows_once_and_revokes(browser: webdriver.Chrome, server: Server) -> None:
    sign_in(browser, server, server.tokens[ApiRole.ADMIN], "/tokens")
    browser.find_element(By.ID, "token-name").send_keys("robot")
    browser.find_element(By.ID, "token-add").click()
    shown = browser.find_element(By.ID, "new-token-value")
    wait_for(browser, lambda d: shown.text.startswith("sr_"), "the new token")
    token = shown.text
    wait_for(browser, lambda d: "robot" in d.find_element(By.ID, "token-table").text, "listed")
    assert api(server, "/api/v1/whoami", token=token)["name"] == "robot"
    row = browser.find_element(By.XPATH, "//tr[td[1]='robot']")
    row.find_element(By.TAG_NAME, "button").click()
    accept_confirm(browser)
    wait_for(browser, lambda d: "robot" not in d.find_element(By.ID, "token-table").text, "gone")
    with pytest.raises(urllib.error.HTTPError) as err:
        api(server, "/api/v1/whoami", token=token)
    assert err.value.code == 401


def test_a_session_post_needs_the_csrf_header(server: Server) -> None:
    with post(server, "/login", f"token={server.tokens[ApiRole.OPERATOR]}".encode()) as r:
        csrf = json.load(r)["csrf"]
        cookie = r.headers["set-cookie"].split(";")[0]
    path = "/api/v1/pipeline/mnt2tst?dry_run=true"
    with pytest.raises(urllib.error.HTTPError) as err:
        post(server, path, b"{}", {"Cookie": cookie, "Content-Type": "application/json"})
    assert err.value.code == 403
    with post(
        server,
        path,
        b"{}",
        {"Cookie": cookie, "Content-Type": "application/json", "X-CSRF-Token": csrf},
    ) as r:
        assert r.status == 200 and json.load(r)["operation"] == "mnt2tst"


def test_the_guest_list_shows_1000_guests(tmp_path: Path) -> None:
    """Every guest of a large site in one plain table (its time: bench/bench_api.py)."""
    sys.path.insert(0, str(Path(__file__).parent.parent / "bench"))
    try:
        from bench_reports import GUESTS, build
    finally:
        sys.path.pop(0)
    home = tmp_path / "site"
    build(home)
    token = add_tokens(home, [ApiRole.VIEWER])[ApiRole.VIEWER]
    with serving(home) as url:
        server = Server(url, home, {ApiRole.VIEWER: token})
        page = get(server, "/guests", token)
    assert page.count('class="pick"') == 0  # a viewer: no checkboxes
    assert page.count("<tr class=") == GUESTS + 7


# -- plain HTTP


def post(
    server: Server, path: str, body: bytes, headers: dict[str, str] | None = None
) -> urllib.request._UrlopenRet:
    req = urllib.request.Request(server.url + path, body, headers or {}, method="POST")
    return urllib.request.urlopen(req, timeout=WAIT)


def get(server: Server, path: str, token: str) -> str:
    req = urllib.request.Request(server.url + path, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=WAIT) as r:
        return str(r.read().decode())


def api(
    server: Server, path: str, role: ApiRole | None = None, token: str | None = None
) -> dict[str, object]:
    answer: dict[str, object] = json.loads(
        get(server, path, token or server.tokens[role or ApiRole.VIEWER])
    )
    return answer


def wait_for_job(server: Server, job: int) -> None:
    deadline = time.monotonic() + WAIT
    while api(server, f"/api/v1/jobs/{job}")["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, f"job {job} did not end"
        time.sleep(0.2)
