"""The z/VM backend on the CP emulator: CP commands per operation, and wall times.

- CP commands (lines of the emulator's cp.log) issued by `mnt2tst`, `clonero`, and by
  `linked` and `guests` on a site with 1000 read-only clones (500 logged on): these
  must not grow with the number of guests.
- Wall time of `linked` and `guests` with those 1000 guests (goal: at most 1 s each),
  beside the emulator's own start-up (`zvmsim DIR -- true`) as the floor.
- `clonero` with FLASHCOPY against the `dd` fallback (FLASHCOPY made to fail).

The 1000 clones are added to the emulator's directory (`zvmsim.admin populate`) and
written into the site's state as CLONERO leaves them. Usage: python bench/bench_zvm.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_reports import RUNS, timed  # the same median of runs

from sharedroot.guestos import earlybind
from sharedroot.model.layout import ADMIN_LINK_ADDRESS, ADMIN_OWN_ADDRESS, gold_ro_address
from sharedroot.model.types import Mode, Role
from sharedroot.store.rows import DiskRow, LinkRow
from sharedroot.workflows.context import Site

REPO = Path(__file__).resolve().parent.parent
ZVMSIM = REPO / "scripts" / "zvmsim"
EXE = Path(sys.executable).parent / "sharedroot"
GUESTS = 1000
CYL = 737280
CYLINDERS = {"/boot": 20, "/": 40, "01B4": 10, "/local": 20, "/var": 30, "/usr": 60, "/opt": 10}


def sr(sim: Path, home: Path, *args: str) -> None:
    argv = [str(ZVMSIM), str(sim), "--", str(EXE), "--home", str(home), *args]
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def admin(sim: Path, *args: str) -> None:
    env = os.environ | {"PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-m", "zvmsim.admin", str(sim), *args], check=True, env=env)


def cp_lines(sim: Path) -> int:
    log = sim / "cp.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


def counted(sim: Path, home: Path, *args: str) -> tuple[int, float]:
    """CP commands issued by one sharedroot command, and its wall time."""
    before = cp_lines(sim)
    t = time.perf_counter()
    sr(sim, home, *args)
    return cp_lines(sim) - before, time.perf_counter() - t


def small_system(base: Path) -> Path:
    """A root tree mnt2rogld can convert: enough to walk the pipeline, not to boot."""
    root = base / "tree"
    for rel in (
        "etc/hostname",
        "usr/sbin/update-initramfs",
        "usr/lib/systemd/systemd",
        "var/lib/dpkg/status",
    ):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x\n")
    (root / "boot").mkdir()
    (root / "boot/sharedroot.conf").write_text("kernel=k\ninitrd=i\ncmdline=root=x rw\n")
    earlybind.write_scripts(root)
    return root


def add_clones(home: Path) -> None:
    """The populated directory users, as the site knows them after CLONERO (slot 1)."""
    site = Site.open(home)
    layout = site.config.layout
    with site.state.transaction():
        for n in range(1, GUESTS + 1):
            name = f"LNX{n:04d}"
            site.state.add_guest(name, Role.RO_CLONE)
            for d in layout.private:
                file = f"zvm:{name}/{d.address}"
                site.state.add_disk(DiskRow(name, d.address, d.kind, d.fs, d.size, file))
            for d in layout.shared:
                site.state.add_link(
                    LinkRow(name, d.address, "S10GOLD", gold_ro_address(d.address), Mode.RR)
                )
            site.state.add_link(
                LinkRow(name, ADMIN_LINK_ADDRESS, "CMSCLONE", ADMIN_OWN_ADDRESS, Mode.RR)
            )


def bench() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        sim, home = base / "zvm", base / "site"
        sizes = [f"--size={k}={v * CYL}" for k, v in CYLINDERS.items()]
        sr(sim, home, "init", "--backend", "zvm", *sizes)
        sr(sim, home, "install", "--from-tree", str(small_system(base)), "--yes")
        n, wall = counted(sim, home, "mnt2tst", "--yes")
        print(f"mnt2tst: {n} CP commands, {wall:.2f}s (7 disks)")
        sr(sim, home, "mnt2rogld", "--yes")
        sr(sim, home, "ro2gold", "--slot", "1", "--yes")
        sr(sim, home, "define", "LNX9001", "--ro")
        n, flash = counted(sim, home, "clonero", "LNX9001", "--yes")
        print(f"clonero: {n} CP commands, {flash:.2f}s with FLASHCOPY")
        admin(sim, "set", "flashcopy", '"fail"')
        n, dd = counted(sim, home, "clonero", "LNX9001", "--yes")
        admin(sim, "set", "flashcopy", '"ok"')
        print(f"clonero: {n} CP commands, {dd:.2f}s with the dd fallback ({dd / flash:.2f}x)")

        admin(sim, "populate", str(GUESTS))
        add_clones(home)
        print(f"site with {GUESTS} read-only clones, {GUESTS // 2} logged on")
        for args in (["linked"], ["guests", "--json"]):
            n, _ = counted(sim, home, *args)
            print(f"  sharedroot {' '.join(args):14} {n} CP commands")
        floor = timed([str(ZVMSIM), str(sim), "--", "true"])
        print(f"median of {RUNS} runs, wall time including start-up")
        print(f"  {'zvmsim DIR -- true (floor)':30} {floor:6.3f}s")
        for args in (["linked"], ["guests", "--json"]):
            argv = [str(ZVMSIM), str(sim), "--", str(EXE), "--home", str(home), *args]
            wall = timed(argv)
            verdict = "ok" if wall - floor <= 1.0 else "over goal"
            print(
                f"  {'sharedroot ' + ' '.join(args):30} {wall:6.3f}s"
                f"  ({wall - floor:.3f}s beyond the floor; goal <= 1s: {verdict})"
            )
        admin(sim, "cleanup")


if __name__ == "__main__":
    bench()
