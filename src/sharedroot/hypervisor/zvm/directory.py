"""The z/VM user directory: its entries as typed values, and two ways to change it.

`SmcliDirectory` changes it through SMAPI's `smcli` (Feilong's zthin syntax, with
`--addRCheader`); `ManualDirectory` prints the statement in the paper's syntax for
the administrator to put into USER DIRECT (DIRECTXA / DirMaint), then waits until CP
shows the change online. The directory, not state.db, is the truth about users,
minidisks and links.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from sharedroot.errors import OperationError, RefusedError
from sharedroot.hypervisor.zvm.cp import Cp, userid, vdev
from sharedroot.model.types import GuestState
from sharedroot.run import run

Say = Callable[[str], None]


# --------------------------------------------------------------------------- entries


@dataclass(frozen=True)
class Mdisk:
    """`MDISK vdev devtype start count volser mode` (or AUTOG count group, V-DISK)."""

    vdev: str
    devtype: str
    size: int  # cylinders (3390) or 512-byte blocks (FB-512)
    vdisk: bool  # FB-512 V-DISK: RAM-backed, made at logon

    @property
    def blocks(self) -> bool:
        return self.devtype.upper().startswith("FB") or self.vdisk


@dataclass(frozen=True)
class Link:
    """`LINK owner owner_vdev vdev mode`."""

    owner: str
    owner_vdev: str
    vdev: str
    mode: str

    def statement(self) -> str:
        return f"LINK {self.owner} {self.owner_vdev} {self.vdev} {self.mode}"


@dataclass(frozen=True)
class Entry:
    """One USER (or PROFILE) entry of the directory, with its raw lines."""

    kind: str  # USER or PROFILE
    name: str
    password: str | None
    includes: tuple[str, ...]
    mdisks: tuple[Mdisk, ...]
    links: tuple[Link, ...]
    lines: tuple[str, ...] = field(repr=False)

    def mdisk(self, address: str) -> Mdisk | None:
        return next((m for m in self.mdisks if m.vdev == address), None)

    def link(self, address: str) -> Link | None:
        return next((lk for lk in self.links if lk.vdev == address), None)

    @property
    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _addr(text: str, where: str) -> str:
    if not re.fullmatch(r"[0-9A-Fa-f]{1,4}", text):
        raise OperationError(f"{where}: {text!r} is not a device number")
    return text.upper().zfill(4)


def parse_entry(text: str) -> Entry:
    """A directory entry (USER or PROFILE line first) as typed statements."""
    lines = [ln.rstrip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln.strip() and not ln.lstrip().startswith("*")]
    if not lines:
        raise OperationError("empty directory entry")
    head = lines[0].split()
    if head[0].upper() not in ("USER", "PROFILE", "IDENTITY") or len(head) < 2:
        raise OperationError(f"directory entry starts with {lines[0]!r}, not USER or PROFILE")
    kind = "PROFILE" if head[0].upper() == "PROFILE" else "USER"
    includes: list[str] = []
    mdisks: list[Mdisk] = []
    links: list[Link] = []
    for line in lines[1:]:
        words = line.split()
        stmt = words[0].upper()
        where = f"{head[1]}: {line.strip()!r}"
        if stmt == "INCLUDE" and len(words) >= 2:
            includes.append(words[1].upper())
        elif stmt == "LINK" and len(words) >= 4:
            mode = words[4].upper() if len(words) > 4 else "R"
            links.append(
                Link(words[1].upper(), _addr(words[2], where), _addr(words[3], where), mode)
            )
        elif stmt == "MDISK" and len(words) >= 4:
            mdisks.append(_mdisk(words, where))
    return Entry(
        kind,
        head[1].upper(),
        head[2] if kind == "USER" and len(head) > 2 else None,
        tuple(includes),
        tuple(mdisks),
        tuple(links),
        tuple(lines),
    )


def _mdisk(words: list[str], where: str) -> Mdisk:
    address, devtype = _addr(words[1], where), words[2].upper()
    rest = [w.upper() for w in words[3:]]
    if rest[0] == "V-DISK" and len(rest) > 1:
        return Mdisk(address, devtype, _count(rest[1], where), True)
    if rest[0] in ("AUTOG", "AUTOR", "AUTOV", "T-DISK") and len(rest) > 1:
        return Mdisk(address, devtype, _count(rest[1], where), False)
    if rest[0] == "DEVNO":
        return Mdisk(address, devtype, 0, False)
    if len(rest) > 1:  # start count volser mode
        return Mdisk(address, devtype, _count(rest[1], where), False)
    raise OperationError(f"{where}: MDISK statement without a size")


def _count(text: str, where: str) -> int:
    if text == "END":
        return 0  # to the end of the volume: the size is not in the statement
    if not text.isdecimal():
        raise OperationError(f"{where}: {text!r} is not a size")
    return int(text)


def user_entry(name: str, password: str, storage: str, maxstorage: str, include: str) -> str:
    """A new USER entry in the paper's syntax."""
    return f"USER {name} {password} {storage} {maxstorage} G\nINCLUDE {include}\n"


