"""etcmerge: three-way merge of a read-only clone's /etc when it moves to another gold slot.

Each read-only clone keeps its own /etc in /local/etc, copied from the gold slot it was
cloned from.  When the clone is migrated to a newer slot (paper §1.7) that copy must take
the new gold's changes without losing the clone's own, as OSTree does on upgrade:

    base   = the old slot's /etc template        (what the clone started from)
    theirs = the new slot's /etc template        (what the gold changed)
    ours   = the clone's /local/etc              (what the clone changed)

Rollback is the same merge with base and theirs swapped.

Paths are compared as whole entries: a regular file by content, mode, owner and
xattrs; a symlink by its target (and owner, xattrs); a device by its number; a
directory by its own mode, owner and xattrs.  Where ours and theirs are both
directories the directory's metadata merges on its own and the entries inside merge one
by one.  Anywhere else (an entry added, removed, or changing type) the entry is taken as
a whole, a directory with everything in it, so a directory the gold removed goes only
when nothing inside it was changed or added here.

`plan_merge` only reads.  `apply_merge` carries a plan out, one change at a time, each
of which can be repeated without harm (new content goes to a temporary name beside the
target and is renamed into place; removing a missing path is done), so an interrupted
apply is finished by applying the same plan again.  With a journal it records which
changes are done, and before it touches a path of ours it saves what was there in a
backup directory, so `undo_merge` can put ours back exactly.

None of the three trees is trusted: every path is reached one component at a time from a
descriptor of its root with O_NOFOLLOW, so a symlink in any tree (ours/x -> /) is only
ever read or replaced as a symlink, never followed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from sharedroot.errors import InputError, OperationError, RefusedError
from sharedroot.guestos.fdpath import join, lstat_at

NEW_SUFFIX = ".sharedroot-new"
# Names this module leaves beside a target only while it works on it; plan_merge ignores
# them (they are not the clone's configuration).
_TMP_PREFIX = ".sharedroot-tmp."
_OLD_PREFIX = ".sharedroot-old."
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO swapped in for a file between lstat and open must not hang us.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_JOURNAL_FORMAT = "sharedroot-etcmerge-journal"
_JOURNAL_VERSION = 1


class Action(StrEnum):
    TAKE_NEW = "take-new"  # unchanged here, changed in the gold: take the gold's
    ADD = "add"  # new in the gold
    REMOVE = "remove"  # removed in the gold, unchanged here
    KEEP_BOTH = "keep-both"  # changed on both sides: keep ours, write theirs as .sharedroot-new
    KEEP_LOCAL_REMOVED = "keep-local-removed"  # removed in the gold, changed here: keep ours


@dataclass(frozen=True)
class Change:
    """One path (relative to the /etc roots) and what the merge does to it.

    `metadata_only` marks a directory that is a directory on both sides: the change is
    to its own mode, owner and xattrs, never to what it holds.  A KEEP_BOTH of that kind
    writes nothing (a `.sharedroot-new` directory would say nothing useful); the reason
    names the gold's metadata.
    """

    path: str
    action: Action
    reason: str
    metadata_only: bool = False

    @property
    def target(self) -> str:
        """The path of ours this change writes or removes."""
        return self.path + NEW_SUFFIX if self.action is Action.KEEP_BOTH else self.path

    @property
    def writes(self) -> bool:
        """Whether applying the change touches ours at all."""
        if self.action is Action.KEEP_LOCAL_REMOVED:
            return False
        return not (self.action is Action.KEEP_BOTH and self.metadata_only)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"path": self.path, "action": str(self.action)}
        data["reason"] = self.reason
        if self.metadata_only:
            data["metadata_only"] = True
        return data

    @classmethod
    def from_json(cls, data: object) -> Change:
        if not isinstance(data, dict):
            raise InputError(f"etcmerge: a change must be an object, not {data!r}")
        try:
            path, action, reason = data["path"], Action(data["action"]), data["reason"]
        except (KeyError, ValueError) as exc:
            raise InputError(f"etcmerge: bad change {data!r}: {exc}") from None
        meta = data.get("metadata_only", False)
        if not isinstance(path, str) or not isinstance(reason, str) or not isinstance(meta, bool):
            raise InputError(f"etcmerge: bad change {data!r}")
        _split(path)  # validates
        return cls(path, action, reason, meta)


@dataclass(frozen=True)
class Plan:
    """The changes, in the order they are applied (a directory before what it holds),
    and notes on entries the merge skipped."""

    changes: tuple[Change, ...]
    notes: tuple[str, ...] = ()

    @property
    def conflicts(self) -> tuple[Change, ...]:
        """The changes a person should look at: both sides changed the path."""
        kinds = (Action.KEEP_BOTH, Action.KEEP_LOCAL_REMOVED)
        return tuple(c for c in self.changes if c.action in kinds)

    def counts(self) -> dict[str, int]:
        """Changes per action, every action present (zero included)."""
        counts = {str(a): 0 for a in Action}
        for change in self.changes:
            counts[str(change.action)] += 1
        return counts

    def to_json(self) -> list[dict[str, Any]]:
        return [c.to_json() for c in self.changes]

    @classmethod
    def from_json(cls, data: object, notes: tuple[str, ...] = ()) -> Plan:
        if not isinstance(data, list):
            raise InputError("etcmerge: a plan must be a list of changes")
        return cls(tuple(Change.from_json(d) for d in data), notes)


# --- reading the trees ---------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    """What is compared of one path (never its times, its size or its inode)."""

    kind: str  # file, symlink, dir, fifo, chr, blk
    mode: int  # permission bits, setuid/setgid/sticky included
    uid: int
    gid: int
    xattrs: tuple[tuple[str, bytes], ...]
    data: str  # file: sha256 of the content; symlink: target; device: its number


_KINDS = {
    stat.S_IFREG: "file",
    stat.S_IFLNK: "symlink",
    stat.S_IFDIR: "dir",
    stat.S_IFIFO: "fifo",
    stat.S_IFCHR: "chr",
    stat.S_IFBLK: "blk",
}


def _proc(dir_fd: int, name: str) -> str:
    # The kernel resolves /proc/self/fd/N to the directory itself, so with
    # follow_symlinks=False this reaches `name` (a symlink included) and nothing else.
    return f"/proc/self/fd/{dir_fd}/{name}"


def _read_xattrs(target: int | str) -> tuple[tuple[str, bytes], ...]:
    """Every xattr we can read of a descriptor or a /proc path (symlinks not followed)."""
    follow = isinstance(target, int)  # Python refuses follow_symlinks=False with an fd
    try:
        names = os.listxattr(target, follow_symlinks=follow)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EPERM, errno.EACCES):
            return ()
        raise
    values = []
    for name in sorted(names):
        try:
            values.append((name, os.getxattr(target, name, follow_symlinks=follow)))
        except OSError as exc:
            # Gone since listing, or a namespace closed to us: not ours to compare.
            if exc.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EPERM, errno.EACCES):
                raise
    return tuple(values)


def _split(path: str) -> tuple[str, str]:
    """(parent, name) of a relative path; refuses anything that could leave the tree."""
    parts = path.split("/")
    if not path or any(p in ("", ".", "..") for p in parts):
        raise InputError(f"etcmerge: {path!r} is not a plain relative path")
    return "/".join(parts[:-1]), parts[-1]


class _Tree:
    """One /etc tree read whole: an _Entry per path, the names in each directory."""

    def __init__(self, root: Path, label: str) -> None:
        self.root = root
        self.label = label
        self.entries: dict[str, _Entry] = {}
        self.children: dict[str, list[str]] = {}
        self.notes: list[str] = []
        self._deep: dict[str, str] = {}
        try:
            fd = os.open(root, _DIR_FLAGS)
        except OSError as exc:
            raise InputError(f"etcmerge: {label} {root}: not a plain directory ({exc})") from None
        try:
            self._scan(fd, "")
        except OSError as exc:
            # Something changed under us (an entry swapped for a symlink, say).
            raise OperationError(f"etcmerge: reading {label} {root}: {exc}") from exc
        finally:
            os.close(fd)

    def _scan(self, fd: int, rel: str) -> None:
        names = []
        with os.scandir(fd) as it:
            entries = sorted(it, key=lambda e: e.name)
        for item in entries:
            name, path = item.name, join(rel, item.name)
            if name.startswith((_TMP_PREFIX, _OLD_PREFIX)):
                self.notes.append(f"{self.label}: {path}: left by an interrupted merge; ignored")
                continue
            try:
                st = item.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            kind = _KINDS.get(stat.S_IFMT(st.st_mode))
            if kind is None:
                # Sockets belong to a running program; a copy would be a dead name.
                self.notes.append(f"{self.label}: {path}: a socket or unknown type; skipped")
                continue
            data = ""
            if kind == "file":
                data = self._digest(fd, name, st)
            elif kind == "symlink":
                data = os.readlink(name, dir_fd=fd)
            elif kind in ("chr", "blk"):
                data = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
            xattrs = _read_xattrs(_proc(fd, name))
            self.entries[path] = _Entry(
                kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, xattrs, data
            )
            names.append(path)
            if kind == "dir":
                sub = os.open(name, _DIR_FLAGS, dir_fd=fd)
                try:
                    self._scan(sub, path)
                finally:
                    os.close(sub)
        self.children[rel] = names

    def _digest(self, fd: int, name: str, st: os.stat_result) -> str:
        with open(os.open(name, _FILE_FLAGS, dir_fd=fd), "rb") as f:
            now = os.fstat(f.fileno())
            if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                raise OperationError(f"etcmerge: {self.label}: {name} changed while read")
            return hashlib.file_digest(f, "sha256").hexdigest()

    def deep(self, path: str) -> str | None:
        """A digest of the entry with everything under it; None when it is absent."""
        entry = self.entries.get(path)
        if entry is None:
            return None
        if path not in self._deep:
            h = hashlib.sha256(repr(entry).encode())
            for child in self.children.get(path, ()):
                h.update(f"\0{child.rsplit('/', 1)[-1]}\0{self.deep(child)}".encode())
            self._deep[path] = h.hexdigest()
        return self._deep[path]

    def below(self, path: str) -> Iterator[str]:
        """Every path under `path` (not itself), parents first."""
        for child in self.children.get(path, ()):
            yield child
            yield from self.below(child)


def _describe(old: _Entry, new: _Entry) -> str:
    """What differs between two entries, for a reason: "content, mode 0644→0600"."""
    if old.kind != new.kind:
        return f"type {old.kind}→{new.kind}"
    parts = []
    if old.data != new.data:
        parts.append(
            {"symlink": "target", "chr": "device", "blk": "device"}.get(old.kind, "content")
        )
    if old.mode != new.mode:
        parts.append(f"mode {old.mode:04o}→{new.mode:04o}")
    if (old.uid, old.gid) != (new.uid, new.gid):
        parts.append(f"owner {old.uid}:{old.gid}→{new.uid}:{new.gid}")
    if old.xattrs != new.xattrs:
        parts.append("xattrs")
    return ", ".join(parts) or "entries inside"


def _differs(a: _Tree, b: _Tree, path: str) -> str:
    """How `path` differs from tree a to tree b, as a whole entry."""
    ea, eb = a.entries.get(path), b.entries.get(path)
    if ea is None or eb is None:
        return "added" if ea is None else "removed"
    desc = _describe(ea, eb)
    if ea.kind == eb.kind == "dir":
        inner = sorted(
            p
            for p in set(a.below(path)) | set(b.below(path))
            if a.entries.get(p) != b.entries.get(p)
        )
        if inner:
            shown = ", ".join(p[len(path) + 1 :] for p in inner[:3])
            more = f" +{len(inner) - 3} more" if len(inner) > 3 else ""
            inside = f"inside: {shown}{more}"
            desc = inside if desc == "entries inside" else f"{desc}; {inside}"
    return desc


def _size(tree: _Tree, path: str) -> str:
    entry = tree.entries[path]
    if entry.kind != "dir":
        return ""
    return f" (directory, {sum(1 for _ in tree.below(path))} entries inside)"


class _Merger:
    def __init__(self, base: _Tree, theirs: _Tree, ours: _Tree) -> None:
        self.b, self.t, self.o = base, theirs, ours
        self.changes: list[Change] = []

    def add(self, path: str, action: Action, reason: str, meta: bool = False) -> None:
        self.changes.append(Change(path, action, reason, meta))

    def merge_dir(self, rel: str) -> None:
        b, t, o = self.b, self.t, self.o
        names = set(b.children.get(rel, ())) | set(t.children.get(rel, ()))
        for path in sorted(names | set(o.children.get(rel, ()))):
            te, oe = t.entries.get(path), o.entries.get(path)
            if te is not None and oe is not None and te.kind == oe.kind == "dir":
                self.merge_dir_meta(path)
                self.merge_dir(path)
            else:
                self.merge_whole(path)

    def merge_dir_meta(self, path: str) -> None:
        """A directory on both sides: merge its own mode, owner and xattrs."""
        be, te, oe = self.b.entries.get(path), self.t.entries[path], self.o.entries[path]
        if oe == te:
            return
        if oe == be:
            self.add(path, Action.TAKE_NEW, f"directory {_describe(oe, te)} in gold", True)
        elif te != be:
            gold = f"mode {te.mode:04o}, owner {te.uid}:{te.gid}"
            why = "added here and in gold" if be is None else "changed here and in gold"
            self.add(path, Action.KEEP_BOTH, f"directory {why}; kept ours (gold's: {gold})", True)

    def merge_whole(self, path: str) -> None:
        b, t, o = self.b, self.t, self.o
        bd, td, od = b.deep(path), t.deep(path), o.deep(path)
        if od == td:
            return  # the same on both sides, changed or not
        if od == bd:
            if td is None:
                self.add(path, Action.REMOVE, f"removed in gold; unchanged here{_size(o, path)}")
            elif od is None:
                self.add(path, Action.ADD, f"new in gold{_size(t, path)}")
            else:
                self.add(path, Action.TAKE_NEW, f"changed in gold ({_differs(b, t, path)})")
        elif td == bd:
            return  # changed here only
        elif td is None:
            why = f"removed in gold, changed here ({_differs(b, o, path)}); kept ours"
            self.add(path, Action.KEEP_LOCAL_REMOVED, why)
        else:
            name = path.rsplit("/", 1)[-1] + NEW_SUFFIX
            if od is None:
                why = f"removed here, changed in gold ({_differs(b, t, path)})"
            elif bd is None:
                why = "added here and in gold, differently"
            else:
                why = f"changed here ({_differs(b, o, path)}) and in gold ({_differs(b, t, path)})"
            self.add(path, Action.KEEP_BOTH, f"{why}; kept ours, gold's written as {name}")


def plan_merge(base: Path, theirs: Path, ours: Path) -> Plan:
    """What merging theirs' changes since base into ours would do; reads only."""
    trees = (_Tree(Path(base), "base"), _Tree(Path(theirs), "theirs"), _Tree(Path(ours), "ours"))
    merger = _Merger(*trees)
    merger.merge_dir("")
    return Plan(tuple(merger.changes), tuple(n for tree in trees for n in tree.notes))


