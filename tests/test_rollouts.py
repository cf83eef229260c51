"""Rollouts: waves of `migrate --reboot` with `verify` as the gate, run by their own process.

Fast tests drive real rollouts on a real store without a boot: their clones' migrate is
refused by the CLI itself (a gold slot nobody filled), so the
waves, the flags and max failures are seen for real, with the CLI's own messages. One
boot test moves two running clones from the dashboard in headless Chromium, pausing
after the canary.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

import browserkit as bk
from conftest import SHAREDROOT, BootSite, Ran
from sharedroot.api import rollouts as ro
from sharedroot.api.rollout_runner import run_rollout
from sharedroot.model.access import ApiRole
from sharedroot.model.rollout import CloneState, RolloutState, next_wave, plan, state_of_step
from sharedroot.store.rollouts import RolloutStore
from sharedroot.store.serverdb import ServerStore

P, OK, FAILED = CloneState.PENDING, CloneState.OK, CloneState.FAILED
EMPTY_SLOT = "migrate: gold slot 1 (S10GOLD) holds nothing yet; run ro2gold --slot 1"


# -- the plan, as pure functions


def test_the_canary_goes_alone_until_one_passes() -> None:
    names = ["A", "B", "C", "D", "E"]
    assert plan([(n, P) for n in names], 2) == [["A"], ["B", "C"], ["D", "E"]]
    assert next_wave([("A", FAILED), ("B", P), ("C", P)], 3) == ["B"]  # a new canary
    assert next_wave([("A", FAILED), ("B", OK), ("C", P), ("D", P)], 3) == ["C", "D"]
    assert plan([("A", OK), ("B", P), ("C", P), ("D", P)], 2) == [["B", "C"], ["D"]]
    assert plan([("A", OK), ("B", OK)], 2) == []


def test_migrate_steps_tell_the_clone_state() -> None:
    # The lines migrate --reboot writes (workflows/migrate.py, relink.py, guest.py).
    assert state_of_step("wave 1: stopping LNX227, LNX228") == (
        CloneState.STOPPING,
        ["LNX227", "LNX228"],
    )
    assert state_of_step("LNX227: LINK S10GOLD2 21Bx RR (gold slot 1 -> 2)") == (
        CloneState.RELINKING,
        ["LNX227"],
    )
    assert state_of_step("LNX227: merge /local/etc (slot 1 template -> slot 2)") == (
        CloneState.MERGING_ETC,
        ["LNX227"],
    )
    assert state_of_step("wave 1: starting LNX227") == (CloneState.BOOTING, ["LNX227"])
    assert state_of_step("waiting until LNX228 is ready") == (CloneState.BOOTING, ["LNX228"])
    assert state_of_step("LNX227: /etc/bash.bashrc: changed on both sides") is None


# -- a real site, real rollout processes


@pytest.fixture
def fleet(cli: Callable[..., Ran], home: Path) -> Path:
    """A fresh site whose gold slots hold nothing, with read-only clones LNX1-3 defined."""
    assert cli("init").code == 0
    for g in ("LNX1", "LNX2", "LNX3"):
        assert cli("define", g, "--ro").code == 0, g
    return home


def sr(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SHAREDROOT, "--home", str(home), *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )


def show(home: Path, rollout: int) -> dict[str, Any]:
    got = sr(home, "--json", "rollout", "show", str(rollout))
    assert got.returncode == 0, got.stderr
    answer: dict[str, Any] = json.loads(got.stdout)
    return answer


def until(home: Path, rollout: int, *states: str, within: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while (now := show(home, rollout))["state"] not in states:
        assert time.monotonic() < deadline, now
        time.sleep(0.2)
    return now


def start(home: Path, *args: str) -> int:
    got = sr(home, "--json", "rollout", "start", *args)
    assert got.returncode == 0, got.stderr
    return int(json.loads(got.stdout)["id"])


def clones(view: dict[str, Any]) -> dict[str, tuple[str, int | None, str | None]]:
    return {c["clone"]: (c["state"], c["wave"], c["message"]) for c in view["clones"]}


@pytest.mark.parametrize(
    ("args", "code", "said"),
    [
        (["NOPE", "--slot", "1"], 2, "NOPE: no such guest"),
        (["S10GOLD", "--slot", "1"], 2, "S10GOLD is a gold guest, not a read-only clone"),
        (["LNX1", "--slot", "3"], 2, "slot 3: a whole number from 1 to 2"),
        (["LNX1", "--slot", "1", "--wave-size", "0"], 2, "'0' is not a whole number from 1"),
        (["LNX1", "LNX1", "--slot", "1"], 2, "clones named twice: LNX1"),
        (["LNX1", "--from-slot", "1", "--slot", "2"], 2, "name the clones, or --from-slot"),
        (["--from-slot", "1", "--slot", "2"], 2, "no read-only clone links gold slot 1"),
        (["LNX1"], 2, "--slot N (the gold slot to move to) is needed"),
        (["lnx 1", "--slot", "1"], 2, "must be 1-8 characters"),
    ],
)
def test_a_bad_rollout_is_refused_before_it_starts(
    fleet: Path, cli: Callable[..., Ran], args: list[str], code: int, said: str
) -> None:
    got = cli("rollout", "start", *args)
    assert (got.code, said in got.err) == (code, True), got.err
    assert cli("--json", "rollout", "list").json() == []


def test_the_others_take_one_id(fleet: Path, cli: Callable[..., Ran]) -> None:
    assert cli("rollout", "show").code == 2
    assert cli("rollout", "pause", "x").code == 2
    assert cli("rollout", "list", "--slot", "1").code == 2
    got = cli("rollout", "show", "7")
    assert (got.code, got.err) == (1, "sharedroot: rollout 7: no such rollout\n")


def test_failures_beyond_max_failures_fail_the_rollout(fleet: Path) -> None:
    rid = start(fleet, "LNX1", "LNX2", "LNX3", "--slot", "1", "--max-failures", "1")
    view = until(fleet, rid, "failed")
    # Canaries one by one (none passed); the third clone is never touched.
    assert clones(view) == {
        "LNX1": ("failed", 1, EMPTY_SLOT),
        "LNX2": ("failed", 2, EMPTY_SLOT),
        "LNX3": ("pending", None, None),
    }
    assert "2 clone(s) failed (LNX1, LNX2), more than max failures 1" in view["message"]
    log = Path(view["clones"][0]["log"]).read_text()
    assert "> sharedroot migrate LNX1 --slot 1 --reboot --parallel 1 --yes" in log
    # A second rollout may take the clones now that this one has ended.
    assert show(fleet, start(fleet, "LNX3", "--slot", "1"))["clones"][0]["clone"] == "LNX3"


def test_a_wave_moves_its_clones_in_one_migrate(fleet: Path) -> None:
    store = RolloutStore(fleet)
    try:
        rid = store.add_rollout(["LNX1", "LNX2", "LNX3"], 1, 2, False, 5, {"clones": []}, "t")
        store.set_clone(rid, "LNX1", CloneState.OK, first=True)  # its canary has passed
        assert run_rollout(fleet, rid) == 0
        view = ro.view(store, ro.one(store, rid))
        wave_log = store.wave_log(rid, 1)
    finally:
        store.close()
    assert clones(view) == {
        "LNX1": ("ok", None, None),
        "LNX2": ("failed", 1, EMPTY_SLOT),
        "LNX3": ("failed", 1, EMPTY_SLOT),
    }
    assert view["waves"] == [{"wave": 1, "clones": ["LNX2", "LNX3"]}]
    for c in view["clones"][1:]:
        log = Path(c["log"]).read_text()
        assert "> sharedroot migrate LNX2 LNX3 --slot 1 --reboot --parallel 2 --yes" in log
        assert f"> the wave's whole log: {wave_log}" in log
    assert "gold slot 1 (S10GOLD) holds nothing yet" in wave_log.read_text()


def test_a_rollout_holds_its_clones(fleet: Path) -> None:
    rid = start(
        fleet, "LNX1", "LNX2", "--slot", "1", "--pause-after-each-wave", "--max-failures", "5"
    )
    until(fleet, rid, "paused")
    again = sr(fleet, "rollout", "start", "LNX2", "--slot", "1")
    assert again.returncode == 1
    assert f"already in a rollout that has not ended: LNX2 (rollout {rid})" in again.stderr


def test_pause_resume_and_abort(fleet: Path) -> None:
    rid = start(
        fleet, "LNX1", "LNX2", "LNX3", "--slot", "1", "--pause-after-each-wave",
        "--max-failures", "5",
    )  # fmt: skip
    view = until(fleet, rid, "paused")
    assert view["message"] == "paused after wave 1"
    assert clones(view)["LNX1"] == ("failed", 1, EMPTY_SLOT)
    assert view["planned"] == [["LNX2"], ["LNX3"]]
    assert sr(fleet, "rollout", "resume", str(rid)).returncode == 0
    view = until(fleet, rid, "paused")
    assert view["message"] == "paused after wave 2"
    assert clones(view)["LNX2"] == ("failed", 2, EMPTY_SLOT)
    assert show(fleet, rid)["state"] == "paused"
    aborted = json.loads(sr(fleet, "--json", "rollout", "abort", str(rid)).stdout)
    assert (aborted["state"], aborted["message"]) == ("aborted", "aborted while paused")
    assert clones(aborted)["LNX3"] == ("pending", None, None)
    for act in ("resume", "retry", "pause", "abort"):
        got = sr(fleet, "rollout", act, str(rid))
        assert got.returncode == 1 and "aborted" in got.stderr, (act, got.stderr)


def test_retry_takes_up_the_failed_clones_only(fleet: Path) -> None:
    rid = start(fleet, "LNX1", "LNX2", "--slot", "1")
    until(fleet, rid, "failed")
    assert sr(fleet, "rollout", "retry", str(rid)).returncode == 0
    view = until(fleet, rid, "failed")
    assert clones(view) == {"LNX1": ("failed", 2, EMPTY_SLOT), "LNX2": ("pending", None, None)}
    assert [c["attempts"] for c in view["clones"]] == [2, 0]
    assert view["waves"] == [{"wave": 2, "clones": ["LNX1"]}]  # each clone's latest wave


def test_flags_set_before_the_process_begins(fleet: Path) -> None:
    store = RolloutStore(fleet)
    try:
        paused = store.add_rollout(["LNX1"], 1, 1, False, 0, {"clones": ["LNX1"]}, "t")
        store.set_flag(paused, "pause", True)
        assert run_rollout(fleet, paused) == 0
        row = store.rollout(paused)
        assert row is not None and (row.state.value, row.message) == ("paused", "paused")
        aborted = store.add_rollout(["LNX2"], 1, 1, False, 0, {"clones": ["LNX2"]}, "t")
        store.set_flag(aborted, "abort", True)
        assert run_rollout(fleet, aborted) == 0
        row = store.rollout(aborted)
        assert row is not None and (row.state.value, row.message) == (
            "aborted",
            "aborted before LNX2",
        )
        assert [c.attempts for c in store.clones(aborted)] == [0]
        assert run_rollout(fleet, aborted) == 1  # ended: a second process does nothing
    finally:
        store.close()


def test_a_rollout_whose_process_died_ends_failed(fleet: Path) -> None:
    store = RolloutStore(fleet)
    try:
        rid = store.add_rollout(["LNX1", "LNX2"], 1, 1, False, 0, {"clones": ["x"]}, "t")
        assert store.move(rid, [RolloutState.PENDING], RolloutState.RUNNING)
        gone = subprocess.Popen(["true"])
        gone.wait()
        store.set_runner(rid, gone.pid, "1")
        store.set_clone(rid, "LNX1", CloneState.MERGING_ETC, first=True)
        ro.settle(store)
        view = ro.view(store, ro.one(store, rid))
    finally:
        store.close()
    assert view["state"] == "failed"
    assert view["message"].endswith("(killed?); caught mid-step: LNX1")
    assert clones(view)["LNX1"][0] == "failed"
    assert clones(view)["LNX2"][0] == "pending"


def test_an_earlier_server_db_gains_the_tables(fleet: Path) -> None:
    ServerStore(fleet).close()
    with sqlite3.connect(fleet / "server/server.db") as db:
        db.execute("DROP TABLE rollout_clones")
        db.execute("DROP TABLE rollouts")
    store = RolloutStore(fleet)
    try:
        assert store.rollouts() == []
    finally:
        store.close()


# -- the API, served by `sharedroot serve`


@pytest.fixture
def server(fleet: Path) -> Iterator[tuple[str, dict[str, str]]]:
    tokens = {
        role: sr(fleet, "token", "add", role, "--role", role).stdout.split()[-1]
        for role in ("viewer", "operator")
    }
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [SHAREDROOT, "--home", str(fleet), "serve", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{base}/openapi.json", timeout=2).close()
            break
        except OSError:
            assert time.monotonic() < deadline and proc.poll() is None, "serve did not start"
            time.sleep(0.2)
    yield base, tokens
    proc.terminate()
    proc.wait()


def call(
    base: str, token: str, method: str, path: str, body: object = None
) -> tuple[int, Any, dict[str, str]]:
    request = urllib.request.Request(
        base + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            code, text, headers = answer.status, answer.read(), answer.headers
    except urllib.error.HTTPError as exc:
        code, text, headers = exc.code, exc.read(), exc.headers
    if headers.get_content_type() == "application/json":
        return code, json.loads(text), dict(headers)
    return code, text.decode(), dict(headers)


def test_the_api(server: tuple[str, dict[str, str]], fleet: Path) -> None:
    base, tokens = server
    body = {"clones": ["LNX1", "LNX2"], "slot": 1, "pause_after_each_wave": True,
            "max_failures": 3}  # fmt: skip
    assert call(base, tokens["viewer"], "POST", "/api/v1/rollouts", body)[0] == 403
    code, answer, _ = call(base, tokens["operator"], "POST", "/api/v1/rollouts",
                           {**body, "wave_size": 0})  # fmt: skip
    assert (code, answer["detail"]) == (400, "wave size 0: a whole number from 1 to 1000")
    code, answer, _ = call(base, tokens["operator"], "POST", "/api/v1/rollouts",
                           {**body, "clones": ["S10RWMNT"]})  # fmt: skip
    assert code == 400 and "not a read-only clone" in answer["detail"]
    code, answer, headers = call(base, tokens["operator"], "POST", "/api/v1/rollouts", body)
    assert code == 202 and headers["location"] == f"/api/v1/rollouts/{answer['id']}"
    path = headers["location"]
    deadline = time.monotonic() + 60
    while (view := call(base, tokens["viewer"], "GET", path)[1])["state"] != "paused":
        assert time.monotonic() < deadline, view
        time.sleep(0.2)
    assert clones(view)["LNX1"] == ("failed", 1, EMPTY_SLOT)
    log = call(base, tokens["viewer"], "GET", f"{path}/clones/LNX1/log")
    assert log[0] == 200 and "holds nothing yet" in log[1]
    assert call(base, tokens["viewer"], "POST", f"{path}/abort")[0] == 403
    code, view, _ = call(base, tokens["operator"], "POST", f"{path}/abort")
    assert (code, view["state"]) == (200, "aborted")
    listed = call(base, tokens["viewer"], "GET", "/api/v1/rollouts")[1]
    assert [r["id"] for r in listed] == [view["id"]]
    assert call(base, tokens["viewer"], "GET", "/api/v1/rollouts/99")[0] == 404


# -- with real guests


CLONES = ("LNX241", "LNX242", "LNX243")


@pytest.fixture(scope="module")
def three_clones(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BootSite]:
    """Three read-only clones running on gold slot 1; slot 2 holds the same gold, promoted
    after them."""
    s = BootSite.installed(tmp_path_factory, "rollout")
    s.run("mnt2gold", "--yes")
    s.run("mnt2rogld", "--yes")
    s.run("ro2gold", "--slot", "1", "--yes")
    for n, g in enumerate(CLONES, start=41):
        s.run("define", g, "--ro", "--hostname", g.lower(), "--ip", f"10.0.2.{n}",
              "--gateway", "10.0.2.2")  # fmt: skip
    s.run("clonero", *CLONES, "--yes")  # they link slot 1, the current one
    s.start(*CLONES)
    s.run("ro2gold", "--slot", "2", "--yes")  # nobody links slot 2: allowed meanwhile
    yield s
    for g in CLONES:
        s.run("stop", g, "--timeout", "30", check=False)


BOOTS = 1800.0  # seconds for a wave of real boots under TCG on a loaded machine


@pytest.mark.boot
@pytest.mark.skipif(os.geteuid() != 0, reason="guests need root (loop mounts, QEMU)")
def test_running_clones_pause_after_the_canary_then_move_side_by_side(
    three_clones: BootSite, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Started from the dashboard's form, followed live in the browser, resumed there (the
    second wave's two clones in one migrate); then a verify started from a clone's page,
    its steps shown while it runs."""
    home = three_clones.home
    shots = bk.artifact_dir(tmp_path_factory)
    tokens = bk.add_tokens(home, [ApiRole.OPERATOR])
    with bk.serving(home) as url, bk.chromium() as browser:
        bk.sign_in(browser, bk.Server(url, home, tokens), tokens[ApiRole.OPERATOR], "/rollouts")
        browser.find_element(By.ID, "ro-clones").send_keys(" ".join(CLONES))
        Select(browser.find_element(By.ID, "ro-slot")).select_by_value("2")
        browser.find_element(By.ID, "ro-wave").clear()
        browser.find_element(By.ID, "ro-wave").send_keys("2")
        browser.find_element(By.ID, "ro-pause").click()
        browser.find_element(By.ID, "ro-start").click()
        bk.accept_confirm(browser)
        bk.wait_for(browser, lambda d: "/rollouts/" in d.current_url, "on the rollout's page")
        rid = int(browser.current_url.rsplit("/", 1)[1])
        seen: set[str] = set()  # the canary's states as the live page drew them

        def paused(d: object) -> bool:
            seen.add(bk.chip_states(browser).get("LNX241", ""))
            return bk.rollout_state(browser) == "paused"

        bk.wait_for(browser, paused, "paused after the canary", BOOTS)
        assert bk.chip_states(browser) == {"LNX241": "ok", "LNX242": "pending", "LNX243": "pending"}
        assert seen & {"stopping", "relinking", "merging_etc", "booting", "verifying"}, seen
        browser.save_screenshot(str(shots / "rollout-paused.png"))
        view = show(home, rid)
        assert clones(view) == {
            "LNX241": ("ok", 1, None),
            "LNX242": ("pending", None, None),
            "LNX243": ("pending", None, None),
        }
        assert view["selection"] == {"clones": list(CLONES)}
        assert view["planned"] == [["LNX242", "LNX243"]]
        assert three_clones.state("LNX241") == "logged_on"
        log = Path(view["clones"][0]["log"]).read_text()
        assert "> wave 1: stopping LNX241" in log and "> wave 1: starting LNX241" in log
        assert "> sharedroot verify LNX241" in log and log.endswith("> ok\n")
        browser.find_element(By.ID, "rollout-resume").click()
        bk.wait_for(browser, lambda d: bk.rollout_state(d) in ("succeeded", "failed"), "end", BOOTS)
        assert bk.chip_states(browser) == dict.fromkeys(CLONES, "ok")
        assert bk.rollout_state(browser) == "succeeded", show(home, rid)
        bk.wait_for(
            browser, lambda d: d.find_element(By.ID, "live").text == "ended: succeeded", "end"
        )
        browser.save_screenshot(str(shots / "rollout-succeeded.png"))

        # A verify started from a clone's page: its steps arrive while it runs.
        browser.get(url + "/guests/LNX242")
        browser.find_element(By.ID, "act-verify").click()
        bk.accept_confirm(browser)
        bk.wait_for(browser, lambda d: "/jobs/" in d.current_url, "on the verify job's page")
        early: list[str] = []

        def ended(d: webdriver.Chrome) -> bool:
            done = d.find_element(By.ID, "live").text.startswith("ended")
            if not done and not early:
                early.extend(bk.texts(d, "#events li"))
            return done

        bk.wait_for(browser, ended, "the verify's end", BOOTS)
        assert early, "no step was shown before the verify ended"
        assert browser.find_element(By.ID, "live").text == "ended: succeeded"
        steps = bk.texts(browser, "#events li")
        assert any("LNX242: the writable and read-only file systems" in t for t in steps), steps
        browser.save_screenshot(str(shots / "verify-live.png"))
    view = show(home, rid)
    assert view["state"] == "succeeded", view
    assert clones(view) == {
        "LNX241": ("ok", 1, None),
        "LNX242": ("ok", 2, None),
        "LNX243": ("ok", 2, None),
    }
    for clone in ("LNX242", "LNX243"):  # one migrate stopped, moved and booted them both
        log = Path(next(c["log"] for c in view["clones"] if c["clone"] == clone)).read_text()
        assert "> wave 1: stopping LNX242, LNX243" in log
        assert "> wave 1: starting LNX242, LNX243" in log
        assert log.endswith("> ok\n")
    assert "S10GOLD2 LINKS: [[GOLD 2]] LNX241 LNX242 LNX243" in three_clones.run("linked").stdout
