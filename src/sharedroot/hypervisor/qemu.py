"""Starting, stopping and talking to a guest under QEMU (the local backend's LOGON).

A guest is one detached QEMU process. Its run directory holds the QMP socket
(power-down), the guest-agent socket (`exec`), the serial console socket and log,
and qemu.pid. Disks attach as virtio-blk with serial=<address>, so the guest finds
them at /dev/disk/by-id/virtio-<address>, as the paper names devices by address.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import random
import signal
import socket
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sharedroot.errors import OperationError
from sharedroot.namespace import host_namespace_fd
from sharedroot.run import CommandError, run

QEMU = "qemu-system-x86_64"
QMP_SOCK = "qmp.sock"
QGA_SOCK = "qga.sock"
CONSOLE_SOCK = "console.sock"
CONSOLE_LOG = "console.log"
PID_FILE = "qemu.pid"
STDERR_FILE = "qemu.err"
STDOUT_FILE = "qemu.out"
AGENT_PORT = "org.qemu.guest_agent.0"


@dataclass(frozen=True)
class Drive:
    """One disk as the guest sees it at `address`; RR links are `readonly`.

    An `ephemeral` drive (a VDISK under /dev/shm) is unlinked once QEMU has it open,
    so its memory is freed when the guest logs off.
    """

    path: Path
    address: str
    readonly: bool = False
    ephemeral: bool = False


@dataclass(frozen=True, kw_only=True)
class GuestSpec:
    name: str  # the guest name, also the SMBIOS serial (what CP QUERY USERID gives)
    kernel: Path
    initrd: Path
    cmdline: str
    drives: tuple[Drive, ...]
    run_dir: Path
    accel: str  # "kvm" or "tcg", from probe_accel()
    memory_mb: int = 512
    cpus: int = 1  # one vCPU per guest measured best under TCG
    net: str = "user"  # "user" (slirp NAT, virtio-net) or "none"


def _opt(value: str | Path) -> str:
    """Escape a value for QEMU's comma-separated option syntax."""
    return str(value).replace(",", ",,")


def guest_mac(name: str) -> str:
    """A stable locally administered MAC per guest, so DHCP leases and logs stay put."""
    h = hashlib.sha256(name.encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in h[:3])


def qemu_argv(spec: GuestSpec) -> list[str]:
    """The QEMU command line for `spec` (not daemonized: launch() detaches it)."""
    run_dir = spec.run_dir
    accel = spec.accel
    argv = [
        QEMU,
        "-name",
        f"guest={_opt(spec.name)},process=sharedroot-{_opt(spec.name)}",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-machine",
        "pc",
        "-accel",
        accel,
        # TCG: the default CPU model; "max" measured no faster and emulates more.
        *(["-cpu", "host"] if accel == "kvm" else []),
        "-m",
        str(spec.memory_mb),
        "-smp",
        str(spec.cpus),
        # The guest's shutdown AND reboot log it off, as vmpoff=LOGOFF does: a reboot
        # must re-read the boot config from its 01B0 disk, which only a new start does.
        "-no-reboot",
        "-kernel",
        str(spec.kernel),
        "-initrd",
        str(spec.initrd),
        "-append",
        spec.cmdline,
        "-smbios",
        f"type=1,serial={_opt(spec.name)}",
        "-chardev",
        f"socket,id=qmp,path={_opt(run_dir / QMP_SOCK)},server=on,wait=off",
        "-mon",
        "chardev=qmp,mode=control",
        # The console is a socket (for `console`) that also logs everything to a file.
        "-chardev",
        f"socket,id=con,path={_opt(run_dir / CONSOLE_SOCK)},server=on,wait=off,"
        f"logfile={_opt(run_dir / CONSOLE_LOG)},logappend=on",
        "-serial",
        "chardev:con",
        "-chardev",
        f"socket,id=qga,path={_opt(run_dir / QGA_SOCK)},server=on,wait=off",
        "-device",
        "virtio-serial-pci,id=vser",
        "-device",
        f"virtserialport,bus=vser.0,chardev=qga,name={AGENT_PORT}",
        "-device",
        "virtio-rng-pci",  # entropy for sshd and the kernel's crng at boot
    ]
    for d in spec.drives:
        drive_id = f"d{d.address}"
        argv += [
            "-drive",
            f"if=none,id={drive_id},file={_opt(d.path)},format=raw,"
            f"readonly={'on' if d.readonly else 'off'},cache=writeback,discard=unmap",
            "-device",
            f"virtio-blk-pci,drive={drive_id},serial={d.address}",
        ]
    if spec.net == "user":
        argv += [
            "-netdev",
            "user,id=net0",
            "-device",
            f"virtio-net-pci,netdev=net0,mac={guest_mac(spec.name)}",
        ]
    elif spec.net != "none":
        raise OperationError(f"guest {spec.name}: unknown network kind {spec.net!r}")
    return argv


