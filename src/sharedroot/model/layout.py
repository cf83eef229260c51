"""The disk layout of Table 1-1: per address its mount point, fs type, access and size.

Beyond Table 1-1 a layout may hold more disks at addresses the paper leaves free
(middleware read-only under /opt, more private disks) and LVM disks whose logical
volumes hold private filesystems (§1.8's rwVG); `ADDRESS_PLAN` is the paper's own use
of the device addresses, which a layout must respect.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath

from sharedroot.errors import InputError
from sharedroot.model.types import (
    BLOCK,
    MAX_SIZE,
    Access,
    DiskKind,
    exact_address,
    format_size,
    shown,
)
from sharedroot.model.volumes import Volume, check_volumes, device_path

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
# Bound from /local before PID 1 reads them (guestos.earlybind): never a filesystem.
EARLY_BOUND = ("/etc", "/root")
# The admin disk addresses: CMSCLONE 0192 is linked by every Linux guest as its 0191.
ADMIN_OWN_ADDRESS = "0192"
ADMIN_LINK_ADDRESS = "0191"


@dataclass(frozen=True)
class DiskSpec:
    address: str
    kind: DiskKind
    size: int
    access: Access
    mount: str | None = None  # None for swap, VDISK and LVM
    fs: str | None = None  # None for swap, VDISK and LVM
    vg: str | None = None  # an LVM disk's volume group
    volumes: tuple[Volume, ...] = ()  # an LVM disk's logical volumes

    def describe(self) -> str:
        if self.kind is DiskKind.LVM:
            lvs = ", ".join(f"{v.name} {v.mount}" for v in self.volumes)
            return f"{self.address} lvm {self.vg}: {lvs} {format_size(self.size)}"
        what = self.mount if self.kind is DiskKind.FS else self.kind.value
        return f"{self.address} {what} {self.fs or ''} {format_size(self.size)}".strip()


@dataclass(frozen=True)
class Mounted:
    """One filesystem of a layout: a filesystem disk, or a logical volume of an LVM disk."""

    address: str  # the disk's
    mount: str
    fs: str
    access: Access
    size: int
    vg: str | None = None
    volume: str | None = None  # the logical volume's name on an LVM disk

    @property
    def key(self) -> str:
        """Its name among a layout's filesystems: the address, or ADDR:LV for a volume."""
        return self.address if self.volume is None else f"{self.address}:{self.volume}"

    @property
    def where(self) -> str:
        return self.address if self.volume is None else f"{self.address} {self.vg}/{self.volume}"

    def device(self, disk_device: str) -> str:
        """What fstab names: the disk's own device, or the logical volume's mapper path."""
        if self.vg is None or self.volume is None:
            return disk_device
        return device_path(self.vg, self.volume)


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

    @property
    def with_filesystems(self) -> tuple[DiskSpec, ...]:
        """Disks holding filesystems (plain or on logical volumes): what the worker mounts."""
        return tuple(d for d in self.disks if d.kind in (DiskKind.FS, DiskKind.LVM))

    @property
    def filesystems(self) -> tuple[Mounted, ...]:
        return mounted(self.disks)

    @property
    def has_lvm(self) -> bool:
        return any(d.kind is DiskKind.LVM for d in self.disks)


def mounted(disks: Iterable[DiskSpec]) -> tuple[Mounted, ...]:
    """Every filesystem of these disks, parents first (/ before /usr before /usr/local)."""
    out: list[Mounted] = []
    for d in disks:
        if d.kind is DiskKind.FS and d.mount is not None and d.fs is not None:
            out.append(Mounted(d.address, d.mount, d.fs, d.access, d.size))
        for v in d.volumes if d.kind is DiskKind.LVM else ():
            out.append(Mounted(d.address, v.mount, v.fs, d.access, v.size, d.vg, v.name))
    return tuple(sorted(out, key=lambda m: (len(PurePosixPath(m.mount).parts), m.mount)))


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


def check_plain_path(value: object, what: str) -> str:
    """A file or directory a setting or the XML names: a normalized absolute path of plain
    components, not /."""
    if not isinstance(value, str) or not plain_path(value) or value == "/":
        raise InputError(
            f"{what} {shown(value)}: must be a normalized absolute path of A-Z a-z 0-9 . _ + -"
            " components, not /"
        )
    return value


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
    addr = exact_address(addr, what)
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


