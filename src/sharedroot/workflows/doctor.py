"""DOCTOR: which host programs are missing, and which Debian package brings each."""

from __future__ import annotations

from dataclasses import dataclass

from sharedroot.run import have


@dataclass(frozen=True)
class Need:
    program: str
    package: str
    purpose: str
    required: bool = True


NEEDS: tuple[Need, ...] = (
    Need("mke2fs", "e2fsprogs", "make the ext2/ext3/ext4 filesystems of every disk"),
    Need("debugfs", "e2fsprogs", "read the boot configuration from a guest's 01B0 disk"),
    Need("mkswap", "util-linux", "swap disks and VDISKs"),
    Need("mount", "mount", "mount a guest's disks on the worker (cloneprep, mnt2rogld)"),
    Need("nsenter", "util-linux", "start guests outside the command's private mount namespace"),
    Need("qemu-system-x86_64", "qemu-system-x86", "start guests (IPL)"),
    Need("qemu-img", "qemu-utils", "overlay images and the benchmarks", False),
    Need("debootstrap", "debootstrap", "install Debian onto the maintenance guest"),
    Need("mkfs.xfs", "xfsprogs", "reflink-capable storage for instant copies", False),
)


def doctor() -> list[dict[str, object]]:
    return [
        {
            "program": n.program,
            "package": n.package,
            "purpose": n.purpose,
            "required": n.required,
            "found": have(n.program),
        }
        for n in NEEDS
    ]