# ---------------------------------------------------------------- process state


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
            raise OperationError(f"guest {spec.name}: cannot run {QEMU}: {exc}") from None
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


# ---------------------------------------------------------------- QMP


class QMP:
    """A QEMU Machine Protocol client on a unix socket."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._file = sock.makefile("rb")

    @classmethod
    def connect(cls, path: Path, timeout: float = 5) -> QMP:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
            qmp = cls(sock)
            greeting = qmp._read()
            if "QMP" not in greeting:
                raise OperationError(f"{path}: not a QMP greeting: {greeting}")
            qmp.command("qmp_capabilities")
        except BaseException:
            sock.close()
            raise
        return qmp

    def _read(self) -> dict[str, Any]:
        line = self._file.readline()
        if not line:
            raise OperationError("QMP connection closed")
        msg: dict[str, Any] = json.loads(line)
        return msg

    def command(self, name: str, **args: Any) -> Any:
        """Run a QMP command and return its "return" value (events are skipped)."""
        req: dict[str, Any] = {"execute": name}
        if args:
            req["arguments"] = args
        self._sock.sendall(json.dumps(req).encode() + b"\n")
        while True:
            msg = self._read()
            if "return" in msg:
                return msg["return"]
            if "error" in msg:
                err = msg["error"]
                raise OperationError(f"QMP {name}: {err.get('class')}: {err.get('desc')}")

    def system_powerdown(self) -> None:
        self.command("system_powerdown")

    def quit(self) -> None:
        with contextlib.suppress(OperationError, OSError):
            self.command("quit")

    def close(self) -> None:
        self._file.close()
        self._sock.close()

    def __enter__(self) -> QMP:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------- guest agent


class GuestAgent:
    """A qemu-guest-agent client on the virtio-serial port's unix socket."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = b""

    @classmethod
    def connect(cls, path: Path, timeout: float = 5) -> GuestAgent:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> GuestAgent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, req: dict[str, Any]) -> None:
        self._sock.sendall(json.dumps(req).encode() + b"\n")

    def _read_msg(self, deadline: float) -> dict[str, Any]:
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0:
                line, self._buf = self._buf[:nl], self._buf[nl + 1 :]
                # 0xFF is the guest-sync-delimited marker; drop it and any garbage before.
                line = line.rpartition(b"\xff")[2].strip()
                if not line:
                    continue
                try:
                    msg: dict[str, Any] = json.loads(line)
                except ValueError:
                    continue
                return msg
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("guest agent did not answer")
            self._sock.settimeout(left)
            chunk = self._sock.recv(65536)
            if not chunk:
                raise OperationError("guest agent connection closed")
            self._buf += chunk

    def sync(self, timeout: float = 5) -> None:
        """Resynchronise: answers left in the channel by earlier clients are skipped."""
        token = random.randrange(1, 1 << 31)
        self._sock.sendall(b"\xff")  # resets the agent's JSON parser
        self._send({"execute": "guest-sync-delimited", "arguments": {"id": token}})
        deadline = time.monotonic() + timeout
        while True:
            msg = self._read_msg(deadline)
            if msg.get("return") == token:
                return

    def command(self, name: str, timeout: float = 30, **args: Any) -> Any:
        req: dict[str, Any] = {"execute": name}
        if args:
            req["arguments"] = args
        self._send(req)
        deadline = time.monotonic() + timeout
        msg = self._read_msg(deadline)
        if "error" in msg:
            err = msg["error"]
            raise OperationError(f"guest agent {name}: {err.get('class')}: {err.get('desc')}")
        return msg.get("return")

    def ping(self, timeout: float = 5) -> None:
        self.sync(timeout)
        self.command("guest-ping", timeout=timeout)

    def exec(
        self, argv: list[str], timeout: float = 60, input: bytes | None = None
    ) -> tuple[int, bytes, bytes]:
        """Run `argv` in the guest; return (exit code, stdout, stderr).

        A command killed by a signal returns 128 + the signal number, as a shell would.
        """
        if not argv:
            raise OperationError("exec: empty command")
        self.sync()
        args: dict[str, Any] = {"path": argv[0], "arg": argv[1:], "capture-output": True}
        if input is not None:
            args["input-data"] = base64.b64encode(input).decode()
        started = self.command("guest-exec", **args)
        pid = started["pid"]
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            status = self.command("guest-exec-status", pid=pid)
            if status.get("exited"):
                break
            if time.monotonic() > deadline:
                raise OperationError(
                    f"exec {argv[0]}: still running in the guest after {timeout:.0f}s"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
        out = base64.b64decode(status.get("out-data", ""))
        err = base64.b64decode(status.get("err-data", ""))
        code = status.get("exitcode")
        if code is None:
            code = 128 + int(status.get("signal", 0))
        return int(code), out, err


def agent_exec(
    run_dir: Path, argv: list[str], timeout: float = 60, input: bytes | None = None
) -> tuple[int, bytes, bytes]:
    """Run one command in the running guest of `run_dir` through its agent."""
    try:
        with GuestAgent.connect(run_dir / QGA_SOCK) as agent:
            return agent.exec(argv, timeout=timeout, input=input)
    except OSError as exc:  # includes timeouts: the guest is still booting, or hangs
        raise OperationError(
            f"the guest agent did not answer ({exc or type(exc).__name__}); is the guest"
            " still booting? `start --wait` waits until it is ready"
        ) from None


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


# ---------------------------------------------------------------- acceleration


def _probe_init() -> bytes:
    """A static x86-64 ELF /init: print a marker, then reboot (QEMU -no-reboot exits)."""
    msg = b"sharedroot-accel-probe-ok\n"
    code = (
        b"\xb8\x01\x00\x00\x00"  # mov eax, 1 (write)
        b"\xbf\x01\x00\x00\x00"  # mov edi, 1
        b"\x48\x8d\x35\x1f\x00\x00\x00"  # lea rsi, [rip+31] (msg)
        + b"\xba"
        + struct.pack("<I", len(msg))  # mov edx, len
        + b"\x0f\x05"  # syscall
        b"\xb8\xa9\x00\x00\x00"  # mov eax, 169 (reboot)
        b"\xbf\xad\xde\xe1\xfe"  # mov edi, LINUX_REBOOT_MAGIC1
        b"\xbe\x69\x19\x12\x28"  # mov esi, LINUX_REBOOT_MAGIC2
        b"\xba\x67\x45\x23\x01"  # mov edx, LINUX_REBOOT_CMD_RESTART
        b"\x0f\x05"  # syscall
        b"\xeb\xfe"  # jmp $
    )
    assert len(code) == 48
    body = code + msg
    base, hdr = 0x400000, 64 + 56
    ehdr = struct.pack(
        "<4sBBBBB7xHHIQQQIHHHHHH",
        b"\x7fELF", 2, 1, 1, 0, 0,  # 64-bit, little-endian, version 1, SysV
        2, 0x3E, 1, base + hdr, 64, 0, 0, 64, 56, 1, 0, 0, 0,
    )  # fmt: skip
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0, base, base, hdr + len(body), hdr + len(body), 0x1000)
    return ehdr + phdr + body


