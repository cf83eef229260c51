"""Boot to ready of a read-only clone with 5 writable paths (site.toml [writable]) against
the same clone with none (goal: at most 1.02x).

Usage: python bench/bench_writable.py [--runs N]

One site, two gold slots made from the same maintenance system: slot 1 without a table,
slot 2 with five paths (two on /local, one on /var, two on tmpfs, one of those a copy of
a file of the gold). One clone is moved between the slots with `migrate` (a relink and
an /etc merge, not timed) and booted on each in turn, so both see the same machine load.
The first boot on each slot is not counted (first-boot work: machine-id, private copies).
Besides wall clock it prints the CPU seconds of the guest's QEMU until the login prompt:
under TCG on a busy host that is the steadier figure.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from bench_boot import Boot, boot_sharedroot, sr

TABLE = """
[writable."/opt/bench/state"]
where = "local"
start = "empty"

[writable."/opt/bench/data"]
where = "local"
start = "empty"

[writable."/opt/bench/spool"]
where = "var"
start = "empty"

[writable."/opt/bench/log"]
where = "tmpfs"
start = "empty"

[writable."/usr/lib/os-release"]
where = "tmpfs"
start = "copy"
kind = "file"
"""
CLONE = "LNX231"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3, help="boots on each slot")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-writable-") as tmp:
        home = Path(tmp) / "site"
        sr(home, "init", "--layout", "paper")
        for step in ("install", "cloneprep", "mnt2rogld"):
            sr(home, step, "--yes")
        sr(home, "ro2gold", "--slot", "1", "--yes")
        site_file = home / "site.toml"
        site_file.write_text(site_file.read_text() + TABLE)
        sr(home, "mnt2rogld", "--yes")
        sr(home, "ro2gold", "--slot", "2", "--yes")
        sr(home, "define", CLONE, "--ro", "--hostname", "lnx231", "--ip", "10.0.2.31")
        sr(home, "clonero", CLONE, "--yes")  # onto slot 2, the current one
        sr(home, "start", "--wait", CLONE)
        sr(home, "exec", CLONE, "--", "mountpoint", "-q", "/opt/bench/spool")  # in place
        sr(home, "stop", CLONE)
        times: dict[int, list[Boot]] = {1: [], 2: []}
        for n in range(args.runs + 1):
            for slot in (1, 2):
                sr(home, "migrate", CLONE, "--slot", str(slot), "--yes")
                boot = boot_sharedroot(home, CLONE)
                if n:  # the first round is the warm-up
                    times[slot].append(boot)
    agent = {s: statistics.median(b.agent for b in t) for s, t in times.items()}
    login = {s: statistics.median(b.login for b in t) for s, t in times.items()}
    cpu = {s: statistics.median(b.cpu for b in t) for s, t in times.items()}
    print(f"read-only clone, {args.runs} boots each, medians (slot 1: no table, slot 2: 5 paths)")
    for s, what in ((1, "no writable paths"), (2, "5 writable paths")):
        print(
            f"  {what:<18} to agent {agent[s]:6.1f}s, to login {login[s]:6.1f}s"
            f" ({cpu[s]:6.1f} CPU s)"
        )
    print(f"  ratio (login, 5 paths / none)  {login[2] / login[1]:5.3f}  (goal <= 1.02)")
    print(f"  ratio (CPU s, 5 paths / none)  {cpu[2] / cpu[1]:5.3f}")
    print(f"  ratio (agent, 5 paths / none)  {agent[2] / agent[1]:5.3f}")


if __name__ == "__main__":
    main()