# --- writing ---------------------------------------------------------------------------


def _open_dir(root: Path, rel: str, label: str) -> int:
    """A descriptor of directory `rel` under root, reached without following symlinks."""
    fd = os.open(root, _DIR_FLAGS)
    try:
        for part in [p for p in rel.split("/") if p]:
            try:
                nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):
                    raise OperationError(
                        f"etcmerge: {label} {root}: {rel} is not a plain directory "
                        "(missing, or a symlink); nothing written there"
                    ) from None
                raise
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def _dir(root: Path, rel: str, label: str) -> Iterator[int]:
    fd = _open_dir(root, rel, label)
    try:
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def _opendir(name: str, dir_fd: int) -> Iterator[int]:
    """A descriptor of directory `name` in dir_fd; a symlink there is refused (ELOOP)."""
    fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    try:
        yield fd
    finally:
        os.close(fd)


def _aside(prefix: str, name: str) -> str:
    # Hashed, so the name fits NAME_MAX and never clashes with a real /etc name.
    return prefix + hashlib.sha256(name.encode(errors="surrogateescape")).hexdigest()[:16]


def _set_xattrs(target: int | str, want: tuple[tuple[str, bytes], ...], exact: bool) -> None:
    """Give target the xattrs `want`; with `exact`, remove the others we can read."""
    follow = isinstance(target, int)  # as in _read_xattrs
    if exact:
        keep = {name for name, _ in want}
        for name, _ in _read_xattrs(target):
            if name not in keep:
                os.removexattr(target, name, follow_symlinks=follow)
    for name, value in want:
        os.setxattr(target, name, value, follow_symlinks=follow)


