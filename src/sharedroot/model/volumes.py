"""LVM logical volumes of a layout disk: the paper's rwVG with varLV and srvLV (§1.8).

A layout disk of kind `lvm` is one physical volume holding one volume group; each of its
logical volumes holds one filesystem. Names follow LVM's own rules (lvm-string.c:
validate_name, and the LV name suffixes LVM keeps for its internal volumes), so
`vgcreate`/`lvcreate` and the guest's lvm2 accept what the layout names, and the
device-mapper name `VG-LV` (dashes doubled) fits the kernel's 127 characters.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from sharedroot.errors import InputError
from sharedroot.model.types import format_size, shown

# LVM's defaults: 4 MiB extents, the first one 1 MiB into the physical volume (the
# label and the metadata area come before it).
EXTENT = 4 << 20
DATA_START = 1 << 20
_NAME = re.compile(r"[A-Za-z0-9+_.][A-Za-z0-9+_.-]{0,62}")
NAME_RULE = "1-63 of A-Z a-z 0-9 + _ . - (not starting with -, not . or ..)"
# Suffixes and prefixes LVM keeps for the volumes it makes itself.
_LV_RESERVED_PARTS = (
    "_cdata", "_cmeta", "_corig", "_cpool", "_cvol", "_imeta", "_iorig", "_mimage",
    "_mlog", "_pmspare", "_rimage", "_rmeta", "_tdata", "_tmeta", "_vdata", "_vorigin",
    "_wcorig",
)  # fmt: skip
_LV_RESERVED_PREFIXES = ("snapshot", "pvmove")
MAX_DM_NAME = 127


@dataclass(frozen=True)
class Volume:
    """A logical volume of an LVM layout disk and the filesystem it holds."""

    name: str
    mount: str
    fs: str
    size: int


def check_vg_name(name: object, what: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name in (".", ".."):
        raise InputError(f"{what} {shown(name)}: a volume group name is {NAME_RULE}")
    return name


def check_lv_name(name: object, what: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name in (".", ".."):
        raise InputError(f"{what} {shown(name)}: a logical volume name is {NAME_RULE}")
    if name.startswith(_LV_RESERVED_PREFIXES) or any(p in name for p in _LV_RESERVED_PARTS):
        raise InputError(
            f"{what} {name!r}: LVM keeps names starting with snapshot or pvmove, and"
            f" containing {', '.join(_LV_RESERVED_PARTS)}, for its own volumes"
        )
    return name


def mapper_name(vg: str, lv: str) -> str:
    """The device-mapper name of a volume: VG-LV with each dash doubled."""
    return f"{vg.replace('-', '--')}-{lv.replace('-', '--')}"


def device_path(vg: str, lv: str) -> str:
    """How fstab names a logical volume (as findmnt shows it): never by UUID."""
    return f"/dev/mapper/{mapper_name(vg, lv)}"


def usable_extents(disk_size: int) -> int:
    """Extents a physical volume of `disk_size` bytes offers to its logical volumes."""
    return max(0, (disk_size - DATA_START) // EXTENT)


def check_volumes(vg: str, volumes: Sequence[Volume], disk_size: int, where: str) -> None:
    """Names unique and valid, sizes whole extents, and all of them fit the disk."""
    check_vg_name(vg, f"{where}: vg")
    if not volumes:
        raise InputError(f"{where}: an lvm disk needs at least one volume")
    seen: set[str] = set()
    for v in volumes:
        check_lv_name(v.name, f"{where}: volume")
        if v.name in seen:
            raise InputError(f"{where}: volume {v.name} is given twice")
        seen.add(v.name)
        if len(mapper_name(vg, v.name)) > MAX_DM_NAME:
            raise InputError(
                f"{where}: volume {v.name}: the device-mapper name"
                f" {mapper_name(vg, v.name)!r} is longer than {MAX_DM_NAME} characters"
            )
        if isinstance(v.size, bool) or not isinstance(v.size, int) or v.size <= 0:
            raise InputError(f"{where}: volume {v.name} size {shown(v.size)}: must be positive")
        if v.size % EXTENT:
            raise InputError(
                f"{where}: volume {v.name} size {format_size(v.size)}: must be a multiple of"
                " 4M (LVM allocates 4 MiB extents)"
            )
    need = sum(v.size // EXTENT for v in volumes)
    have = usable_extents(disk_size)
    if need > have:
        raise InputError(
            f"{where}: volumes of {format_size(need * EXTENT)} do not fit the disk's"
            f" {format_size(have * EXTENT)} (size {format_size(disk_size)} less 1M for the"
            " LVM label and metadata, in 4M extents)"
        )
