"""The disk layout of Table 1-1: per address its mount point, fs type, access and size."""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from sharedroot.errors import InputError
from sharedroot.model.types import (
    BLOCK,
    MAX_SIZE,
    Access,
    DiskKind,
    address,
    format_size,
    shown,
)

# install fills each filesystem from a directory with `mke2fs -d`; nothing else can yet.
FS_TYPES = ("ext2", "ext3", "ext4")
_UNSUPPORTED_FS = {
    "xfs": "not supported for layout disks yet: install fills each filesystem from a"
    " directory with mke2fs -d; use ext2, ext3 or ext4",
}
# Plain components only: the mount point goes into fstab, whose fields are split on
# blanks and where `#` starts a comment.
_MOUNT_RE = re.compile(r"/|(?:/[A-Za-z0-9._+-]{1,255})+")
MOUNT_RULE = (
    "must be / or a normalized absolute path of components of A-Z a-z 0-9 . _ + -"
    " (no . or .. component, no double or trailing slash)"
)
MAX_MOUNT = 1024
# The system mounts its own filesystems there (fstab adds tmpfs on /tmp).
RESERVED_MOUNTS = ("/tmp", "/proc", "/sys", "/dev", "/run")
# The admin disk addresses: CMSCLONE 0192 is linked by every Linux guest as its 0191.
ADMIN_OWN_ADDRESS = "0192"
ADMIN_LINK_ADDRESS = "0191"


@dataclass(frozen=True)
class DiskSpec:
    address: str
    kind: DiskKind
    size: int
    access: Access
    mount: str | None = None  # None for swap and VDISK
    fs: str | None = None  # None for swap and VDISK

    def describe(self) -> str:
        what = self.mount if self.kind is DiskKind.FS else self.kind.value
        return f"{self.address} {what} {self.fs or ''} {format_size(self.size)}".strip()


def gold_rw_address(addr: str) -> str:
    """Where the gold keeps its read-write copy of a layout disk: 01B0 -> 11B0."""
    return "1" + addr[1:]


def gold_ro_address(addr: str) -> str:
    """Where a gold slot keeps its read-only copy of a layout disk: 01B0 -> 21B0."""
    return "2" + addr[1:]


@dataclass(frozen=True)
class Layout:
    disks: tuple[DiskSpec, ...]

    def __post_init__(self) -> None:
        check_layout(self.disks)

    def __iter__(self) -> Iterator[DiskSpec]:
        return iter(self.disks)

    def get(self, addr: str) -> DiskSpec:
        for d in self.disks:
            if d.address == addr:
                return d
        raise InputError(f"address {addr}: not in the layout")

    @property
    def copied(self) -> tuple[DiskSpec, ...]:
        """Disks that hold data and are copied by the pipeline: all but VDISKs."""
        return tuple(d for d in self.disks if d.kind is not DiskKind.VDISK)

    @property
    def shared(self) -> tuple[DiskSpec, ...]:
        """Disks a read-only clone links from the gold."""
        return tuple(d for d in self.copied if d.access is Access.RO)

    @property
    def private(self) -> tuple[DiskSpec, ...]:
        """Disks a read-only clone owns (swap, /local, /var)."""
        return tuple(d for d in self.copied if d.access is Access.RW)

    @property
    def root(self) -> DiskSpec:
        return next(d for d in self.disks if d.mount == "/")


# A read-only clone may map shared disks as persistent memory (virtio-pmem, DAX). Those
# have no serial, so each sits at a fixed PCI slot from which the gold's udev rule
# gives it the same /dev/disk/by-id/virtio-<address> name a virtio-blk disk has.
PMEM_FIRST_SLOT = 0x18
PMEM_MAX = 8  # slots 0x18-0x1f of the PCI root bus
PMEM_ALIGN = 128 << 20  # the guest maps device memory in 128 MiB sections


def pmem_slots(layout: Layout) -> dict[str, int]:
    """PCI slot per shared filesystem disk that may be mapped as persistent memory."""
    shared = [d for d in layout.shared if d.kind is DiskKind.FS][:PMEM_MAX]
    return {d.address: PMEM_FIRST_SLOT + i for i, d in enumerate(shared)}


def plain_path(path: str) -> bool:
    """Whether `path` is / or a normalized absolute path of plain components (MOUNT_RULE)."""
    return (
        len(path) <= MAX_MOUNT
        and _MOUNT_RE.fullmatch(path) is not None
        and posixpath.normpath(path) == path
        and not any(part in (".", "..") for part in path.split("/"))
    )


