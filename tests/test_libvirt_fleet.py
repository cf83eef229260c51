"""The libvirt backend on the two-host lab: one controller, clones on both hosts (real boots).

One walk (tests/libvirtwalk.py, run as scripts/hostlab's COMMAND) boots the fleet; each
test here judges one part of what it saw: placement and identity, QEMU's image locks,
the guards across hosts, the rolling migrate over both hosts, and a move between them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
HOST1, HOST2 = "qemu:///system", "qemu+tcp://127.0.0.1:16510/system"

pytestmark = [
    pytest.mark.boot,
    pytest.mark.skipif(os.geteuid() != 0, reason="libvirt's system daemons and guests need root"),
    pytest.mark.skipif(shutil.which("libvirtd") is None, reason="libvirt is not installed"),
]


@pytest.fixture(scope="module")
def walk(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("lvfleet")
    driver = [sys.executable, str(REPO / "tests" / "libvirtwalk.py"), str(work / "site")]
    ran = subprocess.run(
        [str(REPO / "scripts" / "hostlab"), str(work / "lab"), "--", *driver, str(work / "lab")],
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert ran.returncode == 0, ran.stderr[-4000:]
    seen: dict[str, Any] = json.loads(ran.stdout.splitlines()[-1])
    print(json.dumps({k: v for k, v in seen.items() if k != "console"})[:20000])
    return seen


def ok(seen: dict[str, Any], key: str) -> None:
    assert seen[key]["code"] == 0, f"{key}: {seen[key]['err']}"


def refused(seen: dict[str, Any], key: str) -> str:
    assert seen[key]["code"] == 1, f"{key}: exit {seen[key]['code']}: {seen[key]['out']}"
    return str(seen[key]["err"])


def test_clones_on_both_hosts_boot_and_pass_verify(walk: dict[str, Any]) -> None:
    assert [code for code, _ in walk["start"]] == [0, 0], walk["start"]
    assert walk["domains"] == {"1": ["LNX227"], "2": ["LNX242"]}
    hosts = {g["name"]: g["host"] for g in walk["guests"]}
    assert hosts["LNX227"] == HOST1  # define --host
    assert hosts["LNX242"] == HOST2  # the least-loaded host
    assert hosts["S10GOLD"] is None  # a gold holder never runs, so has no host
    for g in ("LNX227", "LNX242"):
        ok(walk, f"verify {g}")
        # Its identity: the parm file's host name; the SMBIOS serial is the guest name.
        assert walk[f"id {g}"] == [g.lower(), g]


def test_qemu_locks_refuse_a_read_write_open_of_the_gold(walk: dict[str, Any]) -> None:
    code, err = walk["qemu_io"]
    assert code != 0 and 'Failed to get "write" lock' in err
    assert 'Failed to get "write" lock' in walk["rw_domain"], walk["rw_domain"]


def test_guards_across_hosts(walk: dict[str, Any]) -> None:
    err = refused(walk, "ro2gold 1 linked")
    assert f"LNX242 on {HOST2}" in err and f"LNX227 on {HOST1}" in err
    gone = f"host {HOST2} cannot be reached"
    for key in ("ro2gold 1 host down", "delete host down", "guests host down"):
        assert gone in refused(walk, key)
    # Host 2's guest ran on while its daemon was away, and is found again.
    assert walk["domains after restart"] == {"1": ["LNX227"], "2": ["LNX242"]}


def test_migrate_rolls_over_both_hosts(walk: dict[str, Any]) -> None:
    ok(walk, "ro2gold 2")
    ok(walk, "migrate")
    for g in ("LNX227", "LNX242"):
        ok(walk, f"verify {g} slot 2")
    gold2 = next(h for h in walk["linked"]["holders"] if h["slot"] == 2)
    assert gold2["current"]
    assert [(c["name"], c["host"], c["running"]) for c in gold2["clones"]] == [
        ("LNX227", HOST1, True),
        ("LNX242", HOST2, True),
    ]
    assert f"LNX242 ({HOST2})" in walk["linked text"]


def test_move_to_another_host_keeps_identity_and_local(walk: dict[str, Any]) -> None:
    ok(walk, "move")
    ok(walk, "start moved")
    assert walk["domains after move"] == {"1": ["LNX227", "LNX242"], "2": []}
    ok(walk, "verify moved")
    assert walk["id moved"] == ["lnx242", "LNX242", "LNX242"]  # /local came along
    hosts = {g["name"]: g["host"] for g in walk["guests after move"]}
    assert hosts["LNX242"] == HOST1
    ok(walk, "move running")  # stopped on host 1, started on host 2, ready
    assert walk["domains after running move"] == {"1": ["LNX242"], "2": ["LNX227"]}
    assert walk["console"].strip()
