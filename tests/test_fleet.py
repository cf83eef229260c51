"""Fleets in one run: `define --from FILE`, `define GUEST... --ro`, `clonero GUEST...|--from`.

No Linux and no boots: the gold slot's templates are real filesystem images filled with
files, promoted the way ro2gold records a generation. A batch must leave the same
guests, disks, links and parm files as the commands run one guest at a time, write the
admin disk once, and keep every guarantee of the single-guest commands.
"""

from __future__ import annotations

import ctypes
import json
import os
import sqlite3
import struct
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import SHAREDROOT, BootSite, Ran, fill_disk, sparse_hash, tree_hashes
from sharedroot.model.layout import gold_ro_address
from sharedroot.workflows.attach import disk_hash
from sharedroot.workflows.context import Site

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="clonero's guards attach images")

FLEET = """\
# GUEST KIND HOSTNAME IP [key=value ...]
LNX301 ro lnx301 10.0.3.1 gateway=10.0.3.254
LNX302 ro lnx302.example.org 10.0.3.2 netmask=255.255.0.0 nameserver=10.0.0.53

LNX303 ro - -
LNX304 rw lnx304 10.0.3.4 netmask=24
"""
ONE_BY_ONE = [
    ["LNX301", "--ro", "--hostname", "lnx301", "--ip", "10.0.3.1", "--gateway", "10.0.3.254"],
    [
        "LNX302",
        "--ro",
        "--hostname",
        "lnx302.example.org",
        "--ip",
        "10.0.3.2",
        "--netmask",
        "255.255.0.0",
        "--nameserver",
        "10.0.0.53",
    ],
    ["LNX303", "--ro"],
    ["LNX304", "--rw", "--hostname", "lnx304", "--ip", "10.0.3.4", "--netmask", "24"],
]
RO = ["LNX301", "LNX302", "LNX303"]
ADMIN = Path("disks/CMSCLONE/0192.img")


