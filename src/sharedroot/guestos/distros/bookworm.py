"""Debian 12 "bookworm": the system sharedroot was first built on."""

from sharedroot.guestos.distros import debian
from sharedroot.model.types import Distro

DISTRIBUTION = debian(Distro.DEBIAN_BOOKWORM, "bookworm", dhcp_client="isc-dhcp-client")
