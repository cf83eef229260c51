"""Read-only clones (CLONERO): time and space per clone, boot to ready, and MNT2ROGLD's cost.

    python bench/bench_clonero.py [--clones N] [--rw-clones K] [--boots B] [--quick] [--dir DIR]

Runs the whole read-only pipeline twice, on a site whose home is on the host filesystem
(ext4 here: the copy engine uses copy_file_range) and on a site whose home is on an XFS
filesystem made with `mkfs.xfs -m reflink=1` on a sparse loop file (the copy engine
reflinks); the XFS part needs root and is unmounted and removed afterwards, also on failure.

1. Per clone: `define --ro` and `clonero` for N guests (in-process API calls, quiet UI, one
   open Site: no interpreter start-up), a few `clonero` through the CLI (start-up included),
   `define --rw` + `clonerw` for K guests, and the baseline a user would otherwise reach
   for: three `qemu-img create -f qcow2 -b <gold 21Bx> -F raw` overlays (the private disks
   01B4, 01B5, 01B6) per guest, each overlay then fsynced like the copy engine's copies.
   Space, per clone: "images" is the median over the guests of st_blocks*512 of the
   guest's own image files (blocks shared by reflink are counted in every file); "own" the
   median of the bytes in those files' extents that FIEMAP does not flag shared; "new" is
   the blocks the filesystem really gave out for define + clone (statvfs, after sync)
   where blocks can be shared, and the growth of the store's allocated blocks (each inode
   once) where they cannot (there statvfs would also count other processes' writes).
2. Boot to ready (`sharedroot start GUEST --wait`, the CLI, wall time) of a read-only clone
   and a read-write clone of the same maintenance system, alternating, B runs each, stopped
   after each run (stop not timed); on the host site only.
3. `mnt2rogld` (copy the 7 disks, then mount them and make a read-only root) against
   `mnt2tst` (copies the same 7 disks from the same source), alternating, median of 3.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from sharedroot.cli.ui import TerminalUI
from sharedroot.hypervisor import cache_dir
from sharedroot.hypervisor.copyengine import Method, Progress, copy_image
from sharedroot.hypervisor.qemu.accel import probe_accel
from sharedroot.model.layout import gold_ro_address
from sharedroot.model.parm import Identity
from sharedroot.model.types import GuestState, Role
from sharedroot.run import have, run
from sharedroot.workflows import clones, define, pipeline
from sharedroot.workflows.context import Options, Site

SHAREDROOT = str(Path(sys.executable).parent / "sharedroot")
MiB = 1 << 20
UI = TerminalUI(quiet=True)
YES = Options(yes=True)
CLI_CLONES = 3  # clonero through the command line, to show what process start-up adds
XFS_SIZE = 32 << 30  # sparse loop file; only what XFS writes is allocated on the host
GOAL_MS = 50.0
GOAL_BYTES = 1 * MiB
GOAL_BOOT = 1.05
GOAL_ROGLD = 1.2


# --------------------------------------------------------------------------- helpers


class StepClock:
    """A quiet UI that notes when each step began, to split a workflow's time by step."""

    def __init__(self) -> None:
        self.marks: list[tuple[str, float]] = []

    def step(self, text: str) -> None:
        self.marks.append((text, time.perf_counter()))

    def progress(self, label: str, total: int) -> AbstractContextManager[Progress]:
        return contextlib.nullcontext(lambda done, of: None)

    def confirm(self, question: str) -> bool:
        return True

    def durations(self, end: float) -> list[tuple[str, float]]:
        ends = [t for _, t in self.marks[1:]] + [end]
        return [(text, e - t) for (text, t), e in zip(self.marks, ends, strict=True)]


