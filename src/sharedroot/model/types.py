"""Pure value types of the paper's world: guests, addresses, sizes, modes, roles."""

from __future__ import annotations

import re
from enum import StrEnum

from sharedroot.errors import InputError

_GUEST_RE = re.compile(r"^[A-Z0-9@#$]{1,8}$")
_ADDR_RE = re.compile(r"^[0-9A-F]{1,4}$")
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
BLOCK = 4096


def guest_name(text: str, what: str = "guest name") -> str:
    """A z/VM user ID: 1 to 8 of A-Z 0-9 @ # $, upper-cased."""
    name = text.strip().upper()
    if not _GUEST_RE.match(name):
        raise InputError(f"{what} {text!r}: must be 1-8 characters of A-Z 0-9 @ # $")
    return name


def address(text: str | int, what: str = "address") -> str:
    """A virtual device address, 0000-FFFF, normalised to 4 upper-case hex digits."""
    if isinstance(text, int):
        if not 0 <= text <= 0xFFFF:
            raise InputError(f"{what} {text:#x}: must be within 0000-FFFF")
        return f"{text:04X}"
    raw = text.strip().upper()
    if raw.startswith("0X"):
        raw = raw[2:]
    if not _ADDR_RE.match(raw):
        raise InputError(f"{what} {text!r}: must be 1-4 hex digits within 0000-FFFF")
    return raw.zfill(4)


def parse_size(text: str | int, what: str = "size") -> int:
    """A size such as 512M or 2G (binary units) in bytes; a positive multiple of 4 KiB."""
    if isinstance(text, bool):
        raise InputError(f"{what} {text!r}: not a size")
    if isinstance(text, int):
        value = text
    else:
        m = _SIZE_RE.match(text)
        if not m:
            raise InputError(f"{what} {text!r}: expected a number with K, M, G or T, e.g. 512M")
        value = int(m.group(1)) * _UNITS[m.group(2).upper()]
    if value <= 0 or value % BLOCK:
        raise InputError(f"{what} {text!r}: must be a positive multiple of 4 KiB")
    return value


def format_size(value: int) -> str:
    for unit in ("T", "G", "M", "K"):
        if value % _UNITS[unit] == 0:
            return f"{value // _UNITS[unit]}{unit}"
    return str(value)


class Mode(StrEnum):
    """Link modes of CP LINK: read-only, or write unless another guest writes."""

    RR = "RR"
    MR = "MR"


class GuestState(StrEnum):
    """What CP QUERY userid tells: rc 3, rc 45, rc 0."""

    NO_SUCH = "no_such"
    LOGGED_OFF = "logged_off"
    LOGGED_ON = "logged_on"


class Role(StrEnum):
    """What a guest is for in the pipeline (paper §1.4)."""

    MAINTENANCE = "maintenance"  # S10RWMNT
    TEST = "test"  # S10RWTST
    GOLD = "gold"  # S10GOLD, S10GOLD2: never logged on
    STAGING = "staging"  # S10ROGLD
    WORKER = "worker"  # LNXCLONE: the machine that runs sharedroot
    ADMIN = "admin"  # CMSCLONE: holds the parm files
    RW_CLONE = "rw"  # read-write clone of the gold
    RO_CLONE = "ro"  # read-only clone linking a gold slot


class DiskKind(StrEnum):
    FS = "fs"  # a filesystem
    SWAP = "swap"  # swap on a disk of its own
    VDISK = "vdisk"  # RAM-backed swap made fresh at each start (SWAPGEN)


class Access(StrEnum):
    """How a read-only clone gets a disk: its own copy (rw) or a link to the gold (ro)."""

    RO = "ro"
    RW = "rw"
