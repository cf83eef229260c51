"""The paper's PARM-S10 file: a guest's identity as `Key=value` words.

The paper's sample starts with kernel words (`ramdisk_size=65536 root=/dev/ram1 ro`)
and goes on with `HostIP= Hostname= Gateway= Netmask= Broadcast= ... Nameserver=`,
wrapped over several lines.  Words without `=` are kernel flags and are kept aside.
Keys are matched without regard to case; the last of a repeated key wins.

Every rule is a full match of the whole value (`re.match` with `$` lets a final newline
through), and every value is checked again right before it is written.

This module is also run inside guests by findself, so it imports the standard
library and sharedroot.model only.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, replace

from sharedroot.errors import InputError
from sharedroot.model.types import shown

_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_KEY = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_SAFE_WORD = re.compile(r"[A-Za-z0-9._:/@,+=-]*")
# Dotted quad of plain decimal octets: no leading zeros, blanks or other digits.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])"
_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")
_PREFIX = re.compile(r"[1-9]|[12][0-9]|3[0-2]")
MAX_PARM_CHARS = 64 * 1024  # a CMS parm file is a few lines; findself reads at most this
MAX_VALUE = 1024  # longer than any value the paper's format has (URLs of Install=)


def parse_parm(text: str) -> dict[str, str]:
    """Words of a parm file as {lower-case key: value}; words without '=' are skipped."""
    values: dict[str, str] = {}
    for word in text.split():
        key, sep, value = word.partition("=")
        if sep and key:
            values[key.lower()] = value
    return values


def check_hostname(value: object, what: str = "hostname") -> str:
    """A host name or FQDN per RFC 1123: labels of letters, digits and inner hyphens."""
    if not isinstance(value, str) or not value or len(value) > 253 or value.endswith("."):
        raise InputError(f"{what} {shown(value)}: must be 1-253 characters, not ending in '.'")
    if not all(_LABEL.fullmatch(label) for label in value.split(".")):
        raise InputError(
            f"{what} {shown(value)}: each label must be 1-63 of letters, digits and inner hyphens"
        )
    return value.lower()


def check_ipv4(value: object, what: str, *, loopback: bool = False) -> str:
    """A unicast IPv4 address in plain dotted decimal (no leading zeros or blanks).

    Not 0.0.0.0, multicast, reserved or broadcast; loopback only where `loopback`
    (a name server may be a local resolver, a host or gateway address may not).
    """
    if not isinstance(value, str) or not _IPV4.fullmatch(value):
        raise InputError(f"{what} {shown(value)}: not an IPv4 address (dotted decimal)")
    ip = ipaddress.IPv4Address(value)
    if ip.is_unspecified or ip.is_multicast or ip.is_reserved or (ip.is_loopback and not loopback):
        raise InputError(f"{what} {value}: not a unicast address a guest can use")
    return str(ip)


def check_netmask(value: object, what: str = "netmask") -> int:
    """A dotted netmask (255.255.255.0) or prefix length (24), as a prefix length 1-32."""
    rule = "must be a prefix length 1-32 or a contiguous dotted netmask such as 255.255.255.0"
    if isinstance(value, str) and _PREFIX.fullmatch(value):
        return int(value)
    if not isinstance(value, str) or not _IPV4.fullmatch(value):
        raise InputError(f"{what} {shown(value)}: {rule}")
    mask = int(ipaddress.IPv4Address(value))
    host_bits = ~mask & 0xFFFFFFFF
    # Contiguous: the host part is all ones from the bottom; at least one network bit.
    if mask == 0 or host_bits & (host_bits + 1):
        raise InputError(f"{what} {shown(value)}: {rule}")
    return 32 - host_bits.bit_length()


def check_prefix(value: object, what: str = "prefix") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 32:
        raise InputError(f"{what} {shown(value)}: must be a whole number from 1 to 32")
    return value


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
        check_identity(self)


def check_identity(identity: Identity) -> Identity:
    """Every value of an identity against its rule; writers call it right before writing."""
    check_hostname(identity.hostname, "Hostname")
    ip = identity.ip
    if check_ipv4(ip, "HostIP") != ip:
        raise InputError(f"HostIP {shown(ip)}: not in plain dotted decimal")
    prefix = check_prefix(identity.prefix, "Netmask prefix")
    net = ipaddress.IPv4Network(f"{ip}/{prefix}", strict=False)
    if prefix < 31 and ip in (str(net.network_address), str(net.broadcast_address)):
        raise InputError(f"HostIP {ip}: is the network or broadcast address of /{prefix}")
    if identity.gateway is not None:
        gateway = check_ipv4(identity.gateway, "Gateway")
        if ipaddress.IPv4Address(gateway) not in net:
            raise InputError(f"Gateway {gateway}: not in {net}")
        if gateway == ip:
            raise InputError(f"Gateway {gateway}: is HostIP itself")
        if prefix < 31 and gateway in (str(net.network_address), str(net.broadcast_address)):
            raise InputError(f"Gateway {gateway}: is the network or broadcast address of {net}")
    if identity.nameserver is not None:
        check_ipv4(identity.nameserver, "Nameserver", loopback=True)
    return identity


def identity_from_parm(text: str) -> Identity:
    """Validate a parm file's identity; InputError says which value is wrong and why."""
    if len(text) > MAX_PARM_CHARS:
        raise InputError(f"parm file: {len(text)} characters; at most {MAX_PARM_CHARS}")
    values = parse_parm(text)
    for key, value in values.items():
        if not _KEY.fullmatch(key):
            raise InputError(f"parm file: key {shown(key)}: must be letters, digits, _ . -")
        if len(value) > MAX_VALUE:
            raise InputError(f"{key}={shown(value)}: longer than {MAX_VALUE} characters")
        if not _SAFE_WORD.fullmatch(value):
            raise InputError(f"{key}={shown(value)}: contains characters a parm value cannot have")
    missing = [k for k in ("hostname", "hostip") if k not in values]
    if missing:
        raise InputError(f"parm file: missing {', '.join(missing)}")
    return Identity(
        hostname=check_hostname(values["hostname"], "Hostname"),
        ip=check_ipv4(values["hostip"], "HostIP"),
        prefix=check_netmask(values.get("netmask", "255.255.255.0"), "Netmask"),
        gateway=values.get("gateway") or None,
        nameserver=values.get("nameserver") or None,
    )


def format_parm(identity: Identity) -> str:
    """A parm file in the paper's layout: a few `Key=value` words per line."""
    check_identity(identity)
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
    text = "\n".join(lines) + "\n"
    # What findself will read must be what was meant: read it back before it is written.
    if identity_from_parm(text) != replace(identity, hostname=identity.hostname.lower()):
        raise InputError(f"parm file for {identity.hostname}: does not read back as written")
    return text