@pytest.fixture(scope="module")
def gold_template(site_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A paper site whose gold slot 1 is current, its 21Bx disks filled with files."""
    home = tmp_path_factory.mktemp("fleet") / "site"
    subprocess.run(["cp", "-a", "--sparse=always", site_template, home], check=True)
    site = Site.open(home)
    holder = site.config.slot_holder(1)
    addrs = [gold_ro_address(d.address) for d in site.config.layout.copied]
    for addr in addrs:
        fill_disk(site, holder, addr, f"gold {addr}")
    hashes = {a: disk_hash(site, holder, a) for a in addrs}
    stamps = {a: s for a in addrs if (s := site.hv.stamp(holder, a))}
    with site.state.transaction():
        site.state.add_generation(1, site.config.guests.staging, hashes, stamps)
        site.state.set_current_slot(1)
    return home


@pytest.fixture
def fleet_home(gold_template: Path, home: Path) -> Path:
    subprocess.run(["cp", "-a", "--sparse=always", gold_template, home], check=True)
    (home.parent / "fleet.txt").write_text(FLEET)
    return home


def ok(ran: Ran) -> Ran:
    assert ran.code == 0, ran.err
    return ran


def admin_parm(home: Path, guest: str) -> str | None:
    """A parm file as it stands on the admin disk's image (what a guest reads)."""
    proc = subprocess.run(
        ["debugfs", "-R", f"cat /{guest}.PARM-S10", str(home / ADMIN)],
        capture_output=True,
        text=True,
        check=True,
    )
    return None if "not found" in proc.stderr else proc.stdout


def result(home: Path, cli: Callable[..., Ran], guests: list[str]) -> dict[str, object]:
    """What a site holds for `guests`: disks (read-only clones' by content), links, parms."""
    rows = {g["name"]: g for g in ok(cli("guests", "--json", home_dir=home)).json()}
    site = Site.open(home, readonly=True)
    out: dict[str, object] = {}
    for g in guests:
        disks = {
            d.address: (d.size, d.fs, sparse_hash(home / d.file) if g in RO else None)
            for d in site.state.disks(g)
        }
        out[g] = (rows[g]["role"], rows[g]["links"], rows[g]["incomplete"], disks)
        out[f"{g} parm"] = admin_parm(home, g)
    return out


def unchanged_store(home: Path) -> dict[str, str]:
    """Every file of the store by content, the database by its rows (its WAL files come
    and go with the connections of this process)."""
    files = {k: v for k, v in tree_hashes(home).items() if not k.startswith("state.db")}
    with sqlite3.connect(f"file:{home / 'state.db'}?mode=ro", uri=True) as con:
        files["state.db"] = "\n".join(con.iterdump())
    return files


def gold(home: Path) -> dict[str, str]:
    return {k: v for k, v in tree_hashes(home / "disks").items() if k.startswith("S10GOLD/")}


def test_a_batch_gives_what_one_by_one_gives(
    fleet_home: Path, tmp_path: Path, cli: Callable[..., Ran]
) -> None:
    single = tmp_path / "single"
    subprocess.run(["cp", "-a", "--sparse=always", fleet_home, single], check=True)
    for words in ONE_BY_ONE:
        ok(cli("define", *words, home_dir=single))
    for g in RO:
        ok(cli("clonero", g, "--yes", home_dir=single))

    gold_before = gold(fleet_home)
    fleet = str(fleet_home.parent / "fleet.txt")
    done = ok(cli("--json", "define", "--from", fleet)).json()
    assert (
        done["steps"][-1] == "write the PARM-S10 files for LNX301, LNX302, LNX304 on CMSCLONE 0192"
    )
    # Defined, not cloned yet: blank private disks, reported, and no start.
    rows = {g["name"]: g for g in ok(cli("guests", "--json")).json()}
    assert [rows[g]["cloned"] for g in RO] == [False] * 3 and rows["LNX304"]["cloned"] is None
    assert os.stat(fleet_home / "disks/LNX301/01B6.img").st_blocks == 0
    refused = cli("start", "LNX301")
    assert refused.code == 1 and "clonero LNX301" in refused.err
    assert ok(cli("guests")).out.count("NOT CLONED") == 3

    ok(cli("clonero", "--from", fleet, "--yes"))
    assert result(fleet_home, cli, [*RO, "LNX304"]) == result(single, cli, [*RO, "LNX304"])
    assert admin_parm(fleet_home, "LNX301") == "HostIP=10.0.3.1 Hostname=lnx301\n" + (
        "Netmask=255.255.255.0 Broadcast=10.0.3.255\nGateway=10.0.3.254\n"
    )
    rows = {g["name"]: g for g in ok(cli("guests", "--json")).json()}
    assert [rows[g]["cloned"] for g in RO] == [True] * 3
    assert gold(fleet_home) == gold_before


def test_several_names_on_the_command_line(fleet_home: Path, cli: Callable[..., Ran]) -> None:
    ok(cli("define", "LNX311", "LNX312", "--ro"))
    cloned = ok(cli("--json", "clonero", "LNX311", "LNX312", "--yes")).json()
    assert [r["guest"] for r in cloned["results"] if "slot" in r] == ["LNX311", "LNX312"]
    journal = ok(cli("--json", "journal", "--limit", "3")).json()
    assert [(j["operation"], j["args"].get("guest")) for j in journal] == [
        ("clonero", "LNX312"),
        ("clonero", "LNX311"),
        ("define", None),
    ]
    again = cli("define", "LNX313", "LNX311", "--ro")
    assert again.code == 1 and "LNX311 is already defined" in again.err
    assert "LNX313" not in ok(cli("guests")).out


class Renames:
    """Counts renames onto one name in a directory (inotify IN_MOVED_TO): each is one
    whole new image of the admin disk put in place."""

    IN_MOVED_TO = 0x80
    EVENT = struct.Struct("iIII")

    def __init__(self, directory: Path, name: str) -> None:
        self.name = name
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK)
        assert self.fd >= 0
        assert self.libc.inotify_add_watch(self.fd, bytes(directory), self.IN_MOVED_TO) >= 0

    def count(self) -> int:
        n = 0
        try:
            while data := os.read(self.fd, 65536):
                at = 0
                while at < len(data):
                    _, _, _, size = self.EVENT.unpack_from(data, at)
                    at += self.EVENT.size
                    n += data[at : at + size].rstrip(b"\0").decode() == self.name
                    at += size
        except BlockingIOError:
            pass
        return n

    def close(self) -> None:
        os.close(self.fd)