# The paper's use of a Linux guest's device addresses. §1.5 (the directory PROFILE
# RORDFLT every Linux guest includes): console 0009, spool 000C-000E, MAINT's CMS disks
# 0190 019D 019E, CMSCLONE 192 as 0191, TCPMAINT 0592, the NIC 0600 (QDIO: 0600-0602).
# §1.5.4 (the zipl.conf change on S10RWMNT, `dasd=1b0-1bf`): 01B0-01BF are the Linux
# system's disks, with free slots "for other devices, e.g. a minidisk at 1B9 for /sbin/
# and one at 1BA for /bin/"; "the additional slots from 2B0-2BF can be used for adding
# devices for logical volumes, and the additional slots from 320-32F can be considered
# reserved for future growth". §1.8's rwVG lies on 2B0.
SYSTEM_RANGE = (0x01B0, 0x01BF)
LVM_RANGE = (0x02B0, 0x02BF)
ADDRESS_PLAN: tuple[tuple[int, int, str], ...] = (
    (0x0009, 0x0009, "the virtual console (CONSOLE 009)"),
    (0x000C, 0x000E, "the virtual reader, punch and printer (SPOOL 000C-000E)"),
    (0x0190, 0x0190, "MAINT's CMS system disk (LINK MAINT 0190)"),
    (0x0191, 0x0192, "the admin disk (CMSCLONE 0192, linked as every guest's 0191)"),
    (0x019D, 0x019E, "MAINT's CMS disks (LINK MAINT 019D, 019E)"),
    (0x0592, 0x0592, "TCPMAINT's TCP/IP disk (LINK TCPMAINT 0592)"),
    (0x0600, 0x0602, "the network card (NICDEF 0600 TYPE QDIO: 0600-0602)"),
    (0x0320, 0x032F, "future growth (the paper reserves 320-32F)"),
)
ADDRESS_HELP = (
    "01B0-01BF: the Linux system's disks (Table 1-1 uses 01B0-01B8; 01B9-01BF are free"
    " for more, e.g. middleware); 02B0-02BF: LVM physical volumes only; reserved for"
    " something else: 0009, 000C-000E, 0190-0192, 019D-019E, 0592, 0600-0602 (the guest's"
    " console, spool, CMS disks, admin disk, NIC) and 0320-032F (future growth)"
)


def check_address_plan(addr: str, kind: DiskKind, what: str) -> str:
    """Refuse an address the paper gives to something else (ADDRESS_PLAN)."""
    n = int(addr, 16)
    for first, last, use in ADDRESS_PLAN:
        if first <= n <= last:
            raise InputError(f"{what} {addr} is reserved for {use}; {ADDRESS_HELP}")
    if LVM_RANGE[0] <= n <= LVM_RANGE[1] and kind is not DiskKind.LVM:
        raise InputError(
            f'{what} {addr}: 02B0-02BF are for LVM physical volumes (kind = "lvm");'
            " put a plain disk at a free address, e.g. 01B9-01BF"
        )
    return addr


def check_layout(disks: Iterable[DiskSpec], source: str = "layout") -> None:
    """Raise InputError for a disk that breaks a rule, or duplicate addresses or mounts."""
    seen: set[str] = set()
    disks = tuple(disks)
    for d in disks:
        check_layout_address(d.address, f"{source}: address")
        where = f"{source}: disk {d.address}"
        if d.address in seen:
            raise InputError(f"{source}: address {d.address} is given twice")
        seen.add(d.address)
        if not isinstance(d.kind, DiskKind):
            raise InputError(f"{where}: kind {shown(d.kind)} is not a disk kind")
        check_address_plan(d.address, d.kind, f"{source}: address")
        if not isinstance(d.access, Access):
            raise InputError(f"{where}: access {shown(d.access)} is not ro or rw")
        check_disk_size(d.size, f"{where}: size")
        if d.kind is DiskKind.LVM:
            _check_lvm_disk(d, where)
        elif d.vg is not None or d.volumes:
            raise InputError(f"{where}: only an lvm disk takes vg and volumes")
        if d.kind is DiskKind.FS:
            if d.mount is None or d.fs is None:
                raise InputError(f"{where}: a filesystem disk needs mount and fs")
        elif d.mount is not None or d.fs is not None:
            raise InputError(f"{where}: {d.kind} takes no mount or fs")
    groups = [d.vg for d in disks if d.kind is DiskKind.LVM]
    if len(set(groups)) != len(groups):
        twice = next(g for g in groups if groups.count(g) > 1)
        raise InputError(f"{source}: volume group {twice} is named by two lvm disks")
    mounts: dict[str, Mounted] = {}
    for m in mounted(disks):
        check_mount(m.mount, f"{source}: disk {m.where}: mount")
        check_fs(m.fs, f"{source}: disk {m.where}: fs")
        if m.mount in EARLY_BOUND:
            raise InputError(
                f"{source}: disk {m.where}: mount {m.mount}: a read-only clone binds its own"
                f" {m.mount} from /local before PID 1 starts; it cannot be a filesystem"
            )
        if m.mount in mounts:
            raise InputError(
                f"{source}: mount point {m.mount} is given twice"
                f" ({mounts[m.mount].where}, {m.where})"
            )
        parent = _parent(m.mount, mounts)
        if parent is not None and parent.access is Access.RW:
            raise InputError(
                f"{source}: disk {m.where}: mount {m.mount} lies under {parent.mount}, a"
                f" private read-write filesystem ({parent.where}): its mount point would be"
                " each clone's own to delete or cover; mount it beside, not under, the"
                " private filesystems"
            )
        mounts[m.mount] = m
    if "/" not in mounts:
        raise InputError(f"{source}: no disk is mounted at /")


def _parent(mount: str, mounts: dict[str, Mounted]) -> Mounted | None:
    """The deepest filesystem already seen whose mount point holds `mount`."""
    path = PurePosixPath(mount)
    for up in path.parents:
        if str(up) in mounts:
            return mounts[str(up)]
    return None


def _check_lvm_disk(d: DiskSpec, where: str) -> None:
    if d.access is not Access.RW:
        raise InputError(
            f'{where}: an lvm disk holds private read-write filesystems (access = "rw");'
            " shared read-only disks are plain filesystem disks"
        )
    if d.vg is None:
        raise InputError(f"{where}: an lvm disk needs vg (its volume group's name)")
    for v in d.volumes:
        if not isinstance(v, Volume):
            raise InputError(f"{where}: volume {shown(v)} is not a volume")
    check_volumes(d.vg, d.volumes, d.size, where)


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
