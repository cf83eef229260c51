"""The source user directory (USER DIRECT): parse, query, edit, write.

Statements are kept as the lines they were read from, so a rewrite keeps comments, order
and statements the emulator does not interpret (NICDEF, SPOOL, COMMAND, ...).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import NamedTuple

_HEX = re.compile(r"[0-9A-F]{1,4}")


def norm_vdev(text: str) -> str:
    """`192` -> `0192`; raises ValueError for anything that is not 1-4 hex digits."""
    up = text.upper()
    if not _HEX.fullmatch(up):
        raise ValueError(f"not a device number: {text}")
    return up.zfill(4)


def is_vdev(text: str) -> bool:
    return bool(_HEX.fullmatch(text.upper()))


def tokens(line: str) -> list[str]:
    """A statement's words, upper-cased; [] for comments and blank lines."""
    stripped = line.strip()
    if not stripped or stripped.startswith("*"):
        return []
    return stripped.upper().split()


class Mdisk(NamedTuple):
    vdev: str
    devtype: str  # "3390" or "FB-512"
    start: str  # start cylinder, or "V-DISK" / "T-DISK"
    size: int  # cylinders (ECKD) or blocks (V-DISK)
    volser: str
    mode: str  # R RR W WR M MR MW (V-DISK: MWV etc.)
    passwords: tuple[str, ...] = ()

    @property
    def vdisk(self) -> bool:
        return self.start in ("V-DISK", "T-DISK")

    def line(self) -> str:
        if self.vdisk:
            return f"MDISK {self.vdev} {self.devtype} {self.start} {self.size} {self.mode}"
        pw = "".join(f" {p}" for p in self.passwords)
        return (
            f"MDISK {self.vdev} {self.devtype} {self.start} {self.size:04d} {self.volser} "
            f"{self.mode}{pw}"
        )


def parse_mdisk(words: list[str]) -> Mdisk | None:
    """MDISK vdev devtype start count volser mode [pw...] | MDISK vdev FB-512 V-DISK n mode."""
    try:
        vdev = norm_vdev(words[1])
        if words[3] in ("V-DISK", "T-DISK"):
            return Mdisk(
                vdev, words[2], words[3], int(words[4]), "", words[5] if len(words) > 5 else "MR"
            )
        return Mdisk(vdev, words[2], words[3], int(words[4]), words[5], words[6], tuple(words[7:]))
    except (IndexError, ValueError):
        return None


class Link(NamedTuple):
    owner: str
    vdev1: str
    vdev2: str
    mode: str


def parse_link(words: list[str]) -> Link | None:
    """LINK userid vdev1 vdev2 [mode] (a directory LINK; `*` = the entry itself)."""
    try:
        mode = words[4] if len(words) > 4 else "R"
        return Link(words[1], norm_vdev(words[2]), norm_vdev(words[3]), mode)
    except (IndexError, ValueError):
        return None


class Entry:
    """One USER or PROFILE entry: its lines as read (comments just above it included)."""

    def __init__(self, kind: str, name: str, lines: list[str] | None = None) -> None:
        self.kind = kind  # USER, PROFILE (or IDENTITY, kept as is)
        self.name = name
        self.lines = lines if lines is not None else []

    def statements(self) -> list[list[str]]:
        return [w for w in (tokens(line) for line in self.lines) if w]

    @property
    def words(self) -> list[str]:
        return self.statements()[0]

    @property
    def password(self) -> str:
        w = self.words
        return w[2] if len(w) > 2 else ""

    @property
    def privclasses(self) -> str:
        w = self.words
        return w[5] if len(w) > 5 else "G"

    def mdisks(self) -> list[Mdisk]:
        out = []
        for w in self.statements():
            if w[0] == "MDISK":
                m = parse_mdisk(w)
                if m is not None:
                    out.append(m)
        return out

    def mdisk(self, vdev: str) -> Mdisk | None:
        return next((m for m in self.mdisks() if m.vdev == vdev), None)

    def options(self) -> set[str]:
        return {o for w in self.statements() if w[0] == "OPTION" for o in w[1:]}

    def text(self) -> str:
        return "".join(line + "\n" for line in self.lines)


class Directory:
    def __init__(self) -> None:
        self.header: list[str] = []  # lines before the first entry (DIRECTORY, comments)
        self.entries: dict[str, Entry] = {}

    def user(self, name: str) -> Entry | None:
        e = self.entries.get(name.upper())
        return e if e is not None and e.kind == "USER" else None

    def users(self) -> list[str]:
        return [n for n, e in self.entries.items() if e.kind == "USER"]

    def expanded(self, entry: Entry) -> list[list[str]]:
        """The entry's statements with each INCLUDE replaced by its profile's statements."""
        out: list[list[str]] = []
        for w in entry.statements():
            if w[0] == "INCLUDE" and len(w) > 1:
                prof = self.entries.get(w[1])
                if prof is not None and prof.kind == "PROFILE":
                    out.extend(p for p in prof.statements() if p[0] != "PROFILE")
                continue
            out.append(w)
        return out

    def text(self) -> str:
        out = "".join(line + "\n" for line in self.header)
        return out + "".join(e.text() for e in self.entries.values())

    def put(self, entry: Entry) -> None:
        self.entries[entry.name] = entry


_ENTRY_START = ("USER", "PROFILE", "IDENTITY", "SUBCONFIG")


def parse(text: str) -> Directory:
    d = Directory()
    current: Entry | None = None
    for raw in text.splitlines():
        line = raw.rstrip()
        w = tokens(line)
        if w and w[0] in _ENTRY_START and len(w) > 1:
            # comments just above an entry belong to it, not to the entry before
            lead: list[str] = []
            owner_lines = current.lines if current is not None else d.header
            while owner_lines and not tokens(owner_lines[-1]):
                lead.insert(0, owner_lines.pop())
            current = Entry(w[0], w[1], [*lead, line])
            d.entries[current.name] = current
        elif current is None:
            d.header.append(line)
        else:
            current.lines.append(line)
    return d


def parse_entry(text: str) -> Entry | None:
    """One USER entry from a file (as Image_Create_DM / Image_Replace_DM receive it)."""
    d = parse(text)
    users = [e for e in d.entries.values() if e.kind == "USER"]
    if len(users) != 1 or len(d.entries) != 1:
        return None
    return users[0]


def load(path: Path) -> Directory:
    return parse(path.read_text())


def save(path: Path, d: Directory) -> None:
    """Rewrite atomically (temporary file + rename), so a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(d.text())
    os.replace(tmp, path)
