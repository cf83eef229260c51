"""The worker's side of a LINKed minidisk: bring it online, find its node, format it.

s390-tools as zthin uses them: `cio_ignore -r`, `chccwdev -e/-d` (retried: the channel
subsystem may need a moment), `udevadm settle`, then the node by path
(`/dev/disk/by-path/ccw-0.0.xxxx`), which exists for any ccw disk (minidisk or
virtio-blk-ccw) where /proc/dasd/devices does not.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from sharedroot.errors import InputError, OperationError
from sharedroot.hypervisor.copyengine import content_hash
from sharedroot.model.types import DiskKind
from sharedroot.run import CommandError, run

BY_PATH = Path("/dev/disk/by-path")
CYLINDER = 180 * 4096  # a 3390 cylinder: 15 tracks of 12 blocks of 4096 bytes
NODE_WAIT = 10.0  # seconds for udev to create a node after a device came online
_TRIES = 3


def bus_id(vdev: str) -> str:
    return f"0.0.{vdev.lower()}"


def node(vdev: str) -> Path:
    """The worker's whole-disk node for its device `vdev`."""
    return BY_PATH / f"ccw-{bus_id(vdev)}"


def partition(vdev: str) -> Path:
    """The node of the first (fdasd) partition."""
    return BY_PATH / f"ccw-{bus_id(vdev)}-part1"


def _retry(argv: list[str]) -> None:
    last: CommandError | None = None
    for attempt in range(_TRIES):
        try:
            run(argv)
            return
        except CommandError as exc:
            last = exc
            time.sleep(0.5 * (attempt + 1))
    assert last is not None
    raise last


def settle() -> None:
    if shutil.which("udevadm"):
        run(["udevadm", "settle"], check=False, timeout=60)


def wait_for(path: Path, timeout: float = NODE_WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if path.exists():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def enable(vdev: str) -> Path:
    """Bring the worker's device online; its whole-disk node."""
    if shutil.which("cio_ignore"):  # a LINKed device may be on the ignore list
        run(["cio_ignore", "-r", bus_id(vdev)], check=False)
    _retry(["chccwdev", "-e", bus_id(vdev)])
    settle()
    path = node(vdev)
    if not wait_for(path):
        raise OperationError(
            f"device {bus_id(vdev)} is online but {path} did not appear within"
            f" {NODE_WAIT:.0f}s; check udev (udevadm monitor) on the worker"
        )
    return path


def disable(vdev: str) -> None:
    _retry(["chccwdev", "-d", bus_id(vdev)])
    settle()


def mount_node(vdev: str) -> Path:
    """What `mount` takes: the partition of a partitioned disk, else the whole disk."""
    part = partition(vdev)
    return part if part.exists() else node(vdev)


def format_eckd(vdev: str) -> Path:
    """Low-level format (CDL, 4 KiB blocks) and one partition over the disk; its node."""
    whole = node(vdev)
    # Positional device: `-f node` was dropped in s390-tools 2.0.
    run(["dasdfmt", "-b", "4096", "-y", "-p", "-M", "quick", whole])
    run(["fdasd", "-a", whole])
    settle()
    part = partition(vdev)
    if not wait_for(part):
        raise OperationError(f"fdasd -a {whole}: the partition {part} did not appear")
    return part


def make_filesystem(
    device: Path,
    kind: DiskKind,
    fs: str | None,
    tree: Path | None = None,
    label: str | None = None,
) -> None:
    """An empty filesystem (filled from `tree`) or a swap signature on `device`."""
    if kind is DiskKind.SWAP:
        run(["mkswap", "-q", *(["-L", label] if label else []), device])
    elif fs in ("ext2", "ext3", "ext4"):
        argv: list[str | Path] = ["mke2fs", "-q", "-F", "-t", fs]
        if label:
            argv += ["-L", label]
        if tree is not None:
            if not tree.is_dir():
                raise InputError(f"{tree}: not a directory to fill a filesystem from")
            argv += ["-d", tree]
        run([*argv, device])
    else:
        raise InputError(f"cannot make a filesystem of type {fs!r} (ext2, ext3, ext4 or swap)")


def device_size(path: Path) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def copy_device(source: Path, target: Path) -> int:
    """Every byte of `source` onto the start of `target` (dd, direct and synced)."""
    size = device_size(source)
    if device_size(target) < size:
        raise OperationError(f"{target} is smaller than {source}")
    run(
        [
            "dd",
            f"if={source}",
            f"of={target}",
            "bs=1M",
            "iflag=fullblock",
            "oflag=direct",
            "conv=fsync,notrunc",
            "status=none",
        ]
    )
    return size


def device_hash(path: Path, size: int | None = None) -> str:
    """content_hash of a block device's first `size` bytes (all of it by default)."""
    return content_hash(path, size)


def tool_present(program: str) -> bool:
    return shutil.which(program) is not None


def quietly(action: Callable[[], object]) -> str | None:
    """Run a clean-up step; its error as text instead of an exception."""
    try:
        action()
    except (OperationError, OSError, subprocess.SubprocessError) as exc:
        return str(exc)
    return None
