"""A fleet of read-only clones in one batch: `define --from FILE` + `clonero --from FILE`.

    python bench/bench_fleet.py [--n N] [--sample S] [--dir DIR]

On a site whose home is on an XFS filesystem made with `mkfs.xfs -m reflink=1` on a
sparse loop file (needs root; unmounted and removed afterwards, also on failure), with
Linux installed and promoted to gold slot 1 by the CLI (install, cloneprep, mnt2rogld,
ro2gold), defines and clones N read-only clones (default 1000) with two commands, each
given the file of all N guests. The baseline is what a user would otherwise run: the
per-guest commands one at a time (`define GUEST --ro --hostname H --ip A`, then
`clonero GUEST --yes`), measured on S guests (default 20) and extrapolated to N.
Everything runs through the `sharedroot` command, start-up included. New bytes per clone
are the filesystem's used space (statvfs) before and after, after sync, once XFS has
settled its background frees.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from bench_clonero import MiB, _terminate, reflinks, ro_ip, sr, usage, xfs_mount

from sharedroot.hypervisor import cache_dir
from sharedroot.run import have

GOAL_SECONDS = 300.0  # define + clonero of 1000 read-only clones
GOAL_BYTES = 1 * MiB  # new bytes per clone on reflink storage


def build_site(home: Path) -> None:
    steps = (
        ["init"],
        ["install", "--yes"],
        ["cloneprep", "--yes"],
        ["mnt2rogld", "--yes"],
        ["ro2gold", "--yes"],
    )
    walls = [f"{args[0]} {sr(home, *args):.1f}s" for args in steps]
    print(f"  site built with the CLI: {', '.join(walls)}")


def one_by_one(home: Path, guests: list[str], first_ip: int) -> tuple[float, float, float]:
    """The per-guest commands, one guest at a time: seconds define, clonero; new bytes."""
    before = usage(home, True)
    t_define = t_clone = 0.0
    for i, g in enumerate(guests):
        ip = ro_ip(first_ip + i)
        t_define += sr(home, "define", g, "--ro", "--hostname", g.lower(), "--ip", ip)
        t_clone += sr(home, "clonero", g, "--yes")
    after = usage(home, True)
    return t_define, t_clone, float(after.used - before.used)


def batch(home: Path, guests: list[str], fleet: Path) -> tuple[float, float, float]:
    """The whole fleet in two commands: seconds define, clonero; new bytes."""
    fleet.write_text(
        "# GUEST KIND HOSTNAME IP\n"
        + "".join(f"{g} ro {g.lower()} {ro_ip(i)}\n" for i, g in enumerate(guests))
    )
    before = usage(home, True)
    t_define = sr(home, "define", "--from", str(fleet))
    t_clone = sr(home, "clonero", "--from", str(fleet), "--yes")
    after = usage(home, True)
    return t_define, t_clone, float(after.used - before.used)


def report(n: int, sample: int, base: tuple[float, float, float], fleet: tuple[float, ...]) -> None:
    b_def, b_clone, b_new = (x / sample for x in base)
    f_def, f_clone, f_new = fleet[0], fleet[1], fleet[2] / n
    f_total = f_def + f_clone
    b_total = (b_def + b_clone) * n
    print(f"  {'':<44} {'define':>9} {'clonero':>9} {'total':>9} {'per clone':>10} {'new MiB':>8}")
    print(
        f"  {f'one by one, {sample} guests, extrapolated to {n}':<44} {b_def * n:>8.1f}s"
        f" {b_clone * n:>8.1f}s {b_total:>8.1f}s {(b_def + b_clone) * 1000:>8.1f}ms"
        f" {b_new / MiB:>8.3f}"
    )
    print(
        f"  {f'batch: define --from + clonero --from, {n}':<44} {f_def:>8.1f}s {f_clone:>8.1f}s"
        f" {f_total:>8.1f}s {f_total / n * 1000:>8.1f}ms {f_new / MiB:>8.3f}"
    )
    print(
        f"  one by one / batch: {b_total / f_total:.1f}x the time;"
        f" define alone {b_def * n / f_def:.1f}x, clonero alone {b_clone * n / f_clone:.1f}x"
    )
    verdict = "met" if f_total <= GOAL_SECONDS * n / 1000 else "MISSED"
    print(
        f"  goal <= {GOAL_SECONDS:.0f}s for 1000 clones ({GOAL_SECONDS * n / 1000:.1f}s for {n}):"
        f" {f_total:.1f}s, {verdict}; goal <= {GOAL_BYTES / MiB:.0f} MiB new per clone:"
        f" {f_new / MiB:.3f} MiB, {'met' if f_new <= GOAL_BYTES else 'MISSED'}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="read-only clones in the batch (1000)")
    ap.add_argument("--sample", type=int, default=20, help="guests run one by one (20)")
    ap.add_argument("--dir", type=Path, help="where to work (default: a new dir in /var/tmp)")
    args = ap.parse_args()
    if not 1 <= args.n <= 5000 or not 1 <= args.sample <= 200:
        ap.error("--n must be 1..5000 and --sample 1..200")
    if os.geteuid() != 0:
        ap.error("needs root (install, mnt2rogld and cloneprep mount images; XFS loop mount)")
    if not have("mkfs.xfs"):
        ap.error("mkfs.xfs is not installed")
    signal.signal(signal.SIGTERM, _terminate)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    where = args.dir or Path("/var/tmp")
    where.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-fleet-", dir=where))
    print(
        f"python {sys.version.split()[0]}, kernel {os.uname().release}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f} at start; golden tree cache {cache_dir()}"
    )
    t0 = time.perf_counter()
    try:
        with xfs_mount(work) as mnt:
            home = mnt / "site"
            build_site(home)
            if not reflinks(home):
                raise SystemExit("the XFS filesystem does not reflink; no figures")
            base = one_by_one(home, [f"LNB{i:04d}" for i in range(args.sample)], 4000)
            fleet = batch(home, [f"LNX{i:04d}" for i in range(args.n)], work / "fleet.txt")
            report(args.n, args.sample, base, fleet)
    finally:
        if not os.path.ismount(work / "xfs"):  # never delete through a mount left behind
            shutil.rmtree(work, ignore_errors=True)
    print(
        f"\ntotal wall time {time.perf_counter() - t0:.0f}s; load average"
        f" {os.getloadavg()[0]:.2f} at the end"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