def _copy_meta(src: os.stat_result, xattrs: tuple[tuple[str, bytes], ...], fd: int) -> None:
    """Owner, then mode (chown clears setuid bits), then xattrs (it clears capabilities)."""
    os.fchown(fd, src.st_uid, src.st_gid)
    os.fchmod(fd, stat.S_IMODE(src.st_mode))
    _set_xattrs(fd, xattrs, exact=False)


def _copy_entry(sfd: int, sname: str, dfd: int, dname: str, sync: bool) -> None:
    """Copy one entry (a directory with everything in it) to a new name; no symlink in
    the source is followed, and none is in the way of the target (it is new)."""
    st = os.stat(sname, dir_fd=sfd, follow_symlinks=False)
    xattrs = _read_xattrs(_proc(sfd, sname))
    mode = stat.S_IFMT(st.st_mode)
    times = (st.st_atime_ns, st.st_mtime_ns)
    if mode == stat.S_IFREG:
        with (
            open(os.open(sname, _FILE_FLAGS, dir_fd=sfd), "rb") as src,
            open(
                os.open(
                    dname, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dfd
                ),
                "wb",
            ) as dst,
        ):
            shutil.copyfileobj(src, dst, 1 << 20)
            dst.flush()
            _copy_meta(st, xattrs, dst.fileno())
            os.utime(dst.fileno(), ns=times)
            if sync:
                os.fsync(dst.fileno())
    elif mode == stat.S_IFDIR:
        os.mkdir(dname, 0o700, dir_fd=dfd)
        with (
            _opendir(sname, sfd) as sub_src,
            _opendir(dname, dfd) as sub_dst,
        ):
            with os.scandir(sub_src) as it:
                names = sorted(e.name for e in it)
            for name in names:
                if stat.S_ISSOCK(os.stat(name, dir_fd=sub_src, follow_symlinks=False).st_mode):
                    continue  # skipped as in plan_merge
                _copy_entry(sub_src, name, sub_dst, name, sync)
            _copy_meta(st, xattrs, sub_dst)
            os.utime(sub_dst, ns=times)
            if sync:
                os.fsync(sub_dst)
    elif mode == stat.S_IFLNK:
        os.symlink(os.readlink(sname, dir_fd=sfd), dname, dir_fd=dfd)
        os.chown(dname, st.st_uid, st.st_gid, dir_fd=dfd, follow_symlinks=False)
        _set_xattrs(_proc(dfd, dname), xattrs, exact=False)
        os.utime(dname, dir_fd=dfd, ns=times, follow_symlinks=False)
    elif mode in (stat.S_IFIFO, stat.S_IFCHR, stat.S_IFBLK):
        # Made with no permissions, so it is never open to anyone before its mode is set.
        os.mknod(dname, mode, st.st_rdev, dir_fd=dfd)
        os.chown(dname, st.st_uid, st.st_gid, dir_fd=dfd, follow_symlinks=False)
        os.chmod(dname, stat.S_IMODE(st.st_mode), dir_fd=dfd, follow_symlinks=False)
        _set_xattrs(_proc(dfd, dname), xattrs, exact=False)
        os.utime(dname, dir_fd=dfd, ns=times, follow_symlinks=False)
    else:
        raise OperationError(f"etcmerge: {sname}: cannot copy a socket or unknown type")


