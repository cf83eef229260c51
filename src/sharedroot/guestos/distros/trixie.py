"""Debian 13 "trixie", the current stable: the default."""

from sharedroot.guestos.distros import Distribution
from sharedroot.model.types import Distro, Initramfs, Network

DISTRIBUTION = Distribution(
    distro=Distro.DEBIAN_TRIXIE,
    suite="trixie",
    initramfs=(Initramfs.INITRAMFS_TOOLS, Initramfs.DRACUT),
    networks=(Network.NETWORKD, Network.IFUPDOWN, Network.NETWORKMANAGER),
    initramfs_packages=(
        (Initramfs.INITRAMFS_TOOLS, ("initramfs-tools", "zstd")),
        (Initramfs.DRACUT, ("dracut", "zstd")),
    ),
    # trixie's ifupdown takes dhcpcd as its DHCP client (isc-dhcp is gone).
    network_packages=(
        (Network.NETWORKD, ()),
        (Network.IFUPDOWN, ("ifupdown", "dhcpcd-base")),
        (Network.NETWORKMANAGER, ("network-manager",)),
    ),
)
