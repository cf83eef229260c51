"""The gold as persistent memory: DAX-ready shared disks of a read-only root.

A read-only clone of the local backend may get its shared gold disks as virtio-pmem
devices backed by the gold slot's image files (mapped shared and read-only by every
QEMU, so the host holds one copy of the gold's pages for all clones). In the guest the
filesystem is used with DAX: file reads go straight to that memory, never into the
guest's own page cache. This module prepares a gold for it:

- a udev rule naming each pmem device by the address of its disk (virtio-pmem has no
  serial; the device's fixed PCI slot identifies it), so fstab stays the same whether
  a disk is mapped as memory or attached as virtio-blk; it also marks the device
  read-only, as an RR link is;
- the DAX flag on every file and directory of the shared filesystems (ext4's
  `dax=inode` mode, its default: flagged files use DAX on a DAX-capable device and the
  page cache elsewhere, so the same gold boots both ways);
- which disks are ready (4 KiB filesystem blocks, the rule in place): the backend
  reads that from the boot configuration.
"""

from __future__ import annotations

import fcntl
import os
import struct
from pathlib import Path

from sharedroot.errors import OperationError
from sharedroot.hypervisor.ipl import DAX_RULE
from sharedroot.model.layout import Layout, pmem_slots

RULE = "etc/udev/rules.d/60-sharedroot-pmem.rules"
# FS_IOC_GETFLAGS / FS_IOC_SETFLAGS (a long on 64-bit Linux) and FS_DAX_FL
_GETFLAGS, _SETFLAGS, _DAX_FL = 0x80086601, 0x40086602, 0x02000000
PAGE = 4096


def udev_rule(layout: Layout) -> str:
    lines = [
        "# sharedroot: a shared gold disk mapped as persistent memory (virtio-pmem) is",
        "# named by its address from its PCI slot, as a virtio-blk disk is by its serial.",
    ]
    for address, slot in pmem_slots(layout).items():
        lines.append(
            f'SUBSYSTEM=="block", KERNEL=="pmem*", KERNELS=="0000:00:{slot:02x}.0",'
            f' SYMLINK+="disk/by-id/virtio-{address}", RUN+="/usr/sbin/blockdev --setro $devnode"'
        )
    return "\n".join(lines) + "\n"


def write_rule(root: Path, layout: Layout) -> None:
    path = root / RULE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(udev_rule(layout))


def set_dax_flags(top: Path) -> int:
    """Flag every directory and regular file below `top` on its filesystem for DAX."""
    dev = os.lstat(top).st_dev
    count = 0
    for dirpath, dirnames, filenames in os.walk(top):
        # Stay on this filesystem: another disk may be mounted below (/usr below /).
        dirnames[:] = [n for n in dirnames if os.lstat(os.path.join(dirpath, n)).st_dev == dev]
        for name in [".", *filenames]:
            path = os.path.join(dirpath, name)
            if (name != "." and not os.path.isfile(path)) or os.path.islink(path):
                continue
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            try:
                flags = struct.unpack("l", fcntl.ioctl(fd, _GETFLAGS, b"\0" * 8))[0]
                if not flags & _DAX_FL:
                    fcntl.ioctl(fd, _SETFLAGS, struct.pack("l", flags | _DAX_FL))
                count += 1
            except OSError as exc:
                raise OperationError(f"cannot set the DAX flag on {path}: {exc}") from None
            finally:
                os.close(fd)
    return count


def dax_ready(root: Path, layout: Layout) -> dict[str, int]:
    """The shared disks of the tree at `root` a clone may map as memory: address -> slot.

    Only where the gold names them (the udev rule for this layout) and their
    filesystem has 4 KiB blocks (DAX maps whole pages); never /boot.
    """
    rule = root / RULE
    if not rule.is_file() or rule.read_text() != udev_rule(layout):
        return {}
    ready = {}
    for address, slot in pmem_slots(layout).items():
        mount = layout.get(address).mount or "/"
        if mount == "/boot":
            # Read by nothing in a running clone (the hypervisor loads the kernel and the
            # initramfs at IPL): mapping it would only cost a probe and page structures.
            continue
        path = root / mount.lstrip("/")
        if path.is_dir() and os.statvfs(path).f_bsize == PAGE:
            ready[address] = slot
    return ready


def render_ready(ready: dict[str, int]) -> str:
    text = ",".join(f"{a}:{s:02x}" for a, s in ready.items())
    if ready and not DAX_RULE.fullmatch(text):
        raise OperationError(f"bad persistent-memory map {text!r}")
    return text