def _remove_entry(dfd: int, name: str) -> None:
    """Remove an entry, a directory with everything in it; a missing one is fine."""
    st = lstat_at(name, dfd)
    if st is None:
        return
    if stat.S_ISDIR(st.st_mode):
        # Renamed out of the way first: the path is gone at once, never half-emptied.
        old = _aside(_OLD_PREFIX, name)
        _remove_entry(dfd, old)
        os.rename(name, old, src_dir_fd=dfd, dst_dir_fd=dfd)
        shutil.rmtree(old, dir_fd=dfd)
    else:
        os.unlink(name, dir_fd=dfd)


def _clean_aside(dfd: int, name: str) -> None:
    """Remove what an interrupted _place or _remove_entry left beside `name`."""
    for prefix in (_TMP_PREFIX, _OLD_PREFIX):
        _remove_entry(dfd, _aside(prefix, name))


def _place(sfd: int, sname: str, dfd: int, dname: str, sync: bool) -> None:
    """Make dname a copy of sname: built beside it, then renamed over it."""
    _clean_aside(dfd, dname)
    tmp = _aside(_TMP_PREFIX, dname)
    _copy_entry(sfd, sname, dfd, tmp, sync)
    cur = lstat_at(dname, dfd)
    new = os.stat(tmp, dir_fd=dfd, follow_symlinks=False)
    if cur is not None and (stat.S_ISDIR(cur.st_mode) or stat.S_ISDIR(new.st_mode)):
        # rename() cannot put a directory over a file or over a full directory (nor a
        # file over a directory): move the old one aside first.  Interrupted between the
        # two renames, the path is missing for a moment; a rerun finishes it.
        old = _aside(_OLD_PREFIX, dname)
        os.rename(dname, old, src_dir_fd=dfd, dst_dir_fd=dfd)
        os.rename(tmp, dname, src_dir_fd=dfd, dst_dir_fd=dfd)
        _remove_entry(dfd, old)
    else:
        os.rename(tmp, dname, src_dir_fd=dfd, dst_dir_fd=dfd)
    if sync:
        os.fsync(dfd)


