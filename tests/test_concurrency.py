"""Eight administrators at once: real `sharedroot` processes racing on one site.

Every process must end with exit code 0 or 1 and a clear message, and afterwards the
store must be whole: the state database passes SQLite's integrity check, every disk
it records has its image at the recorded size, each clone links exactly one gold
slot's profile, and nothing is left mounted or half-done.  No guest is booted.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import SHAREDROOT, BootSite, fill_disk, sparse_hash, tree_hashes
from sharedroot.hypervisor.copyengine import content_hash
from sharedroot.model.layout import PAPER_LAYOUT, gold_ro_address, gold_rw_address
from sharedroot.workflows.context import Site

RACE_TIMEOUT = 150.0  # seconds for a whole race: eight writers queue on the site lock
GOLD = ("S10GOLD", "S10GOLD2")
ADMIN_LINK = ("0191", "CMSCLONE", "0192", "RR")
SHARED = [d.address for d in PAPER_LAYOUT.shared]
PRIVATE = [d.address for d in PAPER_LAYOUT.private]
COPIED = [d.address for d in PAPER_LAYOUT.copied]

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="mnt2rogld and migrate mount images (loop devices need root)"
)


# running administrators --------------------------------------------------------------


@dataclass
class Done:
    argv: list[str]
    code: int
    out: str
    err: str
    seconds: float

    def __str__(self) -> str:
        tail = "\n".join(self.err.strip().splitlines()[-6:])
        return f"`sharedroot {' '.join(self.argv)}` exit {self.code}:\n{tail}"


def race(
    home: Path,
    commands: Sequence[Sequence[str]],
    env: dict[str, str] | None = None,
    timeout: float = RACE_TIMEOUT,
    watch: Callable[[], None] | None = None,
) -> list[Done]:
    """Start every command at once, each its own process, and wait for all of them.

    `watch` is called over and over while they run, to look at the store mid-race.
    """
    if env is None:  # queued writers wait out the race, not the 60s default, on a busy host
        env = os.environ | {"SHAREDROOT_LOCK_WAIT": str(int(timeout))}
    with ExitStack() as stack:
        files = [
            (
                stack.enter_context(tempfile.TemporaryFile("w+")),
                stack.enter_context(tempfile.TemporaryFile("w+")),
            )
            for _ in commands
        ]
        start = time.monotonic()
        procs = [
            subprocess.Popen(
                [SHAREDROOT, "--home", str(home), *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                text=True,
                env=env,
            )
            for argv, (out, err) in zip(commands, files, strict=True)
        ]
        ended: dict[int, float] = {}
        while len(ended) < len(procs):
            for i, p in enumerate(procs):
                if i not in ended and p.poll() is not None:
                    ended[i] = time.monotonic() - start
            if time.monotonic() - start > timeout:
                hung = [" ".join(commands[i]) for i in range(len(procs)) if i not in ended]
                for i, p in enumerate(procs):
                    if i not in ended:
                        p.kill()
                        p.wait()
                raise AssertionError(f"still running after {timeout:.0f}s, killed: {hung}")
            if watch is not None:
                watch()
            time.sleep(0.02)
        done = []
        for i, (argv, (out, err)) in enumerate(zip(commands, files, strict=True)):
            out.seek(0)
            err.seek(0)
            done.append(Done(list(argv), procs[i].returncode, out.read(), err.read(), ended[i]))
        return done


def run(home: Path, *argv: str) -> Done:
    """One command alone; it must succeed (set-up steps)."""
    (d,) = race(home, [argv])
    assert d.code == 0, str(d)
    return d


def assert_clean(done: Sequence[Done]) -> None:
    """Exit 0, or exit 1 with the one `sharedroot: reason` line; never a traceback."""
    for d in done:
        assert d.code in (0, 1), str(d)
        assert "Traceback" not in d.err and "Traceback" not in d.out, str(d)
        if d.code == 1:
            assert re.search(r"^sharedroot: \S", d.err, re.M), str(d)


# reading the store -----------------------------------------------------------------


def query(home: Path, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(f"file:{home / 'state.db'}?mode=ro", uri=True)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def has_table(home: Path, name: str) -> bool:
    return bool(query(home, "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", [name]))


def check_store(home: Path) -> None:
    """The database is sound and every disk it records is there at its recorded size."""
    assert query(home, "PRAGMA integrity_check") == [("ok",)]
    assert query(home, "PRAGMA foreign_key_check") == []
    wrong = {}
    for owner, address, size, file in query(home, "SELECT owner, address, size, file FROM disks"):
        path = home / file
        got = path.stat().st_size if path.is_file() else None
        if got != size:
            wrong[f"{owner} {address}"] = {"recorded": size, "image": got}
    assert not wrong, f"disk images that do not match the state: {wrong}"
    mounts = [m for m in Path("/proc/mounts").read_text().splitlines() if str(home) in m]
    assert not mounts, f"left mounted: {mounts}"


def check_settled(home: Path) -> None:
    """No operation is left running, no disk set marked incomplete, no move half-done."""
    running = query(home, "SELECT id, operation, args FROM journal WHERE status = 'running'")
    assert not running, f"journal rows still running: {running}"
    if has_table(home, "incomplete"):
        assert query(home, "SELECT * FROM incomplete") == []
    moving = query(home, "SELECT key, value FROM meta WHERE key LIKE 'fact:migrating:%'")
    assert not moving, f"moves left unfinished: {moving}"
    work = home / "work"
    assert not work.exists() or not any(work.iterdir()), list(work.iterdir())


def links_of(home: Path, guest: str) -> set[tuple[str, str, str, str]]:
    rows = query(
        home, "SELECT address, owner, owner_address, mode FROM links WHERE guest = ?", [guest]
    )
    return {(str(a), str(o), str(oa), str(m)) for a, o, oa, m in rows}


def profile(slot: int) -> set[tuple[str, str, str, str]]:
    """S10DFLT / S10DFLT2: the shared disks linked RR from the slot's 21Bx."""
    return {(a, GOLD[slot - 1], gold_ro_address(a), "RR") for a in SHARED}


