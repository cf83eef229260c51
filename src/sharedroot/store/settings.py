"""The one table of site settings: it feeds site.toml, its validation and `init`'s options.

As in mkosi, each setting is declared once, with its parser, default and help; the
config loader and the command line are both generated from this table.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sharedroot.errors import InputError
from sharedroot.model.hosturi import host_uri
from sharedroot.model.layout import check_plain_path
from sharedroot.model.types import DEFAULT_DISTRO, Distro, Switch, shown

BACKENDS = ("local", "zvm", "libvirt")
MAX_HOSTS = 64
DISTROS = tuple(Distro)


def _choice(options: tuple[str, ...]) -> Callable[[Any, str], Any]:
    def parse(value: Any, key: str) -> str:
        if not isinstance(value, str) or value not in options:
            raise InputError(f"{key} = {shown(value)}: must be one of {', '.join(options)}")
        return value

    return parse


# Plain ASCII decimal: str.isdigit() also takes digits int() refuses (superscripts).
_WHOLE = re.compile(r"0|[1-9][0-9]{0,8}")
# The longest role suffix is RWMNT/RWTST/ROGLD (5), so names stay within 8 characters.
_PREFIX = re.compile(r"[A-Za-z0-9@#$]{0,3}")


def _switch(value: Any, key: str) -> Switch:
    return Switch(_choice(tuple(Switch))(value, key))


def _int_range(lo: int, hi: int) -> Callable[[Any, str], Any]:
    def parse(value: Any, key: str) -> int:
        number = int(value) if isinstance(value, str) and _WHOLE.fullmatch(value) else value
        if isinstance(number, bool) or not isinstance(number, int) or not lo <= number <= hi:
            raise InputError(f"{key} = {shown(value)}: must be a whole number from {lo} to {hi}")
        return number

    return parse


def _prefix(value: Any, key: str) -> str:
    if not isinstance(value, str) or not _PREFIX.fullmatch(value):
        raise InputError(f"{key} = {shown(value)}: must be 0-3 characters of A-Z 0-9 @ # $")
    return value.upper()


_HEX_RANGE = re.compile(r"([0-9A-Fa-f]{4})-([0-9A-Fa-f]{4})")
_POOL = re.compile(r"[A-Za-z0-9@#$]{1,8}")


def _address_range(value: Any, key: str) -> str:
    m = _HEX_RANGE.fullmatch(value) if isinstance(value, str) else None
    if m is None or int(m[1], 16) > int(m[2], 16):
        raise InputError(f"{key} = {shown(value)}: must be FROM-TO, two 4-digit hex addresses")
    return f"{m[1]}-{m[2]}".upper()


def _pool(value: Any, key: str) -> str:
    if not isinstance(value, str) or not _POOL.fullmatch(value):
        raise InputError(f"{key} = {shown(value)}: must be 1-8 characters of A-Z 0-9 @ # $")
    return value.upper()


def _program(value: Any, key: str) -> str:
    # A program name looked up on PATH, or an absolute path: never a shell snippet.
    if not isinstance(value, str) or not re.fullmatch(
        r"[A-Za-z0-9_.+-]+|(/[A-Za-z0-9_.+-]+)+", value
    ):
        raise InputError(f"{key} = {shown(value)}: must be a program name or an absolute path")
    return str(value)


def _hosts(value: Any, key: str) -> tuple[str, ...]:
    """Host URIs, normalised, each once; none (the default) until the backend is libvirt."""
    if not isinstance(value, list | tuple) or len(value) > MAX_HOSTS:
        raise InputError(f"{key} = {shown(value)}: must be a list of up to {MAX_HOSTS} host URIs")
    uris = tuple(host_uri(v, key).uri for v in value)
    for n, uri in enumerate(uris):
        if uri in uris[:n]:
            raise InputError(f"{key} {uri}: the same host is named twice")
    return uris


def _pool_dir(value: Any, key: str) -> str:
    """The shared pool's directory: empty (the default) until the backend is libvirt."""
    if value == "":
        return ""
    return check_plain_path(value, f"{key} =")