def _set_dir_meta(src_fd: int, dst_fd: int) -> None:
    """Give the directory dst_fd the mode, owner and xattrs of src_fd (not its entries)."""
    st = os.fstat(src_fd)
    os.fchown(dst_fd, st.st_uid, st.st_gid)
    os.fchmod(dst_fd, stat.S_IMODE(st.st_mode))
    _set_xattrs(dst_fd, _read_xattrs(src_fd), exact=True)


# --- the journal and the backups --------------------------------------------------------


def _backup_names(index: int) -> tuple[str, str, str]:
    """The backup of change `index`: a copy of what ours had, a marker that ours had
    nothing there, or (directory metadata) an empty directory with ours' metadata."""
    return str(index), f"{index}.absent", f"{index}.meta"


def _save_backup(bfd: int, index: int, ofd: int, name: str, meta: bool, sync: bool) -> None:
    """Save what ours has at `name`, once: a rerun finds the first backup and keeps it,
    since by then ours may already hold the new version."""
    copy, absent, meta_name = _backup_names(index)
    if any(lstat_at(n, bfd) is not None for n in (copy, absent, meta_name)):
        return
    tmp = f"{index}.tmp"
    _remove_entry(bfd, tmp)
    st = lstat_at(name, ofd)
    if st is None:
        os.close(os.open(absent, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600, dir_fd=bfd))
    elif meta:
        os.mkdir(tmp, 0o700, dir_fd=bfd)
        with (
            _opendir(name, ofd) as src,
            _opendir(tmp, bfd) as dst,
        ):
            _set_dir_meta(src, dst)
        os.rename(tmp, meta_name, src_dir_fd=bfd, dst_dir_fd=bfd)
    else:
        _copy_entry(ofd, name, bfd, tmp, sync)
        os.rename(tmp, copy, src_dir_fd=bfd, dst_dir_fd=bfd)
    if sync:
        os.fsync(bfd)