def ro_clone_slot(home: Path, guest: str) -> int:
    """The one gold slot a read-only clone links, after checking its links and disks."""
    links = links_of(home, guest)
    assert ADMIN_LINK in links, f"{guest} lost its admin disk link: {sorted(links)}"
    rest = links - {ADMIN_LINK}
    slots = [n for n in (1, 2) if rest == profile(n)]
    assert len(slots) == 1, f"{guest} links {sorted(rest)}: not exactly one slot's profile"
    disks = [a for (a,) in query(home, "SELECT address FROM disks WHERE owner = ?", [guest])]
    assert sorted(disks) == PRIVATE, f"{guest} disks {disks}"
    return slots[0]


class LinkWatch:
    """Reads clones' links during a race: each must be, at every moment, the admin link
    alone (not cloned yet) or with exactly one slot's profile (a relink is atomic), and
    never a slot whose disks are being written (marked incomplete)."""

    def __init__(self, home: Path, guests: Sequence[str]) -> None:
        self.home = home
        self.guests = list(guests)
        self.looks = 0
        self.torn: list[str] = []

    def __call__(self) -> None:
        marks = ",".join("?" * len(self.guests))
        db = sqlite3.connect(f"file:{self.home / 'state.db'}?mode=ro", uri=True)
        try:
            db.execute("BEGIN")  # links and markers from one snapshot
            rows = db.execute(
                "SELECT guest, address, owner, owner_address, mode FROM links"
                f" WHERE guest IN ({marks})",
                self.guests,
            ).fetchall()
            names = db.execute("SELECT name FROM sqlite_master WHERE name = 'incomplete'")
            marked = (
                {g for (g,) in db.execute("SELECT guest FROM incomplete")}
                if names.fetchone()
                else set()
            )
            db.execute("COMMIT")
        finally:
            db.close()
        self.looks += 1
        seen: dict[str, set[tuple[str, str, str, str]]] = {g: set() for g in self.guests}
        for g, *link in rows:
            seen[g].add((link[0], link[1], link[2], link[3]))
        for g, links in seen.items():
            rest = links - {ADMIN_LINK}
            slot = next((n for n in (1, 2) if rest == profile(n)), None)
            if ADMIN_LINK not in links or (rest and slot is None):
                self.torn.append(f"{g}: {sorted(links)}")
            elif slot is not None and GOLD[slot - 1] in marked:
                self.torn.append(f"{g} links gold slot {slot} while it is incomplete")

    def check(self) -> None:
        assert self.looks > 0
        assert not self.torn, f"inconsistent states seen mid-race: {self.torn[:5]}"