def sr(home: Path, *args: str) -> float:
    """Run the sharedroot CLI on `home`; its wall time (fails loudly with its stderr)."""
    t = time.perf_counter()
    proc = subprocess.run(
        [SHAREDROOT, "--home", str(home), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(
            f"sharedroot {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr.strip()}"
        )
    return wall


def fstype(path: Path) -> str:
    return run(["findmnt", "-n", "-o", "FSTYPE", "-T", path]).stdout.strip()


@dataclass(frozen=True)
class Usage:
    alloc: int  # sum of st_blocks*512 under the tree, each inode once
    used: int  # bytes in use on the whole filesystem (statvfs)


def fs_used(path: Path) -> int:
    sv = os.statvfs(path)
    return (sv.f_blocks - sv.f_bfree) * sv.f_frsize


def usage(tree: Path, settle: bool) -> Usage:
    """After sync; with `settle`, also wait until the filesystem's free count stops moving.

    XFS frees the blocks of deleted files in the background (deferred inode inactivation),
    after sync has returned: clonero's rename frees the filesystems define made.
    """
    os.sync()
    used = fs_used(tree)
    if settle:
        deadline = time.monotonic() + 10
        stable = 0
        while stable < 3 and time.monotonic() < deadline:
            time.sleep(0.25)
            now = fs_used(tree)
            stable = stable + 1 if now == used else 0
            used = now
    seen: set[tuple[int, int]] = set()
    alloc = 0
    for dirpath, _dirs, files in os.walk(tree):
        for name in [".", *files]:
            st = os.lstat(os.path.join(dirpath, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                alloc += st.st_blocks * 512
    return Usage(alloc, used)


def reflinks(directory: Path) -> bool:
    """Whether the copy engine reflinks in `directory` (its own first choice, tried for real)."""
    src = directory / ".bench-probe"
    dst = directory / ".bench-probe.copy"
    src.write_bytes(b"x" * 4096)
    try:
        return copy_image(src, dst).method is Method.REFLINK
    finally:
        src.unlink()
        dst.unlink(missing_ok=True)


# FS_IOC_FIEMAP: a file's extents, each flagged shared or not (struct fiemap, linux/fiemap.h).
FS_IOC_FIEMAP = 0xC020660B
FIEMAP_FLAG_SYNC = 0x1
FIEMAP_EXTENT_LAST = 0x1
FIEMAP_EXTENT_SHARED = 0x2000
_FIEMAP_HEAD = struct.Struct("=QQIIII")
_FIEMAP_EXTENT = struct.Struct("=QQQQQIIII")
_FIEMAP_BATCH = 256


def unshared_bytes(path: Path) -> int:
    """Bytes in `path`'s extents that no other file shares: what this file alone costs."""
    total = 0
    start = 0
    with path.open("rb") as f:
        while True:
            head = _FIEMAP_HEAD.pack(
                start, (1 << 64) - 1 - start, FIEMAP_FLAG_SYNC, 0, _FIEMAP_BATCH, 0
            )
            buf = bytearray(head + bytes(_FIEMAP_EXTENT.size * _FIEMAP_BATCH))
            fcntl.ioctl(f.fileno(), FS_IOC_FIEMAP, buf)
            mapped = _FIEMAP_HEAD.unpack_from(buf)[3]
            if mapped == 0:
                return total
            for i in range(mapped):
                ext = _FIEMAP_EXTENT.unpack_from(buf, _FIEMAP_HEAD.size + i * _FIEMAP_EXTENT.size)
                logical, length, flags = ext[0], ext[2], ext[5]
                if not flags & FIEMAP_EXTENT_SHARED:
                    total += length
                if flags & FIEMAP_EXTENT_LAST:
                    return total
                start = logical + length


@dataclass
class Row:
    label: str
    times: list[float]  # seconds, one per clone
    images: float | None = None  # median per guest: st_blocks*512 of its image files
    own: float | None = None  # median per guest: bytes of its images that nothing shares
    new: float | None = None  # bytes the filesystem gave out, per clone


def new_bytes(before: Usage, after: Usage, n: int, shares: bool) -> float:
    """Per clone: statvfs where blocks can be shared, else the store's allocated growth."""
    return ((after.used - before.used) if shares else (after.alloc - before.alloc)) / n


def image_bytes(dirs: list[Path], pattern: str) -> tuple[float, float]:
    """Median per guest directory: allocated bytes, and bytes not shared with any file."""
    files = [sorted(d.glob(pattern)) for d in dirs]
    alloc = statistics.median(sum(p.stat().st_blocks * 512 for p in fs) for fs in files)
    own = statistics.median(sum(unshared_bytes(p) for p in fs) for fs in files)
    return alloc, own


def summed(a: list[float], b: list[float]) -> list[float]:
    return [x + y for x, y in zip(a, b, strict=True)]


def p90(xs: list[float]) -> float:
    return statistics.quantiles(xs, n=10)[-1] if len(xs) >= 2 else xs[0]


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def identity(guest: str, ip: str) -> Identity:
    gateway = "10.0.2.2" if ip.startswith("10.0.2.") else None
    return Identity(hostname=guest.lower(), ip=ip, prefix=24, gateway=gateway)


def ro_ip(i: int) -> str:  # 10.0.2.20-219, then further /24s (never booted)
    return f"10.0.{2 + i // 200}.{20 + i % 200}"


def private_templates(site: Site) -> list[tuple[str, Path]]:
    """(address, gold 21Bx image of the current slot) for each private disk."""
    slot = site.state.current_slot()
    assert slot is not None
    holder = site.config.slot_holder(slot)
    # The local backend's images, read directly: the baseline copies them with cp.
    return [
        (d.address, site.home / d_row.file)
        for d in site.config.layout.private
        if (d_row := site.state.disk(holder, gold_ro_address(d.address))) is not None
    ]


def fsync_path(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- the site


@dataclass
class SiteResult:
    name: str
    method: str = ""
    shares: bool = False
    rows: dict[str, Row] = field(default_factory=dict)  # by short key, in print order
    rogld: list[float] = field(default_factory=list)
    tst: list[float] = field(default_factory=list)
    rogld_steps: list[tuple[str, float]] = field(default_factory=list)  # of the last run


def build_site(home: Path) -> None:
    steps = ["init"], ["install", "--yes"], ["cloneprep", "--yes"], ["mnt2gold", "--yes"]
    walls = [f"{args[0]} {sr(home, *args):.1f}s" for args in steps]
    print(f"  site built with the CLI: {', '.join(walls)}")


def rogld_section(site: Site, res: SiteResult, reps: int) -> None:
    """mnt2tst and mnt2rogld alternating (os.sync before each, so writeback is not billed)."""
    for _ in range(reps):
        os.sync()
        t = time.perf_counter()
        pipeline.mnt2tst(site, UI, YES)
        res.tst.append(time.perf_counter() - t)
        os.sync()
        clock = StepClock()
        t = time.perf_counter()
        pipeline.mnt2rogld(site, clock, YES)
        end = time.perf_counter()
        res.rogld.append(end - t)
        res.rogld_steps = [("(guards, before the first step)", clock.marks[0][1] - t)]
        res.rogld_steps += clock.durations(end)


def timed_each(guests: list[str], fn: Callable[[int, str], object]) -> list[float]:
    times = []
    for i, g in enumerate(guests):
        t = time.perf_counter()
        fn(i, g)
        times.append(time.perf_counter() - t)
    return times


def clone_section(site: Site, home: Path, overlays: Path, res: SiteResult, n: int, k: int) -> None:
    ro = [f"LNX{i:04d}" for i in range(1, n + 1)]
    rw = [f"LNW{i:04d}" for i in range(1, k + 1)]
    cli = [f"LNC{i:04d}" for i in range(1, CLI_CLONES + 1)]
    disks = home / "disks"

    res.shares = reflinks(home)
    # Read-only clones: define all, then clone all (the store is measured around both).
    u0 = usage(home, res.shares)
    t_def = timed_each(
        ro, lambda i, g: define.define(site, UI, YES, g, Role.RO_CLONE, identity(g, ro_ip(i)))
    )
    methods: set[str] = set()

    def ro_clone(_i: int, g: str) -> None:
        out = clones.clonero(site, UI, YES, g)
        methods.update(str(r["method"]) for r in out.results if "method" in r)

    t_clone = timed_each(ro, ro_clone)
    u1 = usage(home, res.shares)
    res.method = ", ".join(sorted(methods))
    res.rows["clonero"] = Row("clonero (API)", t_clone)
    res.rows["define"] = Row("define --ro (API)", t_def)
    res.rows["ro"] = Row(
        "read-only clone: define --ro + clonero",
        summed(t_def, t_clone),
        *image_bytes([disks / g for g in ro], "*.img"),
        new_bytes(u0, u1, n, res.shares),
    )

    # clonero through the CLI: interpreter and import start-up included.
    for j, g in enumerate(cli):
        define.define(site, UI, YES, g, Role.RO_CLONE, identity(g, f"10.0.2.{250 + j}"))
    res.rows["cli"] = Row(
        f"clonero (CLI, {CLI_CLONES} guests)", [sr(home, "clonero", g, "--yes") for g in cli]
    )

    # Read-write clones: a full copy of the gold's 11Bx set each.
    u2 = usage(home, res.shares)
    t_rwdef = timed_each(
        rw,
        lambda j, g: define.define(
            site, UI, YES, g, Role.RW_CLONE, identity(g, f"10.0.2.{230 + j}")
        ),
    )
    t_rw = timed_each(rw, lambda _i, g: clones.clonerw(site, UI, YES, g))
    u3 = usage(home, res.shares)
    res.rows["clonerw"] = Row(f"clonerw (API, {k} guests)", t_rw)
    res.rows["rw"] = Row(
        "read-write clone: define --rw + clonerw",
        summed(t_rwdef, t_rw),
        *image_bytes([disks / g for g in rw], "*.img"),
        new_bytes(u2, u3, k, res.shares),
    )

    # The baseline: qcow2 overlays on the same gold 21Bx templates, same filesystem.
    templates = private_templates(site)
    overlays.mkdir()
    o0 = usage(overlays, res.shares)
    t_ov: list[float] = []
    for g in ro:
        t = time.perf_counter()
        gdir = overlays / g
        gdir.mkdir()
        for addr, base in templates:
            out = gdir / f"{addr}.qcow2"
            run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "raw", out])
            fsync_path(out)
        fsync_path(gdir, directory=True)
        t_ov.append(time.perf_counter() - t)
    o1 = usage(overlays, res.shares)
    res.rows["qemu-img"] = Row(
        "qemu-img create -b 21Bx, 3 overlays + fsync",
        t_ov,
        *image_bytes([overlays / g for g in ro], "*.qcow2"),
        new_bytes(o0, o1, n, res.shares),
    )


def _mib(x: float | None) -> str:
    return "-" if x is None else f"{x / MiB:.2f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or b is None or b <= 0 else f"{a / b:.1f}x"


def print_clone_table(res: SiteResult) -> None:
    new_what = "statvfs, after sync" if res.shares else "store du growth, after sync"
    print(
        f"  {'per clone':<44} {'median ms':>9} {'p90 ms':>8} {'images MiB':>10} "
        f"{'own MiB':>8} {'new MiB':>8}  (new: {new_what})"
    )
    for r in res.rows.values():
        print(
            f"  {r.label:<44} {statistics.median(r.times) * 1000:>9.1f} "
            f"{p90(r.times) * 1000:>8.1f} {_mib(r.images):>10} {_mib(r.own):>8} {_mib(r.new):>8}"
        )
    med = {key: statistics.median(r.times) for key, r in res.rows.items()}
    ro, rw, ov = res.rows["ro"], res.rows["rw"], res.rows["qemu-img"]
    print(
        f"  clonerw / clonero time {med['clonerw'] / med['clonero']:.1f}x;"
        f" read-write / read-only clone new bytes {_ratio(rw.new, ro.new)}"
    )
    print(
        f"  clonero / qemu-img overlays time {med['clonero'] / med['qemu-img']:.2f}x;"
        f" read-only clone / overlays new bytes {_ratio(ro.new, ov.new)}"
    )
    if res.shares:
        ms, both, new = med["clonero"] * 1000, med["ro"] * 1000, ro.new or 0.0
        print(
            f"  goal <= {GOAL_MS:.0f} ms per read-only clone: clonero {ms:.1f} ms"
            f" ({verdict(ms <= GOAL_MS)}); with define {both:.1f} ms"
            f" ({verdict(both <= GOAL_MS)})"
        )
        own = ro.own or 0.0
        print(
            f"  goal <= 1 MiB per read-only clone: new blocks (define + clonero, the store's"
            f" own growth included) {new / MiB:.3f} MiB ({verdict(new <= GOAL_BYTES)});"
            f" the guest's unshared image bytes {own / MiB:.3f} MiB ({verdict(own <= GOAL_BYTES)})"
        )
    else:
        print("  (the 50 ms / 1 MiB goal is for storage that can share blocks: see XFS)")


def print_rogld(res: SiteResult) -> None:
    ro, tst = statistics.median(res.rogld), statistics.median(res.tst)
    print(f"  mnt2tst   (copy the 7 disks)                   {tst:7.2f}s")
    print(f"  mnt2rogld (copy the 7 disks + convert)         {ro:7.2f}s")
    if res.shares:
        print(
            f"  ratio mnt2rogld / mnt2tst                      {ro / tst:7.1f}x  (the copies"
            " are reflinks here: the ratio only shows the conversion's fixed cost; the"
            f" {GOAL_ROGLD}x goal is judged where the data is copied)"
        )
    else:
        print(
            f"  ratio mnt2rogld / mnt2tst                      {ro / tst:7.2f}x  "
            f"(goal <= {GOAL_ROGLD}: {verdict(ro / tst <= GOAL_ROGLD)})"
        )
    copies = sum(d for text, d in res.rogld_steps if text.startswith("copy "))
    parts = [("copy steps (7 disks)", copies)]
    parts += [(text, d) for text, d in res.rogld_steps if not text.startswith("copy ")]
    print("  where the last mnt2rogld's time went (from one step mark to the next):")
    for text, d in parts:
        print(f"    {d:6.2f}s  {text[:80]}")


def run_site(
    name: str, home: Path, overlays: Path, args: argparse.Namespace, boot: bool
) -> SiteResult:
    print(f"\n== {name}: {home} ({fstype(home.parent)}) ==")
    res = SiteResult(name)
    build_site(home)
    site = Site.open(home)
    try:
        rogld_section(site, res, args.reps)
        sr(home, "ro2gold", "--yes")
        clone_section(site, home, overlays, res, args.clones, args.rw_clones)
        print(f"  copy engine method for the clones: {res.method}")
        print(
            f"  clones: {args.clones} read-only (define, then clonero each), {CLI_CLONES} "
            f"read-only through the CLI, {args.rw_clones} read-write; "
            f"{args.clones} x 3 qcow2 overlays"
        )
        print_clone_table(res)
        print(
            f"  -- mnt2rogld against a plain copy of the same disks (API, median of "
            f"{args.reps}, alternating) --"
        )
        print_rogld(res)
        if boot:
            boot_section(site, home, args.boots)
    finally:
        site.state.close()
    return res


# --------------------------------------------------------------------------- boots


def boot_section(site: Site, home: Path, runs: int) -> None:
    ro, rw = "LNX0001", "LNW0001"
    accel = probe_accel(cache_dir())
    gen = site.state.current_slot()
    print(
        f"  -- boot to ready: `sharedroot start GUEST --wait` wall time, {ro} (read-only, "
        f"gold slot {gen}) vs {rw} (read-write), {runs} each alternating; accel {accel} --"
    )
    times: dict[str, list[float]] = {ro: [], rw: []}
    names: dict[str, str] = {}
    try:
        for i in range(runs):
            for g in (ro, rw):
                os.sync()
                times[g].append(sr(home, "start", g, "--wait"))
                if i == 0:
                    proc = subprocess.run(
                        [SHAREDROOT, "--home", str(home), "exec", g, "--", "hostname"],
                        capture_output=True,
                        text=True,
                    )
                    names[g] = proc.stdout.strip() or f"? ({proc.returncode})"
                sr(home, "stop", g)
    finally:
        for g in (ro, rw):
            if site.hv.query(g) is GuestState.LOGGED_ON:
                subprocess.run([SHAREDROOT, "--home", str(home), "stop", g], capture_output=True)
    for g, kind in ((ro, "read-only "), (rw, "read-write")):
        each = ", ".join(f"{t:.1f}" for t in times[g])
        print(
            f"  {kind} {g}: median {statistics.median(times[g]):6.1f}s  (runs: {each}; "
            f"hostname after boot: {names.get(g, '?')})"
        )
    ratio = statistics.median(times[ro]) / statistics.median(times[rw])
    print(
        f"  ratio read-only / read-write                 {ratio:6.2f}  "
        f"(goal <= {GOAL_BOOT}: {verdict(ratio <= GOAL_BOOT)}); run 1 is each clone's "
        "first boot (findself sets its identity), later runs are re-boots"
    )


# --------------------------------------------------------------------------- XFS


@contextlib.contextmanager
def xfs_mount(work: Path) -> Iterator[Path]:
    """A fresh XFS with reflink on a sparse loop file, mounted in `work`; removed after."""
    backing = work / "xfs.img"
    mnt = work / "xfs"
    mnt.mkdir()
    with backing.open("wb") as f:
        f.truncate(XFS_SIZE)
    try:
        run(["mkfs.xfs", "-q", "-m", "reflink=1", backing])
        run(["mount", "-o", "loop", backing, mnt])
        try:
            yield mnt
        finally:
            if run(["umount", mnt], check=False).returncode != 0:
                run(["umount", "--lazy", mnt], check=False)
    finally:
        backing.unlink(missing_ok=True)


# --------------------------------------------------------------------------- main


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwind through the finally blocks: unmount, clean up


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--clones", type=int, default=100, help="read-only clones per site")
    ap.add_argument("--rw-clones", type=int, default=5, help="read-write clones per site")
    ap.add_argument("--boots", type=int, default=3, help="boots of each clone (median)")
    ap.add_argument("--reps", type=int, default=3, help="mnt2rogld and mnt2tst runs each")
    ap.add_argument(
        "--quick", action="store_true", help="10 clones, 2 read-write, 1 boot and 1 mnt2rogld each"
    )
    ap.add_argument("--dir", type=Path, help="where to work (default: a new temporary dir)")
    args = ap.parse_args()
    if args.quick:
        args.clones, args.rw_clones, args.boots, args.reps = 10, 2, 1, 1
    if not 1 <= args.clones <= 9999 or not 1 <= args.rw_clones <= 20:
        ap.error("--clones must be 1..9999 and --rw-clones 1..20")
    if os.geteuid() != 0:
        ap.error("needs root (install, mnt2rogld and cloneprep mount images; XFS loop mount)")
    for tool in ("qemu-img", "mkfs.xfs", "findmnt"):
        if not have(tool):
            ap.error(f"{tool} is not installed")
    signal.signal(signal.SIGTERM, _terminate)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-clonero-", dir=args.dir))
    print(
        f"python {sys.version.split()[0]}, kernel {os.uname().release}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f} at start; golden tree cache {cache_dir()}"
    )
    print(
        "times: perf_counter wall time; clone/define/mnt2* through the Python API "
        "(sharedroot.workflows, quiet UI, one open Site), site set-up, ro2gold, the CLI "
        "clonero rows and boots through the sharedroot command"
    )
    t0 = time.perf_counter()
    try:
        run_site("host filesystem", work / "site", work / "overlays", args, boot=True)
        with xfs_mount(work) as mnt:
            run_site(
                "XFS reflink loop filesystem", mnt / "site", mnt / "overlays", args, boot=False
            )
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
