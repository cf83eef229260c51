"""Benchmark sharedroot's copy engine against cp and dd on a sparse disk image.

    python bench/bench_copy.py [--dir DIR] [--runs N] [--cold] [--keep]

Builds a 1 GiB sparse ext4 image holding ~500 MiB of data, times each copier on the
filesystem of DIR (the host's; ext4 here), then on an XFS reflink loop filesystem that the
script creates and removes (root only). Every contender includes an fsync of its output: the
copy engine fsyncs itself, cp is followed by `sync FILE`, dd runs with conv=fsync.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sharedroot.hypervisor.copyengine import Method, content_hash, copy_image, data_bytes
from sharedroot.run import have, run

MiB = 1 << 20
IMAGE_SIZE = 1024 * MiB
SEGMENTS = 64  # data extents, one per segment, so they are scattered over the image
ZERO_SEGMENTS = {17, 45}  # allocated but zero-filled, like freed blocks in a used disk


def build_image(img: Path) -> None:
    """mke2fs on a 1 GiB sparse file, then ~500 MiB of pseudo-random extents in free space."""
    with img.open("wb") as f:
        f.truncate(IMAGE_SIZE)
    run(["mke2fs", "-q", "-t", "ext4", "-F", img])
    rng = random.Random(20240601)  # fixed seed: the same image every run
    first = 16 * MiB  # keep clear of the superblock and group descriptors
    seg = (IMAGE_SIZE - first) // SEGMENTS
    with img.open("r+b") as f:
        for i in range(SEGMENTS):
            length = rng.randrange(4 * MiB, 11 * MiB + 512 * 1024, 4096)
            off = first + i * seg + rng.randrange(0, seg - length, 4096)
            f.seek(off)
            left = length
            while left:
                n = min(left, 4 * MiB)
                f.write(bytes(n) if i in ZERO_SEGMENTS else rng.randbytes(n))
                left -= n
        f.flush()
        os.fsync(f.fileno())


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def warm(path: Path) -> None:
    with path.open("rb") as f:
        while f.read(16 * MiB):
            pass


@dataclass
class Row:
    name: str
    seconds: float
    allocated: int
    identical: bool


def measure(
    name: str,
    copier: Callable[[Path, Path], None],
    src: Path,
    dst: Path,
    runs: int,
    cold: bool,
    want_hash: str,
) -> Row:
    times: list[float] = []
    for _ in range(runs):
        dst.unlink(missing_ok=True)
        # Settle writeback from the previous run so it is not billed to this one.
        if cold:
            drop_caches()
        else:
            os.sync()
            warm(src)
        t0 = time.perf_counter()
        copier(src, dst)
        times.append(time.perf_counter() - t0)
    row = Row(
        name=name,
        seconds=statistics.median(times),
        allocated=dst.stat().st_blocks * 512,
        identical=content_hash(dst) == want_hash,
    )
    dst.unlink()
    return row


def cp_sparse(src: Path, dst: Path) -> None:
    run(["cp", "--sparse=always", src, dst])
    run(["sync", dst])  # fsync of the file, as the copy engine does


def cp_reflink(src: Path, dst: Path) -> None:
    run(["cp", "--reflink=always", src, dst])
    run(["sync", dst])


def dd_sparse(src: Path, dst: Path) -> None:
    run(["dd", f"if={src}", f"of={dst}", "bs=4M", "conv=sparse,fsync", "status=none"])


def dd_plain(src: Path, dst: Path) -> None:
    run(["dd", f"if={src}", f"of={dst}", "bs=4M", "conv=fsync", "status=none"])


def engine(*methods: Method) -> Callable[[Path, Path], None]:
    def copier(src: Path, dst: Path) -> None:
        result = copy_image(src, dst, methods=methods)
        if result.method is not methods[0]:
            raise SystemExit(f"copy_image used {result.method}, expected {methods[0]}")

    return copier


def table(rows: list[Row], data: int, scale: float, unit: str) -> None:
    print(f"  {'tool':<44} {unit:>9} {'data MiB/s':>11} {'alloc MiB':>10} {'identical':>9}")
    for r in rows:
        rate = data / MiB / r.seconds
        print(
            f"  {r.name:<44} {r.seconds * scale:>9.3f} {rate:>11.0f} "
            f"{r.allocated / MiB:>10.1f} {'yes' if r.identical else 'NO':>9}"
        )


def host_section(src: Path, work: Path, runs: int, cold: bool, want: str, data: int) -> None:
    fstype = run(["stat", "-f", "-c", "%T", work]).stdout.strip()
    print(f"\n== host filesystem: {work} ({fstype}) ==")
    dst = work / "dst.img"
    rows = [
        measure("cp --sparse=always + sync FILE", cp_sparse, src, dst, runs, cold, want),
        measure("dd bs=4M conv=sparse,fsync", dd_sparse, src, dst, runs, cold, want),
        measure("dd bs=4M conv=fsync", dd_plain, src, dst, runs, cold, want),
        measure(
            "copy_image (copy_file_range)",
            engine(Method.COPY_FILE_RANGE),
            src,
            dst,
            runs,
            cold,
            want,
        ),
        measure("copy_image (sparse, forced)", engine(Method.SPARSE), src, dst, runs, cold, want),
    ]
    table(rows, data, 1.0, "seconds")
    cp = rows[0].seconds
    cfr = rows[3].seconds
    print(f"  copy_image / cp throughput: {cp / cfr:.2f}x (goal >= 1.0x)")


def xfs_section(src: Path, work: Path, runs: int, cold: bool, want: str, data: int) -> None:
    print("\n== XFS reflink loop filesystem ==")
    if os.geteuid() != 0 or not have("mkfs.xfs"):
        print("  skipped: needs root and mkfs.xfs")
        return
    backing = work / "xfs.img"
    mnt = work / "xfs"
    mnt.mkdir()
    with backing.open("wb") as f:
        f.truncate(2 << 30)
    run(["mkfs.xfs", "-q", "-m", "reflink=1", backing])
    run(["mount", "-o", "loop", backing, mnt])
    try:
        golden = mnt / "golden.img"
        # Not timed: put the image on the XFS filesystem first (a data copy, across filesystems).
        copy_image(src, golden, methods=(Method.COPY_FILE_RANGE, Method.SPARSE))
        os.sync()
        dst = mnt / "clone.img"
        rows = [
            measure("cp --reflink=always + sync FILE", cp_reflink, golden, dst, runs, cold, want),
            measure("copy_image (reflink)", engine(Method.REFLINK), golden, dst, runs, cold, want),
        ]
        table(rows, data, 1000.0, "ms")
        ms = rows[1].seconds * 1000
        print(f"  copy_image reflink: {ms:.1f} ms (goal <= 50 ms)")
    finally:
        run(["umount", mnt], check=False)
        backing.unlink(missing_ok=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, help="where to work (default: a new temporary dir)")
    ap.add_argument("--runs", type=int, default=3, help="runs per tool; the median is shown")
    ap.add_argument("--cold", action="store_true", help="drop the page cache before each run")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    if args.cold and os.geteuid() != 0:
        ap.error("--cold needs root (writes /proc/sys/vm/drop_caches)")
    for tool in ("mke2fs", "cp", "dd", "sync"):
        if not have(tool):
            ap.error(f"{tool} is not installed")
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-copy-", dir=args.dir))
    try:
        src = work / "src.img"
        t0 = time.perf_counter()
        build_image(src)
        data = data_bytes(src)
        want = content_hash(src)
        print(
            f"image: {IMAGE_SIZE // MiB} MiB logical, {data / MiB:.0f} MiB in data extents "
            f"({len(ZERO_SEGMENTS)} of {SEGMENTS} scattered extents zero-filled), "
            f"{src.stat().st_blocks * 512 / MiB:.0f} MiB allocated; built in "
            f"{time.perf_counter() - t0:.1f}s"
        )
        cache = (
            "page cache dropped before each run (cold source)"
            if args.cold
            else "source warm in page cache, os.sync() before each run"
        )
        print(
            f"method: median of {args.runs} runs per tool; {cache}; every contender fsyncs "
            "its output (copy engine: fsync + rename + dir fsync; cp: `sync FILE`; dd: "
            "conv=fsync); external tools include process start-up (~1-2 ms)"
        )
        print(
            f"python {sys.version.split()[0]}, kernel {os.uname().release}, {os.cpu_count()} CPUs"
        )
        host_section(src, work, args.runs, args.cold, want, data)
        xfs_section(src, work, args.runs, args.cold, want, data)
    finally:
        if args.keep:
            print(f"\nkept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