@dataclass(frozen=True)
class Setting:
    key: str  # the key in its section of site.toml; `init` takes it as --key (--zvm-key)
    parse: Callable[[Any, str], Any]
    default: Any
    help: str
    metavar: str = "VALUE"
    section: str = "site"  # [site], or the table of the backend it belongs to ([zvm])
    name: str | None = None  # `init`'s option when not --key or --section-key (--host)
    repeat: bool = False  # the option is given once per value (--host A --host B)

    @property
    def option(self) -> str:
        """The argparse dest of this setting (and, in dashes, its default `init` option)."""
        prefix = "" if self.section == "site" else f"{self.section}_"
        return f"{prefix}{self.key}"

    @property
    def flag(self) -> str:
        """The `init` option: --key, --section-key, or the name the table gives."""
        return "--" + (self.name or self.option.replace("_", "-"))


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "backend",
        _choice(BACKENDS),
        "local",
        "hypervisor backend: local (image files + QEMU, the embedded default), zvm, or"
        " libvirt (guests as libvirt domains on one or more hosts, images in a shared pool)",
        "NAME",
    ),
    Setting(
        "prefix",
        _prefix,
        "S10",
        "prefix of the pipeline's guest names, as S10 in S10RWMNT, S10GOLD (paper: S10)",
        "PFX",
    ),
    Setting(
        "gold_slots",
        _int_range(1, 9),
        2,
        "number of gold slots (paper: S10GOLD and S10GOLD2) for rolling updates",
        "N",
    ),
    Setting(
        "distro",
        _choice(DISTROS),
        DEFAULT_DISTRO.value,
        "Linux distribution `install` lays down",
        "D",
    ),
    Setting(
        "memory_mb",
        _int_range(128, 65536),
        512,
        "memory of each guest in MiB (local backend)",
        "MIB",
    ),
    Setting(
        "dax",
        _switch,
        Switch.ON,
        "map a read-only clone's shared gold disks as persistent memory with DAX (local"
        " backend; the paper's DCSS): one copy of the gold in host memory for all clones."
        " Used where the gold is ready for it (made by mnt2rogld) and the disk's size is a"
        " multiple of 128 MiB; other disks are attached as virtio-blk",
        "on|off",
    ),
    Setting(
        "ksm",
        _switch,
        Switch.OFF,
        "on: starting a guest turns on the host's KSM (host-wide) and lets it merge the"
        " guest's memory (local backend): memory saved for the CPU time ksmd spends",
        "on|off",
    ),
)

# The z/VM backend's settings: [zvm] in site.toml (see the paper's LNXCLONE, §1.4).
ZVM_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "directory",
        _choice(("smcli", "manual")),
        "smcli",
        "how user directory changes are made: smcli (SMAPI through Feilong's zthin) or"
        " manual (sharedroot prints the USER DIRECT entry; an administrator applies it)",
        "METHOD",
        "zvm",
    ),
    Setting(
        "smcli",
        _program,
        "smcli",
        "the smcli program (on PATH, else /opt/zthin/bin/smcli)",
        "PATH",
        "zvm",
    ),
    Setting(
        "link_range",
        _address_range,
        "F000-F0FF",
        "worker (LNXCLONE) addresses that sharedroot LINKs other guests' disks at",
        "FROM-TO",
        "zvm",
    ),
    Setting(
        "device_type",
        _choice(("3390",)),
        "3390",
        "device type of new minidisks (ECKD 3390: dasdfmt, fdasd, partition 1)",
        "TYPE",
        "zvm",
    ),
    Setting(
        "allocation_group",
        _pool,
        "POOL1",
        "SMAPI allocation group (region) new minidisks are taken from",
        "GROUP",
        "zvm",
    ),
    Setting(
        "signal_within",
        _int_range(0, 3600),
        60,
        "seconds `stop` gives a guest (SIGNAL SHUTDOWN ... WITHIN n) before FORCE",
        "SECONDS",
        "zvm",
    ),
    Setting(
        "manual_wait",
        _int_range(0, 86400),
        3600,
        "seconds the manual directory method waits for CP to show a change online",
        "SECONDS",
        "zvm",
    ),
)

# The libvirt backend's settings: [libvirt] in site.toml.
LIBVIRT_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "hosts",
        _hosts,
        (),
        "a host whose libvirtd runs guests (give it once per host): qemu:///system (this"
        " machine), qemu+ssh://[USER@]HOST[:PORT]/system or qemu+tcp://HOST[:PORT]/system",
        "URI",
        "libvirt",
        name="host",
        repeat=True,
    ),
    Setting(
        "pool",
        _pool_dir,
        "",
        "directory every host sees at the same path (NFS in production): the gold slots'"
        " and every guest's disks live there as volumes; the store stays with the controller",
        "PATH",
        "libvirt",
        name="pool",
    ),
)

SETTINGS_BY_KEY = {s.key: s for s in SETTINGS}
ZVM_SETTINGS_BY_KEY = {s.key: s for s in ZVM_SETTINGS}
LIBVIRT_SETTINGS_BY_KEY = {s.key: s for s in LIBVIRT_SETTINGS}