def test_the_admin_disk_is_written_once_per_batch(
    fleet_home: Path, cli: Callable[..., Ran]
) -> None:
    lines = [f"LNX{400 + i} ro lnx{400 + i} 10.0.4.{1 + i}" for i in range(12)]
    big = fleet_home.parent / "big.txt"
    big.write_text("\n".join(lines) + "\n")
    renames = Renames(fleet_home / ADMIN.parent, ADMIN.name)
    try:
        ok(cli("define", "--from", str(big)))
        assert renames.count() == 1
        ok(cli("define", "LNX420", "--ro", "--hostname", "lnx420", "--ip", "10.0.4.20"))
        assert renames.count() == 1
        ok(cli("define", "LNX421", "LNX422", "--ro"))  # no parm files: no write at all
        assert renames.count() == 0
    finally:
        renames.close()
    assert admin_parm(fleet_home, "LNX411") == (
        "HostIP=10.0.4.12 Hostname=lnx411\nNetmask=255.255.255.0 Broadcast=10.0.4.255\n"
    )


BAD = [
    ("LNX501 ro lnx501 10.0.5.256", "line 3: ip '10.0.5.256'"),
    ("LNX501 ro a;reboot 10.0.5.1", "line 3: hostname 'a;reboot'"),
    ("LNX501 xx lnx501 10.0.5.1", "line 3: kind 'xx': must be ro or rw"),
    ("LNX501 ro lnx501", "line 3: 3 fields"),
    ("LNX501 ro lnx501 10.0.5.1 gateway=10.0.6.1", "line 3: Gateway 10.0.6.1: not in"),
    ("LNX501 ro lnx501 10.0.5.1 route=x", "line 3: 'route=x': expected one of"),
    ("LNX501 ro lnx501 10.0.5.1 netmask=33", "line 3: netmask '33'"),
    ("LNX501 ro - 10.0.5.1", "line 3: hostname and ip go together"),
    ("LNX501 ro - - gateway=10.0.5.1", "line 3: netmask, gateway and nameserver need"),
    ("TOOLONGNAME ro - -", "line 3: guest name 'TOOLONGNAME'"),
    ("lnx500 ro - -", "line 3: guest LNX500 is also on line 1"),
    ("LNX501 ro other 10.0.5.0 netmask=16", "line 3: IP 10.0.5.0 is also on line 1"),
]


@pytest.mark.parametrize(("line", "words"), BAD, ids=[w.split(": ")[1] for _, w in BAD])
def test_a_bad_line_refuses_the_whole_file(
    fleet_home: Path, cli: Callable[..., Ran], line: str, words: str
) -> None:
    bad = fleet_home.parent / "bad.txt"
    bad.write_text(f"LNX500 ro lnx500 10.0.5.0 netmask=16\n# a comment\n{line}\n")
    before = unchanged_store(fleet_home)
    ran = cli("define", "--from", str(bad))
    assert ran.code == 2 and ran.err.startswith(f"sharedroot: {bad}, {words}"), ran.err
    assert len(ran.err.splitlines()) == 1
    assert unchanged_store(fleet_home) == before


def test_a_refused_guest_refuses_the_batch_and_dry_runs_write_nothing(
    fleet_home: Path, cli: Callable[..., Ran]
) -> None:
    fleet = str(fleet_home.parent / "fleet.txt")
    (fleet_home.parent / "own.txt").write_text("LNX601 ro - -\nS10RWMNT rw - -\n")
    before = unchanged_store(fleet_home)
    ran = cli("define", "--from", str(fleet_home.parent / "own.txt"))
    assert ran.code == 1 and "S10RWMNT is one of the pipeline's own guests" in ran.err
    dry = ok(cli("--json", "define", "--from", fleet, "--dry-run")).json()
    assert dry["dry_run"] and len(dry["steps"]) == 5
    assert unchanged_store(fleet_home) == before
    usages = [
        ["define", "--from", fleet, "--ro"],
        ["define", "LNX1", "LNX2", "--ro", "--hostname", "x", "--ip", "10.0.0.1"],
        ["clonero", "LNX1", "--from", fleet],
    ]
    for usage in usages:
        bad = cli(*usage)
        assert bad.code == 2 and bad.err.endswith("(see --help)\n"), bad.err

    ok(cli("define", "--from", fleet))
    before = unchanged_store(fleet_home)
    dry = ok(cli("--json", "clonero", "--from", fleet, "--dry-run")).json()
    assert len(dry["steps"]) == 3 * 4
    assert unchanged_store(fleet_home) == before
    unasked = cli("clonero", "--from", fleet)  # no terminal, no --yes
    assert unasked.code == 1 and "pass --yes" in unasked.err
    assert unchanged_store(fleet_home) == before