def _cpio(entries: list[tuple[str, int, bytes, tuple[int, int]]]) -> bytes:
    """A newc cpio archive of (name, mode, data, (rdev major, minor)) entries."""
    out = bytearray()
    for ino, (name, mode, data, (rmaj, rmin)) in enumerate(
        [*entries, ("TRAILER!!!", 0, b"", (0, 0))], start=1
    ):
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, rmaj, rmin, len(name) + 1, 0)
        out += b"070701" + b"".join(f"{v:08x}".encode() for v in fields)
        out += name.encode() + b"\0"
        out += b"\0" * (-len(out) % 4)
        out += data
        out += b"\0" * (-len(out) % 4)
    return bytes(out)


def _probe_initrd() -> bytes:
    return _cpio(
        [
            ("dev", 0o040755, b"", (0, 0)),
            ("dev/console", 0o020600, b"", (5, 1)),
            ("init", 0o100755, _probe_init(), (0, 0)),
        ]
    )


def _find_probe_kernel(cache_dir: Path | None) -> Path | None:
    candidates: list[Path] = []
    if cache_dir is not None and cache_dir.is_dir():
        for boot in sorted(cache_dir.glob("*/root/boot")):
            candidates += sorted(boot.glob("vmlinux-*")) + sorted(boot.glob("vmlinuz-*"))
    candidates.append(Path("/boot") / f"vmlinuz-{os.uname().release}")
    return next((p for p in candidates if p.is_file()), None)


