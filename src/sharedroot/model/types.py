"""Pure value types of the paper's world: guests, addresses, sizes, modes, roles.

Every rule here is a full match of the whole text: `re.match` with `$` lets a trailing
newline through, and a value with a newline becomes an extra line in the file it
reaches (a parm file, an fstab, a network unit).
"""

from __future__ import annotations

import re
from enum import StrEnum

from sharedroot.errors import InputError

# Rules match the text as given, in ASCII, before any upper-casing: str.upper() maps
# some other letters to ASCII ones ("\u00df" to "SS", the "ff" ligature to "FF"), and
# re.IGNORECASE matches the Kelvin sign as K.  \d would also take other scripts' digits.
_GUEST_RE = re.compile(r"[A-Za-z0-9@#$]{1,8}")
_ADDR_RE = re.compile(r"(?:0[xX])?([0-9A-Fa-f]{1,4})")
_SIZE_RE = re.compile(r"(0|[1-9][0-9]*) ?([KMGTkmgt]?)(?:[iI]?[bB])?")
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
BLOCK = 4096
# Far beyond any disk of the pipeline; it keeps sizes within what files and mke2fs take.
MAX_SIZE = 16 << 40
_MAX_SIZE_TEXT = 32  # a size with more characters cannot be valid: refuse before int()


def shown(value: object, limit: int = 60) -> str:
    """A value for an error message: repr (so control characters show escaped), cut short."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


EXACT_ADDRESS = re.compile(r"[0-9A-F]{4}")


def exact_address(value: object, what: str = "device address") -> str:
    """An address exactly as the store writes it (4 upper-case hex digits), as a value on
    its way into a guest's file or a hypervisor's command must be: never normalised."""
    if not isinstance(value, str) or not EXACT_ADDRESS.fullmatch(value):
        raise InputError(f"{what} {shown(value)}: must be 4 upper-case hex digits")
    return value


def guest_name(text: object, what: str = "guest name") -> str:
    """A z/VM user ID: 1 to 8 of A-Z 0-9 @ # $, upper-cased; no blank, no line end."""
    if not isinstance(text, str):
        raise InputError(f"{what} {shown(text)}: must be a string")
    name = text
    if not _GUEST_RE.fullmatch(name):
        raise InputError(f"{what} {shown(text)}: must be 1-8 characters of A-Z 0-9 @ # $")
    return name.upper()


def address(text: object, what: str = "address") -> str:
    """A virtual device address, 0000-FFFF, normalised to 4 upper-case hex digits.

    Written as 1B0, 01B0, 01b0 or 0x1b0; no blanks.
    """
    if isinstance(text, bool):
        raise InputError(f"{what} {shown(text)}: must be 1-4 hex digits within 0000-FFFF")
    if isinstance(text, int):
        if not 0 <= text <= 0xFFFF:
            raise InputError(f"{what} {text:#x}: must be within 0000-FFFF")
        return f"{text:04X}"
    if not isinstance(text, str):
        raise InputError(f"{what} {shown(text)}: must be 1-4 hex digits within 0000-FFFF")
    m = _ADDR_RE.fullmatch(text)
    if not m:
        raise InputError(f"{what} {shown(text)}: must be 1-4 hex digits within 0000-FFFF")
    return m.group(1).upper().zfill(4)


def parse_size(text: object, what: str = "size") -> int:
    """A size such as 512M or 2G (binary units) in bytes; a positive multiple of 4 KiB.

    A whole number of bytes (an int) is taken too; bools and floats are not sizes.
    """
    rule = "must be a positive multiple of 4 KiB up to 16T"
    if isinstance(text, bool) or not isinstance(text, int | str):
        raise InputError(f"{what} {shown(text)}: not a size; give bytes or a text like 512M")
    if isinstance(text, int):
        value = text
    else:
        if len(text) > _MAX_SIZE_TEXT:
            raise InputError(f"{what} {shown(text)}: too long for a size; {rule}")
        m = _SIZE_RE.fullmatch(text)
        if not m:
            raise InputError(
                f"{what} {shown(text)}: expected a whole number with K, M, G or T, e.g. 512M"
            )
        value = int(m.group(1)) * _UNITS[m.group(2).upper()]
    if value > MAX_SIZE:
        raise InputError(f"{what} {shown(text)}: too large; {rule}")
    if value <= 0 or value % BLOCK:
        raise InputError(f"{what} {shown(text)}: {rule}")
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


class DeviceBus(StrEnum):
    """How a guest sees its disks, named by address (the paper: never by UUID)."""

    VIRTIO = "virtio"  # /dev/disk/by-id/virtio-01B1 (QEMU virtio-blk, serial=address)
    CCW = "ccw"  # /dev/disk/by-path/ccw-0.0.01b1 (z/VM minidisks, virtio-blk-ccw)


class DiskKind(StrEnum):
    FS = "fs"  # a filesystem
    SWAP = "swap"  # swap on a disk of its own
    VDISK = "vdisk"  # RAM-backed swap made fresh at each start (SWAPGEN)
    LVM = "lvm"  # one LVM physical volume holding a volume group of filesystems (§1.8)


class Switch(StrEnum):
    """A site feature turned on or off (site.toml says `ksm = "on"`)."""

    ON = "on"
    OFF = "off"


class Access(StrEnum):
    """How a read-only clone gets a disk: its own copy (rw) or a link to the gold (ro)."""

    RO = "ro"
    RW = "rw"


class Distro(StrEnum):
    """A distribution `install` builds a golden tree of (guestos/distros: one module each)."""

    DEBIAN_TRIXIE = "debian-trixie"  # Debian 13, the current stable
    DEBIAN_BOOKWORM = "debian-bookworm"  # Debian 12


# What a new site installs unless told otherwise.
DEFAULT_DISTRO = Distro.DEBIAN_TRIXIE


class Initramfs(StrEnum):
    """What builds a system's initramfs, and so where its early /etc binding lives."""

    INITRAMFS_TOOLS = "initramfs-tools"  # Debian, Ubuntu: a local-bottom script
    DRACUT = "dracut"  # SUSE, Red Hat, Fedora: a dracut module (90sharedroot)


class Network(StrEnum):
    """What configures a system's NIC, and so which files findself writes."""

    NETWORKD = "networkd"  # systemd-networkd: a .network file
    IFUPDOWN = "ifupdown"  # /etc/network/interfaces.d
    NETWORKMANAGER = "networkmanager"  # a keyfile in /etc/NetworkManager/system-connections
