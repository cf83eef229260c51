"""Talking to a person on a terminal (Rich), or staying quiet for --json."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from sharedroot.errors import RefusedError
from sharedroot.hypervisor.copyengine import Progress as ProgressFn


class TerminalUI:
    """Steps and progress bars on stderr, so stdout stays the command's result."""

    def __init__(self, quiet: bool = False) -> None:
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)
        self.quiet = quiet

    def step(self, text: str) -> None:
        if not self.quiet:
            self.err.print(f"[bold cyan]>[/] {text}")

    @contextmanager
    def progress(self, label: str, total: int) -> Iterator[ProgressFn]:
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
