"""The disk layout of Table 1-1: per address its mount point, fs type, access and size."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from sharedroot.errors import InputError
from sharedroot.model.types import Access, DiskKind, address, format_size

FS_TYPES = ("ext2", "ext3", "ext4", "xfs")
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


def check_layout(disks: Iterable[DiskSpec], source: str = "layout") -> None:
    """Raise InputError for duplicate addresses or mounts, or addresses outside 0000-0FFF."""
    seen: dict[str, DiskSpec] = {}
    mounts: dict[str, str] = {}
    for d in disks:
        if d.address != address(d.address):
            raise InputError(f"{source}: address {d.address!r} is not normalised")
        if int(d.address, 16) > 0x0FFF:
            raise InputError(
                f"{source}: address {d.address} overlaps the gold sets (1xxx, 2xxx);"
                " layout addresses must be within 0000-0FFF"
            )
        if d.address in (ADMIN_OWN_ADDRESS, ADMIN_LINK_ADDRESS):
            raise InputError(f"{source}: address {d.address} overlaps the admin disk (0191/0192)")
        if d.address in seen:
            raise InputError(f"{source}: address {d.address} is given twice")
        seen[d.address] = d
        if d.kind is DiskKind.FS:
            if not d.mount or not d.mount.startswith("/"):
                raise InputError(f"{source}: disk {d.address}: mount must be an absolute path")
            if d.fs not in FS_TYPES:
                raise InputError(
                    f"{source}: disk {d.address}: fs {d.fs!r} must be one of {', '.join(FS_TYPES)}"
                )
            if d.mount in mounts:
                raise InputError(
                    f"{source}: mount point {d.mount} is given twice"
                    f" ({mounts[d.mount]}, {d.address})"
                )
            mounts[d.mount] = d.address
        elif d.mount or d.fs:
            raise InputError(f"{source}: disk {d.address}: {d.kind} takes no mount or fs")
    if "/" not in mounts:
        raise InputError(f"{source}: no disk is mounted at /")


M = 1 << 20

# Table 1-1, sized for a Debian minbase server (merged /usr: /bin, /lib live on /usr).
PAPER_LAYOUT = Layout(
    (
        DiskSpec("01B0", DiskKind.FS, 192 * M, Access.RO, "/boot", "ext2"),
        DiskSpec("01B1", DiskKind.FS, 256 * M, Access.RO, "/", "ext2"),
        DiskSpec("01B2", DiskKind.VDISK, 64 * M, Access.RW),
        DiskSpec("01B3", DiskKind.VDISK, 64 * M, Access.RW),
        DiskSpec("01B4", DiskKind.SWAP, 128 * M, Access.RW),
        DiskSpec("01B5", DiskKind.FS, 128 * M, Access.RW, "/local", "ext4"),
        DiskSpec("01B6", DiskKind.FS, 512 * M, Access.RW, "/var", "ext4"),
        DiskSpec("01B7", DiskKind.FS, 1536 * M, Access.RO, "/usr", "ext2"),
        DiskSpec("01B8", DiskKind.FS, 64 * M, Access.RO, "/opt", "ext2"),
    )
)
