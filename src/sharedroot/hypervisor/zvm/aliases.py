"""The worker's own device numbers for the minidisks it LINKs (config.zvm.link_range).

Each alias in use has a record, home/run/zvm-links/<ALIAS>, holding the pid (and its
start time) of the process that uses it. The record is made (O_EXCL: two processes
never take the same alias) before the LINK, and removed after the DETACH, so a device in
the range without a live record is left over from a killed command: recover() detaches it.
"""

from __future__ import annotations

import os
from pathlib import Path

from sharedroot.errors import OperationError
from sharedroot.files import run_directory
from sharedroot.store.state import process_start


class Aliases:
    def __init__(self, directory: Path, numbers: range) -> None:
        self.directory = directory
        self.numbers = numbers

    def record(self, alias: str) -> Path:
        return self.directory / alias

    def in_range(self, alias: str) -> bool:
        return int(alias, 16) in self.numbers

    def claim(self, in_use: set[str], count: int = 1) -> list[str]:
        """`count` free aliases (not in `in_use`, no record), each recorded as ours."""
        run_directory(self.directory)
        pid = os.getpid()
        taken: list[str] = []
        for number in self.numbers:
            if len(taken) == count:
                break
            alias = f"{number:04X}"
            if alias in in_use:
                continue
            try:
                fd = os.open(self.record(alias), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{pid} {process_start(pid)}\n")
            taken.append(alias)
        if len(taken) < count:
            for alias in taken:
                self.release(alias)
            first, last = self.numbers[0], self.numbers[-1]
            raise OperationError(
                f"no free worker address in {first:04X}-{last:04X} for a LINK; another"
                " command may hold them, or a killed one left them: any writing sharedroot"
                " command detaches what is left over; or widen [zvm] link_range"
            )
        return taken

    def release(self, alias: str) -> None:
        self.record(alias).unlink(missing_ok=True)

    def live(self, alias: str) -> bool:
        """Whether the alias's record names a process that still runs."""
        try:
            words = self.record(alias).read_text().split()
        except OSError:
            return False
        if len(words) != 2 or not words[0].isdecimal():
            return False
        return process_start(int(words[0])) == words[1]

    def recorded(self) -> list[str]:
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return [n for n in names if len(n) == 4 and all(c in "0123456789ABCDEF" for c in n)]
