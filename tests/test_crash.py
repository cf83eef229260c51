"""Crash suite: each disk-writing workflow, run as the real `sharedroot` program, is
SIGKILLed at a random moment and what it left is judged:

(a) disks it does not target are byte-identical; (b) so are the gold disks of a slot it
does not target; (c) each target is wholly old or wholly new (images only copied), or a
clean filesystem (images written through a mount); (d) a target set written in part is
reported incomplete by `guests --json` and refused as a source; (e) state.db passes its
integrity check and every disk row has its image, of its size; (f) no mount or loop
device of the site is left; (g) the journal says "interrupted", never "running"; (h)
rerunning the command finishes the job as an uninterrupted run does, leaving no
temporary files.

Trial N (its seed) runs SCHEDULE[N mod len(SCHEDULE)] (each workflow `weight` times a
round) and kills it after a fraction random.Random(N).random() of that workflow's
uninterrupted duration, measured in the same session under the same load.
SHAREDROOT_CRASH_SEED (default 1) is the first seed, SHAREDROOT_CRASH_TRIALS (default: one
round, 109) the number of trials, SHAREDROOT_CRASH_WORKERS (default 2) how many run at
once; a failure prints the line that reruns it alone.
"""

from __future__ import annotations

import contextlib
import fnmatch
import itertools
import os
import random
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import crashkit as ck

FIRST_SEED = int(os.environ.get("SHAREDROOT_CRASH_SEED", "1"))
WORKERS = int(os.environ.get("SHAREDROOT_CRASH_WORKERS", "2"))
GOLD_HOLDERS = ("S10GOLD", "S10GOLD2")
# MiB of data per disk of the sites without Linux: enough that a copy takes a while.
FILL_MIB = {"01B0": 16, "01B1": 32, "01B5": 16, "01B6": 48, "01B7": 128, "01B8": 16}
REQUIRED = ("mkfs.xfs", "mke2fs", "debugfs", "e2fsck", "losetup", "blkid", "mount", "cp")


# starting states ----------------------------------------------------------------------

Build = tuple[str, ...] | Callable[[Path], None]


def fill(owner: str, seed: str) -> Callable[[Path], None]:
    """Every filesystem disk of `owner` made anew with data that depends on `seed`."""

    def step(home: Path) -> None:
        for key, disk in ck.disks(home).items():
            if key.startswith(f"{owner} ") and disk.kind == "fs" and disk.fs:
                ck.fill_image(disk.path, disk.fs, f"{seed} {key}", FILL_MIB[key.split()[1]])

    return step


def put(owner: str, address: str, name: str, text: str) -> Callable[[Path], None]:
    """A file in /etc of one disk, written as an administrator's change would be."""
    return lambda home: ck.put_file(ck.disks(home)[f"{owner} {address}"].path, "/etc", name, text)


@dataclass(frozen=True)
class Recipe:
    reflink: bool  # built on the XFS reflink store, else on the host's ext4
    steps: tuple[Build, ...]
    base: str | None = None


def identity(guest: str, n: int) -> tuple[str, ...]:
    return ("--hostname", guest.lower(), "--ip", f"10.0.2.{n}", "--gateway", "10.0.2.2")


