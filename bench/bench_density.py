"""Density: host memory per read-only clone with the gold mapped as memory (DAX) vs
attached as virtio-blk, and the boot time of each.

One site, N read-only clones of one gold slot. For each mode (site setting dax = on,
then off) the clones boot side by side, each reads the same working set (the larger
libraries of /usr/lib, python3 and perl started), and the host memory is measured:

- per clone, the private (anonymous) memory of its QEMU from /proc/PID/smaps_rollup:
  the guest's RAM as far as touched, its page cache included;
- once, the gold images' pages in the host page cache (fincore): with DAX the clones
  map those very pages; with virtio-blk QEMU reads through them.

Per additional clone a host pays the private memory; the gold is paid once.

The boot time alone is given as the wall clock and as the CPU seconds of the guest's
QEMU until the boot has finished, which load on the host's other cores sways far less.

    .venv/bin/python bench/bench_density.py [--clones 4] [--boots 3] [--boots-only] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_boot import cpu_seconds

SHAREDROOT = str(Path(sys.executable).parent / "sharedroot")
WORKING_SET = (
    "find /usr/lib -type f -size +100k | sort | head -400 | xargs cat > /dev/null;"
    " python3 -c 'import json, email.parser, http.client, sqlite3, decimal' ;"
    " perl -MPOSIX -e 1; sync"
)
HOST_RAM = 24 << 30


def sr(home: Path, *args: str) -> str:
    proc = subprocess.run([SHAREDROOT, "--home", str(home), *args], capture_output=True,
                          text=True, stdin=subprocess.DEVNULL)  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"sharedroot {' '.join(args)}: {proc.returncode}\n{proc.stderr}")
    return proc.stdout


def private_kib(pid: int) -> int:
    """Anonymous (private) memory of a process, PSS, in KiB."""
    text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    m = re.search(r"^Pss_Anon:\s+(\d+) kB", text, re.M)
    return int(m[1]) if m else 0


def cached_bytes(paths: list[Path]) -> int:
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", *paths],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return sum(int(x) for x in out.split())


def drop_cache(paths: list[Path]) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def qemu_pid(home: Path, guest: str) -> int:
    return int((home / "run" / guest / "qemu.pid").read_text())


def set_dax(home: Path, on: bool) -> None:
    toml = home / "site.toml"
    text = re.sub(r'^dax = "(on|off)"', f'dax = "{"on" if on else "off"}"',
                  toml.read_text(), count=1, flags=re.M)  # fmt: skip
    toml.write_text(text)


def start_all(home: Path, guests: list[str]) -> float:
    """Start the clones side by side; the median seconds from start to ready."""
    procs = []
    for g in guests:
        t = time.perf_counter()
        procs.append((t, subprocess.Popen(
            [SHAREDROOT, "--home", str(home), "start", "--wait", "--timeout", "900", g],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)))  # fmt: skip
    times = []
    for t, p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"start: {err}")
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def measure(home: Path, guests: list[str], gold: list[Path], dax: bool) -> dict[str, float]:
    set_dax(home, dax)
    drop_cache(gold)
    boot = start_all(home, guests)
    time.sleep(5)  # the tail of the boot settles
    before = [private_kib(qemu_pid(home, g)) for g in guests]
    for g in guests:
        sr(home, "exec", g, "--", "sh", "-c", WORKING_SET)
    time.sleep(2)
    after = [private_kib(qemu_pid(home, g)) for g in guests]
    mapped = json.loads((home / "run" / guests[0] / "pmem.json").read_text())
    result = {
        "boot_s": boot,
        "private_mib": statistics.mean(after) / 1024,
        "growth_mib": statistics.mean(a - b for a, b in zip(after, before, strict=True)) / 1024,
        "gold_cache_mib": cached_bytes(gold) / (1 << 20),
        "mapped": float(sum(1 for v in mapped.values() if v == "dax")),
    }
    for g in guests:
        sr(home, "stop", g)
    return result


def warm_boots(home: Path, guest: str, runs: int) -> dict[str, tuple[float, float]]:
    """One clone booted alone, the modes alternating, the gold warm in the host's page
    cache (as it is on a host that runs clones): median seconds from start to ready, and
    median CPU seconds of its QEMU until then."""
    times: dict[str, list[tuple[float, float]]] = {"dax": [], "virtio-blk": []}
    for _ in range(runs):
        for mode in times:
            set_dax(home, mode == "dax")
            wall = start_all(home, [guest])
            times[mode].append((wall, cpu_seconds(qemu_pid(home, guest))))
            sr(home, "stop", guest)
    return {
        m: (statistics.median(w for w, _ in t), statistics.median(c for _, c in t))
        for m, t in times.items()
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clones", type=int, default=4)
    ap.add_argument("--boots", type=int, default=3, help="warm boots per mode (one clone)")
    ap.add_argument("--keep", action="store_true", help="keep the site (under /var/tmp)")
    ap.add_argument("--boots-only", action="store_true", help="only the boot times alone")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="sharedroot-density-", dir="/var/tmp"))
    home = base / "site"
    guests = [f"LNX{n:04d}" for n in range(1, args.clones + 1)]
    try:
        sr(home, "init", "--layout", "paper")
        for cmd in ("install", "cloneprep", "mnt2rogld", "ro2gold"):
            sr(home, cmd, "--yes")
        for n, g in enumerate(guests, start=1):
            sr(home, "define", g, "--ro", "--hostname", g.lower(), "--ip", f"10.0.3.{n}",
               "--gateway", "10.0.3.254")  # fmt: skip
            sr(home, "clonero", g, "--yes")
        gold = sorted((home / "disks" / "S10GOLD").glob("21B*.img"))
        res = {}
        if not args.boots_only:
            res = {m: measure(home, guests, gold, m == "dax") for m in ("dax", "virtio-blk")}
        warm = warm_boots(home, guests[0], args.boots)
    finally:
        for g in guests:
            subprocess.run([SHAREDROOT, "--home", str(home), "stop", g], capture_output=True)
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    (dw, dc), (vw, vc) = warm["dax"], warm["virtio-blk"]
    print(f"boot time alone, gold warm ({args.boots} each, median):"
          f" DAX {dw:.1f} s ({dc:.1f} CPU s), virtio-blk {vw:.1f} s ({vc:.1f} CPU s)"
          f" = {dw / vw:.2f}x ({dc / vc:.2f}x CPU)")  # fmt: skip
    if not res:
        return
    d, v = res["dax"], res["virtio-blk"]
    print(f"{args.clones} read-only clones, 512 MiB each, TCG; working set: {WORKING_SET}")
    for name, r in res.items():
        print(
            f"{name:>10}: boot {r['boot_s']:.1f} s (median), private memory per clone"
            f" {r['private_mib']:.0f} MiB (+{r['growth_mib']:.0f} MiB for the working set),"
            f" gold in the host page cache once {r['gold_cache_mib']:.0f} MiB,"
            f" disks mapped {r['mapped']:.0f}"
        )
    print(f"working set per additional clone: virtio-blk / DAX = "
          f"{v['growth_mib'] / max(d['growth_mib'], 0.1):.2f}x")  # fmt: skip
    print(f"private memory per additional clone: virtio-blk / DAX = "
          f"{v['private_mib'] / d['private_mib']:.2f}x")  # fmt: skip
    for name, r in res.items():
        fit = (HOST_RAM - r["gold_cache_mib"] * (1 << 20)) / (r["private_mib"] * (1 << 20))
        print(f"clones a 24 GiB host holds ({name}, from the per-clone figure): {fit:.0f}")
    print(f"boot time side by side, gold cold in the host: DAX / virtio-blk ="
          f" {d['boot_s'] / v['boot_s']:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
