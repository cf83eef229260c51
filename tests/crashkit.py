"""Mechanisms for the crash suite: where trial sites live, running the real program and
killing it, and looking at what it left (images, file trees, mounts, loop devices, the
state database).  What a trial asserts is in test_crash.py.
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import hashlib
import json
import os
import random
import signal
import sqlite3
import stat
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from conftest import SHAREDROOT, sparse_hash
from sharedroot.hypervisor.images import make_filesystem
from sharedroot.model.types import DiskKind

STRAY_PATTERNS = (".*.copy-*", "*.new")


def sh(*argv: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, argv))}: exit {proc.returncode}\n{proc.stderr}")
    return proc


# storage ----------------------------------------------------------------------------


@contextlib.contextmanager
def reflink_filesystem(where: Path, size: str = "64G") -> Iterator[Path]:
    """An XFS with reflink on a sparse loop file, mounted at where/reflink.

    Sites copied onto it share blocks, so a trial's copy of a whole site is instant,
    and the copy engine reflinks there too.
    """
    image = where / "reflink.xfs"
    mnt = where / "reflink"
    mnt.mkdir()
    sh("truncate", "-s", size, image)
    try:
        sh("mkfs.xfs", "-q", "-m", "reflink=1", image)
        sh("mount", "-o", "loop", image, mnt)
        try:
            yield mnt
        finally:
            if sh("umount", mnt, check=False).returncode != 0:
                sh("umount", "--lazy", mnt)
    finally:
        image.unlink()


def sweep_dead_stores(pattern: str) -> list[str]:
    """Unmount reflink stores of sessions that were killed before their own clean-up.

    `pattern` (fnmatch) must only match places no live session uses, e.g. the
    directories pytest renames to garbage-* for removal, which it cannot remove while
    mounted; the lazy unmount lets the kernel free the loop device and the space.
    """
    dead = [t for _, t in _mounts("/proc/self/mounts") if fnmatch.fnmatch(t, pattern)]
    for target in dead:
        sh("umount", "--lazy", target, check=False)
    return dead


def copy_site(src: Path, dst: Path, *, reflink: bool) -> None:
    """A site copied whole, as it lies (state.db and its WAL included)."""
    mode = "--reflink=always" if reflink else "--sparse=always"
    sh("cp", "-a", mode, src, dst)


def fill_image(image: Path, fs: str, seed: str, mib: int) -> None:
    """A new filesystem in `image` (its size kept) with `mib` MiB of incompressible files."""
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="crashkit-fill-") as tmp:
        src = Path(tmp)
        for i in range(max(1, mib // 8)):
            (src / f"data{i}").write_bytes(rng.randbytes(min(mib, 8) << 20))
        (src / "etc").mkdir()
        (src / "etc" / "hostname").write_text(f"{seed}\n")
        make_filesystem(image, DiskKind.FS, image.stat().st_size, fs, src)


def put_file(image: Path, directory: str, name: str, text: str) -> None:
    """Write one file into an ext2/3/4 image without mounting it (debugfs)."""
    with tempfile.TemporaryDirectory(prefix="crashkit-put-") as tmp:
        src = Path(tmp) / "src"
        src.write_text(text)
        cmds = Path(tmp) / "cmds"
        cmds.write_text(f"cd {directory}\nrm {name}\nwrite {src} {name}\n")
        sh("debugfs", "-w", "-f", cmds, image)
    got = sh("debugfs", "-R", f"cat {directory}/{name}", image).stdout
    if got != text:
        raise AssertionError(f"debugfs did not write {directory}/{name} into {image}")


# running the program ---------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    args: tuple[str, ...]
    code: int  # negative: killed by that signal
    seconds: float
    out: str
    err: str

    @property
    def killed(self) -> bool:
        return self.code == -signal.SIGKILL

    def json(self) -> object:
        return json.loads(self.out)


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group, read from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            found.append(int(entry.name))
    return found


def sharedroot(
    home: Path, *args: str, kill_after: float | None = None, timeout: float = 900
) -> Run:
    """`sharedroot --home HOME ARGS` with no terminal; with `kill_after`, SIGKILL it then.

    The program runs in a process group of its own and the whole group is killed, as a
    crash kills whatever helper (mount, mke2fs) it was running; this returns only when
    every process of the group is gone.
    """
    argv = [SHAREDROOT, "--home", str(home), *args]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.monotonic()
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True
        )
        try:
            proc.wait(timeout=timeout if kill_after is None else kill_after)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            if kill_after is None:
                raise AssertionError(f"{' '.join(args)} ran over {timeout}s") from None
        seconds = time.monotonic() - t0
        deadline = time.monotonic() + 30
        while members := _group_members(proc.pid):
            if time.monotonic() > deadline:
                raise AssertionError(f"processes of {' '.join(args)} outlived it: {members}")
            if proc.returncode == -signal.SIGKILL:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            time.sleep(0.02)
        out.seek(0)
        err.seek(0)
        return Run(
            tuple(args),
            proc.returncode,
            seconds,
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
        )


def must(home: Path, *args: str) -> Run:
    run = sharedroot(home, *args)
    if run.code != 0:
        raise AssertionError(f"sharedroot {' '.join(args)}: exit {run.code}\n{run.err}")
    return run


# the state database ----------------------------------------------------------------


def query(home: Path, sql: str) -> list[tuple[object, ...]]:
    """Rows from state.db opened read-only, as a reader that must not change it."""
    uri = f"file:{home / 'state.db'}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
        return db.execute(sql).fetchall()


@dataclass(frozen=True)
class Disk:
    path: Path
    size: int
    kind: str  # fs, swap
    fs: str | None


def disks(home: Path) -> dict[str, Disk]:
    """'OWNER ADDR' -> every disk row, its image under home."""
    rows = query(home, "SELECT owner, address, file, size, kind, fs FROM disks")
    return {
        f"{o} {a}": Disk(home / str(f), int(str(s)), str(k), None if fs is None else str(fs))
        for o, a, f, s, k, fs in rows
    }


def links(home: Path) -> dict[str, list[tuple[object, ...]]]:
    """'GUEST links' -> its links (address, owner, owner address, mode), sorted."""
    out: dict[str, list[tuple[object, ...]]] = {}
    for guest, *rest in query(
        home, "SELECT guest, address, owner, owner_address, mode FROM links ORDER BY 1, 2"
    ):
        out.setdefault(f"{guest} links", []).append(tuple(rest))
    return out


def state_problems(home: Path) -> list[str]:
    """PRAGMA integrity_check, and every disk row's image a regular file of its size."""
    problems = []
    check = query(home, "PRAGMA integrity_check")
    if check != [("ok",)]:
        problems.append(f"integrity_check: {check[:5]}")
    for key, disk in sorted(disks(home).items()):
        try:
            st = disk.path.lstat()
        except FileNotFoundError:
            problems.append(f"{key}: {disk.path} is missing")
            continue
        if not stat.S_ISREG(st.st_mode):
            problems.append(f"{key}: {disk.path} is not a regular file")
        elif st.st_size != disk.size:
            problems.append(f"{key}: {disk.path} has {st.st_size} bytes, the row says {disk.size}")
    return problems


