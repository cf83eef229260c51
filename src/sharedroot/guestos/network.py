"""Network configuration a guest gets from its identity: pure text writers plus a detector.

findself writes each file whole from an Identity (the paper's boot.findself edited the
SUSE ifcfg file with sed, which breaks as soon as the old value is not where it expects).
Runs inside guests: standard library and sharedroot.model only.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from sharedroot.errors import InputError
from sharedroot.model.parm import Identity, check_identity
from sharedroot.model.types import Network, shown

HEADER = "# Written by sharedroot findself from this guest's parm file; changes are overwritten.\n"

# 10- sorts before the gold's 80-sharedroot-default.network (DHCP); networkd applies the
# first file that matches a link, so the static address wins.
NETWORKD_FILE = "etc/systemd/network/10-sharedroot.network"
IFUPDOWN_FILE = "etc/network/interfaces.d/sharedroot"
# NetworkManager ignores a keyfile that is not root's with mode 0600.
NM_FILE = "etc/NetworkManager/system-connections/sharedroot.nmconnection"
NM_MODE = 0o600
# One fixed UUID: each clone has its own /etc, and a stable one lets NM see a rewritten
# file as the same connection.
NM_UUID = "5b1e0c6e-3f5d-5f0e-9a57-7c0f2a1d5e27"
RESOLV_CONF = "etc/resolv.conf"
HOSTS = "etc/hosts"

_UNIT_DIRS = ("usr/lib/systemd/system", "lib/systemd/system")
# A Linux interface name (IFNAMSIZ 16 with the NUL) as ifupdown writes it: eth0, enp1s0,
# eth0.100 (VLAN), eth0:1 (alias).  Anything else could add words or lines to a stanza
# (or, with ; or =, list items and keys to a keyfile).
_INTERFACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,14}")


def check_interface(name: str) -> str:
    if not _INTERFACE.fullmatch(name):
        raise InputError(
            f"interface {shown(name)}: must be 1-15 of letters, digits, _ . : -"
            " (starting with a letter or digit)"
        )
    return name


def _enabled(root: Path, unit: str) -> bool:
    """Whether `systemctl enable` left a link to `unit` in some *.wants directory of /etc."""
    wants = root / "etc/systemd/system"
    return any(os.path.lexists(d / unit) for d in wants.glob("*.wants"))


def _installed(root: Path, unit: str) -> bool:
    return any((root / d / unit).exists() for d in _UNIT_DIRS)


def detect(root: Path) -> Network | None:
    """What configures the NIC at `root`; None when nothing sharedroot can write for.

    NetworkManager when enabled (it would take the NIC from the others); else networkd
    when enabled; else ifupdown when /etc/network/interfaces exists (a system moved to
    NM often still has one, so the enabled units come first); else networkd when at
    least installed (every systemd Debian ships it).
    """
    if _enabled(root, "NetworkManager.service"):
        return Network.NETWORKMANAGER
    if _enabled(root, "systemd-networkd.service"):
        return Network.NETWORKD
    if (root / "etc/network/interfaces").is_file():
        return Network.IFUPDOWN
    if _installed(root, "systemd-networkd.service"):
        return Network.NETWORKD
    return None


def uses_resolved(root: Path) -> bool:
    """Whether something other than findself owns /etc/resolv.conf.

    A symlink means systemd-resolved or resolvconf manages it (and writing through it
    could land anywhere); an enabled resolved takes DNS= from the .network file, an
    enabled NetworkManager writes the file itself from the keyfile's dns=.
    """
    return (
        os.path.islink(root / RESOLV_CONF)
        or _enabled(root, "systemd-resolved.service")
        or _enabled(root, "NetworkManager.service")
    )


def networkd_text(identity: Identity) -> str:
    """The .network file: any Ethernet NIC by name, the parm file's address on it.

    `en*` covers udev's predictable names on both platforms: enp1s0/ens3 for PCI NICs,
    enc600/encf500 for s390x ccw cards (a qeth group device or virtio-net-ccw, named
    after the bus ID); `eth*` the kernel's names with net.ifnames=0.
    """
    check_identity(identity)
    lines = [
        HEADER.rstrip("\n"),
        "[Match]",
        "Name=en* eth*",
        "",
        "[Network]",
        f"Address={identity.ip}/{identity.prefix}",
    ]
    if identity.gateway:
        lines.append(f"Gateway={identity.gateway}")
    if identity.nameserver:
        lines.append(f"DNS={identity.nameserver}")
    return "\n".join(lines) + "\n"


def ifupdown_interface(root: Path) -> str:
    """The NIC's name: the first physical Ethernet device of a running system, else the
    first non-loopback `iface` of /etc/network/interfaces, else eth0.  Names that break
    the interface rule are passed over: they would end up in the stanza."""
    net = root / "sys/class/net"
    if net.is_dir():
        for dev in sorted(net.iterdir()):
            try:
                is_ether = (dev / "type").read_text().strip() == "1"
            except OSError:
                continue
            # Only physical devices have a `device` link (no bridges, bonds, veths).
            if is_ether and (dev / "device").exists() and _INTERFACE.fullmatch(dev.name):
                return dev.name
    try:
        text = (root / "etc/network/interfaces").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        words = line.split()
        iface = len(words) >= 2 and words[0] == "iface" and words[1] != "lo"
        if iface and _INTERFACE.fullmatch(words[1]):
            return words[1]
    return "eth0"


def ifupdown_text(identity: Identity, interface: str) -> str:
    check_identity(identity)
    check_interface(interface)
    lines = [
        HEADER.rstrip("\n"),
        f"auto {interface}",
        f"iface {interface} inet static",
        f"    address {identity.ip}/{identity.prefix}",
    ]
    if identity.gateway:
        lines.append(f"    gateway {identity.gateway}")
    return "\n".join(lines) + "\n"


def nm_keyfile_text(identity: Identity, interface: str | None = None) -> str:
    """The NetworkManager keyfile: the parm file's address on the NIC, autoconnected.

    Bound to `interface` where findself knows the parm file's card, else to any
    Ethernet device (no interface-name).  NM makes its automatic DHCP "Wired
    connection" only for a device no stored connection fits, so this one replaces it;
    the autoconnect priority settles it should both exist.  IPv6 is left to the
    kernel, as the networkd file leaves it.
    """
    check_identity(identity)
    gateway = f",{identity.gateway}" if identity.gateway else ""
    lines = [
        HEADER.rstrip("\n"),
        "[connection]",
        "id=sharedroot",
        f"uuid={NM_UUID}",
        "type=ethernet",
    ]
    if interface is not None:
        lines.append(f"interface-name={check_interface(interface)}")
    lines += [
        "autoconnect=true",
        "autoconnect-priority=100",
        "",
        "[ethernet]",
        "",
        "[ipv4]",
        "method=manual",
        f"address1={identity.ip}/{identity.prefix}{gateway}",
    ]
    if identity.nameserver:
        lines.append(f"dns={identity.nameserver};")
    lines += ["", "[ipv6]", "method=ignore"]
    return "\n".join(lines) + "\n"


def ifupdown_conflicts(root: Path, interface: str) -> bool:
    """Whether the main interfaces file already defines `interface` (ifup then refuses a
    duplicate stanza; findself writes only its own file, the admin settles the rest)."""
    try:
        text = (root / "etc/network/interfaces").read_text()
    except OSError:
        return False
    return any(line.split()[:2] == ["iface", interface] for line in text.splitlines())


def resolv_conf_text(identity: Identity) -> str | None:
    """A resolv.conf naming the parm file's server; None when the parm names none."""
    check_identity(identity)
    if not identity.nameserver:
        return None
    return f"{HEADER}nameserver {identity.nameserver}\n"


def hosts_text(identity: Identity) -> str:
    """/etc/hosts written whole: loopback, this guest's address, the IPv6 defaults."""
    check_identity(identity)
    names = identity.hostname
    if identity.short_name != identity.hostname:
        names = f"{identity.hostname} {identity.short_name}"
    return (
        f"{HEADER}"
        "127.0.0.1\tlocalhost\n"
        f"{identity.ip}\t{names}\n"
        "\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\n"
        "ff02::1\tip6-allnodes\n"
        "ff02::2\tip6-allrouters\n"
    )
