"""DOCTOR: which host programs are missing, and which Debian package brings each."""

from __future__ import annotations

from dataclasses import dataclass

from sharedroot.run import have
from sharedroot.store.config import LibvirtSettings, ZvmSettings


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
    Need("fincore", "util-linux", "the linked disks' pages in the host's page cache (guests)"),
    Need("nsenter", "util-linux", "start guests outside the command's private mount namespace"),
    Need("qemu-system-x86_64", "qemu-system-x86", "start guests (IPL)"),
    Need("qemu-img", "qemu-utils", "overlay images and the benchmarks", False),
    Need("debootstrap", "debootstrap", "install Debian onto the maintenance guest"),
    Need("mkfs.xfs", "xfsprogs", "reflink-capable storage for instant copies", False),
    Need("lvm", "lvm2", "write the volume group of a layout's LVM disk (install)", False),
    Need("losetup", "mount", "reach an LVM disk's volumes on the worker", False),
)


# What brings each z/VM check's program; the rest is z/VM's own configuration.
_ZVM_PACKAGES = {t: "s390-tools" for t in ("vmcp", "chccwdev", "cio_ignore", "dasdfmt", "fdasd")}
_ZVM_PACKAGES |= {"udevadm": "udev", "smcli": "zthin (Feilong)"}
NOT_A_PACKAGE = "z/VM"  # a directory or CP setting, not something apt installs

# What only the machine that runs the guests needs: a z/VM worker (s390x Linux) runs
# none itself (CP does), nor does a libvirt controller (its hosts do).
_NOT_FOR = {
    "zvm": ("qemu-system-x86_64", "nsenter", "debugfs", "fincore"),
    "libvirt": ("qemu-system-x86_64", "nsenter", "fincore"),
}


def doctor(
    backend: str = "local", zvm: ZvmSettings | None = None, libvirt: LibvirtSettings | None = None
) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = [
        {
            "program": n.program,
            "package": n.package,
            "purpose": n.purpose,
            "required": n.required,
            "found": have(n.program),
        }
        for n in NEEDS
        if n.program not in _NOT_FOR.get(backend, ())
    ]
    if backend == "libvirt":
        from sharedroot.hypervisor.libvirt.doctor import doctor_checks as libvirt_checks

        rows += [
            {
                "program": c.name,
                "package": c.package,
                "purpose": c.hint,
                "required": True,
                "found": c.found,
            }
            for c in libvirt_checks(libvirt or LibvirtSettings())
        ]
    if backend == "zvm":
        from sharedroot.hypervisor.zvm.doctor import doctor_checks  # only on z/VM sites

        rows += [
            {
                "program": c.name,
                "package": _ZVM_PACKAGES.get(c.name, NOT_A_PACKAGE),
                "purpose": c.hint,
                "required": c.required,
                "found": c.found,
            }
            for c in doctor_checks(zvm or ZvmSettings())
        ]
    return rows