def check_readers(done: Sequence[Done], guests: Sequence[str]) -> None:
    """`guests --json` and `linked --json` run mid-race: each answers, and shows every clone
    with one slot's links (guests) and under at most one gold slot (linked)."""
    for d in done:
        assert d.code == 0, str(d)
        data = json.loads(d.out)
        if d.argv[0] == "guests":
            for g in (row for row in data if row["name"] in guests):
                links = {
                    (lk["address"], lk["owner"], lk["owner_address"], lk["mode"])
                    for lk in g["links"]
                }
                rest = links - {ADMIN_LINK}
                assert not rest or rest in (profile(1), profile(2)), (g["name"], sorted(links))
        else:
            holders = [c["name"] for h in data["holders"] for c in h["clones"]]
            twice = sorted({n for n in holders if holders.count(n) > 1})
            assert not twice, f"`linked` shows {twice} under two gold slots at once: {data}"


def check_filesystems(home: Path, guests: Sequence[str]) -> None:
    """The clones' own filesystems (/local, /var) are whole: no copy or merge left them torn."""
    for g in guests:
        for d in PAPER_LAYOUT.private:
            if d.fs is None:
                continue
            proc = subprocess.run(
                ["e2fsck", "-fn", str(image_of(home, g, d.address))], capture_output=True, text=True
            )
            assert proc.returncode == 0, f"{g} {d.address}: e2fsck {proc.returncode}\n{proc.stdout}"


