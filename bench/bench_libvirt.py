"""The libvirt backend's cost, on the two-host lab of this one machine.

    python bench/bench_libvirt.py [--clones N] [--skip-boots]

Runs itself under scripts/hostlab (two libvirt hosts, one shared pool).  Three figures:

1. Start of N read-only clones spread over 2 hosts vs all N on host 1 vs the local
   backend (its own QEMU launch): N `start --wait` at once, wall time until all are ready.
   Both hosts are this machine's 2 cores under TCG, so the point is overhead, not speed-up.
2. Per command, one clone: `start` (no wait: the domain created / QEMU answering QMP),
   `exec GUEST -- true` (the guest agent through libvirt vs its socket), `stop`; median of 3.
3. `guests` and `linked` with 1000 clones spread over the 2 hosts (goal <= 1 s: one call
   per host, not per guest).

Every command goes through the CLI, so each wall time includes one interpreter start-up.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

from bench_reports import GUESTS, build, timed  # noqa: E402

EXE = str(Path(sys.executable).with_name("sharedroot"))
BOOT = "1200"


def sr(home: Path, *args: str) -> str:
    done = subprocess.run([EXE, "--home", str(home), *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"sharedroot {' '.join(args)}: {done.stderr}")
    return done.stdout


def wall(action: Callable[[], object]) -> float:
    t = time.perf_counter()
    action()
    return time.perf_counter() - t


def site(home: Path, n: int, init: list[str], hosts: list[str]) -> list[str]:
    """A site with the gold in slot 1 and N read-only clones (spread over `hosts`)."""
    sr(home, "init", "--layout", "paper", *init)
    for step in ("install", "cloneprep", "mnt2rogld", "ro2gold"):
        sr(home, step, "--yes")
    clones = [f"LNX{300 + i}" for i in range(n)]
    for i, g in enumerate(clones):
        on = ["--host", hosts[i % len(hosts)]] if hosts else []
        sr(home, "define", g, "--ro", "--hostname", g.lower(), "--ip", f"10.0.2.{30 + i}", *on)
        sr(home, "clonero", g, "--yes")
    return clones


def start_all(home: Path, clones: list[str]) -> float:
    def go() -> None:
        procs = [
            subprocess.Popen([EXE, "--home", str(home), "start", "--wait", "--timeout", BOOT, g])
            for g in clones
        ]
        failed = [g for g, p in zip(clones, procs, strict=True) if p.wait()]
        if failed:
            raise SystemExit(f"{', '.join(failed)} did not start (see {home})")

    took = wall(go)
    for g in clones:
        sr(home, "stop", g)
    return took


def per_command(home: Path, guest: str) -> dict[str, float]:
    found: dict[str, list[float]] = {"start": [], "exec": [], "stop": []}
    for _ in range(3):
        found["start"].append(wall(lambda: sr(home, "start", guest)))
        sr_wait(home, guest)
        found["exec"].append(wall(lambda: sr(home, "exec", guest, "--", "true")))
        found["stop"].append(wall(lambda: sr(home, "stop", guest)))
    return {k: statistics.median(v) for k, v in found.items()}


def sr_wait(home: Path, guest: str) -> None:
    """Until the guest is ready: `verify` waits as `start --wait` does, then checks."""
    sr(home, "verify", guest, "--timeout", BOOT)


def inside(work: Path, n: int, boots: bool) -> None:
    hosts = os.environ["SHAREDROOT_LAB_HOSTS"].split()
    pool = Path(os.environ["SHAREDROOT_LAB_POOL"])
    out: dict[str, Any] = {}
    lv = ["--backend", "libvirt", *(w for h in hosts for w in ("--host", h)), "--pool", str(pool)]
    if boots:
        home = work / "libvirt"
        clones = site(home, n, lv, hosts)
        start_all(home, clones[:2])  # each host once: its QEMU probed, its KVM tried
        out["spread"] = start_all(home, clones)
        for g in clones[1::2]:  # those on host 2, stopped: they start on host 1 next time
            sr(home, "move", g, "--to-host", hosts[0])
        out["one host"] = start_all(home, clones)
        out["libvirt per command"] = per_command(home, clones[0])
        local = work / "local"
        lclones = site(local, n, [], [])
        out["local"] = start_all(local, lclones)
        out["local per command"] = per_command(local, lclones[0])
    reports = work / "reports"
    own_pool = pool / "reports"
    own_pool.mkdir()
    init = ("--backend", "libvirt", *(w for h in hosts for w in ("--host", h)))
    build(reports, (*init, "--pool", str(own_pool)), tuple(hosts))
    for args in (["guests"], ["linked"], ["guests", "--json"]):
        out[" ".join(args)] = timed([EXE, "--home", str(reports), *args])
    out["python floor"] = timed([sys.executable, "-c", "pass"])
    print(json.dumps(out))


def report(found: dict[str, Any], n: int) -> None:
    if "spread" in found:
        spread, one, local = (float(found[k]) for k in ("spread", "one host", "local"))
        print(f"start --wait of {n} read-only clones at once (TCG, wall time to all ready)")
        print(f"  libvirt, spread over 2 hosts  {spread:7.1f} s   {spread / local:5.2f}x local")
        print(f"  libvirt, all on host 1        {one:7.1f} s   {one / local:5.2f}x local")
        print(f"  local backend (own QEMU)      {local:7.1f} s   1.00x")
        lv, lo = found["libvirt per command"], found["local per command"]
        print("one command, one clone (median of 3, interpreter start-up included)")
        for k in ("start", "exec", "stop"):
            ratio = lv[k] / lo[k]
            print(f"  {k:5}  libvirt {lv[k]:6.2f} s   local {lo[k]:6.2f} s   {ratio:5.2f}x")
    print(f"{GUESTS} read-only clones over 2 hosts (median of 5; goal <= 1 s)")
    for k in ("guests", "linked", "guests --json", "python floor"):
        t = float(found[k])
        goal = "" if k == "python floor" else f"  ({'ok' if t <= 1 else 'over goal'})"
        print(f"  {k:14} {t:6.3f} s{goal}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clones", type=int, default=10)
    parser.add_argument("--skip-boots", action="store_true", help="only the 1000-guest reports")
    parser.add_argument("--keep", type=Path, help="work in this new directory, and keep it")
    parser.add_argument("--inside", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside is not None:
        inside(args.inside, args.clones, not args.skip_boots)
        return
    if args.keep is not None:
        args.keep.mkdir(parents=True)
        run(args.keep, args)
        return
    with tempfile.TemporaryDirectory(prefix="bench-libvirt-") as tmp:
        run(Path(tmp), args)


def run(work: Path, args: argparse.Namespace) -> None:
    argv = [sys.executable, __file__, "--clones", str(args.clones), "--inside", str(work)]
    argv += ["--skip-boots"] if args.skip_boots else []
    lab = [str(REPO / "scripts" / "hostlab"), str(work / "lab"), "--", *argv]
    done = subprocess.run(lab, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the bench failed (exit {done.returncode})")
    report(json.loads(done.stdout.splitlines()[-1]), args.clones)


if __name__ == "__main__":
    main()
