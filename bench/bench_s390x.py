"""s390x guests on the CP emulator against the x86_64 guest on the local backend: install
(warm, and with --cold an empty tree cache: debootstrap's foreign stage under
qemu-user-static) and a read-write clone's boot to ready under TCG.

Usage: python bench/bench_s390x.py [--cold] [--runs N]

"Ready" is when `sharedroot exec GUEST -- true` first succeeds (SSH on z/VM, the guest
agent locally); "login" is the getty's prompt on the console, for both.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_boot import LOGIN, boot_sharedroot, wait_for
from bench_boot import sr as sr_local

REPO = Path(__file__).resolve().parent.parent
SHAREDROOT = str(Path(sys.executable).parent / "sharedroot")
ZVMSIM = str(REPO / "scripts" / "zvmsim")
DIRECT = REPO / "zvmsim" / "paper-s390x.direct"
CYL = 737280
SIZES = {"01B0": 140, "01B1": 420, "01B4": 70, "01B5": 45, "01B6": 560, "01B7": 1700, "01B8": 30}


def sr_zvm(sim: Path, home: Path, *args: str, env: dict[str, str] | None = None) -> float:
    t = time.perf_counter()
    subprocess.run([ZVMSIM, str(sim), "--", SHAREDROOT, "--home", str(home), *args],
                   check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, env=env)  # fmt: skip
    return time.perf_counter() - t


def boot_s390x(sim: Path, home: Path, guest: str) -> tuple[float, float]:
    log = sim / "guests" / guest / "console.log"
    log.unlink(missing_ok=True)
    t = time.perf_counter()
    sr_zvm(sim, home, "start", guest)
    argv = [ZVMSIM, str(sim), "--", SHAREDROOT, "--home", str(home), "exec", guest, "--", "true"]
    while subprocess.run(argv, capture_output=True).returncode != 0:
        if time.perf_counter() - t > 900:
            raise TimeoutError(f"{guest} did not answer SSH in 900 s")
        time.sleep(1)
    ready = time.perf_counter() - t
    login = wait_for(log, LOGIN, t)
    sr_zvm(sim, home, "stop", guest)
    return ready, login


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cold", action="store_true", help="also time install with an empty cache")
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args()
    os.environ["ZVMSIM_DIRECT"] = str(DIRECT)
    os.environ["ZVMSIM_UPLINK"] = "1"  # a cold install fetches packages
    with tempfile.TemporaryDirectory(prefix="bench-s390x-") as tmp:
        sim, home, local = Path(tmp, "zvm"), Path(tmp, "site"), Path(tmp, "local")
        try:
            sizes = [f"--size={a}={n * CYL}" for a, n in SIZES.items()]
            sr_zvm(sim, home, "init", "--backend", "zvm", "--distro", "debian-bookworm", *sizes)
            if args.cold:
                env = os.environ | {"SHAREDROOT_CACHE": str(Path(tmp) / "cache")}
                cold = sr_zvm(sim, home, "install", "--yes", env=env)
                print(f"s390x install, cold (foreign debootstrap + kernel): {cold:7.1f}s")
            warm = sr_zvm(sim, home, "install", "--yes")
            print(f"s390x install, warm (cached tree):                {warm:7.1f}s")
            for step in ("cloneprep", "mnt2gold"):
                sr_zvm(sim, home, step, "--yes")
            sr_zvm(sim, home, "define", "LNX226", "--rw", "--hostname", "lnx226",
                   "--ip", "129.40.179.226", "--gateway", "129.40.179.254")  # fmt: skip
            sr_zvm(sim, home, "clonerw", "LNX226", "--yes")
            s390 = [boot_s390x(sim, home, "LNX226") for _ in range(args.runs)]
        finally:
            subprocess.run([sys.executable, "-m", "zvmsim.admin", str(sim), "cleanup"],
                           cwd=REPO, env=os.environ | {"PYTHONPATH": str(REPO)},
                           capture_output=True, check=False)  # fmt: skip
        sr_local(local, "init")
        warm = sr_local(local, "install", "--yes")
        print(f"x86_64 install, warm (cached tree):               {warm:7.1f}s")
        for step in (("cloneprep", "--yes"), ("mnt2gold", "--yes")):
            sr_local(local, *step)
        sr_local(local, "define", "LNX226", "--rw", "--hostname", "lnx226", "--ip", "10.0.2.26")
        sr_local(local, "clonerw", "LNX226", "--yes")
        x86 = [boot_sharedroot(local, "LNX226")[:2] for _ in range(args.runs)]
    for name, runs in (("s390x (CP emulator, qemu-system-s390x)", s390), ("x86_64 (local)", x86)):
        ready = statistics.median(a for a, _ in runs)
        login = statistics.median(b for _, b in runs)
        print(f"  {name:40s} start -> ready {ready:6.1f}s, -> login {login:6.1f}s")
    ratio = statistics.median(a for a, _ in s390) / statistics.median(a for a, _ in x86)
    print(f"  ratio (ready, s390x / x86_64)            {ratio:6.2f}")


if __name__ == "__main__":
    main()
