"""Emulated DASD in Linux: loop devices, by-path links, and the on-disk label format.

An online device is a loop device on its minidisk image (read-only for an R/O link),
linked as DIR/by-path/ccw-0.0.xxxx (the launcher bind-mounts DIR/by-path on
/dev/disk/by-path). A partitioned disk also gets a second loop device over partition 1,
linked as ccw-0.0.xxxx-part1.

Disk layout written by `dasdfmt` and `fdasd` (inside the disk's bytes, so a copy of the
disk carries it), an emulation of CDL, not the real record format:
- block 2 (byte 8192): the volume label, 80 bytes EBCDIC: "VOL1" + "VOL1" + volser
  (6 characters), blank-padded (real CDL keeps VOL1 in track 0 record 3);
- byte 0 (sector 0): the partition table written by `fdasd -a`, a DOS (MBR) table, so
  that a Linux guest reading the disk as a virtio-blk device finds partition 1 (real
  fdasd writes a VTOC, which Linux reads only on a real DASD): disk identifier at byte
  440 (from the volume serial), entry 1 at byte 446 = not bootable, type 0x83, first
  sector 192, sectors up to the last whole 4096-byte block; 0x55AA at byte 510.
  Partition 1 covers tracks 2..end: first byte 2 * 12 * 4096 = 98304 (LBA 192).
Tracks 0-1 (bytes 0..98303) hold nothing else. `dasdfmt` zeroes them, table included.

A V-DISK is made fresh at each IPL of its user (paper's SWAPGEN): the same kind of table
with partition 1 (type 0x82) from sector 192, holding a Linux swap signature (`swap_v1`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import subprocess
import uuid
from pathlib import Path

from zvmsim import TRACK_BYTES

LABEL_OFFSET = 2 * 4096
SECTOR = 512
PART_START = 2 * TRACK_BYTES
MBR_ENTRY = 446
MBR_SIGNATURE = b"\x55\xaa"
TYPE_LINUX = 0x83
TYPE_SWAP = 0x82
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


def mbr(size: int, part_type: int = TYPE_LINUX, disk_id: int = 0) -> bytes:
    """Sector 0 of a disk of `size` bytes: a DOS table with partition 1 from PART_START
    to the last whole 4096-byte block (CHS fields as for an LBA-only disk)."""
    first = PART_START // SECTOR
    sectors = (size - PART_START) // 4096 * 4096 // SECTOR
    entry = struct.pack("<B3sB3sII", 0, b"\xfe\xff\xff", part_type, b"\xfe\xff\xff", first, sectors)
    body = bytearray(SECTOR)
    body[440:444] = struct.pack("<I", disk_id)
    body[MBR_ENTRY : MBR_ENTRY + 16] = entry
    body[510:512] = MBR_SIGNATURE
    return bytes(body)


def read_partition(fd: int) -> tuple[int, int] | None:
    """(first byte, length) of partition 1 of the DOS table in sector 0, if any."""
    return read_partition_table(os.pread(fd, SECTOR, 0))


def read_partition_table(sector: bytes) -> tuple[int, int] | None:
    if len(sector) < SECTOR or sector[510:512] != MBR_SIGNATURE:
        return None
    _, _, ptype, _, first, sectors = struct.unpack("<B3sB3sII", sector[MBR_ENTRY : MBR_ENTRY + 16])
    if ptype == 0 or first == 0 or sectors == 0:
        return None
    return first * SECTOR, sectors * SECTOR


def swap_v1(length: int) -> bytes:
    """The first page of a Linux swap area of `length` bytes (4096-byte pages), as mkswap
    writes it on the guest's s390x (big-endian): version 1, last page, no bad pages."""
    page = bytearray(4096)
    page[1024:1036] = struct.pack(">III", 1, length // 4096 - 1, 0)
    page[1036:1052] = uuid.uuid4().bytes
    page[4086:4096] = b"SWAPSPACE2"
    return bytes(page)


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