def admin_entry(name: str, password: str) -> str:
    """CMSCLONE's kind of entry: a CMS user owning the admin disks (no profile: the base
    profile LINKs its 0192 as 0191, where the admin has its own minidisk)."""
    return (
        f"USER {name} {password} 64M 128M G\nIPL CMS\nMACHINE ESA 4\nCONSOLE 009 3215 T\n"
        "LINK MAINT 0190 0190 RR\nLINK MAINT 019D 019D RR\nLINK MAINT 019E 019E RR\n"
    )


def with_statement(entry: Entry, statement: str) -> str:
    return "\n".join([*entry.lines, statement]) + "\n"


def without_link(entry: Entry, address: str) -> str:
    keep = [ln for ln in entry.lines if not _is_link_at(ln, address)]
    return "\n".join(keep) + "\n"


def with_include(entry: Entry, profile: str, drop_links: tuple[str, ...] = ()) -> str:
    """The entry INCLUDing `profile` instead of its profile; LINKs at `drop_links` gone
    (the profile brings them)."""
    out = [entry.lines[0], f"INCLUDE {profile}"]
    for line in entry.lines[1:]:
        words = line.split()
        if words[0].upper() == "INCLUDE":
            continue
        if any(_is_link_at(line, a) for a in drop_links):
            continue
        out.append(line)
    return "\n".join(out) + "\n"


def _is_link_at(line: str, address: str) -> bool:
    words = line.split()
    return (
        len(words) >= 4
        and words[0].upper() == "LINK"
        and re.fullmatch(r"[0-9A-Fa-f]{1,4}", words[3]) is not None
        and words[3].upper().zfill(4) == address
    )


# --------------------------------------------------------------------------- methods


class Directory(Protocol):
    method: str
    readable: bool  # whether entries can be read back (smcli) or not (manual)

    def exists(self, user: str) -> bool: ...
    def entry(self, user: str) -> Entry | None: ...
    def profile(self, name: str) -> Entry | None: ...
    def create(self, user: str, text: str) -> None: ...
    def delete(self, user: str) -> None: ...
    def add_statement(self, user: str, statement: str) -> None: ...
    def remove_link(self, user: str, address: str) -> None: ...
    def set_include(self, user: str, profile: str, drop_links: tuple[str, ...]) -> None: ...
    def add_mdisk(self, user: str, address: str, cylinders: int) -> None: ...
    def delete_mdisk(self, user: str, address: str) -> None: ...


# SMAPI (rc, rs) -> what it means for sharedroot's user, and what to do.
_SMAPI_REFUSALS = {
    (200, 4): "no such image",
    (204, 8): "the device does not exist",
    (204, 12): "the device is busy",
    (400, 4): "no such user or profile in the directory",
    (400, 8): "the name is already defined in the directory",
    (400, 12): "the directory entry is locked (DIRM FOR user UNLOCK when nobody edits it)",
    (404, 4): "a device is already defined at that address",
    (404, 8): "no device is defined at that address",
    (408, 4): "the minidisk is already defined",
    (408, 8): "no minidisk is defined at that address",
    (436, 4): "the profile it INCLUDEs is not in the directory",
}


