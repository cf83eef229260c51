"""Emulated DASD in Linux: loop devices, by-path links, and the on-disk label format.

An online device is a loop device on its minidisk image (read-only for an R/O link),
linked as DIR/by-path/ccw-0.0.xxxx (the launcher bind-mounts DIR/by-path on
/dev/disk/by-path). A partitioned disk also gets a second loop device over partition 1,
linked as ccw-0.0.xxxx-part1.

Disk layout written by `dasdfmt` and `fdasd` (inside the disk's bytes, so a copy of the
disk carries it), an emulation of CDL, not the real record format:
- block 2 (byte 8192): the volume label, 80 bytes EBCDIC: "VOL1" + "VOL1" + volser
  (6 characters), blank-padded (real CDL keeps VOL1 in track 0 record 3);
- block 3 (byte 12288): the partition record written by `fdasd -a`: ASCII magic
  "ZVMSIMPT", then big-endian u32 count (1), u64 first byte, u64 length in bytes.
  Partition 1 covers tracks 2..end: first byte 2 * 12 * 4096 = 98304.
Tracks 0-1 (bytes 0..98303) hold nothing else.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import subprocess
from pathlib import Path

from zvmsim import TRACK_BYTES

LABEL_OFFSET = 2 * 4096
PART_OFFSET = 3 * 4096
PART_MAGIC = b"ZVMSIMPT"
PART_START = 2 * TRACK_BYTES
META_BYTES = 2 * TRACK_BYTES
BLKFLSBUF = 0x1261
BLKZEROOUT = 0x127F


def busid(vdev: str) -> str:
    return f"0.0.{vdev.lower()}"


def attach(image: Path, readonly: bool, offset: int = 0, sizelimit: int = 0) -> str:
    cmd = ["losetup", "--find", "--show"]
    if readonly:
        cmd.append("--read-only")
    if offset:
        cmd += ["--offset", str(offset)]
    if sizelimit:
        cmd += ["--sizelimit", str(sizelimit)]
    out = subprocess.run([*cmd, str(image)], check=True, capture_output=True, text=True)
    return out.stdout.strip()


def detach(dev: str) -> None:
    # a device still mounted is detached once unmounted (the kernel's autoclear)
    subprocess.run(["losetup", "-d", dev], check=False, capture_output=True)


def flush(dev: str) -> None:
    """Drop the loop device's cached blocks after its image was changed behind it."""
    with contextlib.suppress(OSError):
        fd = os.open(dev, os.O_RDONLY)
        try:
            fcntl.ioctl(fd, BLKFLSBUF, 0)
        finally:
            os.close(fd)


def read_partition(fd: int) -> tuple[int, int] | None:
    rec = os.pread(fd, 28, PART_OFFSET)
    if len(rec) < 28 or rec[:8] != PART_MAGIC:
        return None
    count, start, length = struct.unpack(">IQQ", rec[8:28])
    return (start, length) if count >= 1 and length > 0 else None


def partition_of(path: Path | str) -> tuple[int, int] | None:
    fd = os.open(path, os.O_RDONLY)
    try:
        return read_partition(fd)
    finally:
        os.close(fd)


def link_path(bypath: Path, vdev: str, part: bool = False) -> Path:
    return bypath / (f"ccw-{busid(vdev)}" + ("-part1" if part else ""))


def set_link(bypath: Path, vdev: str, dev: str, part: bool = False) -> None:
    path = link_path(bypath, vdev, part)
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(dev)
    os.replace(tmp, path)


def remove_link(bypath: Path, vdev: str, part: bool = False) -> None:
    with contextlib.suppress(FileNotFoundError):
        link_path(bypath, vdev, part).unlink()


def attach_part1(
    rec: dict[str, str | None], image: Path, readonly: bool, bypath: Path, vdev: str
) -> None:
    """Give an online disk its -part1 device if its bytes carry a partition record."""
    loop = rec.get("loop")
    part = partition_of(loop) if loop else None
    if part is None:
        return
    start, length = part
    part1 = attach(image, readonly, start, length)
    rec["part1"] = part1
    set_link(bypath, vdev, part1, part=True)


def drop_part1(rec: dict[str, str | None], bypath: Path, vdev: str) -> None:
    if rec.get("part1"):
        detach(str(rec["part1"]))
    rec["part1"] = None
    remove_link(bypath, vdev, part=True)


def take_offline(rec: dict[str, str | None], bypath: Path, vdev: str) -> None:
    drop_part1(rec, bypath, vdev)
    if rec.get("loop"):
        detach(str(rec["loop"]))
    remove_link(bypath, vdev)