STATES = {
    # Linux installed three times over (generations A, B, C: every image differs):
    # gold 11Bx holds A, slot 1 A and slot 2 B (current); LNX227 is a read-only clone
    # on slot 1 with an /etc file of its own; LNX226 (--rw) and LNX228 (--ro) are
    # defined, not cloned; the maintenance guest holds C, not yet cleaned, and so does
    # the staging guest (made read-only), so that either slot would change.
    "linux": Recipe(
        True,
        (
            ("init", "--layout", "paper"),
            ("install", "--yes"),
            ("cloneprep", "--yes"),
            ("mnt2gold", "--yes"),
            ("mnt2rogld", "--yes"),
            ("ro2gold", "--slot", "1", "--yes"),
            ("define", "LNX227", "--ro", *identity("LNX227", 27)),
            ("clonero", "LNX227", "--yes"),
            put("LNX227", "01B5", "crash-local.conf", "kept by the clone\n"),
            ("install", "--yes"),
            put("S10RWMNT", "01B1", "crash-gen2.conf", "new in generation B\n"),
            ("cloneprep", "--yes"),
            ("mnt2rogld", "--yes"),
            ("ro2gold", "--slot", "2", "--yes"),
            ("define", "LNX226", "--rw", *identity("LNX226", 26)),
            ("define", "LNX228", "--ro", *identity("LNX228", 28)),
            ("install", "--yes"),
            ("mnt2rogld", "--yes"),
        ),
    ),
    # The same with LNX227 moved to slot 2, so slot 1 is free to be refilled.
    "slot1free": Recipe(True, (("migrate", "LNX227", "--slot", "2", "--yes"),), base="linux"),
    # A paper site without Linux on plain ext4, where copies move real bytes: gold 11Bx
    # from one fill of the maintenance guest, which then got another; test filled too.
    "plain": Recipe(
        False,
        (
            ("init", "--layout", "paper"),
            fill("S10RWMNT", "a"),
            ("mnt2gold", "--yes"),
            ("define", "LNX226", "--rw"),
            fill("S10RWMNT", "b"),
            fill("S10RWTST", "t"),
        ),
    ),
}


# the workflows --------------------------------------------------------------------------


@dataclass(frozen=True)
class Workflow:
    name: str
    state: str
    command: tuple[str, ...]
    operation: str  # its name in the journal and in an incomplete mark
    targets: tuple[str, ...]  # fnmatch patterns over 'OWNER ADDR' and 'GUEST links'
    refuser: tuple[str, ...] = ()  # uses a target (as its source): refused while incomplete
    repeatable: bool = True  # define cannot be run again once it finished
    weight: int = 7  # trials per round of the schedule (fewer for the slow ones)
    # Files (fnmatch, in a target's tree) copied from this checkout's own source, which
    # may be edited while the suite runs: left out of the comparison.
    live: tuple[str, ...] = ()

    def targeted(self, key: str) -> bool:
        return any(fnmatch.fnmatch(key, pat) for pat in self.targets)

    def live_path(self, path: str) -> bool:
        return any(fnmatch.fnmatch(path, pat) for pat in self.live)

    @property
    def owners(self) -> set[str]:
        return {pat.split()[0] for pat in self.targets}


def workflows(state: str, suffix: str) -> list[Workflow]:
    """The copies and define, on one starting state.

    On the reflink store mnt2gold also --verify: a reflink is instant, and hashing both
    sides gives a kill the time to land between a whole copy and its rename (seconds,
    hence fewer trials).
    """
    role, clone = ("--rw", "clonerw") if suffix else ("--ro", "clonero")
    verify = () if suffix else ("--verify",)
    return [
        Workflow(
            f"mnt2tst{suffix}",
            state,
            ("mnt2tst", "--yes"),
            "mnt2tst",
            ("S10RWTST *",),
            refuser=("tst2mnt", "--yes"),
        ),
        Workflow(
            f"tst2mnt{suffix}",
            state,
            ("tst2mnt", "--yes"),
            "tst2mnt",
            ("S10RWMNT *",),
            refuser=("mnt2gold", "--yes"),
        ),
        Workflow(
            f"mnt2gold{suffix}",
            state,
            ("mnt2gold", "--yes", *verify),
            "mnt2gold",
            ("S10GOLD 11*",),
            refuser=("clonerw", "LNX226", "--yes"),
            weight=7 if suffix else 4,
        ),
        Workflow(
            f"clonerw{suffix}",
            state,
            ("clonerw", "LNX226", "--yes"),
            "clonerw",
            ("LNX226 *",),
        ),
        Workflow(  # a guest whose define was cut short is no target for a clone either
            f"define{suffix}",
            state,
            ("define", "LNX230", role, *identity("LNX230", 30)),
            "define",
            ("LNX230 *", "CMSCLONE 0192"),
            refuser=(clone, "LNX230", "--yes"),
            repeatable=False,
        ),
    ]