class SmcliError(OperationError):
    def __init__(self, message: str, rc: int, rs: int) -> None:
        super().__init__(message)
        self.rc = rc
        self.rs = rs


class SmapiRefused(RefusedError):
    def __init__(self, message: str, rc: int, rs: int) -> None:
        super().__init__(message)
        self.rc = rc
        self.rs = rs


class SmcliDirectory:
    """The directory through SMAPI: `smcli FUNCTION --addRCheader -T target ...`."""

    method = "smcli"
    readable = True

    def __init__(self, program: str, group: str, device_type: str) -> None:
        self.program = program
        self.group = group
        self.device_type = device_type

    def call(self, function: str, target: str, *args: str) -> list[str]:
        """The response lines of a successful call; else SmapiRefused / SmcliError."""
        argv = [self.program, function, "--addRCheader", "-T", userid(target), *args]
        proc = run(argv, check=False)
        lines = proc.stdout.splitlines()
        if proc.returncode == 0:
            return lines[1:]  # line 1 is the rc header
        head = lines[0] if lines else ""
        m = re.match(r"\s*(\d+)\s+(\d+)\s+(-?\d+)\s*(?:\(details\))?\s*(.*)", head)
        detail = " ".join(" ".join(lines[1:]).split()) or " ".join(proc.stderr.split())
        if m is None:
            raise OperationError(
                f"smcli {function} {target}: exit {proc.returncode}: {head or detail};"
                f" is {self.program} Feilong's zthin smcli, and is SMAPI up (VSMGUARD)?"
            )
        overall, rc, rs, text = int(m.group(1)), int(m.group(2)), int(m.group(3)), m.group(4)
        what = _SMAPI_REFUSALS.get((rc, rs))
        where = f"smcli {function} {target}"
        said = " ".join(x for x in (text.strip(), detail) if x) or "no text"
        if what is not None:
            raise SmapiRefused(f"{where}: {what} (SMAPI rc {rc} rs {rs}: {said})", rc, rs)
        raise SmcliError(
            f"{where}: SMAPI failed (overall rc {overall}, rc {rc}, rs {rs}: {said});"
            " see the SMAPI log on z/VM (VSMWORK1) and that the worker is authorized in"
            " VSMWORK1 AUTHLIST",
            rc,
            rs,
        )

    def names(self) -> set[str]:
        return {ln.split()[0].upper() for ln in self.call("Image_Name_Query_DM", "*") if ln.split()}

    def exists(self, user: str) -> bool:
        return self.entry(user) is not None

    def entry(self, user: str) -> Entry | None:
        try:
            lines = self.call("Image_Query_DM", user)
        except SmapiRefused as exc:
            if (exc.rc, exc.rs) == (400, 4):
                return None
            raise
        return parse_entry("\n".join(lines))

    def profile(self, name: str) -> Entry | None:
        """A PROFILE entry (Profile_Query_DM; Image_Query_DM where that is missing)."""
        try:
            lines = self.call("Profile_Query_DM", name)
        except (SmapiRefused, SmcliError) as exc:
            if (exc.rc, exc.rs) == (400, 4):
                return None
            if exc.rc != 900:  # 900: this SMAPI has no such function
                raise
            entry = self.entry(name)
            return entry if entry is not None and entry.kind == "PROFILE" else None
        return parse_entry("\n".join(lines))

    def _with_file(self, function: str, user: str, text: str) -> None:
        fd, name = tempfile.mkstemp(prefix=f"sharedroot-{user}-", suffix=".direct")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
            self.call(function, user, "-f", name)
        finally:
            os.unlink(name)

    def create(self, user: str, text: str) -> None:
        self._with_file("Image_Create_DM", user, text)

    def delete(self, user: str) -> None:
        self.call("Image_Delete_DM", user, "-e", "0")

    def _replace(self, user: str, change: Callable[[Entry], str]) -> None:
        # As Feilong does: lock the entry, replace it (which unlocks), unlock on failure.
        self.call("Image_Lock_DM", user)
        try:
            entry = self.entry(user)
            if entry is None:
                raise RefusedError(f"{user} is not in the z/VM directory")
            self._with_file("Image_Replace_DM", user, change(entry))
        except BaseException:
            with contextlib.suppress(SmapiRefused, SmcliError):  # not locked any more
                self.call("Image_Unlock_DM", user)
            raise

    def add_statement(self, user: str, statement: str) -> None:
        self._replace(user, lambda e: with_statement(e, statement))

    def remove_link(self, user: str, address: str) -> None:
        self._replace(user, lambda e: without_link(e, address))

    def set_include(self, user: str, profile: str, drop_links: tuple[str, ...]) -> None:
        self._replace(user, lambda e: with_include(e, profile, drop_links))

    def add_mdisk(self, user: str, address: str, cylinders: int) -> None:
        self.call(
            "Image_Disk_Create_DM", user, "-v", vdev(address), "-t", self.device_type,
            "-a", "AUTOG", "-r", self.group, "-u", "1", "-z", str(cylinders),
            "-m", "MR", "-f", "1",
        )  # fmt: skip

    def delete_mdisk(self, user: str, address: str) -> None:
        self.call("Image_Disk_Delete_DM", user, "-v", vdev(address), "-e", "0")


