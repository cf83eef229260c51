"""The one way sharedroot runs external programs: argument lists, never a shell."""

from __future__ import annotations

import contextlib
import shlex
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from sharedroot.errors import OperationError

# File descriptors every program we run inherits: the site lock, so that a command
# killed while a child (cp, mount, mke2fs) still writes holds the lock until that
# child has ended too, and no other command can start on the same disks meanwhile.
_inherited: list[int] = []


@contextlib.contextmanager
def children_inherit(fd: int) -> Iterator[None]:
    _inherited.append(fd)
    try:
        yield
    finally:
        _inherited.remove(fd)


class CommandError(OperationError):
    """An external program failed; the message carries the command and its stderr."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr
        tail = stderr.strip().splitlines()[-5:]
        detail = ("\n  " + "\n  ".join(tail)) if tail else ""
        super().__init__(f"command failed (exit {returncode}): {shlex.join(self.argv)}{detail}")


def run(
    argv: Sequence[str | Path],
    *,
    check: bool = True,
    input: str | bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float | None = None,
    capture: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a program and return its completed process (text mode).

    With `capture` false, stdout and stderr go to ours (for long jobs whose
    output a person should see); a failure then cannot quote stderr.
    """
    args = [str(a) for a in argv]
    data = input.decode() if isinstance(input, bytes) else input
    try:
        proc = subprocess.run(
            args,
            input=data,
            text=True,
            capture_output=capture,
            env=None if env is None else dict(env),
            cwd=cwd,
            timeout=timeout,
            check=False,
            pass_fds=tuple(_inherited),
        )
    except FileNotFoundError as exc:
        raise CommandError(args, 127, f"{args[0]}: not found ({exc.strerror})") from None
    except subprocess.TimeoutExpired as exc:
        err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        raise CommandError(args, -1, f"timed out after {timeout}s\n{err}") from None
    if check and proc.returncode != 0:
        raise CommandError(args, proc.returncode, proc.stderr or "")
    return proc


def start(
    argv: Sequence[str | Path],
    *,
    env: Mapping[str, str] | None = None,
    stdout: int | IO[Any] | None = subprocess.DEVNULL,
    stderr: int | IO[Any] | None = subprocess.DEVNULL,
    pass_fds: Sequence[int] = (),
    detach: bool = False,
) -> subprocess.Popen[bytes]:
    """Start a program that runs on beside us (a job's runner, a job's command).

    `detach` puts it in a session of its own, so a signal to ours (a server stopped
    with Ctrl-C) does not reach it.
    """
    args = [str(a) for a in argv]
    try:
        return subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            env=None if env is None else dict(env),
            pass_fds=tuple(pass_fds),
            start_new_session=detach,
        )
    except FileNotFoundError as exc:
        raise CommandError(args, 127, f"{args[0]}: not found ({exc.strerror})") from None


def have(program: str) -> bool:
    """Whether `program` is on PATH (or an absolute path that exists)."""
    return shutil.which(program) is not None
