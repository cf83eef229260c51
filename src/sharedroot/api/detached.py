"""Runner processes (of jobs and of rollouts): started in a session of their own, told
apart from a reused pid by their start time, and reaped so none lingers as a zombie."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

from sharedroot.run import start
from sharedroot.store.state import process_start

_children: list[subprocess.Popen[bytes]] = []  # started by this process, reaped by reap()
_lock = threading.Lock()


def launch(module: str, home: Path, ident: int, log: Path) -> tuple[int, str]:
    """Start `python -m MODULE HOME IDENT`, its output to `log`; its pid and start time."""
    with open(log, "ab") as out:
        child = start(
            [sys.executable, "-m", module, home, str(ident)], stdout=out, stderr=out, detach=True
        )
    with _lock:
        _children.append(child)
    return child.pid, process_start(child.pid) or ""


def reap() -> None:
    with _lock:
        _children[:] = [c for c in _children if c.poll() is None]


def alive(pid: int, started: str | None) -> bool:
    """Still that process (not a reused pid), and not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat.rpartition(")")[2].split()
    return fields[0] != "Z" and fields[19] == started
