"""What every workflow gets: the open site, a way to talk to the user, and the plan runner.

A workflow checks its guards, then hands `perform` a list of steps.  `perform`
prints them and stops (--dry-run), or asks for confirmation, then runs them one
by one, each recorded in the operation journal.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from sharedroot import hypervisor
from sharedroot.errors import (
    InputError,
    OperationError,
    RefusedError,
    SharedrootError,
    StoreError,
)
from sharedroot.files import run_directory
from sharedroot.hypervisor.base import Hypervisor
from sharedroot.hypervisor.copyengine import Progress
from sharedroot.run import children_inherit
from sharedroot.store.config import SITE_FILE, SiteConfig, load_config, write_config
from sharedroot.store.state import STATE_FILE, State

DEFAULT_HOME = Path("/var/lib/sharedroot")
LOCK_WAIT = 60  # seconds a writer waits for another to finish ($SHAREDROOT_LOCK_WAIT)


class UI(Protocol):
    """How a workflow reports to whoever runs it (a terminal, a script, a test)."""

    def step(self, text: str) -> None: ...

    def progress(self, label: str, total: int) -> AbstractContextManager[Progress]: ...

    def confirm(self, question: str) -> bool: ...


@dataclass(frozen=True)
class Options:
    dry_run: bool = False
    yes: bool = False  # confirmed in advance (--yes)
    verify: bool = False  # compare hashes after each copy


@dataclass(frozen=True)
class Step:
    description: str
    action: Callable[[], Any]


@dataclass
class Outcome:
    operation: str
    dry_run: bool
    steps: list[str]
    results: list[dict[str, Any]] = field(default_factory=list)


def resolve_home(arg: str | None) -> Path:
    """--home, else $SHAREDROOT_HOME, else /var/lib/sharedroot."""
    value = arg or os.environ.get("SHAREDROOT_HOME")
    return Path(value).absolute() if value else DEFAULT_HOME


# What a store keeps in its home besides site.toml and state.db (and its -wal, -shm).
STORE_ENTRIES = frozenset({SITE_FILE, "disks", "kept", "run", "server", "ssh", "tmp", "work"})


class Site:
    """An open store: config, state, backend, and the lock that serialises writers."""

    def __init__(self, home: Path, config: SiteConfig, state: State) -> None:
        self.home = home
        self.config = config
        self.state = state
        self.hv: Hypervisor = hypervisor.new(config, home, state)

    @classmethod
    def open(cls, home: Path, *, readonly: bool = False) -> Site:
        """An existing store; `readonly` for commands that only read (writes nothing)."""
        if not (home / SITE_FILE).exists() and (home / STATE_FILE).exists():
            raise StoreError(f"{home / SITE_FILE}: missing; the store is incomplete")
        config = load_config(home / SITE_FILE)
        return cls(home, config, State(home / STATE_FILE, readonly=readonly))

    @classmethod
    def create(cls, home: Path, config: SiteConfig, populate: Callable[[Site], None]) -> Site:
        """Make a new store; if `populate` fails, remove everything this made."""
        if (home / SITE_FILE).exists():
            raise RefusedError(f"{home}: a site exists already ({SITE_FILE})")
        existed = home.exists()
        # Entries a store does not use are left alone (e.g. an emulated z/VM's zvmsim/);
        # any it uses may be another store's, half made or damaged.
        theirs = sorted(p.name for p in home.iterdir()) if existed else []
        if any(name in STORE_ENTRIES or name.startswith(STATE_FILE) for name in theirs):
            raise RefusedError(
                f"{home}: not empty (it holds {', '.join(theirs)}); choose an empty or new"
                " directory"
            )
        home.mkdir(parents=True, exist_ok=True)
        try:
            site = cls(home, config, State(home / STATE_FILE, create=True))
            populate(site)
            write_config(home / SITE_FILE, config)  # last: a site exists only when complete
        except BaseException:
            if existed:
                for child in home.iterdir():
                    if child.name not in theirs:
                        shutil.rmtree(child) if child.is_dir() else child.unlink()
            else:
                shutil.rmtree(home, ignore_errors=True)
            raise
        return site

    @contextmanager
    def locked(self, ui: UI | None = None, *, writes: bool = True) -> Iterator[None]:
        """One writing workflow at a time per site; a second one waits a while.

        Whoever holds the lock is the only writer, so it is also the one to clear up
        after writers that died: their journal entries and their temporary files
        (not when it will write nothing: a dry run).
        """
        run_dir = self.home / "run"
        run_directory(run_dir)
        fd = os.open(run_dir / "site.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            wait = lock_wait()
            deadline = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise RefusedError(
                            f"another sharedroot operation has been running on {self.home}"
                            f" for over {wait:g}s; try again when it has ended"
                        ) from None
                    time.sleep(0.1)
            if writes:
                self._clear_up(ui)
            with children_inherit(fd):
                yield
        finally:
            os.close(fd)

    def _clear_up(self, ui: UI | None) -> None:
        self.hv.recover()  # e.g. the LINKs a killed command left on the worker
        with self.state.transaction():
            dead = self.state.settle_interrupted()
        incomplete = self.state.incomplete()
        for j in dead:
            hint = [g for g, row in incomplete.items() if row.op == j.id]
            if ui is not None:
                ui.step(
                    f"note: {j.operation} (journal #{j.id}) was {j.message}"
                    + (f"; {', '.join(hint)} left incomplete until it is rerun" if hint else "")
                )
        moving = {k.removeprefix("migrating:") for k in self.state.facts("migrating:")}
        for path in stale_files(self.home, moving):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def lock_wait() -> float:
    """Seconds a writer waits for the site lock: $SHAREDROOT_LOCK_WAIT, else 60."""
    raw = os.environ.get("SHAREDROOT_LOCK_WAIT")
    if raw is None:
        return LOCK_WAIT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 86400:
        raise InputError(f"SHAREDROOT_LOCK_WAIT={raw!r}: must be seconds from 0 to 86400")
    return value


def _mounted_below(path: Path) -> bool:
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return True  # cannot tell: keep it
    where = str(path)
    return any((p := line.split()[4]) == where or p.startswith(where + "/") for line in lines)


def stale_files(home: Path, keep_work: set[str]) -> list[Path]:
    """What dead writers left: half-made copies, unrenamed images, work trees.

    A work tree that still holds an interrupted migrate's merge journal is kept
    (the next command on that clone finishes the move); nothing with a mount under
    it is ever removed.
    """
    found: list[Path] = []
    disks = home / "disks"
    if disks.is_dir():
        for p in disks.rglob(".*"):
            if ".copy-" in p.name or p.name.endswith((".new", ".tmp")):
                found.append(p)
    tmp = home / "tmp"
    if tmp.is_dir():
        found += list(tmp.iterdir())
    work = home / "work"
    if work.is_dir():
        found += [p for p in work.iterdir() if p.name not in keep_work]
    return [p for p in found if not _mounted_below(p)]


def perform(
    site: Site,
    ui: UI,
    opts: Options,
    operation: str,
    args: dict[str, Any],
    steps: list[Step],
    question: str | None = None,
    *,
    targets: Sequence[str] = (),
) -> Outcome:
    """Run `steps` as one journaled operation (or only list them with --dry-run).

    `targets` are the guests whose disks the steps write as a set: they are marked
    incomplete in the same transaction that starts the journal entry, and complete
    again only in the one that ends it well, so a set that was half written when the
    command died stays marked until the operation is rerun.
    """
    outcome = Outcome(operation, opts.dry_run, [s.description for s in steps])
    if opts.dry_run:
        for s in steps:
            ui.step(f"would {s.description}")
        return outcome
    if question is not None and not opts.yes and not ui.confirm(question):
        raise RefusedError(f"{operation}: not confirmed; nothing was changed")
    plan = [s.description for s in steps]
    with site.state.transaction():
        op = site.state.journal_start(operation, args, plan)
        for guest in targets:
            site.state.mark_incomplete(guest, operation, op)
    done = 0
    try:
        for s in steps:
            ui.step(s.description)
            result = s.action()
            site.state.journal_step(op, s.description)
            if isinstance(result, dict):
                outcome.results.append(result)
            done += 1
    except BaseException as exc:
        reason = str(exc) or type(exc).__name__
        with site.state.transaction():
            site.state.journal_step(op, steps[done].description, "failed")
            site.state.journal_end(op, "failed", reason)
        if isinstance(exc, SharedrootError):
            raise
        if isinstance(exc, Exception):
            raise OperationError(f"{operation} failed at step {done + 1}: {reason}") from exc
        raise
    with site.state.transaction():
        site.state.journal_end(op, "ok")
        for guest in targets:
            site.state.mark_complete(guest)
    return outcome