def check_mount(mount: object, what: str) -> str:
    """A layout mount point: one of the rule's normalized absolute paths, not reserved."""
    if not isinstance(mount, str):
        raise InputError(f"{what} {shown(mount)}: must be a string")
    if not plain_path(mount):
        # A hint only where dropping slashes and `.` keeps the meaning (`..` does not).
        norm = posixpath.normpath(re.sub("/+", "/", mount)) if mount else ""
        plain = ".." not in mount.split("/") and plain_path(norm)
        hint = f" (did you mean {norm!r}?)" if plain else ""
        raise InputError(f"{what} {shown(mount)}: {MOUNT_RULE}{hint}")
    for reserved in RESERVED_MOUNTS:
        if mount == reserved or mount.startswith(reserved + "/"):
            raise InputError(
                f"{what} {mount!r}: the system mounts its own filesystem on {reserved}"
            )
    return mount


def check_fs(fs: object, what: str) -> str:
    """A layout filesystem type: one install can build."""
    if not isinstance(fs, str):
        raise InputError(f"{what} {shown(fs)}: must be a string")
    if fs in _UNSUPPORTED_FS:
        raise InputError(f"{what} {fs!r}: {_UNSUPPORTED_FS[fs]}")
    if fs not in FS_TYPES:
        raise InputError(f"{what} {shown(fs)}: must be one of {', '.join(FS_TYPES)}")
    return fs


def check_layout_address(addr: object, what: str) -> str:
    """A layout address: normalised, within 0000-0FFF, not the admin disk's."""
    if not isinstance(addr, str) or addr != address(addr, what):
        raise InputError(f"{what} {shown(addr)}: must be 4 upper-case hex digits")
    if int(addr, 16) > 0x0FFF:
        raise InputError(
            f"{what} {addr} overlaps the gold sets (1xxx, 2xxx);"
            " layout addresses must be within 0000-0FFF"
        )
    if addr in (ADMIN_OWN_ADDRESS, ADMIN_LINK_ADDRESS):
        raise InputError(f"{what} {addr} overlaps the admin disk (0191/0192)")
    return addr


def check_disk_size(size: object, what: str) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or not 0 < size <= MAX_SIZE:
        raise InputError(f"{what} {shown(size)}: must be a positive number of bytes up to 16T")
    if size % BLOCK:
        raise InputError(f"{what} {size}: must be a multiple of 4 KiB")
    return size


def check_layout(disks: Iterable[DiskSpec], source: str = "layout") -> None:
    """Raise InputError for a disk that breaks a rule, or duplicate addresses or mounts."""
    seen: set[str] = set()
    mounts: dict[str, str] = {}
    for d in disks:
        check_layout_address(d.address, f"{source}: address")
        where = f"{source}: disk {d.address}"
        if d.address in seen:
            raise InputError(f"{source}: address {d.address} is given twice")
        seen.add(d.address)
        if not isinstance(d.kind, DiskKind):
            raise InputError(f"{where}: kind {shown(d.kind)} is not a disk kind")
        if not isinstance(d.access, Access):
            raise InputError(f"{where}: access {shown(d.access)} is not ro or rw")
        check_disk_size(d.size, f"{where}: size")
        if d.kind is DiskKind.FS:
            if d.mount is None or d.fs is None:
                raise InputError(f"{where}: a filesystem disk needs mount and fs")
            check_mount(d.mount, f"{where}: mount")
            check_fs(d.fs, f"{where}: fs")
            if d.mount in mounts:
                raise InputError(
                    f"{source}: mount point {d.mount} is given twice"
                    f" ({mounts[d.mount]}, {d.address})"
                )
            mounts[d.mount] = d.address
        elif d.mount is not None or d.fs is not None:
            raise InputError(f"{where}: {d.kind} takes no mount or fs")
    if "/" not in mounts:
        raise InputError(f"{source}: no disk is mounted at /")


M = 1 << 20

# Table 1-1, sized for a Debian minbase server (merged /usr: /bin, /lib live on /usr).
# The shared disks' sizes are multiples of 128 MiB, so clones can map them as memory.
PAPER_LAYOUT = Layout(
    (
        DiskSpec("01B0", DiskKind.FS, 256 * M, Access.RO, "/boot", "ext2"),
        DiskSpec("01B1", DiskKind.FS, 256 * M, Access.RO, "/", "ext2"),
        DiskSpec("01B2", DiskKind.VDISK, 64 * M, Access.RW),
        DiskSpec("01B3", DiskKind.VDISK, 64 * M, Access.RW),
        DiskSpec("01B4", DiskKind.SWAP, 128 * M, Access.RW),
        DiskSpec("01B5", DiskKind.FS, 128 * M, Access.RW, "/local", "ext4"),
        DiskSpec("01B6", DiskKind.FS, 512 * M, Access.RW, "/var", "ext4"),
        DiskSpec("01B7", DiskKind.FS, 1536 * M, Access.RO, "/usr", "ext2"),
        DiskSpec("01B8", DiskKind.FS, 128 * M, Access.RO, "/opt", "ext2"),
    )
)