def test_a_failed_guest_undoes_the_batch(fleet_home: Path, cli: Callable[..., Ran]) -> None:
    (fleet_home / "disks" / "LNX303").write_text("in the way\n")  # its define step fails
    before = {g["name"] for g in ok(cli("guests", "--json")).json()}
    ran = cli("define", "--from", str(fleet_home.parent / "fleet.txt"))
    assert ran.code == 1 and "define failed at step 3" in ran.err
    rows = ok(cli("guests", "--json")).json()
    assert {g["name"] for g in rows} == before
    assert not any(g["incomplete"] for g in rows)
    assert not (fleet_home / "disks" / "LNX301").exists()
    assert admin_parm(fleet_home, "LNX301") is None


def killed_after(home: Path, ops: int, *args: str) -> None:
    """Run a command and SIGKILL it once `ops` journal entries of its own have started."""
    db = home / "state.db"

    def count() -> int:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            return int(con.execute("SELECT count(*) FROM journal").fetchone()[0])

    before = count()
    proc = subprocess.Popen(
        [SHAREDROOT, "--home", str(home), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while proc.poll() is None and count() < before + ops:
            time.sleep(0.002)
        assert proc.poll() is None, "the batch ended before it could be killed"
    finally:
        proc.kill()
        proc.wait()


def incomplete(home: Path, cli: Callable[..., Ran]) -> dict[str, str]:
    rows = ok(cli("guests", "--json", home_dir=home)).json()
    return {g["name"]: g["incomplete"]["operation"] for g in rows if g["incomplete"]}


def test_a_batch_killed_midway_is_rerun(fleet_home: Path, cli: Callable[..., Ran]) -> None:
    names = [f"LNX{700 + i}" for i in range(40)]
    fleet = fleet_home.parent / "many.txt"
    fleet.write_text("".join(f"{g} ro {g.lower()} 10.0.7.{1 + i}\n" for i, g in enumerate(names)))
    gold_before = gold(fleet_home)
    site = BootSite(fleet_home)

    assert site.killed(3, "define", "--from", str(fleet)) == "interrupted"
    half = incomplete(fleet_home, cli)
    assert half and set(half.values()) == {"define"} and set(half) <= set(names)
    rows = ok(cli("guests", "--json")).json()
    assert {g["incomplete"]["rerun"] for g in rows if g["incomplete"]} == {
        "sharedroot define --from FILE (the same guests)"
    }
    refused = cli("clonero", next(iter(half)), "--yes")
    assert refused.code == 1 and "its define" in refused.err
    ok(cli("define", "--from", str(fleet)))  # the interrupted ones are redone
    assert incomplete(fleet_home, cli) == {}
    assert all(admin_parm(fleet_home, g) is not None for g in names[::13])

    killed_after(fleet_home, 5, "clonero", "--from", str(fleet), "--yes")
    half = incomplete(fleet_home, cli)
    assert list(half.values()) in ([], ["clonero"])  # the one being copied, if any
    rows = {g["name"]: g for g in ok(cli("guests", "--json")).json()}
    cloned = [g for g in names if rows[g]["cloned"] and g not in half]
    assert 4 <= len(cloned) < len(names) - 1 and cloned == names[: len(cloned)]
    ok(cli("clonero", "--from", str(fleet), "--yes"))
    assert incomplete(fleet_home, cli) == {}
    rows = {g["name"]: g for g in ok(cli("guests", "--json")).json()}
    assert all(rows[g]["cloned"] for g in names)
    assert gold(fleet_home) == gold_before
    journal = ok(cli("--json", "journal", "--limit", "200")).json()
    assert json.dumps(journal).count('"interrupted"') >= 2
