"""Starting and stopping a guest's QEMU; its run directory."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

from sharedroot.errors import OperationError
from sharedroot.hypervisor.qemu.cmdline import (
    CONSOLE_LOG,
    CONSOLE_SOCK,
    PID_FILE,
    QGA_SOCK,
    QMP_SOCK,
    STDERR_FILE,
    STDOUT_FILE,
    GuestSpec,
    qemu_argv,
)
from sharedroot.hypervisor.qemu.control import QMP, GuestAgent
from sharedroot.namespace import host_namespace_fd
from sharedroot.run import run


def pid_alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie child of ours is reaped and counts as gone)."""
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.rpartition(")")[2].split()[0] != "Z":
        return True
    # A zombie leader whose other threads still exit keeps its files (the run lock).
    try:
        return len(os.listdir(f"/proc/{pid}/task")) > 1
    except OSError:
        return False


def read_pid(run_dir: Path) -> int | None:
    try:
        return int((run_dir / PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return None


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_bytes()[-16384:].decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.replace("\r", "").splitlines()[-lines:])


def launch(spec: GuestSpec, *, lock_fd: int | None = None, start_timeout: float = 15) -> int:
    """Start QEMU detached for `spec`; return its pid once QMP answers.

    `lock_fd` (the caller's flock on the guest's run lock) is passed to QEMU, so the
    lock is held exactly as long as QEMU lives. Raises OperationError with QEMU's
    stderr if it exits at once or never answers on QMP.
    """
    run_dir = spec.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in (QMP_SOCK, QGA_SOCK, CONSOLE_SOCK, PID_FILE):
        (run_dir / name).unlink(missing_ok=True)
    argv = qemu_argv(spec)
    (run_dir / "qemu.argv").write_text(json.dumps(argv) + "\n")
    err_path = run_dir / STDERR_FILE
    fds = [] if lock_fd is None else [lock_fd]
    prefix: list[str] = []
    host_ns = host_namespace_fd()
    if host_ns is not None:  # back to the host's mounts (see sharedroot.namespace)
        prefix = ["nsenter", f"--mount=/proc/self/fd/{host_ns}", "--"]
        fds.append(host_ns)
    with (
        open(run_dir / STDOUT_FILE, "wb") as out,
        open(err_path, "wb") as err,
    ):
        try:
            proc = subprocess.Popen(
                prefix + argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,  # survives the CLI and its terminal's signals
                pass_fds=fds,
                close_fds=True,
            )
        except OSError as exc:
            raise OperationError(f"guest {spec.name}: cannot run {argv[0]}: {exc}") from None
    deadline = time.monotonic() + start_timeout
    last_error = "no QMP socket"
    while True:
        code = proc.poll()
        if code is not None:
            raise OperationError(
                f"guest {spec.name}: QEMU exited at once (status {code}):\n"
                + (_tail(err_path) or "(no message)")
            )
        if (run_dir / QMP_SOCK).exists():
            try:
                # Answering a command means machine setup (kernel load, disks) is done.
                with QMP.connect(run_dir / QMP_SOCK, timeout=2) as qmp:
                    qmp.command("query-status")
                break
            except (OSError, OperationError) as exc:
                last_error = str(exc)
        if time.monotonic() > deadline:
            _kill(proc.pid)
            proc.wait()
            raise OperationError(
                f"guest {spec.name}: QEMU did not answer on QMP within {start_timeout:.0f}s"
                f" ({last_error}):\n" + (_tail(err_path) or "(no message)")
            )
        time.sleep(0.05)
    for d in spec.drives:
        if d.ephemeral:
            # QEMU holds it open; unlinking frees the RAM when QEMU exits.
            d.path.unlink(missing_ok=True)
    (run_dir / PID_FILE).write_text(f"{proc.pid}\n")
    _CHILDREN[proc.pid] = proc  # keeps Popen from warning; pid_alive() reaps it
    return proc.pid


_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def make_vdisk(path: Path, size: int) -> Path:
    """A fresh RAM-backed swap disk (paper SWAPGEN): sparse file in /dev/shm + mkswap."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.new")
    with open(tmp, "wb") as f:
        f.truncate(size)
    try:
        run(["mkswap", "-q", tmp])
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def wait_ready(run_dir: Path, timeout: float = 180) -> None:
    """Wait until the guest agent answers; raise with the console tail if not, or if
    QEMU died."""
    deadline = time.monotonic() + timeout
    pid = read_pid(run_dir)
    while True:
        if pid is not None and not pid_alive(pid):
            raise OperationError(
                f"QEMU (pid {pid}) exited while the guest was booting; console:\n"
                + _tail(run_dir / CONSOLE_LOG)
                + "\n"
                + _tail(run_dir / STDERR_FILE, 5)
            )
        try:
            with GuestAgent.connect(run_dir / QGA_SOCK, timeout=2) as agent:
                agent.ping(timeout=min(3.0, max(0.5, deadline - time.monotonic())))
            return
        except (OSError, OperationError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise OperationError(
                f"guest agent did not answer within {timeout:.0f}s; console:\n"
                + _tail(run_dir / CONSOLE_LOG)
            )
        time.sleep(0.5)


def _wait_exit(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def shutdown(run_dir: Path, pid: int, timeout: float = 60) -> str:
    """Power the guest down: ACPI power button, then QMP quit, then SIGKILL.

    Returns "clean" if the guest shut itself down (or was already gone), else "forced".
    """
    result = "clean"
    if pid_alive(pid):
        try:
            with QMP.connect(run_dir / QMP_SOCK, timeout=5) as qmp:
                qmp.system_powerdown()
        except (OSError, OperationError):
            pass
        if not _wait_exit(pid, timeout):
            result = "forced"
            try:
                with QMP.connect(run_dir / QMP_SOCK, timeout=5) as qmp:
                    qmp.quit()
            except (OSError, OperationError):
                pass
            if not _wait_exit(pid, 5):
                _kill(pid)
                _wait_exit(pid, 10)
    _CHILDREN.pop(pid, None)
    for name in (QMP_SOCK, QGA_SOCK, CONSOLE_SOCK, PID_FILE):
        (run_dir / name).unlink(missing_ok=True)
    return result
