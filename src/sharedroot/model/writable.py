"""Writable paths on a read-only root: site.toml's [writable] table (pure, no I/O).

The paper sorts software on a shared read-only root into three kinds: what runs as is
(it writes only in /etc, /var, home directories), what is "read-only, but picky and
needs to be tricked" (it insists on writing inside its own install tree: a log or state
directory under /opt, a lock file in /usr), and what needs writable disks of its own.
This table tricks the second kind, as Red Hat's readonly-root does with rwtab and
statetab: each listed path gets a private writable copy per clone, bound over it at boot.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

from sharedroot.errors import InputError
from sharedroot.model.layout import MOUNT_RULE, Layout, plain_path
from sharedroot.model.types import Access, shown

KEYS = ("where", "start", "kind")
MAX_PATHS = 64
# Where a listed path has no business: it needs no trick there, or it would undo one.
_WRITABLE = "is writable on a clone already (its own disk, or bound from /local)"
_SYSTEM = "is the system's own (it mounts a filesystem there at boot)"
REFUSED = {
    **dict.fromkeys(("/local", "/var", "/etc", "/root", "/srv"), _WRITABLE),
    **dict.fromkeys(("/tmp", "/proc", "/sys", "/dev", "/run"), _SYSTEM),
    # the gold's package database (bound read-only over /var/lib/dpkg) and boot script
    "/usr/lib/sharedroot": "holds sharedroot's own files",
}
UNIT_NAME_MAX = 255  # systemd refuses longer unit names
E = TypeVar("E", bound=StrEnum)
_UNIT_CHARS = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:_.")


class Where(StrEnum):
    """Where a clone keeps its writable copy of the path."""

    LOCAL = "local"  # on the clone's /local disk: kept across reboots and migrations
    VAR = "var"  # on the clone's /var disk: kept across reboots and migrations
    TMPFS = "tmpfs"  # in memory (/run): made again at each boot


class Start(StrEnum):
    """What the writable copy holds when it is made."""

    COPY = "copy"  # the gold's content at the path
    EMPTY = "empty"  # nothing (an empty directory or file, the gold's owner and mode)


class Kind(StrEnum):
    DIR = "dir"
    FILE = "file"  # bound as a single file (a lock file, a counter)


# Where each kind of copy lives on a clone; the path follows, /opt/x -> /local/writable/opt/x.
PRIVATE_ROOT = {
    Where.LOCAL: "/local/writable",
    Where.VAR: "/var/lib/sharedroot/writable",
    Where.TMPFS: "/run/sharedroot/writable",
}


@dataclass(frozen=True)
class WritablePath:
    path: str
    where: Where = Where.LOCAL
    start: Start = Start.COPY
    kind: Kind = Kind.DIR

    def __post_init__(self) -> None:
        # Built by parse_table in practice; this keeps any other maker to the rule too,
        # since the path ends up in unit files and a boot script.
        if self.path == "/" or not plain_path(self.path):
            raise InputError(f"writable path {shown(self.path)}: {MOUNT_RULE}, and not /")
        for value, enum in ((self.where, Where), (self.start, Start), (self.kind, Kind)):
            if not isinstance(value, enum):
                raise InputError(
                    f"writable path {self.path}: {shown(value)} is not a {enum.__name__}"
                )

    @property
    def private(self) -> str:
        """The clone's writable copy, bound over `path` at boot."""
        return PRIVATE_ROOT[self.where] + self.path

    @property
    def unit(self) -> str:
        """The name of the systemd mount unit that binds it."""
        return escape_path(self.path) + ".mount"


def escape_path(path: str) -> str:
    """`systemd-escape --path PATH`: the unit name systemd expects for a mount point.

    Slashes become `-`; bytes other than A-Z a-z 0-9 : _ . (and a leading .) become
    \\xNN, so `/opt/my-app` is `opt-my\\x2dapp`.
    """
    if not path.startswith("/") or not plain_path(path):
        raise InputError(f"writable path {shown(path)}: {MOUNT_RULE}")
    inner = path.strip("/")
    if not inner:
        return "-"
    out = []
    for i, byte in enumerate(inner.encode()):
        if byte == ord("/"):
            out.append("-")
        elif byte in _UNIT_CHARS and not (i == 0 and byte == ord(".")):
            out.append(chr(byte))
        else:
            out.append(f"\\x{byte:02x}")
    return "".join(out)


