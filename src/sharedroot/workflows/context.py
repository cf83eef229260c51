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
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from sharedroot import hypervisor
from sharedroot.errors import InputError, OperationError, RefusedError, SharedrootError
from sharedroot.hypervisor.base import Hypervisor
from sharedroot.hypervisor.copyengine import Progress
from sharedroot.store.config import SITE_FILE, SiteConfig, load_config, write_config
from sharedroot.store.state import STATE_FILE, State

DEFAULT_HOME = Path("/var/lib/sharedroot")
LOCK_WAIT = 60  # seconds a writer waits for another to finish before refusing


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


class Site:
    """An open store: config, state, backend, and the lock that serialises writers."""

    def __init__(self, home: Path, config: SiteConfig, state: State) -> None:
        self.home = home
        self.config = config
        self.state = state
        self.hv: Hypervisor = hypervisor.new(config, home, state)

    @classmethod
    def open(cls, home: Path) -> Site:
        config = load_config(home / SITE_FILE)
        if not (home / STATE_FILE).exists():
            raise InputError(f"{home / STATE_FILE}: missing; the store is incomplete")
        return cls(home, config, State(home / STATE_FILE))

    @classmethod
    def create(cls, home: Path, config: SiteConfig, populate: Callable[[Site], None]) -> Site:
        """Make a new store; if `populate` fails, remove everything this made."""
        if (home / SITE_FILE).exists():
            raise RefusedError(f"{home}: a site exists already ({SITE_FILE})")
        existed = home.exists()
        if existed and any(home.iterdir()):
            raise RefusedError(f"{home}: not empty; choose an empty or new directory")
        home.mkdir(parents=True, exist_ok=True)
        try:
            site = cls(home, config, State(home / STATE_FILE))
            populate(site)
            write_config(home / SITE_FILE, config)  # last: a site exists only when complete
        except BaseException:
            if existed:
                for child in home.iterdir():
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
            else:
                shutil.rmtree(home, ignore_errors=True)
            raise
        return site

    @contextmanager
    def locked(self) -> Iterator[None]:
        """One writing workflow at a time per site; a second one waits a while."""
        run_dir = self.home / "run"
        run_dir.mkdir(exist_ok=True)
        fd = os.open(run_dir / "site.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + LOCK_WAIT
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise RefusedError(
                            f"another sharedroot operation has been running on {self.home}"
                            f" for over {LOCK_WAIT}s; try again when it has ended"
                        ) from None
                    time.sleep(0.1)
            yield
        finally:
            os.close(fd)


def perform(
    site: Site,
    ui: UI,
    opts: Options,
    operation: str,
    args: dict[str, Any],
    steps: list[Step],
    question: str | None = None,
) -> Outcome:
    """Run `steps` as one journaled operation (or only list them with --dry-run)."""
    outcome = Outcome(operation, opts.dry_run, [s.description for s in steps])
    if opts.dry_run:
        for s in steps:
            ui.step(f"would {s.description}")
        return outcome
    if question is not None and not opts.yes and not ui.confirm(question):
        raise RefusedError(f"{operation}: not confirmed; nothing was changed")
    op = site.state.journal_start(operation, args)
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
        site.state.journal_step(op, steps[done].description, "failed")
        reason = str(exc) or type(exc).__name__
        site.state.journal_end(op, "failed", reason)
        if isinstance(exc, SharedrootError):
            raise
        if isinstance(exc, Exception):
            raise OperationError(f"{operation} failed at step {done + 1}: {reason}") from exc
        raise
    site.state.journal_end(op, "ok")
    return outcome
