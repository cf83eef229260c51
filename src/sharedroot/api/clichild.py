"""The CLI as a child process of a job's or a rollout's runner.

`sharedroot --json WORDS` runs with a pipe in $SHAREDROOT_EVENTS_FD: each step and
progress line it writes there reaches `on_event` as it comes (steps also go to the
log as `> TEXT`), its stderr goes to the log, its --json answer to `out_path`.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from sharedroot.cli.ui import EVENTS_FD
from sharedroot.run import start

POLL = 0.2  # seconds between two looks at the cancel flag and the child


@dataclass(frozen=True)
class Finished:
    code: int
    result: Any  # the --json answer, None where it printed none
    cancelled: bool


def run_cli(
    home: Path,
    words: list[str],
    log: IO[bytes],
    out_path: Path,
    on_event: Callable[[dict[str, Any]], None],
    *,
    started: Callable[[int], None] = lambda pid: None,
    cancel: Callable[[], bool] = lambda: False,
) -> Finished:
    """Run the command to its end; once `cancel()` says so, interrupt it as Ctrl-C would."""
    read_end, write_end = os.pipe()
    with open(out_path, "wb") as out:
        child = start(
            [sys.executable, "-m", "sharedroot.cli.main", "--home", home, *words],
            env=os.environ | {EVENTS_FD: str(write_end)},
            stdout=out,
            stderr=log,
            pass_fds=[write_end],
        )
    os.close(write_end)
    started(child.pid)
    cancelled = False
    pending = b""
    with os.fdopen(read_end, "rb", buffering=0) as events:
        while True:
            ready, _, _ = select.select([events], [], [], POLL)
            chunk = os.read(events.fileno(), 65536) if ready else b""
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                fields = _event(line)
                if fields is not None:
                    if fields["kind"] == "step":
                        log.write(f"> {fields['text']}\n".encode())
                    on_event(fields)
            if not cancelled and cancel():
                cancelled = True
                log.write(b"> cancel requested: interrupting\n")
                child.send_signal(signal.SIGINT)
            if ready and not chunk:  # every writer has closed its end
                break
            if not ready and child.poll() is not None:
                break  # ended, yet a guest it started may still hold the pipe open
    code = child.wait()
    try:
        result = json.loads(out_path.read_text()) if out_path.stat().st_size else None
    except (ValueError, UnicodeDecodeError):
        result = None
    return Finished(code, result, cancelled)


def _event(line: bytes) -> dict[str, Any] | None:
    """A step or progress line the CLI wrote, checked; anything else is not ours."""
    try:
        fields = json.loads(line)
    except ValueError:
        return None
    if not isinstance(fields, dict) or not isinstance(fields.get("text"), str):
        return None
    if fields.get("kind") not in ("step", "progress"):
        return None
    return fields


def last_error_line(log_path: Path) -> str:
    """The last line the command itself wrote to the log (not one of ours, `> ...`)."""
    lines = [x for x in log_path.read_text(errors="replace").splitlines() if x[:2] != "> "]
    return lines[-1].removeprefix("sharedroot: ") if lines else ""
