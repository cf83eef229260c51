"""Boot to ready of a read-write clone, against the same image under a minimal QEMU line;
and `install` warm (cached tree) and, with --cold, cold (a fresh cache).

Usage: python bench/bench_boot.py [--cold] [--runs N]

"Login" is the moment the serial console shows the getty's login prompt, measured the
same way for both; "agent" is when sharedroot's guest agent answers (`start --wait`'s
first condition); "cpu" the CPU seconds QEMU spent until the login prompt, which host
load on other cores sways far less than the wall clock. The minimal line boots the
clone's own disks read-write, with the two VDISKs (without them systemd waits 90 s for
the swap devices in fstab).
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
from typing import NamedTuple

from sharedroot.hypervisor import cache_dir, ipl
from sharedroot.hypervisor.qemu import process
from sharedroot.hypervisor.qemu.accel import probe_accel
from sharedroot.workflows.context import Site

SHAREDROOT = str(Path(sys.executable).parent / "sharedroot")
LOGIN = b" login: "


def sr(home: Path, *args: str, env: dict[str, str] | None = None) -> float:
    t = time.perf_counter()
    subprocess.run([SHAREDROOT, "--home", str(home), *args], check=True,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, env=env)  # fmt: skip
    return time.perf_counter() - t


def wait_for(path: Path, marker: bytes, since: float, timeout: float = 600) -> float:
    while time.perf_counter() - since < timeout:
        if path.exists() and marker in path.read_bytes():
            return time.perf_counter() - since
        time.sleep(0.05)
    raise TimeoutError(f"{marker!r} not in {path} after {timeout}s")


class Boot(NamedTuple):
    agent: float  # seconds from start until the guest agent answers
    login: float  # ... until the console's login prompt
    cpu: float  # CPU seconds of the guest's QEMU until the login prompt


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (/proc/PID/stat utime, stime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def boot_sharedroot(home: Path, guest: str) -> Boot:
    site = Site.open(home)
    log = site.hv.console_log(guest)
    log.unlink(missing_ok=True)
    t = time.perf_counter()
    subprocess.run([SHAREDROOT, "--home", str(home), "start", guest], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    site.hv.wait_ready(guest, 600)
    agent = time.perf_counter() - t
    login = wait_for(log, LOGIN, t)
    pid = process.read_pid(home / "run" / guest)
    cpu = cpu_seconds(pid) if pid is not None else float("nan")
    sr(home, "stop", guest)
    return Boot(agent, login, cpu)


def boot_minimal(home: Path, guest: str, accel: str, work: Path) -> float:
    disks = sorted((home / "disks" / guest).glob("*.img"))
    kernel, initrd, cmdline = ipl.extract_boot_files(home / f"disks/{guest}/01B0.img", work)
    argv = ["qemu-system-x86_64", "-accel", accel, "-m", "512", "-display", "none",
            "-no-reboot", "-kernel", str(kernel), "-initrd", str(initrd), "-append", cmdline,
            "-serial", f"file:{work / 'minimal.log'}"]  # fmt: skip
    vdisks = [process.make_vdisk(work / f"{a}.swap", 64 << 20) for a in ("01B2", "01B3")]
    for path in [*disks, *vdisks]:
        addr = path.stem
        argv += ["-drive", f"if=none,id=d{addr},file={path},format=raw",
                 "-device", f"virtio-blk-pci,drive=d{addr},serial={addr}"]  # fmt: skip
    (work / "minimal.log").unlink(missing_ok=True)
    t = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        return wait_for(work / "minimal.log", LOGIN, t)
    finally:
        proc.kill()  # no agent in the minimal line; the disks are thrown away after
        proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cold", action="store_true", help="also time install with an empty cache")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-boot-") as tmp:
        home = Path(tmp) / "site"
        sr(home, "init")
        if args.cold:
            env = os.environ | {"SHAREDROOT_CACHE": str(Path(tmp) / "cache")}
            print(f"install, cold (debootstrap + kernel, empty cache): "
                  f"{sr(home, 'install', '--yes', env=env):7.1f}s")  # fmt: skip
        print(f"install, warm (cached tree {cache_dir()}):        "
              f"{sr(home, 'install', '--yes'):7.1f}s")  # fmt: skip
        sr(home, "cloneprep", "--yes")
        sr(home, "mnt2gold", "--yes")
        sr(home, "define", "LNX226", "--rw", "--hostname", "lnx226", "--ip", "10.0.2.26")
        sr(home, "clonerw", "LNX226", "--yes")
        accel = probe_accel(cache_dir())
        print(f"acceleration found by the probe: {accel}; {args.runs} runs each, medians")
        ours = [boot_sharedroot(home, "LNX226") for _ in range(args.runs)]
        mini = [boot_minimal(home, "LNX226", accel, Path(tmp)) for _ in range(args.runs)]
        agent = statistics.median(b.agent for b in ours)
        login = statistics.median(b.login for b in ours)
        bare = statistics.median(mini)
        print(f"  sharedroot start -> guest agent answers  {agent:6.1f}s")
        print(f"  sharedroot start -> login prompt         {login:6.1f}s")
        print(f"  minimal qemu line -> login prompt        {bare:6.1f}s")
        print(f"  ratio (login, sharedroot / minimal)      {login / bare:6.2f}  (goal <= 1.1)")


if __name__ == "__main__":
    main()
