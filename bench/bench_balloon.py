"""Memory given back (the balloon's free page reporting) and memory shared (KSM).

Usage: python bench/bench_balloon.py [--clones N] [--watch SECONDS]

1. Balloon: one read-only clone started by sharedroot (virtio-balloon with free page
   reporting), then the same clone started the same way with its balloon unplugged
   (QMP device_del before the allocation). In the guest, python3 allocates and writes
   256 MiB and exits; QEMU's RSS (smaps_rollup) is sampled every 50 ms. "Returned" is
   how much of the allocation left QEMU's RSS, 10 s after the process exited (goal:
   >= 90 % within 10 s), and when it reached 90 %.
2. KSM: N read-only clones (default 3) of one gold started together with `ksm = off`,
   then with `ksm = on` (site.toml). The growth of the host's pages_sharing (pages KSM
   saves) when all are ready and 15 s, 30 s and --watch seconds (default 60) later; the
   CPU time ksmd spent from the first start to the end; the sum of the clones' PSS then.
   The host's KSM run state is put back as it was afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from types import FrameType

from sharedroot.hypervisor import ksm
from sharedroot.hypervisor.qemu import cmdline, memory, process
from sharedroot.hypervisor.qemu.control import QMP
from sharedroot.model.types import Switch
from sharedroot.store.config import SITE_FILE, load_config, write_config

SHAREDROOT = str(Path(sys.executable).parent / "sharedroot")
MiB = 1 << 20
ALLOC = 256 * MiB
ALLOCATE = f"b = bytearray([120]) * {ALLOC}; print(len(b))"
GOAL_RETURNED = 0.9
GOAL_SECONDS = 10.0
AFTER = 20.0  # seconds sampled after the allocating process exits
TICK = os.sysconf("SC_CLK_TCK")


def sr(home: Path, *args: str) -> str:
    proc = subprocess.run([SHAREDROOT, "--home", str(home), *args], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True)  # fmt: skip
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise RuntimeError(f"sharedroot {' '.join(args)}: exit {proc.returncode}")
    return proc.stdout


def clone_names(n: int) -> list[str]:
    return [f"LNX{227 + i:03d}" for i in range(n)]


def setup(home: Path, guests: list[str]) -> None:
    sr(home, "init")
    for cmd in ("install", "cloneprep", "mnt2rogld", "ro2gold"):
        sr(home, cmd, "--yes")
    for i, g in enumerate(guests):
        sr(home, "define", g, "--ro", "--hostname", g.lower(), "--ip", f"10.0.2.{27 + i}",
           "--gateway", "10.0.2.2")  # fmt: skip
        sr(home, "clonero", g, "--yes")


def start_all(home: Path, guests: list[str]) -> float:
    t = time.perf_counter()
    procs = [subprocess.Popen([SHAREDROOT, "--home", str(home), "start", g, "--wait",
                               "--timeout", "900"], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for g in guests]  # fmt: skip
    for g, p in zip(guests, procs, strict=True):
        _, err = p.communicate()
        if p.returncode != 0:
            sys.stderr.write(err)
            raise RuntimeError(f"start {g}: exit {p.returncode}")
    return time.perf_counter() - t


def stop_all(home: Path, guests: list[str]) -> None:
    for g in guests:
        pid = process.read_pid(home / "run" / g)
        if pid is None or not process.pid_alive(pid):
            continue
        try:
            sr(home, "stop", g, "--timeout", "60")
        except RuntimeError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def qemu_pid(home: Path, guest: str) -> int:
    pid = process.read_pid(home / "run" / guest)
    if pid is None:
        raise RuntimeError(f"{guest}: no QEMU pid")
    return pid


def rss(pid: int) -> int:
    found = memory.rollup(pid)
    return 0 if found is None else found["Rss"]


def unplug_balloon(home: Path, guest: str) -> None:
    sock = home / "run" / guest / cmdline.QMP_SOCK
    with QMP.connect(sock) as qmp:
        qmp.command("device_del", id="balloon")
    deadline = time.monotonic() + 60
    while memory.balloon(sock) is not None:  # gone once the guest has let go of it
        if time.monotonic() > deadline:
            raise RuntimeError(f"{guest}: the balloon was not unplugged")
        time.sleep(0.2)


def free_and_watch(home: Path, guest: str) -> tuple[float, float | None]:
    """The share of the allocation returned 10 s after exit, and when 90 % was back."""
    pid = qemu_pid(home, guest)
    time.sleep(5)  # what the boot freed has been reported
    before = rss(pid)
    samples: list[tuple[float, int]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append((time.monotonic(), rss(pid)))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    sr(home, "exec", guest, "--", "python3", "-c", ALLOCATE)
    exited = time.monotonic()
    time.sleep(AFTER)
    done.set()
    sampler.join()
    peak = max(n for _, n in samples)
    at_goal = [n for t, n in samples if t - exited <= GOAL_SECONDS][-1]
    back = [t - exited for t, n in samples if t >= exited and peak - n >= GOAL_RETURNED * ALLOC]
    print(f"    RSS before {before / MiB:6.0f} MiB, peak {peak / MiB:6.0f} MiB "
          f"(+{(peak - before) / MiB:.0f}), 10 s after exit {at_goal / MiB:6.0f} MiB, "
          f"{AFTER:.0f} s after {samples[-1][1] / MiB:6.0f} MiB")  # fmt: skip
    return (peak - at_goal) / ALLOC, (back[0] if back else None)


def balloon(home: Path, guest: str) -> None:
    print(f"balloon: {guest} frees {ALLOC // MiB} MiB (python3 in the guest, then exits)")
    results = {}
    for variant in ("with balloon", "without"):
        start_all(home, [guest])
        try:
            if variant == "without":
                unplug_balloon(home, guest)
            print(f"  {variant}:")
            results[variant] = free_and_watch(home, guest)
        finally:
            stop_all(home, [guest])
    for variant, (share, when) in results.items():
        at = "never" if when is None else f"after {when:.1f} s"
        print(f"  {variant:13} returned within 10 s: {share:6.1%}; 90 % back: {at}")
    back = [results[v][0] * ALLOC / MiB for v in ("with balloon", "without")]
    print(f"  returned within 10 s, with / without: {back[0]:.0f} / {back[1]:.0f} MiB"
          f"   (goal >= {GOAL_RETURNED:.0%} within {GOAL_SECONDS:.0f} s)")  # fmt: skip


def ksmd_ticks() -> int:
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if proc.name.isdigit() and (proc / "comm").read_text().strip() == "ksmd":
                fields = (proc / "stat").read_text().rpartition(")")[2].split()
                return int(fields[11]) + int(fields[12])  # utime + stime
    raise RuntimeError("no ksmd: a kernel without KSM")


def set_ksm(home: Path, switch: Switch) -> None:
    config = load_config(home / SITE_FILE)
    write_config(home / SITE_FILE, replace(config, ksm=switch))


def ksm_round(home: Path, guests: list[str], switch: Switch, watch: float) -> None:
    set_ksm(home, switch)
    shared0, ticks0, started = ksm.pages_sharing(), ksmd_ticks(), time.monotonic()
    wall = start_all(home, guests)
    try:
        pids = [qemu_pid(home, g) for g in guests]
        t0 = time.monotonic()
        marks = {0.0: 0, 15.0: 0, 30.0: 0, watch: 0}
        for mark in sorted(marks):
            time.sleep(max(0.0, t0 + mark - time.monotonic()))
            marks[mark] = (ksm.pages_sharing() - shared0) * os.sysconf("SC_PAGE_SIZE")
        cpu = (ksmd_ticks() - ticks0) / TICK / (time.monotonic() - started)
        pss = sum((memory.rollup(p) or {"Pss": 0})["Pss"] for p in pids)
        merged = ", ".join(f"{m / MiB:.0f} MiB at +{s:.0f} s" for s, m in sorted(marks.items()))
        print(f"  ksm = {switch.value:3}: {len(guests)} clones ready in {wall:5.1f} s; merged "
              f"{merged}; ksmd CPU {cpu:.1%} of a core (from the first start on); PSS of the"
              f" clones {pss / MiB:.0f} MiB")  # fmt: skip
    finally:
        stop_all(home, guests)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(f"signal {signum}")  # so that the finally blocks stop the guests


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clones", type=int, default=3)
    ap.add_argument("--watch", type=float, default=60.0)
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, _terminate)
    run_before = (ksm.KSM_DIR / "run").read_text()
    guests = clone_names(args.clones)
    with tempfile.TemporaryDirectory(prefix="bench-balloon-") as tmp:
        home = Path(tmp) / "site"
        try:
            setup(home, guests)
            balloon(home, guests[0])
            print(f"KSM: {args.clones} read-only clones of one gold, watched {args.watch:.0f} s"
                  f" after all are ready (host-wide pages_sharing, growth)")  # fmt: skip
            for switch in (Switch.OFF, Switch.ON):
                ksm_round(home, guests, switch, args.watch)
        finally:
            stop_all(home, guests)
            (ksm.KSM_DIR / "run").write_text(run_before)  # the host's KSM as it was


if __name__ == "__main__":
    main()
