"""Debian 12 "bookworm": the system sharedroot was first built on."""

from sharedroot.guestos.distros import Distribution
from sharedroot.model.types import Distro, Initramfs, Network

DISTRIBUTION = Distribution(
    distro=Distro.DEBIAN_BOOKWORM,
    suite="bookworm",
    initramfs=(Initramfs.INITRAMFS_TOOLS, Initramfs.DRACUT),
    networks=(Network.NETWORKD, Network.IFUPDOWN, Network.NETWORKMANAGER),
    initramfs_packages=(
        (Initramfs.INITRAMFS_TOOLS, ("initramfs-tools", "zstd")),
        (Initramfs.DRACUT, ("dracut", "zstd")),
    ),
    network_packages=(
        (Network.NETWORKD, ()),
        (Network.IFUPDOWN, ("ifupdown", "isc-dhcp-client")),
        (Network.NETWORKMANAGER, ("network-manager",)),
    ),
)