WORKFLOWS = (
    *workflows("linux", ""),
    Workflow(
        "mnt2rogld",
        "linux",
        ("mnt2rogld", "--yes"),
        "mnt2rogld",
        ("S10ROGLD *",),
        refuser=("ro2gold", "--slot", "2", "--yes"),
        weight=5,
    ),
    Workflow(
        "ro2gold-slot2",
        "linux",
        ("ro2gold", "--slot", "2", "--yes"),
        "ro2gold",
        ("S10GOLD2 21*",),
        refuser=("migrate", "LNX227", "--slot", "2", "--yes"),
        weight=4,
    ),
    Workflow(
        "ro2gold-slot1",
        "slot1free",
        ("ro2gold", "--slot", "1", "--yes"),
        "ro2gold",
        ("S10GOLD 21*",),
        refuser=("migrate", "LNX227", "--slot", "1", "--yes"),
        weight=4,
    ),
    Workflow("clonero", "linux", ("clonero", "LNX228", "--yes"), "clonero", ("LNX228 *",)),
    Workflow(
        "cloneprep",
        "linux",
        ("cloneprep", "--yes"),
        "cloneprep",
        ("S10RWMNT *",),
        refuser=("mnt2gold", "--yes"),
        weight=5,
    ),
    Workflow(
        "migrate",
        "linux",
        ("migrate", "LNX227", "--slot", "2", "--yes"),
        "migrate",
        ("LNX227 01B5", "LNX227 links"),
    ),
    Workflow(
        "install",
        "linux",
        ("install", "--yes"),
        "install",
        ("S10RWMNT *",),
        refuser=("mnt2gold", "--yes"),
        weight=3,
        live=("local/lib/sharedroot-py/*",),
    ),
    Workflow(  # the read-only clone on slot 1, its parm file, its links: all of it goes
        "delete",
        "linux",
        ("delete", "LNX227", "--yes"),
        "delete",
        ("LNX227 *", "LNX227 links", "CMSCLONE 0192"),
        repeatable=False,  # gone is gone: a second delete does not know it
        weight=4,
    ),
    *workflows("plain", "-ext4"),
    Workflow(  # a read-write guest's whole disk set, kept first (copied to kept/)
        "delete-keep-ext4",
        "plain",
        ("delete", "LNX226", "--yes", "--keep-disks"),
        "delete",
        ("LNX226 *", "LNX226 links"),
        repeatable=False,
        weight=3,
    ),
)
# Rounds of the workflows, interleaved, each as often as its weight.
SCHEDULE = [w for r in range(max(w.weight for w in WORKFLOWS)) for w in WORKFLOWS if r < w.weight]
TRIALS = int(os.environ.get("SHAREDROOT_CRASH_TRIALS", str(len(SCHEDULE))))


# the lab: starting states and uninterrupted references, made once per session ----------


@dataclass
class Snapshot:
    home: Path
    reflink: bool
    hashes: dict[str, str]  # every disk
    disks: dict[str, ck.Disk]
    links: dict[str, list[tuple[object, ...]]]
    last_op: int  # the newest journal entry


@dataclass
class Reference:
    seconds: float  # how long the command runs uninterrupted
    after: dict[str, str]  # target disk -> hash after the run
    copied: set[str]  # targets that end as a byte copy of a disk of the start
    trees: dict[str, ck.Tree]  # other filesystem targets: their file trees
    volatile: dict[str, set[str]]  # paths whose content differs between two good runs
    links: dict[str, list[tuple[object, ...]]]  # link targets after the run
    guests: list[dict[str, Any]]  # `guests --json` after the run, without live fields


def guests(home: Path) -> list[dict[str, Any]]:
    rows = ck.must(home, "guests", "--json").json()
    assert isinstance(rows, list)
    return rows