def strays(home: Path) -> list[str]:
    """Temporary files a copy or an image rebuild left under disks/."""
    return sorted(
        str(p.relative_to(home))
        for p in (home / "disks").rglob("*")
        if any(fnmatch.fnmatch(p.name, pat) for pat in STRAY_PATTERNS)
    )


# mounts and loop devices -------------------------------------------------------------


def _unescape(field: str) -> str:
    return field.encode().decode("unicode_escape") if "\\" in field else field


def _mounts(table: str) -> list[tuple[str, str]]:
    lines = Path(table).read_text().splitlines()
    return [(_unescape(f[0]), _unescape(f[1])) for f in (ln.split() for ln in lines)]


def loops_under(home: Path) -> dict[str, str]:
    """Loop devices whose backing file is under `home`: device -> file."""
    listing = json.loads(sh("losetup", "--list", "--json").stdout or '{"loopdevices": []}')
    prefix = f"{home}/"
    out = {}
    for dev in listing.get("loopdevices", []):
        back = str(dev.get("back-file") or "").removesuffix(" (deleted)")
        if back.startswith(prefix):
            out[str(dev["name"])] = back
    return out


def leftovers(home: Path) -> list[str]:
    """Mounts under `home` or of its images (ours and PID 1's view), and its loop devices."""
    loops = loops_under(home)
    found = []
    for table in ("/proc/self/mounts", "/proc/1/mounts"):
        for source, target in _mounts(table):
            if target == str(home) or target.startswith(f"{home}/") or source in loops:
                found.append(f"{table}: {source} on {target}")
    found += [f"loop {dev} -> {back}" for dev, back in sorted(loops.items())]
    return sorted(set(found))


