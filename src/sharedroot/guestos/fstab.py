"""/etc/fstab naming every disk by its address, as the paper insists (never UUID or label)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from sharedroot.errors import InputError
from sharedroot.guestos.platform import PLATFORMS, VIRTIO, Platform
from sharedroot.model.layout import (
    FS_TYPES,
    Layout,
    check_layout_address,
    check_mount,
    plain_path,
)
from sharedroot.model.types import DiskKind, shown

# Each field of a line is checked by a full match right before the file is written: a
# blank, `#` or newline in a value would make fields or lines that the layout never had.
_DEVICES = tuple(p.device_rule for p in PLATFORMS)
_PSEUDO = ("tmpfs", "none")  # sources that are not paths
_OPTIONS = re.compile(r"[a-z0-9_=.-]+(?:,[a-z0-9_=.-]+)*")
_FS = re.compile(r"[a-z0-9]+")
_DUMP_PASS = re.compile(r"[0-9] [0-9]")


def _line(source: str, mount: str, fs: str, options: str, dump_pass: str) -> str:
    what = f"fstab line for {mount!r}"
    device = any(rule.fullmatch(source) for rule in _DEVICES)
    if not (device or source in _PSEUDO or plain_path(source)):
        raise InputError(f"{what}: device {shown(source)} is not a plain path")
    if mount != "none" and not plain_path(mount):
        raise InputError(f"{what}: mount point is not a plain path")
    for value, rule, name in (
        (fs, _FS, "fs type"),
        (options, _OPTIONS, "options"),
        (dump_pass, _DUMP_PASS, "dump and pass"),
    ):
        if not rule.fullmatch(value):
            raise InputError(f"{what}: {name} {shown(value)} breaks the fstab rule")
    return f"{source}\t{mount}\t{fs}\t{options}\t{dump_pass}"


def _extra_line(line: str) -> str:
    fields = line.split("\t")
    if len(fields) != 5:
        raise InputError(f"fstab line {shown(line)}: must be 5 tab-separated fields")
    return _line(*fields)


def write_fstab(
    root_dir: Path,
    layout: Layout,
    *,
    readonly: bool = False,
    extra: Sequence[str] = (),
    platform: Platform = VIRTIO,
) -> None:
    """Write root_dir/etc/fstab naming every disk by its address, never by UUID or label.

    The platform says how: `/dev/disk/by-id/virtio-01B1` under QEMU, the paper's
    `/dev/disk/by-path/ccw-0.0.01b1-part1` on z/VM.

    With `readonly`, the layout's read-only disks are mounted `ro` with fsck pass 0
    (a read-only clone links them RR); otherwise every filesystem is read-write.
    """
    lines = [f"# sharedroot: disks by address ({platform.bus.value}), never UUID or LABEL"]
    # Filesystems parents first (/ before /opt before /opt/mw: a child's mount point lies
    # on its parent), then swap, as people expect to read it. A logical volume is named
    # by its device-mapper path, which is the same in every clone of the volume group.
    for m in sorted(layout.filesystems, key=lambda m: (len(Path(m.mount).parts), m.address)):
        dev = platform.filesystem(check_layout_address(m.address, "fstab: address"))
        check_mount(m.mount, f"fstab: disk {m.where}: mount")
        if m.fs not in FS_TYPES:
            raise InputError(f"fstab: disk {m.where}: fs {shown(m.fs)} not supported")
        ro = readonly and m.access.value == "ro"
        opts = "ro" if ro else "defaults"
        passno = 0 if ro else (1 if m.mount == "/" else 2)
        lines.append(_line(m.device(dev), m.mount, m.fs, opts, f"0 {passno}"))
    for disk in sorted(layout, key=lambda d: d.address):
        if disk.kind in (DiskKind.SWAP, DiskKind.VDISK):
            # VDISKs are made fresh at each start: boot need not wait for them
            dev = platform.filesystem(check_layout_address(disk.address, "fstab: address"))
            lines.append(_line(dev, "none", "swap", "sw,nofail", "0 0"))
    lines.append(_line("tmpfs", "/tmp", "tmpfs", "mode=1777,nosuid,nodev", "0 0"))
    lines.extend(_extra_line(x) for x in extra)
    path = root_dir / "etc/fstab"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".fstab.sharedroot-tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)  # by rename: never through a hard link into a cached tree
