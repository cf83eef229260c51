"""What the guest-OS code needs to know about the machine a guest runs on.

The same Linux system is laid out for three platforms: QEMU's virtio disks on the local
backend (x86_64 guests, or s390x guests as under KVM on IBM Z), and z/VM minidisks
(ccw devices) as in the paper. They differ in how a disk is named by its address and
how it boots.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from enum import StrEnum

from sharedroot.errors import InputError
from sharedroot.model.types import DeviceBus, exact_address, shown


class BootLoader(StrEnum):
    DIRECT = "direct"  # the backend reads kernel, initrd and command line from /boot
    ZIPL = "zipl"  # zipl.conf + zipl writes the IPL record onto the boot disk


@dataclass(frozen=True)
class Platform:
    bus: DeviceBus
    arch: str  # Debian architecture of the kernel recipe
    kernel_package: str
    boot_loader: BootLoader
    partitioned: bool  # filesystems on partition 1 (ECKD DASD after fdasd), not the whole disk

    def disk(self, address: str) -> str:
        """The whole disk at an address, as the guest names it."""
        exact_address(address)
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
    partitioned=False,
)
# s390x under the local backend: virtio-ccw disks that carry their address as serial too.
VIRTIO_S390X = replace(VIRTIO, arch="s390x", kernel_package="linux-image-s390x")
CCW = Platform(
    bus=DeviceBus.CCW,
    arch="s390x",
    kernel_package="linux-image-s390x",
    boot_loader=BootLoader.ZIPL,
    partitioned=True,
)
PLATFORMS = (VIRTIO, VIRTIO_S390X, CCW)
ARCHES = tuple(dict.fromkeys(p.arch for p in PLATFORMS))


def find(bus: DeviceBus, arch: str | None = None) -> Platform:
    """The platform of a backend's disks (`bus`) running `arch` (default: the bus's first)."""
    if arch is not None and arch not in ARCHES:
        known = ", ".join(ARCHES)
        raise InputError(f"architecture {shown(arch)}: sharedroot builds guests for {known}")
    for p in PLATFORMS:
        if p.bus is bus and arch in (None, p.arch):
            return p
    runs = ", ".join(p.arch for p in PLATFORMS if p.bus is bus)
    raise InputError(f"architecture {arch}: guests with {bus} disks run {runs} only")
