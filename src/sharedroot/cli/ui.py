"""Talking to a person on a terminal (Rich), or staying quiet for --json.

A job of `sharedroot serve` runs the same commands with --json and passes a pipe in
$SHAREDROOT_EVENTS_FD: each step and (at most twice a second) each progress figure goes
there as one JSON line, whether or not a person is watching.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from sharedroot.errors import InputError, RefusedError
from sharedroot.hypervisor.copyengine import Progress as ProgressFn

EVENTS_FD = "SHAREDROOT_EVENTS_FD"
PROGRESS_EVERY = 0.5  # seconds between two progress events of one bar


def event_stream() -> TextIO | None:
    raw = os.environ.get(EVENTS_FD)
    if raw is None:
        return None
    if not re.fullmatch(r"[0-9]{1,5}", raw):
        raise InputError(f"{EVENTS_FD}={raw!r}: must be an open file descriptor's number")
    try:
        return os.fdopen(int(raw), "w", buffering=1, closefd=False)
    except OSError as exc:
        raise InputError(f"{EVENTS_FD}={raw}: {exc.strerror}") from None


class TerminalUI:
    """Steps and progress bars on stderr, so stdout stays the command's result."""

    def __init__(self, quiet: bool = False) -> None:
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)
        self.quiet = quiet
        self.events = event_stream()

    def _event(self, **fields: object) -> None:
        if self.events is not None:
            self.events.write(json.dumps(fields) + "\n")

    def step(self, text: str) -> None:
        self._event(kind="step", text=text)
        if not self.quiet:
            self.err.print(f"[bold cyan]>[/] {text}")

    @contextmanager
    def progress(self, label: str, total: int) -> Iterator[ProgressFn]:
        if self.events is not None:
            last = [0.0]

            def report(done: int, of: int) -> None:
                if time.monotonic() - last[0] >= PROGRESS_EVERY or done >= of:
                    last[0] = time.monotonic()
                    self._event(kind="progress", text=label, done=done, total=of)

            yield report
            return
        if self.quiet or not self.err.is_terminal:
            yield lambda done, total: None
            return
        columns = (
            TextColumn("  {task.description}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=self.err, transient=True) as bar:
            task = bar.add_task(label, total=total or None)

            def update(done: int, of: int) -> None:
                bar.update(task, completed=done, total=of or None)

            yield update

    def confirm(self, question: str) -> bool:
        if not sys.stdin.isatty():
            raise RefusedError(
                f"confirmation needed ({question.removesuffix(' y/n')}), but there is no"
                " terminal to ask; pass --yes"
            )
        self.err.print(question, end=" ")
        return sys.stdin.readline().strip().lower() in ("y", "yes")
