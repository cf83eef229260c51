"""What the guest-OS code needs to know about the machine a guest runs on.

The same Linux system is laid out for two platforms: QEMU's virtio disks on the local
backend, and z/VM minidisks (ccw devices) as in the paper. They differ in how a disk
is named by its address, where a clone learns its user ID, and how it boots.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from sharedroot.errors import InputError
from sharedroot.model.types import DeviceBus, shown

_ADDRESS = re.compile(r"[0-9A-F]{4}")


class BootLoader(StrEnum):
    DIRECT = "direct"  # the backend reads kernel, initrd and command line from /boot
    ZIPL = "zipl"  # zipl.conf + zipl writes the IPL record onto the boot disk


class Identity(StrEnum):
    ADMIN_DISK_SERIAL = "admin-disk"  # the local admin disk names the guest (findself)
    SYSINFO = "sysinfo"  # /proc/sysinfo `VM00 Name:` (or `vmcp q userid`) on z/VM


@dataclass(frozen=True)
class Platform:
    bus: DeviceBus
    arch: str  # Debian architecture of the kernel recipe
    kernel_package: str
    boot_loader: BootLoader
    identity: Identity
    partitioned: bool  # filesystems on partition 1 (ECKD DASD after fdasd), not the whole disk

    def disk(self, address: str) -> str:
        """The whole disk at an address, as the guest names it."""
        if not _ADDRESS.fullmatch(address):
            raise InputError(f"device address {shown(address)}: must be 4 upper-case hex digits")
        if self.bus is DeviceBus.VIRTIO:
            return f"/dev/disk/by-id/virtio-{address}"
        return f"/dev/disk/by-path/ccw-0.0.{address.lower()}"

    def filesystem(self, address: str) -> str:
        """Where the filesystem (or swap) on the disk at an address is (the fstab source)."""
        return self.disk(address) + ("-part1" if self.partitioned else "")

    @property
    def device_rule(self) -> re.Pattern[str]:
        """A full match of the device paths this platform writes (fstab checks them)."""
        if self.bus is DeviceBus.VIRTIO:
            return re.compile(r"/dev/disk/by-id/virtio-[0-9A-F]{4}")
        return re.compile(r"/dev/disk/by-path/ccw-0\.0\.[0-9a-f]{4}(?:-part1)?")


VIRTIO = Platform(
    bus=DeviceBus.VIRTIO,
    arch="amd64",
    kernel_package="linux-image-amd64",
    boot_loader=BootLoader.DIRECT,
    identity=Identity.ADMIN_DISK_SERIAL,
    partitioned=False,
)
CCW = Platform(
    bus=DeviceBus.CCW,
    arch="s390x",
    kernel_package="linux-image-s390x",
    boot_loader=BootLoader.ZIPL,
    identity=Identity.SYSINFO,
    partitioned=True,
)
PLATFORMS = (VIRTIO, CCW)
_BY_BUS = {p.bus: p for p in PLATFORMS}


def for_bus(bus: DeviceBus) -> Platform:
    return _BY_BUS[bus]


def for_arch(arch: str) -> Platform:
    """The platform whose guests run `arch` (a Debian architecture name)."""
    for p in PLATFORMS:
        if p.arch == arch:
            return p
    known = ", ".join(p.arch for p in PLATFORMS)
    raise InputError(f"architecture {shown(arch)}: sharedroot builds guests for {known}")
