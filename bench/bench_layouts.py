"""CLONERO with the LVM layout (layouts/lvm.toml: /var and /srv on rwVG at 02B0) against
Table 1-1 (/var on its own disk 01B6): time and bytes copied per read-only clone.

    python bench/bench_layouts.py [--clones N] [--dir DIR]

For each layout: `init --layout`, install (the layout's cached golden tree, built on the
first run), cloneprep, mnt2rogld, ro2gold; then `define --ro` and `clonero` of N guests
(in-process API calls, quiet UI, one open Site: no interpreter start-up), the layouts
alternating guest by guest so both see the same machine load. The site's home is on the
host filesystem (the copy engine's copy_file_range). Reported: the median clonero time
and the median bytes clonero wrote (the copy results' `copied`), and their ratio.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from sharedroot.cli.ui import TerminalUI
from sharedroot.model.layout import PAPER_LAYOUT
from sharedroot.model.parm import Identity
from sharedroot.model.types import Role
from sharedroot.store.config import load_layout, make_config
from sharedroot.workflows import cloneprep, clones, define, install, pipeline
from sharedroot.workflows.context import Options, Site
from sharedroot.workflows.site import init_site

UI = TerminalUI(quiet=True)
YES = Options(yes=True)
LVM = Path(__file__).parent.parent / "layouts" / "lvm.toml"
MiB = 1 << 20


def prepared(home: Path, name: str) -> Site:
    layout = PAPER_LAYOUT if name == "paper" else load_layout(LVM)
    init_site(home, make_config({}, {}, layout), UI, name)
    site = Site.open(home)
    t0 = time.monotonic()
    install.install(site, UI, YES)
    cloneprep.cloneprep(site, UI, YES)
    pipeline.mnt2rogld(site, UI, YES)
    pipeline.ro2gold(site, UI, YES, 1)
    print(f"{name}: install to gold slot 1 in {time.monotonic() - t0:.0f}s", file=sys.stderr)
    return site


def one_clone(site: Site, i: int) -> tuple[float, int]:
    guest = f"LNX{300 + i}"
    ident = Identity(hostname=guest.lower(), ip=f"10.0.3.{10 + i}", prefix=24, gateway="10.0.3.1")
    define.define(site, UI, YES, guest, Role.RO_CLONE, ident)
    t0 = time.perf_counter()
    out = clones.clonero(site, UI, YES, guest)
    took = time.perf_counter() - t0
    copied = sum(int(r.get("bytes_copied", 0)) for r in out.results)
    return took, copied


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clones", type=int, default=15)
    ap.add_argument("--dir", type=Path, help="where the two sites live (default: a temp dir)")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-layouts-", dir=args.dir))
    try:
        sites = {name: prepared(base / name, name) for name in ("paper", "lvm")}
        times: dict[str, list[float]] = {n: [] for n in sites}
        sizes: dict[str, list[int]] = {n: [] for n in sites}
        for i in range(args.clones):
            for name, site in sites.items():
                took, copied = one_clone(site, i)
                times[name].append(took)
                sizes[name].append(copied)
        ms = {n: statistics.median(t) * 1000 for n, t in times.items()}
        mib = {n: statistics.median(s) / MiB for n, s in sizes.items()}
        print(f"clonero, median of {args.clones} per layout (host filesystem, copy_file_range)")
        print("| layout | private disks | clonero | copied |")
        print("|---|---|---|---|")
        for name, what in (("paper", "01B4 swap, 01B5 /local, 01B6 /var"),
                           ("lvm", "01B4 swap, 01B5 /local, 02B0 rwVG (/var, /srv)")):  # fmt: skip
            print(f"| {name} | {what} | {ms[name]:.1f} ms | {mib[name]:.1f} MiB |")
        print(f"LVM / Table 1-1: {ms['lvm'] / ms['paper']:.2f}x time")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
