"""/etc/fstab naming every disk by its address, as the paper insists (never UUID or label)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sharedroot.model.layout import Layout
from sharedroot.model.types import DiskKind


def write_fstab(
    root_dir: Path, layout: Layout, *, readonly: bool = False, extra: Sequence[str] = ()
) -> None:
    """Write root_dir/etc/fstab naming every disk by its address, never by UUID or label.

    With `readonly`, the layout's read-only disks are mounted `ro` with fsck pass 0
    (a read-only clone links them RR); otherwise every filesystem is read-write.
    """
    lines = ["# sharedroot: disks by address (virtio serial), never UUID or LABEL"]
    # Filesystems parents first (/ before /usr), then swap, as people expect to read it.
    order = sorted(
        layout,
        key=lambda d: (d.kind is not DiskKind.FS, len(Path(d.mount or "/").parts), d.address),
    )
    for disk in order:
        dev = f"/dev/disk/by-id/virtio-{disk.address}"
        if disk.kind is DiskKind.FS:
            ro = readonly and disk.access.value == "ro"
            opts = "ro" if ro else "defaults"
            passno = 0 if ro else (1 if disk.mount == "/" else 2)
            lines.append(f"{dev}\t{disk.mount}\t{disk.fs}\t{opts}\t0 {passno}")
        else:  # swap disk or VDISK (made fresh at each start): boot need not wait for it
            lines.append(f"{dev}\tnone\tswap\tsw,nofail\t0 0")
    lines.append("tmpfs\t/tmp\ttmpfs\tmode=1777,nosuid,nodev\t0 0")
    lines.extend(extra)
    path = root_dir / "etc/fstab"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".fstab.sharedroot-tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)  # by rename: never through a hard link into a cached tree
