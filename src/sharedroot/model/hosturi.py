"""The hosts of the libvirt backend: the URIs a site may name are the local system
daemon or one reached over SSH or TCP. Nothing else: no session daemons (guests must
outlive the controller's login), no query parameters (`?socket=`, `?keyfile=`,
`?command=` would let a setting run or open what it likes), no other drivers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from sharedroot.errors import InputError
from sharedroot.model.types import shown

LOCAL = "qemu:///system"
# A DNS name of RFC 1123 labels, or a dotted IPv4 address (IPv6 literals: not yet).
_HOST = r"(?:(?!-)[A-Za-z0-9-]{1,63}(?<!-)\.)*(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
_PORT = r"[1-9][0-9]{0,4}"
_USER = r"[a-z_][a-z0-9_-]{0,31}"
_REMOTE = re.compile(
    rf"qemu\+(?P<transport>ssh|tcp)://(?:(?P<user>{_USER})@)?(?P<host>{_HOST})"
    rf"(?::(?P<port>{_PORT}))?/system"
)
_MAX = 300  # longer cannot be valid: refused before any matching
URI_RULE = f"must be {LOCAL}, qemu+ssh://[USER@]HOST[:PORT]/system or qemu+tcp://HOST[:PORT]/system"


class Transport(StrEnum):
    """How the controller reaches a host's libvirtd."""

    LOCAL = "local"  # the UNIX socket of this machine's system daemon
    SSH = "ssh"
    TCP = "tcp"  # unencrypted, no authentication of its own: for a trusted network or a lab


@dataclass(frozen=True)
class HostUri:
    uri: str  # normalised: the host name in lower case
    transport: Transport
    host: str | None = None  # None: this machine
    user: str | None = None
    port: int | None = None

    def __str__(self) -> str:
        return self.uri


def host_uri(value: object, what: str = "host") -> HostUri:
    """A host URI by the rule, normalised (DNS names are case-insensitive), or InputError."""
    if not isinstance(value, str):
        raise InputError(f"{what} {shown(value)}: must be a string; {URI_RULE}")
    if value == LOCAL:
        return HostUri(LOCAL, Transport.LOCAL)
    m = _REMOTE.fullmatch(value) if len(value) <= _MAX else None
    if m is None:
        raise InputError(f"{what} {shown(value)}: {URI_RULE}")
    port = None if m["port"] is None else int(m["port"])
    if port is not None and port > 65535:
        raise InputError(f"{what} {shown(value)}: port {port} is not within 1-65535")
    host = m["host"].lower()
    if host.replace(".", "").isdigit() and not _ipv4(host):
        raise InputError(f"{what} {shown(value)}: {host} is not an IPv4 address")
    user = m["user"]
    uri = f"qemu+{m['transport']}://{f'{user}@' if user else ''}{host}"
    uri += f"{'' if port is None else f':{port}'}/system"
    return HostUri(uri, Transport(m["transport"]), host, user, port)


def _ipv4(text: str) -> bool:
    parts = text.split(".")
    return len(parts) == 4 and all(
        p.isdigit() and int(p) <= 255 and (p == "0" or not p.startswith("0")) for p in parts
    )