def accel_works(accel: str, kernel: Path, timeout: float = 10) -> bool:
    """Boot `kernel` with a tiny initramfs under `accel`: does its /init really run?"""
    with tempfile.TemporaryDirectory(prefix="sharedroot-probe-") as tmp:
        initrd = Path(tmp, "probe.cpio")
        initrd.write_bytes(_probe_initrd())
        log = Path(tmp, "serial.log")
        argv = [
            QEMU, "-nodefaults", "-no-user-config", "-display", "none",
            "-machine", "pc", "-accel", accel, "-m", "256", "-smp", "1", "-no-reboot",
            "-kernel", str(kernel), "-initrd", str(initrd),
            "-append", "console=ttyS0 panic=-1 quiet loglevel=1",
            "-serial", f"file:{log}",
        ]  # fmt: skip
        try:
            proc = run(argv, check=False, timeout=timeout)
        except CommandError:  # timed out: KVM hangs on what it cannot run
            return False
        return proc.returncode == 0 and b"sharedroot-accel-probe-ok" in log.read_bytes()


def _qemu_version() -> str:
    return run([QEMU, "--version"]).stdout.splitlines()[0].strip()


def probe_accel(cache_dir: Path | None = None, kernel: Path | None = None) -> str:
    """Return "kvm" if KVM really runs a stock Linux kernel here, else "tcg".

    /dev/kvm may exist yet be unable to run stock kernels (a PVM module), so a kernel
    is booted under KVM with a tiny /init that prints a marker and reboots. The answer
    is cached per QEMU version and host kernel. SHAREDROOT_ACCEL=kvm|tcg overrides.
    """
    forced = os.environ.get("SHAREDROOT_ACCEL", "").strip().lower()
    if forced in ("kvm", "tcg"):
        return forced
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    key = f"{_qemu_version()} | {os.uname().release}"
    cache_file = None if cache_dir is None else cache_dir / "accel.json"
    if cache_file is not None:
        with contextlib.suppress(OSError, ValueError):
            cached = json.loads(cache_file.read_text())
            if cached.get("key") == key and cached.get("accel") in ("kvm", "tcg"):
                return str(cached["accel"])
    kernel = kernel or _find_probe_kernel(cache_dir)
    if kernel is None:
        return "tcg"  # nothing to prove KVM with; TCG always works (not cached)
    accel = "kvm" if accel_works("kvm", kernel) else "tcg"
    if cache_file is not None:
        with contextlib.suppress(OSError):
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}")
            tmp.write_text(json.dumps({"key": key, "accel": accel, "kernel": str(kernel)}))
            tmp.replace(cache_file)
    return accel
