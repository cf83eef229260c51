"""IPL from 01B0: the boot record on the disk, and the QEMU command line of a guest.

As CP's `IPL 1B0` (the paper's PROFILE EXEC) loads what zipl wrote onto the boot disk,
the emulator reads `/sharedroot.conf` from 01B0's file system (partition 1 if the disk
carries a partition table, else the whole disk) without mounting it (debugfs, `?offset=`
for the partition): lines `kernel=NAME`, `initrd=NAME`, `cmdline=...`, the names relative
to that file system. The kernel and initrd are copied out at each IPL, so a guest boots
whatever its 01B0 holds; a kernel that is not an s390x one (an x86 bzImage, say) boots
nothing.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from zvmsim import loops
from zvmsim.guest import QEMU

BOOT_CONFIG = "sharedroot.conf"
IPL_DEVICE = "01B0"
DEFAULT_STORAGE = "512M"
EXT_MAGIC_AT = 1024 + 56


class IplError(Exception):
    """Why 01B0 cannot be IPLed (the text goes to the guest's console log)."""


@dataclass(frozen=True)
class BootRecord:
    kernel: str
    initrd: str
    cmdline: str


def parse_boot_config(text: str) -> BootRecord:
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    missing = [k for k in ("kernel", "initrd", "cmdline") if not values.get(k) and k != "cmdline"]
    missing += [] if "cmdline" in values else ["cmdline"]
    if missing:
        raise IplError(f"/{BOOT_CONFIG} names no {', no '.join(missing)}")
    return BootRecord(values["kernel"], values["initrd"], values["cmdline"])


def filesystem_offset(image: Path) -> int:
    """Where 01B0's file system starts: partition 1 if the disk has a table, else 0."""
    part = loops.partition_of(image)
    return part[0] if part is not None else 0


def _has_ext(image: Path, offset: int) -> bool:
    with open(image, "rb") as f:
        f.seek(offset + EXT_MAGIC_AT)
        return f.read(2) == b"\x53\xef"


def _dump(source: str, name: str, out: Path) -> None:
    """Copy /name out of the ext2/3/4 file system `source`; debugfs exits 0 on failure."""
    out.unlink(missing_ok=True)
    proc = subprocess.run(
        ["debugfs", "-R", f"dump /{name} {out}", source], capture_output=True, text=True
    )
    if not out.exists() or out.stat().st_size == 0:
        lines = [ln for ln in proc.stderr.splitlines() if not ln.startswith("debugfs ")]
        why = lines[-1].strip() if lines else "empty file"
        out.unlink(missing_ok=True)
        raise IplError(f"cannot read /{name}: {why}")


def kernel_kind(head: bytes) -> str | None:
    """None for an s390x kernel (the s390 image with its IPL PSW and CCWs, or a 64-bit
    big-endian ELF for machine 22), else what it looks like instead."""
    if head[:4] == b"\x00\x08\x00\x00" and head[8:16] == bytes.fromhex("0200001860000050"):
        return None
    if head[:4] == b"\x7fELF":
        if head[4] == 2 and head[5] == 2 and int.from_bytes(head[18:20], "big") == 22:
            return None
        return "an ELF file for another machine"
    if len(head) > 0x206 and head[0x202:0x206] == b"HdrS":
        return "an x86 bzImage"
    return "not a Linux kernel for s390x"


def _safe_name(name: str) -> str:
    rel = name.strip().lstrip("/")
    if not rel or ".." in Path(rel).parts or any(c.isspace() for c in rel):
        raise IplError(f"/{BOOT_CONFIG}: bad file name {name!r}")
    return rel


def read_boot(image: Path, dest: Path) -> tuple[Path, Path, str]:
    """Copy the kernel and initrd 01B0's boot record names into `dest`; (kernel, initrd,
    cmdline). Raises IplError when 01B0 holds no bootable s390x system."""
    if not image.exists():
        raise IplError(f"{IPL_DEVICE} has no contents")
    offset = filesystem_offset(image)
    if not _has_ext(image, offset):
        where = "partition 1 of " if offset else ""
        raise IplError(f"no Linux file system on {where}{IPL_DEVICE}")
    source = f"{image}?offset={offset}" if offset else str(image)
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        conf = Path(tmp, BOOT_CONFIG)
        try:
            _dump(source, BOOT_CONFIG, conf)
        except IplError:
            raise IplError(f"{IPL_DEVICE} holds no /{BOOT_CONFIG} (no boot record)") from None
        record = parse_boot_config(conf.read_text(errors="replace"))
    kernel, initrd = dest / "kernel", dest / "initrd"
    _dump(source, _safe_name(record.kernel), kernel)
    with open(kernel, "rb") as f:
        kind = kernel_kind(f.read(0x400))
    if kind is not None:
        raise IplError(f"/{record.kernel.lstrip('/')} is {kind}, not an s390x kernel")
    _dump(source, _safe_name(record.initrd), initrd)
    return kernel, initrd, record.cmdline


# --- the QEMU command line -----------------------------------------------------------------
@dataclass(frozen=True)
class Disk:
    vdev: str  # 01B1
    image: Path
    readonly: bool


@dataclass(frozen=True)
class Nic:
    vdev: str  # 0600
    tap: str
    mac: str


@dataclass(frozen=True)
class GuestSpec:
    userid: str
    storage: str
    kernel: Path
    initrd: Path
    cmdline: str
    run_dir: Path
    disks: tuple[Disk, ...] = ()
    nics: tuple[Nic, ...] = field(default_factory=tuple)


def _opt(value: str | Path) -> str:
    """A value in QEMU's comma-separated option syntax."""
    return str(value).replace(",", ",,")


def storage(words: list[str]) -> str:
    """The USER statement's storage (`USER S10RWMNT PASSWD 512M 1G G` -> 512M)."""
    value = words[3].upper() if len(words) > 3 else ""
    return value if re.fullmatch(r"\d+[KMG]?", value) else DEFAULT_STORAGE


def mac_of(userid: str, vdev: str) -> str:
    """Stable per user and NIC, locally administered (02:...), as a VSWITCH's MACPREFIX."""
    h = hashlib.sha256(f"{userid}.{vdev}".encode()).digest()
    return "02:" + ":".join(f"{b:02x}" for b in h[:5])


def qmp_socket_arg(run_dir: Path) -> str:
    """The QMP socket's path for QEMU: relative to its working directory (run_dir) when
    the absolute path is too long for a unix socket address."""
    path = run_dir / "qmp.sock"
    return str(path) if len(str(path)) < 100 else "qmp.sock"


def qemu_argv(spec: GuestSpec) -> list[str]:
    """QEMU for `spec`, daemonized once it has started (run it in `run_dir`)."""
    run_dir = spec.run_dir
    argv = [
        QEMU,
        "-machine",
        "s390-ccw-virtio",
        "-accel",
        "tcg",
        "-nodefaults",
        "-display",
        "none",
        "-no-user-config",
        "-m",
        spec.storage,
        "-smp",
        "1",
        "-no-reboot",
        "-name",
        _opt(spec.userid),
        "-kernel",
        str(spec.kernel),
        "-initrd",
        str(spec.initrd),
        "-append",
        spec.cmdline,
    ]
    for d in spec.disks:
        node = f"d{d.vdev.lower()}"
        argv += [
            "-drive",
            # CP's link rules decide who shares a minidisk, not QEMU's image locks
            f"if=none,id={node},file={_opt(d.image)},format=raw,"
            f"readonly={'on' if d.readonly else 'off'},file.locking=off",
            "-device",
            f"virtio-blk-ccw,drive={node},devno=fe.0.{d.vdev.lower()}",
        ]
    for n in spec.nics:
        node = f"n{n.vdev.lower()}"
        argv += [
            "-netdev",
            f"tap,id={node},ifname={n.tap},script=no,downscript=no",
            "-device",
            f"virtio-net-ccw,netdev={node},devno=fe.0.{n.vdev.lower()},mac={n.mac}",
        ]
    argv += [
        # -serial is the SCLP console on s390x: everything the guest writes, appended
        "-chardev",
        f"file,id=con,path={_opt(run_dir / 'console.log')},append=on",
        "-serial",
        "chardev:con",
        "-qmp",
        f"unix:{_opt(qmp_socket_arg(run_dir))},server=on,wait=off",
        "-pidfile",
        str(run_dir / "qemu.pid"),
        "-daemonize",
    ]
    return argv
