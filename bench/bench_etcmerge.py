"""Benchmark the /etc three-way merge (plan_merge + apply_merge) on a Debian-like /etc.

    python bench/bench_etcmerge.py [--dir DIR] [--runs N] [--keep]

base is the golden tree's /etc from the cache (/var/cache/sharedroot/*/root/etc, or
$SHAREDROOT_CACHE) padded with synthetic files to ~1000 regular files, or 1000
synthetic files in nested directories when there is no golden tree.  theirs changes
100 files (90 in content, 10 in mode), adds 20 (15 alone, 5 in a new directory) and
removes 10; ours has 50 local edits: 5 the same as the gold's, 20 different edits of
files the gold changed, 5 of files the gold removed, 20 of files the gold left alone.
Each run merges into a fresh copy of ours; the copy is not timed.
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
from pathlib import Path

from sharedroot.guestos.etcmerge import apply_merge, plan_merge
from sharedroot.run import run

GOAL_S = 1.0
FILES = 1000
SEED = 20240601


def golden_etc() -> Path | None:
    cache = Path(os.environ.get("SHAREDROOT_CACHE", "/var/cache/sharedroot"))
    found = sorted(p for p in cache.glob("*/root/etc") if p.is_dir())
    return found[0] if found else None


def regular_files(root: Path) -> list[str]:
    out = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath, name)
            if path.is_file() and not path.is_symlink():
                out.append(str(path.relative_to(root)))
    return sorted(out)


def synthesise(root: Path, count: int) -> None:
    """`count` config-like files in nested directories (3 levels, like /etc/*.d/)."""
    rng = random.Random(SEED)
    for i in range(count):
        rel = Path("sharedroot-bench", f"d{i % 25:02d}.d", f"s{i % 7}", f"f{i:04d}.conf")
        (root / rel.parent).mkdir(parents=True, exist_ok=True)
        lines = [f"option_{j} = {rng.randrange(1 << 30)}\n" for j in range(rng.randrange(5, 60))]
        (root / rel).write_text(f"# file {i}\n" + "".join(lines))


def copy_tree(src: Path, dst: Path) -> None:
    # cp -a keeps owners, modes, symlinks and xattrs: the trees start identical.
    run(["cp", "-a", "--", src, dst])


def build(work: Path) -> tuple[Path, Path, Path, str]:
    base, theirs, ours = work / "base", work / "theirs", work / "ours"
    gold = golden_etc()
    if gold is not None:
        copy_tree(gold, base)
        have = len(regular_files(base))
        synthesise(base, max(0, FILES - have))
        source = f"golden /etc {gold} ({have} regular files) + {max(0, FILES - have)} synthetic"
    else:
        base.mkdir()
        synthesise(base, FILES)
        source = f"{FILES} synthetic files (no golden tree in the cache)"
    copy_tree(base, theirs)
    copy_tree(base, ours)

    rng = random.Random(SEED)
    files = regular_files(base)
    picked = rng.sample(files, 100 + 10 + 20)
    changed, removed, untouched = picked[:100], picked[100:110], picked[110:]
    for i, rel in enumerate(changed):
        if i < 90:
            with (theirs / rel).open("a") as f:
                f.write(f"# changed in the new gold {i}\n")
        else:
            os.chmod(theirs / rel, 0o600)
    for rel in removed:
        (theirs / rel).unlink()
    for i in range(15):
        parent = Path(changed[i]).parent
        (theirs / parent / f"new-in-gold-{i}.conf").write_text(f"added {i}\n")
    (theirs / "new-in-gold.d").mkdir()
    for i in range(5):
        (theirs / "new-in-gold.d" / f"{i}.conf").write_text(f"added in dir {i}\n")

    for rel in changed[:5]:  # the same edit as the gold's
        shutil.copyfile(theirs / rel, ours / rel)
        shutil.copymode(theirs / rel, ours / rel)
    for rel in changed[5:25] + removed[:5] + untouched:
        with (ours / rel).open("a") as f:
            f.write("# local edit on the clone\n")
    return base, theirs, ours, source


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-etcmerge-", dir=args.dir))
    try:
        base, theirs, ours, source = build(work)
        entries = sum(len(d) + len(f) for _, d, f in os.walk(base))
        print(f"base: {source}; {entries} entries in all")
        modes = (
            ("journal + backups + fsync", {"sync": True, "journaled": True}),
            ("journal + backups, no fsync", {"sync": False, "journaled": True}),
            ("no journal, no fsync", {"sync": False, "journaled": False}),
        )
        counts: dict[str, int] = {}
        for label, opts in modes:
            plans, applies, totals = [], [], []
            for run_no in range(args.runs):
                target = work / f"ours-{run_no}"
                journal = work / f"journal-{run_no}.json"
                shutil.rmtree(target, ignore_errors=True)
                shutil.rmtree(work / f"journal-{run_no}.json.backup", ignore_errors=True)
                journal.unlink(missing_ok=True)
                copy_tree(ours, target)
                t0 = time.perf_counter()
                plan = plan_merge(base, theirs, target)
                t1 = time.perf_counter()
                apply_merge(
                    plan,
                    theirs,
                    target,
                    journal=journal if opts["journaled"] else None,
                    sync=bool(opts["sync"]),
                )
                t2 = time.perf_counter()
                plans.append(t1 - t0)
                applies.append(t2 - t1)
                totals.append(t2 - t0)
                counts = plan.counts()
                again = plan_merge(base, theirs, target)
                assert len(again.changes) == len(again.conflicts), "merge did not settle"
            med = statistics.median(totals)
            verdict = "within" if med <= GOAL_S else "OVER"
            print(
                f"{label:<28} plan {statistics.median(plans) * 1000:6.0f} ms  "
                f"apply {statistics.median(applies) * 1000:6.0f} ms  "
                f"total {med * 1000:6.0f} ms (median of {args.runs}; {verdict} the "
                f"{GOAL_S:.0f} s goal)"
            )
        print("changes per action: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        print(f"total changes: {sum(counts.values())}")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