def _write_json(path: Path, data: dict[str, Any], *, sync: bool = True, new: bool = True) -> None:
    """Replace `path` atomically: a reader sees the old journal or the new, whole.

    `new` also makes the rename itself durable.  A progress update does without: if a
    power cut loses it, the older journal comes back, whose shorter list of done changes
    only makes a resume repeat a few changes, harmlessly.
    """
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        # One line: without indent json uses its C encoder, and this is written per change.
        f.write(json.dumps(data) + "\n")
        f.flush()
        if sync:
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if sync and new:
        dfd = os.open(path.parent, _DIR_FLAGS)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def _read_journal(journal: Path) -> dict[str, Any]:
    try:
        data = json.loads(journal.read_text())
    except FileNotFoundError:
        raise InputError(f"etcmerge: no journal at {journal}") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"etcmerge: {journal}: not a readable journal ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != _JOURNAL_FORMAT:
        raise InputError(f"etcmerge: {journal}: not an etcmerge journal")
    if data.get("version") != _JOURNAL_VERSION:
        raise InputError(f"etcmerge: {journal}: journal version {data.get('version')!r}")
    return data


def _journal_plan(data: dict[str, Any]) -> Plan:
    notes = data.get("notes", [])
    return Plan.from_json(data.get("changes"), tuple(str(n) for n in notes))


