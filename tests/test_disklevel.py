"""The paper's disk-level walk-through, once per backend: the same workflows on local and z/VM.

Each backend gets one site, built once (module scope) by the real command line: on
`local` image files, on `zvm` the CP emulator (`scripts/zvmsim`), whose directory holds
the paper's user IDs as a site that followed the paper by hand would have them. The
assertions then read that one site; a few tests change it further, in file order.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from conftest import Ran
from sharedroot.guestos import earlybind

REPO = Path(__file__).resolve().parent.parent
SHAREDROOT = Path(sys.executable).parent / "sharedroot"
ZVMSIM = REPO / "scripts" / "zvmsim"
CYL = 737280  # bytes of a 3390 cylinder formatted with 4 KiB blocks
# The emulator's paper directory gives each Linux disk these cylinders; local gets the same.
CYLINDERS = {"/boot": 20, "/": 40, "01B4": 10, "/local": 20, "/var": 30, "/usr": 60, "/opt": 10}
LINUX = ["01B0", "01B1", "01B4", "01B5", "01B6", "01B7", "01B8"]


class Fleet:
    """One site on one backend, driven through the command line as an administrator would."""

    def __init__(self, backend: str, base: Path) -> None:
        self.backend = backend
        self.home = base / "site"
        self.sim = base / "zvm"
        self.own: set[str] | None = None  # the worker's own devices on z/VM

    def argv(self, *args: str) -> list[str]:
        own = [str(SHAREDROOT), "--home", str(self.home), *args]
        return [str(ZVMSIM), str(self.sim), "--", *own] if self.backend == "zvm" else own

    def run(self, *args: str, ok: bool = True) -> Ran:
        res = subprocess.run(self.argv(*args), capture_output=True, text=True, timeout=900)
        ran = Ran(res.returncode, res.stdout, res.stderr)
        if ok and ran.code != 0:
            raise AssertionError(f"sharedroot {' '.join(args)}: exit {ran.code}\n{ran.err}")
        if self.backend == "zvm":  # after every command: no links, no devices left online
            if self.own is None:
                self.own = worker_devices(self)
            assert worker_devices(self) == self.own, f"sharedroot {' '.join(args)} left links"
            assert not list((self.sim / "by-path").glob("ccw-*")), "devices left online"
        return ran

    def guests(self) -> list[dict[str, Any]]:
        data = self.run("--json", "guests").json()
        assert isinstance(data, list)
        return data

    @contextmanager
    def logged_on(self, guest: str) -> Iterator[None]:
        """The guest logged on for the `with` body: XAUTOLOG on z/VM, its run lock locally."""
        if self.backend == "zvm":
            assert self.cp("XAUTOLOG", guest).code == 0
            try:
                yield
            finally:
                self.cp("FORCE", guest, "IMMED")
            return
        lock = self.home / "run" / f"{guest}.lock"
        holder = subprocess.Popen(["flock", "--exclusive", str(lock), "sleep", "600"])
        try:
            deadline = time.monotonic() + 10
            while not self._on(guest):
                assert time.monotonic() < deadline, f"{guest}: the run lock was not taken"
                time.sleep(0.1)
            yield
        finally:
            holder.kill()
            holder.wait()

    def _on(self, guest: str) -> bool:
        return any(g["name"] == guest and g["state"] == "logged_on" for g in self.guests())

    def cp(self, *command: str) -> Ran:
        """A CP command as the worker (zvm only), through the emulator's vmcp."""
        res = subprocess.run(
            [str(ZVMSIM), str(self.sim), "--", "vmcp", *command],
            capture_output=True,
            text=True,
            timeout=60,
        )
        return Ran(res.returncode, res.stdout, res.stderr)

    def cp_log(self) -> list[tuple[str, str, int]]:
        path = self.sim / "cp.log"
        rows = [ln.split("\t") for ln in path.read_text().splitlines()] if path.exists() else []
        return [(u, c, int(rc)) for u, c, rc in rows]

    def disk_bytes(self, guest: str, address: str) -> bytes:
        """A disk's content, read from where the backend keeps it."""
        if self.backend == "zvm":
            path = self.sim / "disks" / guest / f"{address}.img"
        else:
            path = self.home / "disks" / guest / f"{address}.img"
        return path.read_bytes()


