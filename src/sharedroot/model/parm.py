"""The paper's PARM-S10 file: a guest's identity as `Key=value` words.

The paper's sample starts with kernel words (`ramdisk_size=65536 root=/dev/ram1 ro`)
and goes on with `HostIP= Hostname= Gateway= Netmask= Broadcast= ... Nameserver=`,
wrapped over several lines.  Words without `=` are kernel flags and are kept aside.
Keys are matched without regard to case; the last of a repeated key wins.

This module is also run inside guests by findself, so it imports the standard
library and sharedroot.model only.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from sharedroot.errors import InputError

_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_SAFE_WORD = re.compile(r"^[A-Za-z0-9._:/@,+=-]*$")


def parse_parm(text: str) -> dict[str, str]:
    """Words of a parm file as {lower-case key: value}; words without '=' are skipped."""
    values: dict[str, str] = {}
    for word in text.split():
        key, sep, value = word.partition("=")
        if sep and key:
            values[key.lower()] = value
    return values


def check_hostname(value: str) -> str:
    """A host name or FQDN per RFC 1123: labels of letters, digits and inner hyphens."""
    if not value or len(value) > 253 or value.endswith("."):
        raise InputError(f"hostname {value!r}: must be 1-253 characters, not ending in '.'")
    if not all(_LABEL.match(label) for label in value.split(".")):
        raise InputError(
            f"hostname {value!r}: each label must be 1-63 of letters, digits and inner hyphens"
        )
    return value.lower()


def check_ipv4(value: str, what: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise InputError(f"{what} {value!r}: not an IPv4 address") from None


def check_netmask(value: str) -> int:
    """A dotted netmask (255.255.255.0) or prefix length (24), as a prefix length."""
    try:
        if value.isdigit():
            prefix = int(value)
            if not 0 < prefix <= 32:
                raise ValueError
            return prefix
        return ipaddress.IPv4Network(f"0.0.0.0/{value}").prefixlen
    except ValueError:
        raise InputError(f"netmask {value!r}: not a contiguous IPv4 netmask") from None


@dataclass(frozen=True)
class Identity:
    """What findself gives a guest: its name on the network and its static address."""

    hostname: str
    ip: str
    prefix: int
    gateway: str | None = None
    nameserver: str | None = None

    @property
    def netmask(self) -> str:
        return str(ipaddress.IPv4Network(f"0.0.0.0/{self.prefix}").netmask)

    @property
    def short_name(self) -> str:
        return self.hostname.split(".", 1)[0]

    def __post_init__(self) -> None:
        check_hostname(self.hostname)
        check_ipv4(self.ip, "HostIP")
        net = ipaddress.IPv4Network(f"{self.ip}/{self.prefix}", strict=False)
        if self.prefix < 31 and self.ip in (
            str(net.network_address),
            str(net.broadcast_address),
        ):
            raise InputError(
                f"HostIP {self.ip}: is the network or broadcast address of /{self.prefix}"
            )
        if self.gateway is not None:
            check_ipv4(self.gateway, "Gateway")
            if ipaddress.IPv4Address(self.gateway) not in net:
                raise InputError(f"Gateway {self.gateway}: not in {net}")
        if self.nameserver is not None:
            check_ipv4(self.nameserver, "Nameserver")


def identity_from_parm(text: str) -> Identity:
    """Validate a parm file's identity; InputError says which value is wrong and why."""
    values = parse_parm(text)
    for key, value in values.items():
        if not _SAFE_WORD.match(value):
            raise InputError(f"{key}={value!r}: contains characters a parm value cannot have")
    missing = [k for k in ("hostname", "hostip") if k not in values]
    if missing:
        raise InputError(f"parm file: missing {', '.join(missing)}")
    return Identity(
        hostname=check_hostname(values["hostname"]),
        ip=check_ipv4(values["hostip"], "HostIP"),
        prefix=check_netmask(values.get("netmask", "255.255.255.0")),
        gateway=values.get("gateway") or None,
        nameserver=values.get("nameserver") or None,
    )


def format_parm(identity: Identity) -> str:
    """A parm file in the paper's layout: a few `Key=value` words per line."""
    net = ipaddress.IPv4Network(f"{identity.ip}/{identity.prefix}", strict=False)
    lines = [
        f"HostIP={identity.ip} Hostname={identity.hostname}",
        f"Netmask={identity.netmask} Broadcast={net.broadcast_address}",
    ]
    extra = []
    if identity.gateway:
        extra.append(f"Gateway={identity.gateway}")
    if identity.nameserver:
        extra.append(f"Nameserver={identity.nameserver}")
    if extra:
        lines.append(" ".join(extra))
    return "\n".join(lines) + "\n"
