"""Whether KVM really runs guests here (else TCG), probed once and cached."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import struct
import tempfile
from pathlib import Path

from sharedroot.hypervisor.qemu.cmdline import MACHINES, machine
from sharedroot.run import CommandError, run

ACCELS = ("kvm", "tcg")
PROBE_MARK = b"sharedroot-accel-probe-ok"  # what the probe's /init prints
PROBE_CMDLINE = "console=ttyS0 panic=-1 quiet loglevel=1"
QEMU = MACHINES["amd64"].binary  # the probe boots an x86-64 kernel and /init


def _probe_init() -> bytes:
    """A static x86-64 ELF /init: print a marker, then reboot (QEMU -no-reboot exits)."""
    msg = PROBE_MARK + b"\n"
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


def probe_initrd() -> bytes:
    return _cpio(
        [
            ("dev", 0o040755, b"", (0, 0)),
            ("dev/console", 0o020600, b"", (5, 1)),
            ("init", 0o100755, _probe_init(), (0, 0)),
        ]
    )


def is_x86_kernel(path: Path) -> bool:
    """An x86-64 vmlinux (ELF, machine 0x3E) or bzImage ("HdrS" at 0x202)."""
    try:
        with open(path, "rb") as f:
            head = f.read(0x206)
    except OSError:
        return False
    elf = head[:4] == b"\x7fELF" and head[18:20] == b"\x3e\x00"
    return elf or head[0x202:0x206] == b"HdrS"


def find_probe_kernel(cache_dir: Path | None) -> Path | None:
    candidates: list[Path] = []
    if cache_dir is not None and cache_dir.is_dir():
        for boot in sorted(cache_dir.glob("*/root/boot")):
            candidates += sorted(boot.glob("vmlinux-*")) + sorted(boot.glob("vmlinuz-*"))
    candidates.append(Path("/boot") / f"vmlinuz-{os.uname().release}")
    return next((p for p in candidates if p.is_file() and is_x86_kernel(p)), None)


def accel_works(accel: str, kernel: Path, timeout: float = 10) -> bool:
    """Boot `kernel` with a tiny initramfs under `accel`: does its /init really run?"""
    with tempfile.TemporaryDirectory(prefix="sharedroot-probe-") as tmp:
        initrd = Path(tmp, "probe.cpio")
        initrd.write_bytes(probe_initrd())
        log = Path(tmp, "serial.log")
        argv = [
            QEMU, "-nodefaults", "-no-user-config", "-display", "none",
            "-machine", "pc", "-accel", accel, "-m", "256", "-smp", "1", "-no-reboot",
            "-kernel", str(kernel), "-initrd", str(initrd),
            "-append", PROBE_CMDLINE,
            "-serial", f"file:{log}",
        ]  # fmt: skip
        try:
            proc = run(argv, check=False, timeout=timeout)
        except CommandError:  # timed out: KVM hangs on what it cannot run
            return False
        return proc.returncode == 0 and PROBE_MARK in log.read_bytes()


@functools.cache
def has_device(device: str, arch: str = "amd64") -> bool:
    """Whether this host's QEMU for `arch` offers `device` (e.g. virtio-pmem-pci)."""
    try:
        out = run([machine(arch).binary, "-device", "help"], check=False, timeout=30).stdout
    except (CommandError, OSError):
        return False
    return f'name "{device}"' in out


def _qemu_version() -> str:
    return run([QEMU, "--version"]).stdout.splitlines()[0].strip()


def probe_accel(
    cache_dir: Path | None = None, kernel: Path | None = None, arch: str = "amd64"
) -> str:
    """Return "kvm" if KVM really runs a stock Linux kernel of `arch` here, else "tcg".

    /dev/kvm may exist yet be unable to run stock kernels (a PVM module), so a kernel
    is booted under KVM with a tiny /init that prints a marker and reboots. The answer
    is cached per QEMU version and host kernel. SHAREDROOT_ACCEL=kvm|tcg overrides.
    Another architecture than the host's always runs under TCG; the probe's /init is
    x86-64, so only amd64 guests on an x86-64 host are probed (others run TCG).
    """
    forced = os.environ.get("SHAREDROOT_ACCEL", "").strip().lower()
    native = machine(arch).host == os.uname().machine
    if forced in ("kvm", "tcg"):
        return forced if native else "tcg"
    if not native or arch != "amd64" or not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    key = f"{_qemu_version()} | {os.uname().release}"
    cache_file = None if cache_dir is None else cache_dir / "accel.json"
    if cache_file is not None:
        with contextlib.suppress(OSError, ValueError):
            cached = json.loads(cache_file.read_text())
            if cached.get("key") == key and cached.get("accel") in ACCELS:
                return str(cached["accel"])
    kernel = kernel or find_probe_kernel(cache_dir)
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
