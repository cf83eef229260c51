"""What shapes a golden tree (distribution, architecture, boot and network paths, packages)
and the key of its cache entry."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from typing import Any

from sharedroot.guestos import distros
from sharedroot.guestos.platform import VIRTIO, BootLoader, Platform, find
from sharedroot.model.layout import PAPER_LAYOUT, Layout
from sharedroot.model.types import DEFAULT_DISTRO, DeviceBus, Distro, Initramfs, Network

# Bump when the build code changes what the tree holds, so caches are rebuilt.
BUILD_VERSION = 8


@dataclass(frozen=True)
class Recipe:
    """Everything that shapes the golden tree; its key names the cache entry."""

    distro: Distro = DEFAULT_DISTRO
    suite: str = "bookworm"
    initramfs: Initramfs = Initramfs.INITRAMFS_TOOLS
    network: Network = Network.NETWORKD
    arch: str = "amd64"  # Debian architecture; another than the worker's builds through QEMU
    bus: DeviceBus = DeviceBus.VIRTIO  # how the guests' disks are named (fstab, root=)
    variant: str = "minbase"
    # Installed by debootstrap itself (resolved with its simple resolver).
    base_packages: tuple[str, ...] = ("systemd-sysv", "udev", "kmod", "iproute2")
    # Installed by apt inside the tree, without recommends (with those of the initramfs
    # tool and the network stack, from the distribution).
    packages: tuple[str, ...] = (
        "qemu-guest-agent",
        "openssh-server",
        "python3",
        "e2fsprogs",
        "util-linux",
        "procps",
        "iputils-ping",
        "dbus",
        "ca-certificates",
    )
    kernel_package: str = "linux-image-amd64"
    # The slim initramfs: only what finds and mounts virtio disks (ext4 also mounts ext2),
    # and the gold's disks mapped as persistent memory (virtio_pmem pulls in libnvdimm).
    initramfs_modules: tuple[str, ...] = (
        "virtio_pci",
        "virtio_blk",
        "virtio_pmem",
        "nd_pmem",
        "ext4",
        "crc32c_generic",
    )
    initramfs_compress: str = "zstd"
    hostname: str = "s10rwmnt"
    # The fstab written into the gold; the initramfs fsck hook reads fs types from it.
    layout: Layout = PAPER_LAYOUT
    cmdline_extra: str = "console=ttyS0 quiet"

    @property
    def platform(self) -> Platform:
        return find(self.bus, self.arch)


# s390x (the paper's Linux on IBM Z): s390-tools (zipl, chccwdev, cmsfs-fuse, chzdev,
# vmcp), and an initramfs that finds virtio-ccw disks as well as real ECKD and FBA DASD.
# On z/VM commands reach guests over SSH, so the QEMU guest agent is left out there.
S390X_PACKAGES = (*Recipe.packages, "s390-tools", "fuse3")
LVM_PACKAGES = ("lvm2",)
S390X_MODULES = ("virtio_blk", "dasd_eckd_mod", "dasd_fba_mod", "ext4", "crc32c_generic")


def recipe_for(
    platform: Platform,
    *,
    layout: Layout,
    hostname: str,
    distro: Distro = DEFAULT_DISTRO,
    initramfs: Initramfs | None = None,
    network: Network | None = None,
) -> Recipe:
    """The recipe of a platform's golden tree; a combination the distribution lacks is
    refused (RefusedError) before anything is built."""
    dist = distros.get(distro)
    boot, net = dist.choose(platform.arch, initramfs, network)
    recipe = Recipe(
        distro=distro,
        suite=dist.suite,
        initramfs=boot,
        network=net,
        layout=layout,
        hostname=hostname,
        bus=platform.bus,
    )
    # lvm2 activates an LVM layout disk's volume group at boot (its udev rules), and
    # only a layout with one needs it: every other tree keeps its recipe key.
    lvm = LVM_PACKAGES if layout.has_lvm else ()
    packages = (*Recipe.packages, *dist.packages(boot, net), *lvm)
    if platform.arch != "s390x":
        return replace(recipe, packages=packages)
    recipe = replace(
        recipe,
        arch="s390x",
        packages=(*S390X_PACKAGES, *dist.packages(boot, net), *lvm),
        kernel_package=platform.kernel_package,
        initramfs_modules=S390X_MODULES,
        cmdline_extra="quiet",
    )
    if platform.boot_loader is BootLoader.ZIPL:
        # vmpoff=LOGOFF: a shutdown logs the z/VM user off (the paper's zipl.conf).
        packages = tuple(p for p in recipe.packages if p != "qemu-guest-agent")
        return replace(recipe, packages=packages, cmdline_extra="vmpoff=LOGOFF quiet")
    return recipe


DEFAULT_RECIPE = recipe_for(VIRTIO, layout=PAPER_LAYOUT, hostname=Recipe.hostname)


def recipe_key(recipe: Recipe = DEFAULT_RECIPE) -> str:
    """A short stable hash of the recipe and the build code version.

    Disk sizes are left out: they shape the disks, not the tree, and a site with bigger
    disks reuses the same tree.
    """
    fields = asdict(recipe)
    fields["layout"] = [_disk_key(disk) for disk in fields["layout"]["disks"]]
    data = json.dumps({"build": BUILD_VERSION, "recipe": fields}, sort_keys=True, default=str)
    arch = "" if recipe.arch == "amd64" else f"{recipe.arch}-"
    return f"{recipe.distro}-{arch}" + hashlib.sha256(data.encode()).hexdigest()[:12]


def _disk_key(disk: dict[str, Any]) -> dict[str, Any]:
    """A layout disk as the key sees it: no sizes, and no LVM fields on a disk without
    them (so the keys of trees built before LVM layouts existed stay as they were)."""
    out = {k: v for k, v in disk.items() if k != "size" and k not in ("vg", "volumes")}
    if disk.get("vg") is not None:
        out["vg"] = disk["vg"]
        out["volumes"] = [{k: v for k, v in vol.items() if k != "size"} for vol in disk["volumes"]]
    return out
