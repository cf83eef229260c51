"""MIGRATE with --reboot: N running read-only clones moved to another gold slot, in waves.

    python bench/bench_migrate.py [--clones N] [--quick] [--reboots R]

Setup, in a temporary --home: init, install (the cached golden tree), cloneprep,
mnt2rogld, ro2gold --slot 1; N read-only clones defined and cloned (clonero copies from the
current slot, so this comes before:) ro2gold --slot 2, a second generation nobody links
yet, from the same S10ROGLD; all N started (`start`, no --wait), then waited for until
ready (the guest agent answers and `systemctl is-system-running --wait` returns, as
`start --wait` does; the API's wait_ready).  Every command timed goes through the CLI, so
each wall time below includes one interpreter start-up.

Measured, with all N clones running throughout (the others idle):
- baseline: one clone's reboot, `stop GUEST` + `start GUEST --wait`, median of R runs
  (on R different clones);
- `migrate <all N> --slot 2 --reboot --parallel 1 --yes`, wall;
- `migrate <all N> --slot 1 --reboot --parallel K --yes` with K = the number of cores, wall:
  back again, a real migration too (relink + three-way /etc merge + reboot per clone).
After each migrate every clone must link the target slot and be logged on.

Ratios: wall / (N x one reboot) is what a wave of 1 costs against rebooting the clones by
hand one after the other (1.0 = migrate adds nothing); wall / (ceil(N/K) x one reboot) the
same for waves of K (1.0 = K reboots in parallel cost no more than one).  Under TCG the K
guests of a wave share the host's cores, so waves of K are not K times faster.

All guests are stopped at the end, also on failure or SIGTERM, and the home is removed.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType

from sharedroot.cli.ui import TerminalUI
from sharedroot.hypervisor import cache_dir
from sharedroot.hypervisor.qemu import process
from sharedroot.hypervisor.qemu.accel import probe_accel
from sharedroot.model.types import GuestState
from sharedroot.workflows.context import Site
from sharedroot.workflows.guest import wait_ready
from sharedroot.workflows.relink import slot_of

SHAREDROOT = str(Path(sys.executable).parent / "sharedroot")
UI = TerminalUI(quiet=True)
GUEST_MIB = 512  # site.config.memory_mb by default
BOOT_TIMEOUT = 1800.0  # N guests booting at once under TCG on few cores are slow


def sr(home: Path, *args: str) -> float:
    """One CLI command, wall time; its stderr is shown only if it fails."""
    t = time.perf_counter()
    proc = subprocess.run(
        [SHAREDROOT, "--home", str(home), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise RuntimeError(f"sharedroot {' '.join(args)}: exit {proc.returncode}")
    return wall


def mem_available_mib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) // 1024
    return 0


def clone_names(n: int) -> list[str]:
    return [f"LNX{100 + i:03d}" for i in range(n)]


def running(home: Path, guests: list[str]) -> list[str]:
    site = Site.open(home)
    return [g for g in guests if site.hv.query(g) is GuestState.LOGGED_ON]


def check_slot(home: Path, guests: list[str], slot: int) -> None:
    site = Site.open(home)
    wrong = [f"{g} (slot {slot_of(site, g)})" for g in guests if slot_of(site, g) != slot]
    down = [g for g in guests if site.hv.query(g) is not GuestState.LOGGED_ON]
    if wrong or down:
        raise RuntimeError(f"after migrate to slot {slot}: not moved {wrong}, logged off {down}")


def setup(home: Path, n: int) -> list[str]:
    t = time.perf_counter()
    sr(home, "init")
    print(f"  install --yes (cached tree {cache_dir()}): {sr(home, 'install', '--yes'):6.1f}s")
    for cmd in (["cloneprep"], ["mnt2rogld"], ["ro2gold", "--slot", "1"]):
        sr(home, *cmd, "--yes")
    guests = clone_names(n)
    for i, g in enumerate(guests):  # clonero takes the current slot: 1, until the next ro2gold
        sr(home, "define", g, "--ro", "--hostname", g.lower(), "--ip", f"10.0.2.{100 + i}",
           "--gateway", "10.0.2.2")  # fmt: skip
        sr(home, "clonero", g, "--yes")
    wall = sr(home, "ro2gold", "--slot", "2", "--yes")
    print(f"  ro2gold --slot 2 (second generation, nobody links it): {wall:6.1f}s")
    print(f"  site with {n} read-only clones on slot 1:    {time.perf_counter() - t:6.1f}s")
    return guests


def boot_all(home: Path, guests: list[str]) -> None:
    t = time.perf_counter()
    for g in guests:
        sr(home, "start", g)
    site = Site.open(home)
    deadline = time.monotonic() + BOOT_TIMEOUT
    for g in guests:  # they boot together; waiting in turn ends with the slowest
        wait_ready(site, UI, g, max(30.0, deadline - time.monotonic()))
    print(f"  all {len(guests)} started and ready (booting together): "
          f"{time.perf_counter() - t:6.1f}s")  # fmt: skip


def reboot_once(home: Path, guest: str) -> tuple[float, float]:
    return sr(home, "stop", guest), sr(home, "start", guest, "--wait", "--timeout", "900")


def stop_all(home: Path, guests: list[str]) -> None:
    """Every guest of ours still logged on: a clean stop, else SIGKILL to its QEMU."""
    try:
        up = running(home, guests)
    except Exception as exc:  # a half-built site: nothing can be running
        print(f"  (cleanup: {exc})", file=sys.stderr)
        return

    def stop(g: str) -> None:
        try:
            sr(home, "stop", g, "--timeout", "60")
        except Exception:
            pid = process.read_pid(home / "run" / g)
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(stop, up))
    left = running(home, guests)
    if left:
        print(f"  cleanup: still logged on: {', '.join(left)}", file=sys.stderr)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(f"signal {signum}")  # so that the finally blocks stop the guests


def bench(n: int, reboots: int) -> None:
    cores = os.cpu_count() or 1
    need = n * GUEST_MIB
    if need + 1024 > mem_available_mib():
        raise SystemExit(f"{n} guests need {need} MiB; {mem_available_mib()} MiB available")
    with tempfile.TemporaryDirectory(prefix="bench-migrate-") as tmp:
        home = Path(tmp) / "site"
        guests = clone_names(n)
        try:
            print(f"setup ({n} clones x {GUEST_MIB} MiB, {cores} cores, "
                  f"accel {probe_accel(cache_dir())})")  # fmt: skip
            setup(home, n)
            boot_all(home, guests)

            print(f"one clone's reboot with all {n} running, {reboots} runs, medians")
            runs = [reboot_once(home, guests[i % n]) for i in range(reboots)]
            stop_t = statistics.median(s for s, _ in runs)
            start_t = statistics.median(w for _, w in runs)
            one = statistics.median(s + w for s, w in runs)
            print(f"  stop GUEST                        {stop_t:7.1f}s")
            print(f"  start GUEST --wait                {start_t:7.1f}s")
            print(f"  one reboot (stop + start --wait)  {one:7.1f}s   "
                  f"(runs: {', '.join(f'{s + w:.1f}' for s, w in runs)})")  # fmt: skip

            walls: dict[int, float] = {}
            for k, slot in ((1, 2), (cores, 1)):
                walls[k] = sr(home, "migrate", *guests, "--slot", str(slot), "--reboot",
                              "--parallel", str(k), "--yes")  # fmt: skip
                check_slot(home, guests, slot)

            print(f"migrate all {n} clones --reboot (wall, CLI; every clone moved and back up)")
            print(f"  {'':26} {'wall':>8} {'per clone':>10} {'/(N x reboot)':>14} "
                  f"{'/(ceil(N/K) x reboot)':>22} {'/reboot':>8}")  # fmt: skip
            for (k, wall), slot in zip(walls.items(), (2, 1), strict=True):
                label = f"--slot {slot} --parallel {k}"
                print(f"  {label:26} {wall:7.1f}s {wall / n:9.1f}s {wall / (n * one):14.2f} "
                      f"{wall / (math.ceil(n / k) * one):22.2f} {wall / one:8.1f}")  # fmt: skip
            if cores > 1:
                print(f"  speed-up of --parallel {cores} over --parallel 1: "
                      f"{walls[1] / walls[cores]:.2f}x")  # fmt: skip
        finally:
            stop_all(home, guests)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--clones", type=int, default=20, help="read-only clones (20)")
    ap.add_argument("--quick", action="store_true", help="4 clones")
    ap.add_argument("--reboots", type=int, default=3, help="runs of the baseline reboot (3)")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    bench(4 if args.quick else args.clones, max(1, args.reboots))


if __name__ == "__main__":
    main()