def _check_same(recorded: object, given: Path, what: str, journal: Path) -> None:
    """Refuse a tree other than the journal's: the same path, or the same directory.

    The path is what counts first: a clone's disk mounted again at the same place after
    a crash has a new device number, so the same tree is no longer os.path.samefile.
    """
    if not isinstance(recorded, str):
        raise InputError(f"etcmerge: {journal}: no {what} recorded")
    if str(given.resolve()) == recorded:
        return
    if not (os.path.exists(recorded) and os.path.samefile(recorded, given)):
        raise RefusedError(
            f"etcmerge: journal {journal} is for {what} {recorded}, not {given}; nothing done"
        )


def default_backup(journal: Path) -> Path:
    """Where the backups of a journal go when none is named: beside it."""
    return journal.with_name(journal.name + ".backup")


def apply_merge(
    plan: Plan,
    theirs: Path,
    ours: Path,
    *,
    journal: Path | None = None,
    backup: Path | None = None,
    sync: bool = True,
) -> None:
    """Carry out `plan` on ours, reading new versions from theirs.

    With `journal`, first records the plan there and, as each change is done, which are
    done (the file is replaced atomically); before a change touches ours it saves what
    was there under `backup` (default: beside the journal) for undo_merge.  A journal
    that already exists must hold this same plan: the apply then continues where it
    stopped.  Without a journal, applying the same plan again also finishes an
    interrupted apply, since every change can be repeated.  `sync` makes each new file,
    backup and journal update durable (fsync) before the next step.  While it works it
    holds a lock on `<journal>.lock`: a second merge on the same journal is refused.
    """
    theirs, ours = Path(theirs), Path(ours)
    if journal is None:
        if backup is not None:
            raise InputError("etcmerge: a backup directory needs a journal (undo reads it)")
        _apply_changes(plan, theirs, ours, sync, done=set(), journal=None)
        return
    journal = Path(journal)
    with _locked(journal):
        if journal.exists():
            state = _read_journal(journal)
            if state.get("changes") != plan.to_json():
                raise RefusedError(
                    f"etcmerge: journal {journal} holds another plan; nothing done "
                    "(resume it with resume_merge, or use a new journal)"
                )
            if state.get("state") in ("undoing", "undone"):
                raise RefusedError(f"etcmerge: journal {journal} was undone; use a new one")
            _check_same(state.get("ours"), ours, "ours", journal)
            done = {int(i) for i in state.get("done", [])}
            backup = Path(state["backup"])
        else:
            backup = Path(backup) if backup is not None else default_backup(journal)
            done = set()
            state = {
                "format": _JOURNAL_FORMAT,
                "version": _JOURNAL_VERSION,
                "state": "applying",
                "theirs": str(theirs.resolve()),
                "ours": str(ours.resolve()),
                "backup": str(backup.resolve()),
                "changes": plan.to_json(),
                "notes": list(plan.notes),
                "done": [],
            }
        # Made before the journal is: a journal on disk always has its backup directory.
        backup.mkdir(mode=0o700, parents=True, exist_ok=True)
        _write_json(journal, state, sync=sync)
        with _dir(backup, "", "backup") as bfd:
            _apply_changes(plan, theirs, ours, sync, done, (journal, state, bfd))
        state["state"] = "done"
        _write_json(journal, state, sync=sync)