class ManualDirectory:
    """The administrator changes USER DIRECT; sharedroot prints what, then waits for CP."""

    method = "manual"
    readable = False

    def __init__(
        self,
        cp: Cp,
        say: Say,
        wait: float,
        group: str,
        device_type: str,
        linkable: Callable[[str, str], bool],
    ) -> None:
        self.cp = cp
        self.say = say
        self.wait = wait
        self.group = group
        self.device_type = device_type
        self.linkable = linkable  # whether the worker can LINK a minidisk (it is online)

    def _until(self, what: str, done: Callable[[], bool]) -> None:
        deadline = time.monotonic() + self.wait
        while not done():
            if time.monotonic() >= deadline:
                raise OperationError(
                    f"{what} did not come online within {self.wait:.0f}s; make the change"
                    " in USER DIRECT, bring it online (DIRECTXA USER DIRECT, or DirMaint),"
                    " then run the command again"
                )
            time.sleep(2)

    def _tell(self, intro: str, text: str) -> None:
        self.say(f"{intro}\n{text.rstrip()}\n(then DIRECTXA USER DIRECT; waiting for CP)")

    def exists(self, user: str) -> bool:
        return self.cp.user_state(user) is not GuestState.NO_SUCH

    def entry(self, user: str) -> Entry | None:
        return None  # not readable from Linux without SMAPI

    def profile(self, name: str) -> Entry | None:
        return None

    def create(self, user: str, text: str) -> None:
        self._tell(f"Add this entry to USER DIRECT for {user}:", text)
        self._until(f"the directory entry of {user}", lambda: self.exists(user))

    def delete(self, user: str) -> None:
        self._tell(f"Remove the entry of {user} from USER DIRECT:", f"USER {user} ...")
        self._until(f"the removal of {user}", lambda: not self.exists(user))

    def add_statement(self, user: str, statement: str) -> None:
        # CP cannot show a logged-off user's LINK statements: nothing to wait for.
        self.say(f"Add to the entry of {user} in USER DIRECT:\n{statement}")

    def remove_link(self, user: str, address: str) -> None:
        self.say(f"Remove from the entry of {user} in USER DIRECT the LINK at {address}")

    def set_include(self, user: str, profile: str, drop_links: tuple[str, ...]) -> None:
        extra = f" and its LINKs at {' '.join(drop_links)}" if drop_links else ""
        self.say(f"In the entry of {user}, replace its INCLUDE{extra} with:\nINCLUDE {profile}")

    def add_mdisk(self, user: str, address: str, cylinders: int) -> None:
        statement = f"MDISK {address} {self.device_type} AUTOG {cylinders} {self.group} MR"
        self._tell(f"Add to the entry of {user} in USER DIRECT:", statement)
        self._until(f"{user} {address}", lambda: self.linkable(user, address))

    def delete_mdisk(self, user: str, address: str) -> None:
        self._tell(f"Remove from the entry of {user} in USER DIRECT:", f"MDISK {address} ...")
        self._until(f"the removal of {user} {address}", lambda: not self.linkable(user, address))
