"""`sharedroot linked` and `guests` on a site with 1000 guests: wall time, start-up included.

The 1000 read-only clones are written straight into the state (their disks as sparse
files), since the commands measured only read the state; each links the gold's 21Bx
set and the admin disk, as CLONERO leaves them.  Usage: python bench/bench_reports.py
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sharedroot.cli.main import main
from sharedroot.model.layout import ADMIN_LINK_ADDRESS, ADMIN_OWN_ADDRESS, gold_ro_address
from sharedroot.model.types import Mode, Role
from sharedroot.store.state import DiskRow, LinkRow
from sharedroot.workflows.context import Site

GUESTS = 1000
RUNS = 5


def build(home: Path, init: tuple[str, ...] = (), hosts: tuple[str, ...] = ()) -> None:
    """A site (`init` ARGS) and GUESTS read-only clones; with `hosts`, spread over them."""
    assert main(["--home", str(home), "init", *init]) == 0
    site = Site.open(home)
    layout = site.config.layout
    root = getattr(site.hv, "disk_root", home)  # where the images of the site live
    with site.state.transaction():
        for n in range(GUESTS):
            name = f"LNX{n:05d}"
            site.state.add_guest(name, Role.RO_CLONE)
            if hosts:
                site.state.set_host(name, hosts[n % len(hosts)])
            (root / "disks" / name).mkdir(parents=True)
            for d in layout.private:
                path = root / "disks" / name / f"{d.address}.img"
                with open(path, "wb") as f:
                    f.truncate(d.size)
                site.state.add_disk(
                    DiskRow(name, d.address, d.kind, d.fs, d.size, str(path.relative_to(root)))
                )
            holder = site.config.guests.gold[n % 2]
            for d in layout.shared:
                site.state.add_link(
                    LinkRow(name, d.address, holder, gold_ro_address(d.address), Mode.RR)
                )
            site.state.add_link(
                LinkRow(name, ADMIN_LINK_ADDRESS, "CMSCLONE", ADMIN_OWN_ADDRESS, Mode.RR)
            )
        site.state.set_current_slot(1)
    site.state.close()


def timed(argv: list[str]) -> float:
    times = []
    for _ in range(RUNS):
        t = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "site"
        t = time.perf_counter()
        build(home)
        print(f"site with {GUESTS} read-only clones built in {time.perf_counter() - t:.1f}s")
        exe = str(Path(sys.executable).parent / "sharedroot")
        base = timed([sys.executable, "-c", "pass"])
        print(f"median of {RUNS} runs, wall time including interpreter start-up")
        print(f"  {'python -c pass (floor)':34} {base:6.3f}s")
        for args in (["linked"], ["linked", "--json"], ["guests"], ["guests", "--json"]):
            wall = timed([exe, "--home", str(home), *args])
            verdict = "ok" if wall <= 0.5 else "over goal"
            print(f"  {'sharedroot ' + ' '.join(args):34} {wall:6.3f}s  (goal <= 0.5s: {verdict})")


if __name__ == "__main__":
    bench()
