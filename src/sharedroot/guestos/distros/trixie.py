"""Debian 13 "trixie", the current stable: the default."""

from sharedroot.guestos.distros import debian
from sharedroot.model.types import Distro

# trixie's ifupdown takes dhcpcd as its DHCP client (isc-dhcp is gone).
DISTRIBUTION = debian(Distro.DEBIAN_TRIXIE, "trixie", dhcp_client="dhcpcd-base")