def shape(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What a guest is (role, disks, links), without whether it runs or is incomplete, and
    without the host's memory figures (the page cache of a disk the run wrote moves)."""
    live = ("state", "incomplete", "memory", "cached")
    return [{k: v for k, v in g.items() if k not in live} for g in rows]


def journal(home: Path) -> list[dict[str, Any]]:
    rows = ck.must(home, "journal", "--json", "--limit", "100000").json()
    assert isinstance(rows, list)
    return sorted(rows, key=lambda j: int(j["id"]))


class Lab:
    """Starting states and uninterrupted references, each made once per session."""

    def __init__(self, root: Path, reflink_root: Path) -> None:
        self.places = {True: reflink_root, False: root / "ext4"}
        self.places[False].mkdir()
        self.hash = ck.Hasher()
        self.made: dict[str, object] = {}  # snapshots and references, or why they failed
        self.count = itertools.count()  # next() is atomic: trials run in threads

    def place(self, reflink: bool, name: str) -> Path:
        where = self.places[reflink] / f"{name}-{next(self.count)}"
        where.mkdir()
        return where / "site"

    def copy(self, snap: Snapshot, name: str) -> Path:
        """A site of its own for one run, its images' hashes known without reading them."""
        home = self.place(snap.reflink, name)
        ck.copy_site(snap.home, home, reflink=snap.reflink)
        for key, disk in ck.disks(home).items():
            self.hash.learn(disk.path, snap.hashes[key])
        return home

    def _once(self, key: str, make: Callable[[], object]) -> Any:
        """make() the first time; afterwards its result, or its exception raised again."""
        if key not in self.made:
            try:
                self.made[key] = make()
            except Exception as exc:
                self.made[key] = exc
        got = self.made[key]
        if isinstance(got, Exception):
            raise got
        return got

    def snapshot(self, name: str) -> Snapshot:
        snap: Snapshot = self._once(f"state {name}", lambda: self._build(name))
        return snap

    def _build(self, name: str) -> Snapshot:
        recipe = STATES[name]
        if recipe.base is None:
            home = self.place(recipe.reflink, f"state-{name}")
        else:
            home = self.copy(self.snapshot(recipe.base), f"state-{name}")
        for step in recipe.steps:
            step(home) if callable(step) else ck.must(home, *step)
        found = ck.disks(home)
        return Snapshot(
            home,
            recipe.reflink,
            {k: self.hash.template(d.path) for k, d in found.items()},
            found,
            ck.links(home),
            max((int(j["id"]) for j in journal(home)), default=0),
        )

    def run_whole(self, w: Workflow, name: str) -> tuple[Path, ck.Run]:
        """The command run to its end on a fresh copy, which must be left clean."""
        home = self.copy(self.snapshot(w.state), name)
        run = ck.must(home, *w.command)
        left = ck.settle(home)
        assert not left, f"an uninterrupted {w.name} left {left}"
        assert not ck.state_problems(home), ck.state_problems(home)
        return home, run

    def reference(self, w: Workflow) -> Reference:
        ref: Reference = self._once(f"reference {w.name}", lambda: self._reference(w))
        return ref

    def _reference(self, w: Workflow) -> Reference:
        """Two uninterrupted runs side by side (trials also run WORKERS at once): how long
        the command takes, and what it leaves; what differs between the two is volatile.
        """
        snap = self.snapshot(w.state)
        with ThreadPoolExecutor(WORKERS) as pool:
            names = (f"ref-{w.name}", f"ref2-{w.name}")
            runs = list(pool.map(lambda n: self.run_whole(w, n), names))
        try:
            return self._judge_reference(w, snap, runs)
        finally:
            for home, _ in runs:
                discard(home)

    def _judge_reference(
        self, w: Workflow, snap: Snapshot, runs: list[tuple[Path, ck.Run]]
    ) -> Reference:
        (home, run), (again, run2) = runs
        found = ck.disks(home)
        after = {k: self.hash(d.path) for k, d in found.items() if w.targeted(k)}
        known = set(snap.hashes.values())
        copied = {k for k, h in after.items() if h in known}
        trees: dict[str, ck.Tree] = {}
        volatile: dict[str, set[str]] = {}
        for k in sorted(after.keys() - copied):
            disk = found[k]
            if disk.kind != "fs" or disk.fs is None:
                assert ck.is_swap(disk.path), f"{w.name}: {k} is neither copied nor swap"
                continue
            ok, out = ck.fsck(disk.path)
            assert ok, f"an uninterrupted {w.name} left {k} unclean: {out}"
            trees[k] = ck.image_tree(disk.path, disk.fs)
            other = ck.image_tree(ck.disks(again)[k].path, disk.fs, trees[k])
            both = trees[k].keys() & other.keys()
            volatile[k] = {p for p in both if trees[k][p][1] != other[p][1]}
        assert [j["status"] for j in journal(home) if j["id"] > snap.last_op] == ["ok"]
        links = {k: v for k, v in ck.links(home).items() if w.targeted(k)}
        # A set can be caught part old, part new only if the run changes two of it.
        moved = [k for k in after if after[k] != snap.hashes.get(k)]
        moved += [k for k in snap.disks if w.targeted(k) and k not in after]  # removed
        gone = {k for k in snap.links if w.targeted(k)} - links.keys()
        moved += [k for k in sorted(links.keys() | gone) if links.get(k) != snap.links.get(k)]
        assert len(moved) >= 2, f"{w.state} makes {w.name} change only {moved}"
        return Reference(
            (run.seconds + run2.seconds) / 2,
            after,
            copied,
            trees,
            volatile,
            links,
            shape(guests(home)),
        )


def discard(home: Path) -> None:
    ck.clear(home)
    shutil.rmtree(home.parent)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    missing = [p for p in REQUIRED if shutil.which(p) is None]
    assert not missing, f"the crash suite needs {', '.join(missing)}"
    assert os.geteuid() == 0, "the crash suite needs root (loop mounts, mount namespaces)"
    root = tmp_path_factory.mktemp("crash")
    ck.sweep_dead_stores(f"{root.parent.parent}/garbage-*/crash*/reflink")
    with ck.reflink_filesystem(root) as xfs:
        lab = Lab(root, xfs)
        try:
            yield lab
        finally:
            for place in lab.places.values():
                for home in place.glob("*/site"):
                    ck.clear(home)
                shutil.rmtree(place, ignore_errors=True)


CASES = [(SCHEDULE[seed % len(SCHEDULE)], seed) for seed in range(FIRST_SEED, FIRST_SEED + TRIALS)]


@dataclass
class Outcome:
    workflow: str
    header: str
    found: list[str]
    stderr: str  # of the killed run
    phase: str


@pytest.fixture(scope="module")
def outcomes(request: pytest.FixtureRequest, lab: Lab) -> Iterator[dict[int, Future[Outcome]]]:
    """The selected trials, run WORKERS at a time once their references are made."""
    chosen = [
        (item.callspec.params["workflow"], item.callspec.params["seed"])
        for item in request.session.items
        if isinstance(item, pytest.Function) and item.originalname == "test_crash"
    ]
    t0 = time.monotonic()
    for w in dict.fromkeys(w for w, _ in chosen):
        with contextlib.suppress(Exception):  # a broken reference fails its own trials
            lab.reference(w)
    t1 = time.monotonic()
    pool = ThreadPoolExecutor(WORKERS)
    futures = {seed: pool.submit(run_trial, lab, w, seed) for w, seed in chosen}
    try:
        yield futures
    finally:
        pool.shutdown(cancel_futures=True)
        summary(request.config, futures, t1 - t0, time.monotonic() - t1)


def summary(
    config: pytest.Config, futures: dict[int, Future[Outcome]], setup: float, trials: float
) -> None:
    """Where the kills landed, per workflow, and the time spent (for tuning the weights)."""
    done = [f.result() for f in futures.values() if not f.cancelled() and f.exception() is None]
    report = config.pluginmanager.get_plugin("terminalreporter")
    if report is None or not done:
        return
    capture = config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():  # teardown output is captured otherwise
        report.ensure_newline()
        report.write_line(
            f"crash suite: {len(futures)} trials; states and references {setup:.0f}s,"
            f" trials {trials:.0f}s with {WORKERS} at once"
        )
        for name in dict.fromkeys(o.workflow for o in done):
            mine = [o for o in done if o.workflow == name]
            phases = {p: sum(o.phase == p for o in mine) for p in ("before", "during", "after")}
            failed = sum(bool(o.found) for o in mine)
            report.write_line(
                f"  {name:16} killed before/during/after: {phases['before']}/{phases['during']}"
                f"/{phases['after']}; failed {failed}"
            )


@dataclass
class Trial:
    w: Workflow
    snap: Snapshot
    ref: Reference
    lab: Lab
    home: Path
    found: list[str] = field(default_factory=list)
    phase: str = "before"  # where the kill landed: before, during or after the operation
    refusal: bool = False  # the refuser was tried (and had to refuse)

    def fail(self, check: str, message: str) -> None:
        self.found.append(f"({check}) {message}")

    def disk_targets(self) -> list[str]:
        keys = self.snap.disks.keys() | ck.disks(self.home).keys() | self.ref.after.keys()
        return sorted(k for k in keys if self.w.targeted(k))

    def link_targets(self) -> list[str]:
        keys = self.snap.links.keys() | self.ref.links.keys() | ck.links(self.home).keys()
        return sorted(k for k in keys if self.w.targeted(k))

    def built(self) -> bool:
        """Targets written through a mount or made anew: compared as file trees."""
        return bool(self.ref.after.keys() - self.ref.copied) or bool(self.link_targets())

    def mounts(self, when: str) -> None:
        left = ck.settle(self.home)
        if left:
            self.fail("f", f"{when}: left behind: {left}")
            ck.clear(self.home)

    def database(self, when: str) -> None:
        try:
            problems = ck.state_problems(self.home)
        except Exception as exc:  # a database that cannot even be read
            problems = [repr(exc)]
        for p in problems:
            self.fail("e", f"{when}: {p}")

    def untouched(self, when: str) -> None:
        """(a), (b): every disk and link the workflow does not target, as it was."""
        now = ck.disks(self.home)
        for key in sorted((self.snap.disks.keys() | now.keys()) - set(self.disk_targets())):
            check = "b" if key.split()[0] in GOLD_HOLDERS else "a"
            if key not in now or key not in self.snap.disks:
                self.fail(check, f"{when}: {key} {'vanished' if key not in now else 'appeared'}")
            elif not now[key].path.is_file():
                self.fail(check, f"{when}: {key}: {now[key].path} is gone")
            elif self.lab.hash(now[key].path) != self.snap.hashes[key]:
                self.fail(check, f"{when}: {key} changed")
        links = ck.links(self.home)
        for key in sorted((self.snap.links.keys() | links.keys()) - set(self.link_targets())):
            if links.get(key) != self.snap.links.get(key):
                self.fail("a", f"{when}: {key} changed: {links.get(key)}")

    def judge_target(self, key: str, now: dict[str, ck.Disk]) -> str:
        """(c) for one target disk: 'old', 'new', 'written' (a sound new filesystem)."""
        before, after = self.snap.hashes.get(key), self.ref.after.get(key)
        if key not in now:
            if before is None:
                return "old"
            if key not in self.ref.after:
                return "new"  # removed, as an uninterrupted run removes it (delete)
            self.fail("c", f"{key}: its disk row is gone")
            return "gone"
        disk = now[key]
        if not disk.path.is_file():
            return "gone"  # reported by (e)
        digest = self.lab.hash(disk.path)
        if digest == before:
            return "old"
        if key in self.ref.copied:
            if digest == after:
                return "new"
            self.fail("c", f"{key} is neither the old nor the new image (torn copy)")
            return "torn"
        if disk.kind != "fs" or disk.fs is None:
            if not ck.is_swap(disk.path):
                self.fail("c", f"{key}: not a swap disk any more")
            return "written"
        ok, out = ck.fsck(disk.path)
        if not ok:
            self.fail("c", f"{key}: e2fsck -fn finds it unclean: {out}")
        return "written"

    def after_kill(self, killed: ck.Run) -> bool:
        """Every check of what the kill left; True if the operation had finished."""
        self.mounts("after the kill")
        self.database("after the kill")
        self.untouched("after the kill")
        now = ck.disks(self.home)
        verdict = {k: self.judge_target(k, now) for k in self.disk_targets()}
        links = ck.links(self.home)
        for key in self.link_targets():
            got = links.get(key)
            verdict[key] = "old" if got == self.snap.links.get(key) else "new"
            if got not in (self.snap.links.get(key), self.ref.links.get(key)):
                self.fail("c", f"{key} are neither the old nor the new links: {got}")
        changed = sorted(k for k, v in verdict.items() if v != "old")
        finished = self.judge_journal(killed, changed)
        self.judge_marks(verdict, changed, finished)
        return finished

    def judge_journal(self, killed: ck.Run, changed: list[str]) -> bool:
        """(g) the journal tells what happened, once the process is gone."""
        entries = [j for j in journal(self.home) if j["id"] > self.snap.last_op]
        for j in entries:
            if j["status"] not in ("ok", "interrupted"):
                self.fail("g", f"journal #{j['id']} {j['operation']}: {j['status']}")
        finished = bool(entries) and all(j["status"] == "ok" for j in entries)
        self.phase = "after" if finished else "during" if entries else "before"
        if changed and not entries:
            self.fail("g", f"{changed} were written before the journal had an entry")
        if not killed.killed and not (killed.code == 0 and finished):
            self.fail("h", f"the run ended by itself: exit {killed.code}: {killed.err[-800:]}")
        return finished

    def judge_marks(self, verdict: dict[str, str], changed: list[str], finished: bool) -> None:
        """(d) a set written in part is marked incomplete, and refused as a source."""
        rows = guests(self.home)
        if any("incomplete" not in g for g in rows):
            self.fail("d", "`guests --json` has no field 'incomplete'")
        marks = {g["name"]: g.get("incomplete") for g in rows if g.get("incomplete")}
        for guest, mark in marks.items():
            if guest not in self.w.owners or not isinstance(mark, dict):
                self.fail("d", f"{guest} marked incomplete: {mark}")
            elif mark.get("operation") != self.w.operation:
                self.fail("d", f"{guest} marked incomplete by {mark.get('operation')!r}")
            elif finished:
                self.fail("d", f"{guest} marked incomplete though the journal says it finished")
        if self.built():  # no old and new to tell apart: whatever was written counts
            # ... unless all of it is as an uninterrupted run leaves it: not written in
            # part (delete killed after its last step: the guest, its mark's row, gone)
            need = bool(changed) and not finished and not self.as_uninterrupted()
            why = f"{changed} changed and the operation did not finish"
        else:
            differs = {k for k in verdict if self.snap.hashes.get(k) != self.ref.after.get(k)}
            moved = sorted(differs.intersection(changed))
            kept = sorted(differs.difference(changed))
            need = bool(moved) and bool(kept)
            why = f"part new {moved}, part old {kept}"
        marked = bool(self.w.owners & marks.keys())
        if need and not marked:
            self.fail("d", f"{why}, but no target guest is marked incomplete")
        if self.w.refuser and (need or marked):
            self.refused()

    def as_uninterrupted(self) -> bool:
        """Every target disk and link is as an uninterrupted run leaves it, by (h)."""
        probe = Trial(self.w, self.snap, self.ref, self.lab, self.home)
        now = ck.disks(self.home)
        for key in probe.disk_targets():
            probe.judge_result(key, now)
        links = ck.links(self.home)
        same = all(links.get(k) == self.ref.links.get(k) for k in probe.link_targets())
        return same and not probe.found

    def refused(self) -> None:
        """The incomplete target is refused as a source (tried on a copy of the site)."""
        self.refusal = True
        home = self.lab.place(self.snap.reflink, "scratch")
        ck.copy_site(self.home, home, reflink=self.snap.reflink)
        try:
            run = ck.sharedroot(home, *self.w.refuser)
        finally:
            discard(home)
        if run.code != 1 or "incomplete" not in run.err:
            self.fail(
                "d",
                f"`{' '.join(self.w.refuser)}` from an incomplete source: exit {run.code},"
                f" {run.err.strip()[-400:] or run.out.strip()[-400:]}",
            )

    def judge_result(self, key: str, now: dict[str, ck.Disk]) -> None:
        """(h) for one target disk: as an uninterrupted run leaves it."""
        if key not in self.ref.after:
            if key in now:
                self.fail("h", f"{key} exists; an uninterrupted run leaves none")
            return
        if key not in now or not now[key].path.is_file():
            self.fail("h", f"{key} is missing")
            return
        disk = now[key]
        if key in self.ref.copied:
            if self.lab.hash(disk.path) != self.ref.after[key]:
                self.fail("h", f"{key} differs from an uninterrupted run's")
            return
        if key not in self.ref.trees:
            if not ck.is_swap(disk.path):
                self.fail("h", f"{key}: not a swap disk")
            return
        ok, out = ck.fsck(disk.path)
        if not ok:
            self.fail("h", f"{key}: e2fsck -fn finds it unclean: {out}")
            return
        want = self.ref.trees[key]
        got = ck.image_tree(disk.path, str(disk.fs), want)
        want, got = ({p: e for p, e in t.items() if not self.w.live_path(p)} for t in (want, got))
        diff = ck.tree_diff(want, got, self.ref.volatile[key])
        if diff:
            self.fail("h", f"{key}: its files differ from an uninterrupted run's: {diff}")

    def after_rerun(self) -> None:
        self.mounts("after the rerun")
        self.database("after the rerun")
        self.untouched("after the rerun")
        now = ck.disks(self.home)
        for key in self.disk_targets():
            self.judge_result(key, now)
        links = ck.links(self.home)
        for key in self.link_targets():
            if links.get(key) != self.ref.links.get(key):
                self.fail("h", f"{key}: {links.get(key)}, uninterrupted: {self.ref.links.get(key)}")
        rows = guests(self.home)
        want = {g["name"]: g for g in self.ref.guests}
        got = {g["name"]: g for g in shape(rows)}
        differ = sorted(n for n in want.keys() | got.keys() if want.get(n) != got.get(n))
        if differ:
            self.fail("h", f"`guests --json` differs from an uninterrupted run's: {differ}")
        marked = [g["name"] for g in rows if g.get("incomplete")]
        if marked:
            self.fail("d", f"still marked incomplete after the rerun: {marked}")
        if ck.strays(self.home):
            self.fail("h", f"temporary files left: {ck.strays(self.home)}")
        if self.refusal:  # refused only until the rerun: a dry run of it goes through now
            dry = (*(a for a in self.w.refuser if a != "--yes"), "--dry-run")
            run = ck.sharedroot(self.home, *dry)
            if run.code != 0:
                self.fail("d", f"`{' '.join(dry)}` after the rerun: exit {run.code}: {run.err}")


def run_trial(lab: Lab, w: Workflow, seed: int) -> Outcome:
    fraction = random.Random(seed).random()
    header = f"seed {seed}: `sharedroot {' '.join(w.command)}`"
    alone = f"SHAREDROOT_CRASH_SEED={seed} SHAREDROOT_CRASH_TRIALS=1"
    alone += f" {sys.executable} -m pytest {__file__}"
    try:
        snap = lab.snapshot(w.state)
        ref = lab.reference(w)
        kill_after = fraction * ref.seconds
        header += (
            f" killed after {kill_after:.3f}s ({fraction:.3f} of its uninterrupted"
            f" {ref.seconds:.3f}s) on {'xfs reflink' if snap.reflink else 'ext4'}"
        )
        trial = Trial(w, snap, ref, lab, lab.copy(snap, f"trial-{seed}"))
        try:
            killed = ck.sharedroot(trial.home, *w.command, kill_after=kill_after)
            finished = trial.after_kill(killed)
            if w.repeatable or not finished:
                again = ck.sharedroot(trial.home, *w.command)
                if again.code != 0:
                    trial.fail("h", f"the rerun: exit {again.code}: {again.err.strip()[-800:]}")
                else:
                    trial.after_rerun()
            else:
                trial.after_rerun()  # it finished before the kill: its result must be whole
        finally:
            discard(trial.home)
    except BaseException as exc:
        exc.add_note(f"{header}; alone: {alone}")
        raise
    stderr = killed.err.strip()[-600:]
    return Outcome(w.name, f"{header}; alone: {alone}", trial.found, stderr, trial.phase)


@pytest.mark.parametrize(
    ("workflow", "seed"), CASES, ids=[f"{w.name}-seed{seed}" for w, seed in CASES]
)
def test_crash(outcomes: dict[int, Future[Outcome]], workflow: Workflow, seed: int) -> None:
    outcome = outcomes[seed].result()
    if outcome.found:
        text = [outcome.header, *outcome.found, f"stderr of the killed run: {outcome.stderr}"]
        pytest.fail("\n".join(text), pytrace=False)