def settle(home: Path, grace: float = 2.5) -> list[str]:
    """What is still left after giving the kernel `grace` seconds to drop autoclear loops."""
    deadline = time.monotonic() + grace
    while (left := leftovers(home)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def clear(home: Path) -> None:
    """Unmount and detach whatever of `home` is still mounted (after reporting it)."""
    for _ in range(5):
        loops = loops_under(home)
        targets = [
            t
            for s, t in _mounts("/proc/self/mounts")
            if t == str(home) or t.startswith(f"{home}/") or s in loops
        ]
        if not targets and not loops:
            return
        for target in reversed(targets):  # children before parents
            if sh("umount", target, check=False).returncode != 0:
                sh("umount", "--lazy", target, check=False)
            if Path(target).name.startswith("sharedroot-mnt-"):
                with contextlib.suppress(OSError):
                    Path(target).rmdir()  # the program's own temporary mount point
        for dev in loops:
            sh("losetup", "-d", dev, check=False)
        time.sleep(0.2)
    raise AssertionError(f"cannot clear what {home} left: {leftovers(home)}")


# image content ----------------------------------------------------------------------


Signature = tuple[int, int, int, int, int]
ExtentMap = tuple[int, tuple[tuple[int, int, int, int], ...]]

_FS_IOC_FIEMAP = 0xC020660B
_FIEMAP_FLAG_SYNC = 0x1
_EXTENT_LAST = 0x1
_EXTENT_UNTRUSTED = 0x2 | 0x4 | 0x200  # unknown place, delayed allocation, inline data
_EXTENT_TRANSIENT = 0x1 | 0x1000 | 0x2000  # last, merged, shared: not part of identity
_EXTENT = struct.Struct("=QQQ16xL12x")


def signature(path: Path) -> Signature:
    st = path.stat()
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def extent_map(path: Path) -> ExtentMap | None:
    """Where a file's data lies on its device (FIEMAP), or None if that cannot be told."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        found: list[tuple[int, int, int, int]] = []
        start, count = 0, 256
        while True:
            length = (1 << 64) - 1 - start
            head = struct.pack("=QQLLLL", start, length, _FIEMAP_FLAG_SYNC, 0, count, 0)
            buf = bytearray(head + bytes(_EXTENT.size * count))
            fcntl.ioctl(fd, _FS_IOC_FIEMAP, buf)
            mapped = struct.unpack_from("=L", buf, 20)[0]
            last = True
            for i in range(mapped):
                logical, physical, length, flags = _EXTENT.unpack_from(buf, 32 + _EXTENT.size * i)
                if flags & _EXTENT_UNTRUSTED:
                    return None
                found.append((logical, physical, length, flags & ~_EXTENT_TRANSIENT))
                last = bool(flags & _EXTENT_LAST)
                start = logical + length
            if last or mapped == 0:
                return size, tuple(found)
    except OSError:
        return None
    finally:
        os.close(fd)


class Hasher:
    """sparse_hash with memory, so only images a command wrote are read again.

    A file with the inode, size, mtime and ctime of one already hashed has its bytes:
    any write moves ctime, which user space cannot set back.  A file whose data lies in
    exactly the blocks of a template image (a reflink of it) has the template's bytes:
    templates are never written, so blocks they share are copied on write, never
    changed in place.  Only templates' block maps are remembered, never those of files
    a command may write in place.
    """

    def __init__(self) -> None:
        self.known: dict[Signature, str] = {}
        self.blocks: dict[ExtentMap, str] = {}

    def learn(self, path: Path, digest: str) -> None:
        """`path` holds `digest` now (a fresh copy of a template image)."""
        self.known[signature(path)] = digest

    def template(self, path: Path) -> str:
        """Hash an image that nothing will write again, and remember where its data is."""
        digest = self(path)
        where = extent_map(path)
        if where is not None and where[1]:
            self.blocks[where] = digest
        return digest

    def __call__(self, path: Path) -> str:
        sig = signature(path)
        if sig not in self.known:
            where = extent_map(path) if self.blocks else None
            hit = self.blocks.get(where) if where is not None else None
            self.known[sig] = hit or sparse_hash(path)
        return self.known[sig]


def fsck(image: Path) -> tuple[bool, str]:
    """e2fsck -fn: a clean filesystem, nothing to repair, nothing changed by looking."""
    proc = sh("e2fsck", "-fn", image, check=False)
    return proc.returncode == 0, (proc.stdout + proc.stderr).strip()[-800:]


def is_swap(image: Path) -> bool:
    proc = sh("blkid", "-p", "-o", "value", "-s", "TYPE", image, check=False)
    return proc.stdout.strip() == "swap"


@contextlib.contextmanager
def mounted_ro(image: Path, fs: str) -> Iterator[Path]:
    """The image mounted read-only (never replaying a journal) on a loop of our own."""
    where = Path(tempfile.mkdtemp(prefix="crashkit-ro-"))
    opts = "loop,ro,noload" if fs in ("ext3", "ext4") else "loop,ro"
    try:
        sh("mount", "-t", fs, "-o", opts, image, where)
        try:
            yield where
        finally:
            if sh("umount", where, check=False).returncode != 0:
                sh("umount", "--lazy", where)
    finally:
        where.rmdir()


Entry = tuple[object, ...]
Stamp = tuple[int, int, int, int]
Tree = dict[str, tuple[Stamp, Entry]]


def tree(root: Path, like: Tree | None = None) -> Tree:
    """Every path below root: type, permissions, owner, and content (hash) or link target.

    Times are not part of an entry (a rerun writes at other times), but each keeps a
    stamp (inode, size, mtime, ctime): a file stamped as in `like` is taken to hold what
    it held there, as the filesystem changes those with every write through it; a
    filesystem of the same origin (a copy of one image) keeps them for untouched files.
    """
    like = like or {}
    out: Tree = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            st = path.lstat()
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            entry: Entry = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
            if stat.S_ISREG(st.st_mode):
                seen = like.get(rel)
                if seen is not None and seen[0] == stamp:
                    entry = seen[1]
                else:
                    with open(path, "rb") as f:
                        digest = hashlib.file_digest(f, "sha256").hexdigest()
                    entry = (*entry, st.st_size, digest)
            elif stat.S_ISLNK(st.st_mode):
                entry = (*entry, os.readlink(path))
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                entry = (*entry, st.st_rdev)
            out[rel] = (stamp, entry)
    return out


def image_tree(image: Path, fs: str, like: Tree | None = None) -> Tree:
    with mounted_ro(image, fs) as root:
        return tree(root, like)


def tree_diff(want: Tree, got: Tree, volatile: set[str], limit: int = 6) -> list[str]:
    """How `got` differs from `want`; for `volatile` paths only in type, mode and owner."""

    def entry(t: Tree, p: str) -> Entry:
        return t[p][1][:4] if p in volatile else t[p][1]

    out = [f"missing {p}" for p in sorted(want.keys() - got.keys())]
    out += [f"extra {p}" for p in sorted(got.keys() - want.keys())]
    both = sorted(want.keys() & got.keys())
    out += [f"differs {p}" for p in both if entry(want, p) != entry(got, p)]
    return out[:limit] + ([f"... {len(out) - limit} more"] if len(out) > limit else [])