def system_tree(base: Path) -> Path:
    """A small root tree that mnt2rogld can convert (initramfs-tools with the early bind)."""
    root = base / "tree"
    for rel, text in {
        "etc/hostname": "maint\n",
        "etc/passwd": "root:x:0:0:root:/root:/bin/sh\n",
        "usr/bin/hello": "#!/bin/sh\necho hello\n",
        "usr/sbin/update-initramfs": "#!/bin/sh\n",
        "usr/lib/systemd/systemd": "SYSTEMD",
        "var/lib/dpkg/status": "Package: hello\n",
        "opt/app/README": "an application\n",
        "boot/sharedroot.conf": "kernel=vmlinux-1\ninitrd=initrd-1\ncmdline=root=x rw\n",
        "boot/vmlinux-1": "KERNEL",
        "boot/initrd-1": "INITRD",
        "root/.profile": "# root\n",
        "srv/www/index.html": "hi\n",
    }.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    earlybind.write_scripts(root)
    return root


def sizes() -> list[str]:
    return [f"--size={k}={v * CYL}" for k, v in CYLINDERS.items()]


@pytest.fixture(scope="module", params=["local", "zvm"])
def fleet(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    base = tmp_path_factory.mktemp(f"disklevel-{request.param}")
    f = Fleet(request.param, base)
    f.run("init", "--layout", "paper", "--backend", f.backend, *sizes())
    f.run("install", "--from-tree", str(system_tree(base)), "--yes")
    yield f


def test_init_adopts_or_creates_the_paper_guests(fleet: Fleet) -> None:
    guests = {g["name"]: g for g in fleet.guests()}
    for name in ("S10RWMNT", "S10RWTST", "S10GOLD", "S10GOLD2", "S10ROGLD", "LNXCLONE", "CMSCLONE"):
        assert name in guests
    assert {d["address"] for d in guests["S10RWMNT"]["disks"]} >= set(LINUX)
    assert all(g["state"] == "logged_off" for n, g in guests.items() if n != "LNXCLONE")


def test_pipeline_copies_are_byte_identical(fleet: Fleet) -> None:
    fleet.run("mnt2tst", "--yes")
    for a in LINUX:
        assert fleet.disk_bytes("S10RWTST", a) == fleet.disk_bytes("S10RWMNT", a)
    fleet.run("tst2mnt", "--yes")
    fleet.run("mnt2gold", "--yes")
    for a in LINUX:
        assert fleet.disk_bytes("S10GOLD", "1" + a[1:]) == fleet.disk_bytes("S10RWMNT", a)


def test_mnt2rogld_and_both_gold_slots(fleet: Fleet) -> None:
    fleet.run("mnt2rogld", "--yes")
    fleet.run("ro2gold", "--yes")
    fleet.run("ro2gold", "--slot", "2", "--yes")
    for a in LINUX:
        staged = fleet.disk_bytes("S10ROGLD", a)
        assert fleet.disk_bytes("S10GOLD", "2" + a[1:]) == staged
        assert fleet.disk_bytes("S10GOLD2", "2" + a[1:]) == staged
    # The read-only conversion happened on the staging disks, not on the maintenance ones.
    assert fleet.disk_bytes("S10ROGLD", "01B1") != fleet.disk_bytes("S10RWMNT", "01B1")


def test_clones_and_migrate(fleet: Fleet) -> None:
    fleet.run("define", "LNX226", "--rw", "--hostname", "lnx226", "--ip", "10.0.2.26")
    fleet.run("define", "LNX227", "--ro", "--hostname", "lnx227", "--ip", "10.0.2.27")
    fleet.run("clonerw", "LNX226", "--yes")
    fleet.run("clonero", "LNX227", "--yes")
    guests = {g["name"]: g for g in fleet.guests()}
    owners = {lk["owner"] for lk in guests["LNX227"]["links"] if lk["address"] == "01B1"}
    assert owners == {"S10GOLD2"}  # the current slot after ro2gold --slot 2
    fleet.run("migrate", "LNX227", "--slot", "1", "--yes")
    guests = {g["name"]: g for g in fleet.guests()}
    owners = {lk["owner"] for lk in guests["LNX227"]["links"] if lk["address"] == "01B1"}
    assert owners == {"S10GOLD"}
    for a in ("01B0", "01B1", "01B7", "01B8"):
        assert fleet.disk_bytes("LNX226", a) == fleet.disk_bytes("S10GOLD", "1" + a[1:])


def test_linked_prints_the_paper_lines(fleet: Fleet) -> None:
    out = [ln for ln in fleet.run("linked").out.splitlines() if " LINKS: " in ln]
    assert [ln.split(" LINKS:")[0] for ln in out] == ["S10ROGLD", "S10GOLD", "S10GOLD2"]
    assert any(ln.startswith("S10GOLD2 LINKS: [[GOLD 2]]") for ln in out)


def hashes(fleet: Fleet, guest: str, first: str = "0") -> dict[str, str]:
    """Each Linux disk's hash, at 01Bx (or 11Bx, 21Bx with `first`)."""
    addresses = [first + a[1:] for a in LINUX]
    return {a: hashlib.sha256(fleet.disk_bytes(guest, a)).hexdigest() for a in addresses}


def test_a_logged_on_target_is_refused_and_nothing_is_written(fleet: Fleet) -> None:
    before = hashes(fleet, "S10RWTST")
    mark = len(fleet.cp_log())
    with fleet.logged_on("S10RWTST"):
        ran = fleet.run("mnt2tst", "--yes", ok=False)
    assert ran.code == 1
    assert "S10RWTST user ID must be logged off" in ran.err
    assert hashes(fleet, "S10RWTST") == before
    assert not [c for _, c, _ in fleet.cp_log()[mark:] if c.startswith("FLASHCOPY")]


def test_a_slot_a_running_clone_links_is_refused(fleet: Fleet) -> None:
    # LNX227 reads gold slot 1 since the migrate above; while it runs, slot 1 stays.
    before = hashes(fleet, "S10GOLD", "2")
    mark = len(fleet.cp_log())
    with fleet.logged_on("LNX227"):
        ran = fleet.run("ro2gold", "--slot", "1", "--yes", ok=False)
    assert ran.code == 1
    assert "guests are currently reading the S10GOLD disks" in ran.err and "LNX227" in ran.err
    assert hashes(fleet, "S10GOLD", "2") == before
    assert not [c for _, c, _ in fleet.cp_log()[mark:] if c.startswith("FLASHCOPY")]


# --------------------------------------------------------------------------- z/VM only


@pytest.fixture
def zvm(fleet: Fleet) -> Fleet:
    if fleet.backend != "zvm":
        pytest.skip("CP commands exist on z/VM only")
    return fleet


def worker_devices(fleet: Fleet) -> set[str]:
    ran = fleet.cp("QUERY", "VIRTUAL", "DASD")
    return {ln.split()[1] for ln in ran.out.splitlines() if ln.startswith("DASD ")}


def commands_of(fleet: Fleet, *args: str) -> list[str]:
    """Run a sharedroot command; the CP commands it issued, in order."""
    mark = len(fleet.cp_log())
    fleet.run(*args)
    return [c for _, c, _ in fleet.cp_log()[mark:]]


def test_the_cp_sequence_of_mnt2tst_follows_the_exec(zvm: Fleet) -> None:
    own = worker_devices(zvm)
    cmds = commands_of(zvm, "mnt2tst", "--yes")
    # CheckLoggedOff for source and target before any LINK.
    first_link = next(i for i, c in enumerate(cmds) if c.startswith("LINK "))
    queried = {c.split()[1] for c in cmds[:first_link] if c.startswith("QUERY ")}
    assert {"S10RWMNT", "S10RWTST"} <= queried
    links = [c.split() for c in cmds if c.startswith("LINK ")]
    assert {(w[1], w[2], w[-1]) for w in links} >= {("S10RWTST", a, "MR") for a in LINUX}
    assert {(w[1], w[2], w[-1]) for w in links} >= {("S10RWMNT", a, "RR") for a in LINUX}
    flash = [c for c in cmds if c.startswith("FLASHCOPY ")]
    assert len(flash) == len(LINUX)
    assert len([c for c in cmds if c.startswith("DETACH ")]) >= 2 * len(LINUX)
    assert worker_devices(zvm) == own


def test_the_cp_sequence_of_mnt2gold_and_clonero(zvm: Fleet) -> None:
    cmds = commands_of(zvm, "mnt2gold", "--yes")
    links = {(w[1], w[2], w[-1]) for w in (c.split() for c in cmds if c.startswith("LINK "))}
    assert links >= {("S10GOLD", "1" + a[1:], "MR") for a in LINUX}
    assert links >= {("S10RWMNT", a, "RR") for a in LINUX}
    assert len([c for c in cmds if c.startswith("FLASHCOPY ")]) == len(LINUX)
    cmds = commands_of(zvm, "clonero", "LNX227", "--yes")
    private = ["01B4", "01B5", "01B6"]  # copied from the slot; the rest comes by its profile
    links = {(w[1], w[2], w[-1]) for w in (c.split() for c in cmds if c.startswith("LINK "))}
    assert links >= {("LNX227", a, "MR") for a in private}
    assert len([c for c in cmds if c.startswith("FLASHCOPY ")]) == len(private)
    assert not [c for c in cmds if c.startswith("LINK LNX227 01B1")]


def test_ro2gold_queries_the_links_of_the_slot_before_overwriting_it(zvm: Fleet) -> None:
    cmds = commands_of(zvm, "ro2gold", "--slot", "2", "--yes")
    first_flash = next(i for i, c in enumerate(cmds) if c.startswith("FLASHCOPY "))
    assert any(c.startswith("QUERY LINKS ") for c in cmds[:first_flash])


def test_without_flashcopy_the_dd_fallback_gives_the_same_disks(zvm: Fleet) -> None:
    flashed = hashes(zvm, "S10RWTST")
    admin(zvm, "set", "flashcopy", '"fail"')
    try:
        zvm.run("tst2mnt", "--yes")
        zvm.run("mnt2tst", "--yes")
    finally:
        admin(zvm, "set", "flashcopy", '"ok"')
    assert hashes(zvm, "S10RWTST") == flashed
    assert hashes(zvm, "S10RWMNT") == flashed


def test_start_and_stop_at_cp_level(zvm: Fleet) -> None:
    zvm.run("start", "LNX226")
    assert zvm._on("LNX226")
    zvm.run("stop", "LNX226")
    assert not zvm._on("LNX226")


def admin(fleet: Fleet, *args: str) -> None:
    env = os.environ | {"PYTHONPATH": str(REPO)}
    subprocess.run(
        [sys.executable, "-m", "zvmsim.admin", str(fleet.sim), *args], check=True, env=env
    )


def test_stop_forces_a_guest_that_ignores_the_signal(zvm: Fleet) -> None:
    admin(zvm, "set", "ignore_signal", '["LNX226"]')
    try:
        zvm.run("start", "LNX226")
        out = zvm.run("--json", "stop", "LNX226", "--timeout", "2").json()
    finally:
        admin(zvm, "set", "ignore_signal", "[]")
    assert isinstance(out, dict) and out["results"][0]["shutdown"] == "forced"
    assert not zvm._on("LNX226")
    cmds = [c for _, c, _ in zvm.cp_log()[-12:]]
    assert any(c.startswith("SIGNAL SHUTDOWN LNX226") for c in cmds)
    assert any(c.startswith("FORCE LNX226") for c in cmds)


def test_init_on_zvm_creates_what_the_directory_lacks(tmp_path: Path) -> None:
    """A site that followed the paper by hand but has no test guest yet: init makes it."""
    fleet = Fleet("zvm", tmp_path)
    smcli = [str(ZVMSIM), str(fleet.sim), "--", "smcli"]
    subprocess.run([*smcli, "Image_Delete_DM", "-T", "S10RWTST", "-e", "0"], check=True)
    fleet.run("init", "--layout", "paper", "--backend", "zvm", *sizes())
    entry = subprocess.run(
        [*smcli, "Image_Query_DM", "-T", "S10RWTST"], capture_output=True, text=True, check=True
    ).stdout
    assert {w[1] for w in (ln.split() for ln in entry.splitlines()) if w[:1] == ["MDISK"]} >= set(
        LINUX
    )
    guests = {g["name"]: g for g in fleet.guests()}
    assert {d["address"] for d in guests["S10RWTST"]["disks"]} >= set(LINUX)


def test_a_kill_mid_copy_leaves_no_link_after_the_next_command(zvm: Fleet) -> None:
    own = worker_devices(zvm)
    proc = subprocess.Popen(zvm.argv("mnt2gold", "--yes"), start_new_session=True)
    deadline = time.monotonic() + 60
    while not any(c.startswith("FLASHCOPY ") for _, c, _ in zvm.cp_log()[-3:]):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    os.killpg(proc.pid, 9)
    proc.wait()
    zvm.run("mnt2gold", "--yes")  # the next command clears up, then does the copy
    assert worker_devices(zvm) == own