@contextlib.contextmanager
def _locked(journal: Path) -> Iterator[None]:
    """Hold the journal's lock: two merges at once on one journal would undo each
    other's backups.  The lock goes with the process, however it ends."""
    fd = os.open(journal.with_name(journal.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RefusedError(
                f"etcmerge: another merge holds journal {journal}; nothing done"
            ) from None
        yield
    finally:
        os.close(fd)


def _apply_changes(
    plan: Plan,
    theirs: Path,
    ours: Path,
    sync: bool,
    done: set[int],
    journal: tuple[Path, dict[str, Any], int] | None,
) -> None:
    """Apply the changes not in `done`, recording each in the journal (path, its data
    and the backup directory's descriptor) when there is one."""
    for index, change in enumerate(plan.changes):
        if index in done:
            continue
        try:
            _apply_one(change, index, theirs, ours, None if journal is None else journal[2], sync)
        except (OSError, OperationError) as exc:
            where = f"; journal {journal[0]}: finish with resume_merge" if journal else ""
            why = str(exc).removeprefix("etcmerge: ")
            raise OperationError(
                f"etcmerge: {change.path} ({change.action}): {why}; "
                f"{len(done)} of {len(plan.changes)} changes done{where}"
            ) from exc
        done.add(index)
        if journal is not None:
            journal[1]["done"] = sorted(done)
            if change.writes:
                _write_json(journal[0], journal[1], sync=sync, new=False)


def _apply_one(
    change: Change, index: int, theirs: Path, ours: Path, bfd: int | None, sync: bool
) -> None:
    if not change.writes:
        return
    parent, name = _split(change.target)
    tparent, tname = _split(change.path)
    with _dir(ours, parent, "ours") as ofd:
        if bfd is not None:
            _save_backup(bfd, index, ofd, name, change.metadata_only, sync)
        if change.action is Action.REMOVE:
            _clean_aside(ofd, name)
            _remove_entry(ofd, name)
            if sync:
                os.fsync(ofd)
            return
        with _dir(theirs, tparent, "theirs") as tfd:
            if lstat_at(tname, tfd) is None:
                raise OperationError(
                    f"etcmerge: theirs {theirs}: {change.path} is gone since the plan was made"
                )
            if change.metadata_only:
                with (
                    _opendir(tname, tfd) as src,
                    _opendir(name, ofd) as dst,
                ):
                    _set_dir_meta(src, dst)
            else:
                _place(tfd, tname, ofd, name, sync)


def resume_merge(journal: Path, theirs: Path, ours: Path) -> Plan:
    """Finish the apply recorded in `journal` (interrupted or not); its plan."""
    journal = Path(journal)
    data = _read_journal(journal)
    _check_same(data.get("ours"), Path(ours), "ours", journal)
    _check_same(data.get("theirs"), Path(theirs), "theirs", journal)
    plan = _journal_plan(data)
    apply_merge(plan, theirs, ours, journal=journal)
    return plan


def undo_merge(journal: Path, ours: Path, *, sync: bool = True) -> Plan:
    """Put ours back as it was before the apply recorded in `journal`, finished or not:
    every path it replaced or removed comes back from the backups, every path it added
    (the .sharedroot-new files included) goes.  Can itself be repeated."""
    journal = Path(journal)
    ours = Path(ours)
    with _locked(journal):
        return _undo(journal, ours, sync)


def _undo(journal: Path, ours: Path, sync: bool) -> Plan:
    data = _read_journal(journal)
    _check_same(data.get("ours"), ours, "ours", journal)
    plan = _journal_plan(data)
    backup = Path(data["backup"])
    data["state"] = "undoing"
    _write_json(journal, data, sync=sync)
    with _dir(backup, "", "backup") as bfd:
        # Last first: a directory's metadata comes back after what it holds.
        for index in reversed(range(len(plan.changes))):
            change = plan.changes[index]
            if not change.writes:
                continue
            parent, name = _split(change.target)
            copy, absent, meta = _backup_names(index)
            found = [n for n in (copy, absent, meta) if lstat_at(n, bfd) is not None]
            if not found:
                continue  # the apply never reached this change
            try:
                with _dir(ours, parent, "ours") as ofd:
                    _clean_aside(ofd, name)
                    if found[0] == absent:
                        _remove_entry(ofd, name)
                    elif found[0] == meta:
                        with (
                            _opendir(meta, bfd) as src,
                            _opendir(name, ofd) as dst,
                        ):
                            _set_dir_meta(src, dst)
                    else:
                        _place(bfd, copy, ofd, name, sync)
            except OSError as exc:
                raise OperationError(
                    f"etcmerge: undo {change.target}: {exc}; run undo_merge again"
                ) from exc
    data["state"] = "undone"
    _write_json(journal, data, sync=sync)
    return plan
