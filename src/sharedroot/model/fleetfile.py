"""A file of guests to define in one batch (`define --from FILE`), one guest a line.

    # GUEST   KIND  HOSTNAME  IP          [gateway=G] [netmask=M] [nameserver=N]
    LNX227    ro    lnx227    10.0.2.27   gateway=10.0.2.2
    LNX228    rw    -         -

KIND is `ro` (read-only clone) or `rw` (read-write clone); HOSTNAME and IP are both
`-` for a guest without a parm file (it keeps the gold's identity). Blank lines and
lines starting with `#` are skipped. Every value goes through the same checks as
`define`'s options; the first bad line refuses the whole file, by its number.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sharedroot.errors import InputError
from sharedroot.model.parm import Identity, check_hostname, check_ipv4, check_netmask
from sharedroot.model.types import Role, guest_name, shown

NONE = "-"
KINDS = {"ro": Role.RO_CLONE, "rw": Role.RW_CLONE}
OPTIONS = ("gateway", "netmask", "nameserver")
MAX_LINES = 100_000


@dataclass(frozen=True)
class Definition:
    """One guest of a batch: its name, kind of clone, and identity (parm file) if any."""

    guest: str
    role: Role
    identity: Identity | None = None


def identity(
    hostname: str | None,
    ip: str | None,
    netmask: int | None = None,
    gateway: str | None = None,
    nameserver: str | None = None,
    *,
    option: str = "",
) -> Identity | None:
    """An identity from define's values, each checked; None if none.

    `option` is how the values are named in messages: "--" for define's options.
    """
    o = option
    if (hostname is None) != (ip is None):
        raise InputError(f"{o}hostname and {o}ip go together")
    if hostname is None or ip is None:
        if netmask not in (None, 24) or gateway or nameserver:
            raise InputError(f"{o}netmask, {o}gateway and {o}nameserver need {o}hostname and {o}ip")
        return None
    return Identity(
        hostname=check_hostname(hostname),
        ip=check_ipv4(ip, f"{o}ip"),
        prefix=24 if netmask is None else netmask,
        gateway=check_ipv4(gateway, f"{o}gateway") if gateway else None,
        nameserver=check_ipv4(nameserver, f"{o}nameserver") if nameserver else None,
    )


def _line(words: list[str]) -> Definition:
    if len(words) < 4:
        raise InputError(f"{len(words)} fields; expected GUEST KIND HOSTNAME IP [key=value ...]")
    name, kind, host, ip, *rest = words
    role = KINDS.get(kind.lower())
    if role is None:
        raise InputError(f"kind {shown(kind)}: must be ro or rw")
    extra: dict[str, str] = {}
    for word in rest:
        key, sep, value = word.partition("=")
        if not sep or key.lower() not in OPTIONS:
            raise InputError(f"{shown(word)}: expected one of {', '.join(OPTIONS)} as key=value")
        if key.lower() in extra:
            raise InputError(f"{key.lower()} given twice")
        extra[key.lower()] = value
    netmask = check_netmask(extra["netmask"]) if "netmask" in extra else None
    if netmask == 0:
        raise InputError("netmask: the prefix must be 1 to 32")
    found = identity(
        None if host == NONE else host,
        None if ip == NONE else ip,
        netmask,
        extra.get("gateway"),
        extra.get("nameserver"),
    )
    return Definition(guest_name(name), role, found)


def parse(text: str, source: str) -> tuple[Definition, ...]:
    """Every line of a guest file, checked; InputError names `source`, the line and why."""
    lines = text.splitlines()
    if len(lines) > MAX_LINES:
        raise InputError(f"{source}: {len(lines)} lines; at most {MAX_LINES}")
    out: list[Definition] = []
    seen: dict[tuple[str, str], int] = {}
    for number, raw in enumerate(lines, start=1):
        words = raw.split()
        if not words or words[0].startswith("#"):
            continue
        try:
            d = _line(words)
        except InputError as exc:
            raise InputError(f"{source}, line {number}: {exc}") from None
        keys = [("guest", d.guest)]
        if d.identity:
            keys += [("hostname", d.identity.hostname), ("IP", d.identity.ip)]
        for key in keys:
            if key in seen:
                raise InputError(
                    f"{source}, line {number}: {key[0]} {key[1]} is also on line {seen[key]}"
                )
            seen[key] = number
        out.append(d)
    if not out:
        raise InputError(f"{source}: no guests in it")
    return tuple(out)


def guests_of(defs: Sequence[Definition], role: Role) -> list[str]:
    """The names of a file's guests of one kind (`clonero --from`, `clonerw --from`)."""
    return [d.guest for d in defs if d.role is role]
