"""An LVM layout disk built on the worker without device-mapper (§1.8's rwVG).

The paper makes the volume group on the worker: `pvcreate`, `vgcreate rwVG`, `lvcreate
-n varLV`, then mke2fs on each activated volume. This worker's kernel may have no
device-mapper, so nothing is activated here: LVM's own tools write the label and the
metadata through a loop device with `--driverloaded n` (metadata only), and each
filesystem is written by mke2fs straight at its volume's byte offset in the disk, read
back from that metadata (guestos.lvmmeta). The result is a real volume group that the
guest's lvm2 activates at boot. The worker's mounts of those filesystems (for cloneprep
and mnt2rogld) read the same offsets (`volume_ranges`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

from sharedroot.errors import OperationError
from sharedroot.guestos.lvmmeta import logical_volumes, read_pv
from sharedroot.model.layout import DiskSpec
from sharedroot.model.types import BLOCK
from sharedroot.model.volumes import DATA_START, EXTENT
from sharedroot.run import run

# The worker's own LVM setup must not learn of the guest's volume group: no backup or
# archive of its metadata under /etc/lvm, only the one loop device looked at; and the
# group gets no system ID of the worker's, or a clone's lvm2 would call it foreign.
_CONFIG = (
    "backup { backup = 0 archive = 0 } activation { udev_sync = 0 udev_rules = 0 }"
    ' global { system_id_source = "none" }'
)
_ENV = {**os.environ, "LVM_SUPPRESS_FD_WARNINGS": "1"}


def _lvm(command: str, loop: str, *args: str) -> None:
    run(
        ["lvm", command, "--driverloaded", "n", "--devices", loop, "--config", _CONFIG, *args],
        env=_ENV,
    )


@contextlib.contextmanager
def _loop(target: Path) -> Iterator[str]:
    loop = run(["losetup", "--find", "--show", target]).stdout.strip()
    try:
        yield loop
    finally:
        run(["losetup", "--detach", loop], check=False)


def write_lvm_disk(target: Path, disk: DiskSpec, sources: Mapping[str, Path]) -> None:
    """Write `disk`'s volume group onto `target` (an image file or a block device) and
    each logical volume's filesystem, filled from `sources[ADDR:LV]` (split_tree's)."""
    if disk.vg is None or not disk.volumes:
        raise OperationError(f"disk {disk.address}: not an lvm disk with volumes")
    with open(target, "r+b") as f:  # old signatures go: a reused disk is a new PV
        f.write(bytes(DATA_START))
    with _loop(target) as loop:
        _lvm("pvcreate", loop, "--yes", "--force", "--zero", "y", loop)
        _lvm("vgcreate", loop, "--physicalextentsize", f"{EXTENT >> 10}k", disk.vg, loop)
        for v in disk.volumes:
            _lvm(
                "lvcreate", loop, "--activate", "n", "--zero", "n", "--wipesignatures", "n",
                "--extents", str(v.size // EXTENT), "--name", v.name, disk.vg,
            )  # fmt: skip
    ranges = volume_ranges(target, disk)
    for v in disk.volumes:
        offset, size = ranges[v.name]
        source = sources.get(f"{disk.address}:{v.name}")
        argv: list[str | Path] = ["mke2fs", "-q", "-F", "-t", v.fs, "-b", str(BLOCK)]
        extended = f"offset={offset}"
        if source is not None:  # files owned as in the tree, the top directory by root
            extended += ",root_owner=0:0"
            argv += ["-d", source]
        run([*argv, "-E", extended, target, str(size // BLOCK)])


def volume_ranges(target: Path, disk: DiskSpec) -> dict[str, tuple[int, int]]:
    """Each of `disk`'s logical volumes as (byte offset, size) in `target`."""
    with open(target, "rb") as f:
        pv = read_pv(f, 0)
    if pv is None:
        raise OperationError(f"disk {disk.address}: holds no LVM physical volume")
    found = {lv.name: lv for lv in logical_volumes([pv]) if lv.vg == disk.vg}
    out: dict[str, tuple[int, int]] = {}
    for v in disk.volumes:
        lv = found.get(v.name)
        if lv is None or lv.offset is None:
            why = "is missing" if lv is None else (lv.problem or "cannot be located")
            raise OperationError(f"disk {disk.address}: logical volume {disk.vg}/{v.name} {why}")
        out[v.name] = (lv.offset, lv.size)
    return out