def linked(home: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(run(home, "linked", "--json").out)
    return data


def image_of(home: Path, guest: str, address: str) -> Path:
    rows = query(home, "SELECT file FROM disks WHERE owner = ? AND address = ?", [guest, address])
    assert rows, f"{guest} has no disk at {address}"
    return home / rows[0][0]


# sites -------------------------------------------------------------------------------


def copy_site(template: Path, where: Path) -> Path:
    home = where / "site"
    subprocess.run(["cp", "-a", "--sparse=always", template, home], check=True)
    return home


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A site with Linux installed and both gold slots promoted, slot 1 current."""
    site = BootSite.installed(tmp_path_factory, "concurrency")
    site.run("mnt2rogld", "--yes")
    site.run("ro2gold", "--slot", "2", "--yes")
    site.run("ro2gold", "--slot", "1", "--yes")
    yield site.home
    shutil.rmtree(site.home, ignore_errors=True)  # about 3 GB of images


@pytest.fixture
def installed_home(installed: Path, tmp_path: Path) -> Iterator[Path]:
    home = copy_site(installed, tmp_path)
    yield home
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def small_home(site_template: Path, tmp_path: Path) -> Path:
    """A paper site with empty disks: enough where no Linux is needed."""
    return copy_site(site_template, tmp_path)


# (1) eight clones at once ------------------------------------------------------------


def admin_disk_files(home: Path) -> set[str]:
    image = image_of(home, "CMSCLONE", "0192")
    proc = subprocess.run(
        ["debugfs", "-R", "ls -p /", str(image)], capture_output=True, text=True, check=True
    )
    return {line.split("/")[5] for line in proc.stdout.splitlines() if line.count("/") >= 6}


def admin_disk_read(home: Path, name: str) -> str:
    image = image_of(home, "CMSCLONE", "0192")
    proc = subprocess.run(
        ["debugfs", "-R", f"cat /{name}", str(image)], capture_output=True, text=True, check=True
    )
    return proc.stdout


@needs_root
def test_eight_defines_then_eight_clonero_at_once(installed_home: Path) -> None:
    home = installed_home
    guests = [f"LNXA{i}" for i in range(8)]
    defines = race(
        home,
        [
            ["define", g, "--ro", "--hostname", g.lower(), "--ip", f"10.0.3.{10 + i}"]
            for i, g in enumerate(guests)
        ],
    )
    assert_clean(defines)
    assert [d.code for d in defines] == [0] * 8, "\n".join(map(str, defines))
    # Each define rebuilt the admin disk; the last rebuild must hold every parm file.
    parms = {f"{g}.PARM-S10" for g in guests}
    assert parms <= admin_disk_files(home), sorted(parms - admin_disk_files(home))

    clones = race(home, [["clonero", g, "--yes"] for g in guests])
    assert_clean(clones)
    assert [d.code for d in clones] == [0] * 8, "\n".join(map(str, clones))

    assert {g: ro_clone_slot(home, g) for g in guests} == dict.fromkeys(guests, 1)
    facts = linked(home)
    assert facts["current_slot"] == 1
    by_holder = {h["holder"]: [c["name"] for c in h["clones"]] for h in facts["holders"]}
    assert by_holder["S10GOLD"] == guests and by_holder["S10GOLD2"] == []
    check_settled(home)
    check_store(home)


# (2) eight writers on one guest ------------------------------------------------------


@needs_root
def test_eight_writers_on_one_guest(installed_home: Path) -> None:
    home = installed_home
    x = "LNXX"
    run(home, "define", x, "--ro", "--hostname", "lnxx", "--ip", "10.0.4.10")
    run(home, "clonero", x, "--yes")
    commands = [
        ["clonero", x, "--yes"],
        ["migrate", x, "--slot", "2", "--yes"],
        ["define", x, "--ro"],
        ["clonero", x, "--yes"],
        ["migrate", x, "--slot", "1", "--yes"],
        ["ro2gold", "--slot", "2", "--yes"],
        ["migrate", x, "--slot", "2", "--yes"],
        ["clonero", x, "--yes"],
    ]
    readers = [["guests", "--json"], ["linked", "--json"]]
    watch = LinkWatch(home, [x])
    done = race(home, [*commands, *readers], watch=watch)
    assert_clean(done)
    watch.check()
    check_readers(done[len(commands) :], [x])
    done = done[: len(commands)]
    report = "\n".join(map(str, done))
    for d in done:
        if d.argv[0] == "define":  # the guest exists; a second define is refused
            assert d.code == 1 and "already defined" in d.err, report
        elif d.argv[0] == "ro2gold":  # refused only while the clone links slot 2
            assert d.code == 0 or "S10GOLD2" in d.err, report
        else:  # nothing may refuse a clone or a move of a logged-off clone
            assert d.code == 0, report

    slot = ro_clone_slot(home, x)
    # The state agrees with the journal: the last clonero or migrate of the guest that
    # did something put it where it is.
    journal = json.loads(run(home, "journal", "--json", "--limit", "100").out)
    placed = [
        j
        for j in journal
        if j["operation"] in ("clonero", "migrate")
        and j["args"].get("guest") == x
        and j["status"] == "ok"
    ]
    last = max(placed, key=lambda j: j["id"])
    assert last["args"]["slot"] == slot, (last, slot)
    check_filesystems(home, [x])
    check_settled(home)
    check_store(home)


def test_eight_defines_of_one_name_make_one_guest(small_home: Path) -> None:
    home = small_home
    argv = ["define", "LNXD", "--ro", "--hostname", "lnxd", "--ip"]
    done = race(home, [[*argv, f"10.0.5.{i + 1}"] for i in range(8)])
    assert_clean(done)
    report = "\n".join(map(str, done))
    won = [d for d in done if d.code == 0]
    assert len(won) == 1, report
    assert all("already defined" in d.err for d in done if d.code == 1), report
    assert links_of(home, "LNXD") == {ADMIN_LINK}
    disks = [a for (a,) in query(home, "SELECT address FROM disks WHERE owner = 'LNXD'")]
    assert sorted(disks) == PRIVATE
    # The parm file on the admin disk is the winner's, not a loser's written after it.
    parm = admin_disk_read(home, "LNXD.PARM-S10")
    assert f"HostIP={won[0].argv[-1]}" in parm, parm
    check_settled(home)
    check_store(home)


# (3) mnt2gold racing clonerw ---------------------------------------------------------


def gold_hashes(home: Path) -> dict[str, str]:
    """The gold's read-write set 11Bx by the layout address it is a copy of."""
    return {a: sparse_hash(image_of(home, GOLD[0], gold_rw_address(a))) for a in COPIED}


def fill_maintenance(home: Path, seed: str) -> dict[str, str]:
    site = Site.open(home)
    try:
        shutil.rmtree(home / "fill", ignore_errors=True)
        for a in COPIED:
            fill_disk(site, site.config.guests.maintenance, a, seed)
        return {a: sparse_hash(image_of(home, site.config.guests.maintenance, a)) for a in COPIED}
    finally:
        site.state.close()


def test_clonerw_racing_mnt2gold_gets_one_whole_gold(small_home: Path) -> None:
    home = small_home
    fill_maintenance(home, "old")
    run(home, "mnt2gold", "--yes")
    old = gold_hashes(home)
    new = fill_maintenance(home, "new")
    assert all(old[a] != new[a] for a in COPIED)  # every disk tells old from new

    guests = [f"LNXW{i}" for i in range(7)]
    assert_clean(defines := race(home, [["define", g, "--rw"] for g in guests]))
    assert [d.code for d in defines] == [0] * 7, "\n".join(map(str, defines))

    done = race(home, [["mnt2gold", "--yes"], *(["clonerw", g, "--yes"] for g in guests)])
    assert_clean(done)
    assert [d.code for d in done] == [0] * 8, "\n".join(map(str, done))
    assert gold_hashes(home) == new

    got = {}
    for g in guests:
        clone = {a: sparse_hash(image_of(home, g, a)) for a in COPIED}
        assert clone in (old, new), f"{g} is neither the old gold nor the new one, disk by disk"
        got[g] = "old" if clone == old else "new"
    print(f"clones of the old gold / the new: {sorted(got.values())}")
    check_settled(home)
    check_store(home)


# (4) ro2gold racing clonero ----------------------------------------------------------


@needs_root
def test_ro2gold_racing_clonero_links_one_complete_slot(installed_home: Path) -> None:
    home = installed_home
    guests = [f"LNXR{i}" for i in range(6)]
    defines = race(home, [["define", g, "--ro"] for g in guests])
    assert [d.code for d in defines] == [0] * 6, "\n".join(map(str, defines))

    watch = LinkWatch(home, guests)
    writers = [["ro2gold", "--yes"], *(["clonero", g, "--yes"] for g in guests)]
    writers.append(["ro2gold", "--yes"])
    readers = [["linked", "--json"], ["guests", "--json"]]
    done = race(home, [*writers, *readers], watch=watch)
    assert_clean(done)
    watch.check()
    check_readers(done[len(writers) :], guests)
    done = done[: len(writers)]
    report = "\n".join(map(str, done))
    promotions = [d for d in done if d.argv[0] == "ro2gold"]
    # The first promotion always finds a free slot; the second is refused when clones
    # link both slots by then.
    assert any(d.code == 0 for d in promotions), report
    for d in promotions:
        assert d.code == 0 or "every gold slot is linked" in d.err, report
    assert all(d.code == 0 for d in done if d.argv[0] == "clonero"), report

    slots = {g: ro_clone_slot(home, g) for g in guests}
    generation = dict(query(home, "SELECT slot, generation FROM slots"))
    for n in sorted(set(slots.values())):
        assert generation[n] is not None, f"clones link slot {n}, which has no generation"
        (row,) = query(home, "SELECT hashes FROM generations WHERE id = ?", [generation[n]])
        recorded = json.loads(row[0])
        now = {a: content_hash(image_of(home, GOLD[n - 1], a)) for a in recorded}
        assert now == recorded, f"slot {n}'s disks are not its generation {generation[n]}"

    facts = linked(home)
    current = "SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'current_slot'"
    assert facts["current_slot"] == query(home, current)[0][0]
    for h in facts["holders"]:
        if h["slot"] is None:
            continue
        names = [c["name"] for c in h["clones"]]
        assert names == sorted(g for g, n in slots.items() if n == h["slot"]), (h, slots)
        assert h["generation"] == generation[h["slot"]], h
        assert not h.get("incomplete"), h
    print(f"clones by slot: {slots}; ro2gold exits {[d.code for d in promotions]}")
    check_filesystems(home, guests)
    check_settled(home)
    check_store(home)


# (5) the site lock's timeout ---------------------------------------------------------


def store_snapshot(home: Path) -> dict[str, str]:
    """Every file by content; the database by its rows, since checkpoints move its bytes."""
    files = {k: v for k, v in tree_hashes(home).items() if not k.startswith("state.db")}
    db = sqlite3.connect(f"file:{home / 'state.db'}?mode=ro", uri=True)
    try:
        files["state.db rows"] = "\n".join(db.iterdump())
    finally:
        db.close()
    return files


@pytest.mark.parametrize(
    "writer", [["define", "LNXL", "--ro"], ["mnt2gold", "--yes"]], ids=["define", "mnt2gold"]
)
def test_site_lock_wait_runs_out_then_the_writer_succeeds(
    small_home: Path, writer: list[str]
) -> None:
    home = small_home
    before = store_snapshot(home)
    env = os.environ | {"SHAREDROOT_LOCK_WAIT": "1"}
    (home / "run").mkdir(exist_ok=True)
    fd = os.open(home / "run" / "site.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another administrator's operation, running
        (blocked,) = race(home, [writer], env=env, timeout=20)
        assert blocked.code == 1, str(blocked)
        assert blocked.seconds < 8, f"took {blocked.seconds:.1f}s to give up a 1s wait"
        assert re.search(r"another .*operation.* running", blocked.err, re.I), str(blocked)
        assert_clean([blocked])
        assert store_snapshot(home) == before
    finally:
        os.close(fd)

    (ran,) = race(home, [writer], env=env, timeout=60)
    assert ran.code == 0, str(ran)
    if writer[0] == "define":
        assert query(home, "SELECT role FROM guests WHERE name = 'LNXL'") == [("ro",)]
    check_settled(home)
    check_store(home)