def _label(key: object) -> str:
    """How an entry is named in messages: as its table header would be written."""
    text = json.dumps(key) if isinstance(key, str) else shown(key)
    return f"[writable.{text if len(text) <= 80 else text[:80] + '...'}]"


def _under(path: str, top: str) -> bool:
    return top == "/" or path == top or path.startswith(top + "/")


def _choice(enum: type[E], value: object, where: str) -> E:
    if not isinstance(value, str):
        raise InputError(f"{where} = {shown(value)}: must be a string")
    try:
        return enum(value)
    except ValueError:
        allowed = ", ".join(e.value for e in enum)
        raise InputError(f"{where} = {shown(value)}: must be one of {allowed}") from None


def check_path(path: object, layout: Layout) -> str:
    """A writable path: plain, on a read-only disk of the layout, not a mount point."""
    label = _label(path)
    if not isinstance(path, str) or path == "/" or not plain_path(path):
        raise InputError(f"{label}: the path {MOUNT_RULE}, and not / itself")
    for top, reason in REFUSED.items():
        if _under(path, top):
            raise InputError(f"{label}: {top} {reason}")
    mounts = [d for d in layout.copied if d.mount is not None]
    for d in mounts:
        if _under(d.mount or "/", path):
            raise InputError(f"{label}: {d.mount} is a disk of the layout; list paths inside it")
    disk = max(
        (d for d in mounts if _under(path, d.mount or "/")), key=lambda d: len(d.mount or "")
    )
    if disk.address not in {d.address for d in layout.shared}:
        raise InputError(f"{label}: {disk.mount} is a read-write disk of the clone already")
    if len(escape_path(path)) + len(".mount") > UNIT_NAME_MAX:
        raise InputError(f"{label}: too long for a systemd unit name once escaped")
    return path


def parse_table(raw: object, layout: Layout) -> tuple[WritablePath, ...]:
    """site.toml's [writable] table: one sub-table per path, keys where, start, kind."""
    if not isinstance(raw, dict):
        raise InputError(f"[writable] = {shown(raw)}: must be a table of paths")
    if len(raw) > MAX_PATHS:
        raise InputError(f"[writable]: {len(raw)} paths; at most {MAX_PATHS}")
    out = [_entry(key, value, layout) for key, value in raw.items()]
    ordered = sorted(out, key=lambda w: w.path)
    for outer, inner in itertools.pairwise(ordered):
        if _under(inner.path, outer.path):
            raise InputError(f"{_label(inner.path)}: inside {_label(outer.path)}; list only one")
    # a plain disk's or a logical volume's (the paper's rwVG holds /var)
    have = {m.mount for m in layout.filesystems if m.access is Access.RW}
    for w in out:
        needed = "/" + w.where.value
        if w.where is not Where.TMPFS and needed not in have:
            raise InputError(
                f"{_label(w.path)} where = {w.where.value!r}: no read-write {needed} disk"
                " in the layout"
            )
    return tuple(out)


def _entry(key: str, value: object, layout: Layout) -> WritablePath:
    path = check_path(key, layout)
    label = _label(key)
    if not isinstance(value, Mapping):
        raise InputError(f"{label} = {shown(value)}: must be a table (where, start, kind)")
    for name in value:
        if name not in KEYS:
            raise InputError(f"{label}: unknown key {shown(name)} (allowed: {', '.join(KEYS)})")
    return WritablePath(
        path,
        _choice(Where, value.get("where", Where.LOCAL.value), f"{label} where"),
        _choice(Start, value.get("start", Start.COPY.value), f"{label} start"),
        _choice(Kind, value.get("kind", Kind.DIR.value), f"{label} kind"),
    )


def render_table(paths: tuple[WritablePath, ...]) -> list[str]:
    """site.toml lines for the table (none when it is empty); parse_table reads them back."""
    if not paths:
        return []
    out = [
        "\n# Paths on the read-only disks that picky software insists on writing: each clone"
        "\n# gets its own writable copy, bound over the path at boot. where: local (kept),"
        "\n# var (kept), tmpfs (new at each boot); start: copy (of the gold's) or empty."
    ]
    for w in paths:
        out.append(f"[writable.{json.dumps(w.path)}]")
        out.append(f'where = "{w.where.value}"')
        out.append(f'start = "{w.start.value}"')
        out.append(f'kind = "{w.kind.value}"')
    return out
