"""Install time (cold and warm) and boot to ready of a read-only clone for each
distribution and option combination, against Debian 12 with initramfs-tools and
systemd-networkd (what sharedroot built before it had distributions as recipes).

Usage: python bench/bench_distros.py [--cold] [--runs N] [--only DISTRO:INITRAMFS:NETWORK]

Cold: `install` with an empty cache (debootstrap, apt, the initramfs). Warm: `install`
again, the tree cached. Boot: `start` of a read-only clone (after cloneprep, mnt2rogld,
ro2gold, clonero) until the guest agent answers and until the console's login prompt,
and the CPU seconds its QEMU spent until then, the median of N boots. The boots go round
the combinations (one each per round), so load on the host weighs on all of them alike.
Under TCG on this machine unless /dev/kvm works.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

from bench_boot import Boot, boot_sharedroot, sr

BASELINE = ("debian-bookworm", "initramfs-tools", "networkd")
COMBINATIONS = [
    BASELINE,
    ("debian-trixie", "initramfs-tools", "networkd"),
    ("debian-trixie", "dracut", "networkmanager"),
    ("debian-bookworm", "dracut", "ifupdown"),
]


def prepare(tmp: Path, combo: tuple[str, ...], cold: bool) -> tuple[Path, dict[str, float]]:
    """A site of `combo` with a read-only clone LNX231, and its install times."""
    distro, initramfs, network = combo
    home = tmp / "-".join(combo) / "site"
    install = ["install", "--distro", distro, "--initramfs", initramfs, "--network", network]
    sr(home, "init", "--layout", "paper")
    out: dict[str, float] = {}
    if cold:
        env = os.environ | {"SHAREDROOT_CACHE": str(home.parent / "cache")}
        out["cold"] = sr(home, *install, "--yes", env=env)
    out["warm"] = sr(home, *install, "--yes")
    for step in ("cloneprep", "mnt2rogld", "ro2gold"):
        sr(home, step, "--yes")
    sr(home, "define", "LNX231", "--ro", "--hostname", "lnx231", "--ip", "10.0.2.31")
    sr(home, "clonero", "LNX231", "--yes")
    return home, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cold", action="store_true", help="also time install with an empty cache")
    ap.add_argument("--runs", type=int, default=3, help="boots per combination")
    ap.add_argument("--only", action="append", default=[], metavar="D:I:N")
    args = ap.parse_args()
    combos = [tuple(o.split(":")) for o in args.only] or COMBINATIONS
    results: dict[tuple[str, ...], dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-distros-") as tmp:
        homes = {}
        for combo in combos:
            assert len(combo) == 3, f"--only {':'.join(combo)}: expected DISTRO:INITRAMFS:NETWORK"
            homes[combo], results[combo] = prepare(Path(tmp), combo, args.cold)
        boots: dict[tuple[str, ...], list[Boot]] = {c: [] for c in combos}
        for _ in range(args.runs):
            for combo, home in homes.items():
                boots[combo].append(boot_sharedroot(home, "LNX231"))
        for combo, r in results.items():
            for what in Boot._fields:
                r[what] = statistics.median(getattr(b, what) for b in boots[combo])
            cold = f"cold {r['cold']:6.1f}s, " if "cold" in r else ""
            print(f"{' + '.join(combo):<48} install {cold}warm {r['warm']:5.1f}s;"
                  f" boot to agent {r['agent']:5.1f}s, to login {r['login']:5.1f}s"
                  f" ({r['cpu']:5.1f} CPU s)")  # fmt: skip
    base = results.get(BASELINE)
    if base is None:
        return
    print(f"against {' + '.join(BASELINE)} (boot to login, {args.runs} boots each, medians;"
          " wall clock and QEMU's CPU seconds):")  # fmt: skip
    for combo, r in results.items():
        print(f"  {' + '.join(combo):<48} {r['login'] / base['login']:5.2f}x"
              f"  {r['cpu'] / base['cpu']:5.2f}x CPU")  # fmt: skip


if __name__ == "__main__":
    main()
