"""Import an existing Linux system as the maintenance guest's: a root tree the user
gives (--from-tree), or a raw or qcow2 disk image of an installed system
(--from-image) whose root is found, mounted read-only with the other filesystems its
fstab names, and copied into the store. What cannot be made a read-only root is
refused, with the reason, before anything is written."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from sharedroot.errors import InputError, RefusedError
from sharedroot.guestos.lvmmeta import logical_volumes, read_pv
from sharedroot.namespace import private_mounts
from sharedroot.run import CommandError, run

FILESYSTEMS = ("ext2", "ext3", "ext4", "xfs", "btrfs")
SYSTEMD = ("usr/lib/systemd/systemd", "lib/systemd/systemd")
GENERATORS = {
    "initramfs-tools": ("usr/sbin/update-initramfs", "sbin/update-initramfs"),
    "dracut": ("usr/bin/dracut", "usr/sbin/dracut", "sbin/dracut"),
}
ELF_MACHINES = {"amd64": 62, "s390x": 22, "arm64": 183}
# Read-only for real: no journal replay, no log recovery, no UUID registry clash with
# the worker's own filesystems (an image copied from a worker's disk has the same UUID).
RO_OPTIONS = {"ext3": "noload", "ext4": "noload", "xfs": "norecovery,nouuid"}
# MBR partition types that only hold other partitions.
EXTENDED = {"5", "f", "85"}

Log = Callable[[str], None]


@dataclass(frozen=True)
class Source:
    option: str  # the command-line option it came from, for messages
    path: Path

    @property
    def is_image(self) -> bool:
        return self.option == "--from-image"


def source(tree: Path | None, image: Path | None, home: Path) -> Source | None:
    """The system to import, its path normalized and kept out of the store."""
    if tree is not None and image is not None:
        raise InputError("--from-tree and --from-image: give one of them")
    given = tree if tree is not None else image
    if given is None:
        return None
    option = "--from-tree" if tree is not None else "--from-image"
    path = Path(os.path.normpath(given.absolute()))
    name = f"{option} {str(given)!r}"
    if tree is not None:
        if not path.is_dir() or path.is_symlink():
            raise InputError(f"{name}: not a directory")
        if path == Path("/"):
            raise InputError(f"{option} /: the worker's own root cannot be installed onto a guest")
        if not (path / "etc").is_dir() or not (path / "usr").is_dir():
            raise InputError(f"{name}: holds no Linux system (no etc/ and usr/)")
    else:
        if not path.exists():
            raise InputError(f"{name}: no such file")
        if not stat.S_ISREG(path.stat().st_mode):
            raise InputError(f"{name}: not a regular file (a raw or qcow2 disk image)")
        if not os.access(path, os.R_OK):
            raise InputError(f"{name}: cannot be read")
    real, store = path.resolve(), home.absolute().resolve()
    if real == store or store in real.parents:
        raise InputError(f"{name}: lies in the store {store}; its disks are not a system to import")
    if real in store.parents:
        raise InputError(f"{name}: holds the store {store}; it cannot be copied into itself")
    return Source(option, path)


def check_system(root: Path, what: str, arch: str | None = None) -> str:
    """Refuse a system that cannot be made a read-only root; return its initramfs generator.

    With `arch` (Debian's name), a systemd built for another machine is refused too.
    """
    missing: list[str] = []
    systemd = next((p for rel in SYSTEMD if (p := _resolve(root, rel)) is not None), None)
    if systemd is None:
        missing.append("no systemd (no /usr/lib/systemd/systemd or /lib/systemd/systemd)")
    found = [g for g, paths in GENERATORS.items() if any(_resolve(root, p) for p in paths)]
    if not found:
        missing.append(
            "no initramfs generator sharedroot knows (neither update-initramfs nor dracut;"
            " one of them must bind /etc from /local before PID 1 starts)"
        )
    machine = _elf_machine(systemd) if systemd is not None else None
    if arch is not None and machine is not None and machine != ELF_MACHINES.get(arch):
        named = {v: k for k, v in ELF_MACHINES.items()}.get(machine, f"ELF machine {machine}")
        missing.append(f"its systemd is built for {named}, the guests are {arch}")
    if missing:
        raise RefusedError(
            f"{what} cannot be made a read-only root: {'; '.join(missing)}; nothing was written"
        )
    return found[0]


def _elf_machine(path: Path) -> int | None:
    """e_machine of an ELF program, or None when it is none (a test's stand-in)."""
    try:
        with open(path, "rb") as f:
            head = f.read(20)
    except OSError:
        return None
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    return int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")


def _resolve(root: Path, rel: str) -> Path | None:
    """`rel` in the tree at `root`, its symlinks resolved inside that tree; None if absent."""
    todo = [p for p in rel.split("/") if p]
    done: list[str] = []
    hops = 40
    while todo:
        name = todo.pop(0)
        if name in (".", ".."):
            if name == ".." and done:
                done.pop()
            continue
        try:
            st = os.lstat(root.joinpath(*done, name))
        except OSError:
            return None
        if stat.S_ISLNK(st.st_mode):
            hops -= 1
            target = os.readlink(root.joinpath(*done, name))
            if hops < 0:
                return None
            if target.startswith("/"):
                done = []
            todo = [p for p in target.split("/") if p] + todo
            continue
        done.append(name)
    return root.joinpath(*done)


@dataclass(frozen=True)
class Volume:
    what: str  # "partition 2", "LV vg/root", "the whole image"
    offset: int
    size: int
    fstype: str
    names: tuple[str, ...]  # how an fstab may name it: UUID=..., LABEL=..., /dev/vg/lv


def image_format(path: Path) -> str:
    """raw or qcow2, as qemu-img finds it from the content (never from the name)."""
    try:
        info = json.loads(run(["qemu-img", "info", "--output=json", path]).stdout)
    except (CommandError, json.JSONDecodeError) as exc:
        raise RefusedError(f"--from-image {path}: qemu-img cannot read it: {exc}") from None
    fmt = str(info.get("format"))
    if fmt not in ("raw", "qcow2"):
        raise RefusedError(f"--from-image {path}: a {fmt} image; sharedroot imports raw and qcow2")
    if info.get("backing-filename") or info.get("full-backing-filename"):
        raise RefusedError(
            f"--from-image {path}: has a backing file; give it whole"
            " (qemu-img convert -O qcow2 makes one)"
        )
    return fmt


def _probe(image: Path, offset: int, size: int) -> dict[str, str]:
    res = run(
        ["blkid", "-p", "-o", "export", "-O", str(offset), "-S", str(size), image], check=False
    )
    tags = dict(line.split("=", 1) for line in res.stdout.splitlines() if "=" in line)
    return tags if res.returncode == 0 else {}


def volumes(image: Path) -> list[Volume]:
    """Every filesystem of a raw image: a bare one, partitions, linear LVs."""
    size = image.stat().st_size
    found: list[Volume] = []
    pv_at: list[int] = []
    whole = _probe(image, 0, size)
    if whole.get("TYPE") in FILESYSTEMS:
        return [Volume("the whole image", 0, size, whole["TYPE"], _names(whole))]
    if whole.get("TYPE") == "LVM2_member":
        pv_at.append(0)
    else:
        res = run(["sfdisk", "--json", image], check=False)
        table = json.loads(res.stdout).get("partitiontable", {}) if res.returncode == 0 else {}
        sector = int(table.get("sectorsize", 512))
        disk_id = str(table.get("id", "")).lower().removeprefix("0x")
        for n, part in enumerate(table.get("partitions", []), start=1):
            if table.get("label") == "dos" and str(part.get("type")).lower() in EXTENDED:
                continue
            start, length = int(part["start"]) * sector, int(part["size"]) * sector
            tags = _probe(image, start, length)
            if table.get("label") == "dos":
                tags.setdefault("PART_ENTRY_UUID", f"{disk_id.zfill(8)}-{n:02x}")
            if tags.get("TYPE") in FILESYSTEMS:
                found.append(Volume(f"partition {n}", start, length, tags["TYPE"], _names(tags)))
            elif tags.get("TYPE") == "LVM2_member":
                pv_at.append(start)
    with open(image, "rb") as f:
        pvs = [pv for at in pv_at if (pv := read_pv(f, at)) is not None]
    for lv in logical_volumes(pvs):
        what = f"LV {lv.vg}/{lv.name}"
        if lv.offset is None:
            found.append(Volume(what, 0, lv.size, f"unreadable: {lv.problem}", lv.paths))
            continue
        tags = _probe(image, lv.offset, lv.size)
        if tags.get("TYPE") in FILESYSTEMS:
            found.append(Volume(what, lv.offset, lv.size, tags["TYPE"], lv.paths + _names(tags)))
    return found


def _names(tags: dict[str, str]) -> tuple[str, ...]:
    keys = {"UUID": "UUID", "LABEL": "LABEL", "PART_ENTRY_UUID": "PARTUUID",
            "PART_ENTRY_NAME": "PARTLABEL"}  # fmt: skip
    out = [f"{name}={tags[key]}" for key, name in keys.items() if tags.get(key)]
    by = {"UUID": "by-uuid", "LABEL": "by-label", "PARTUUID": "by-partuuid",
          "PARTLABEL": "by-partlabel"}  # fmt: skip
    return tuple(out + [f"/dev/disk/{by[n.split('=')[0]]}/{n.split('=', 1)[1]}" for n in out])


@contextlib.contextmanager
def _terminated_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like ^C, so every mount and temporary file is undone."""

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread takes signals (a server's job thread: its own rules)
        return
    before = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


@contextlib.contextmanager
def opened(
    src: Source, tmp: Path, log: Log, *, arch: str | None = None, dry_run: bool = False
) -> Iterator[Path | None]:
    """The system's root directory, checked; for an image, mounted read-only until the end.

    Image mounts live in this command's private mount namespace and use loop devices
    with autoclear (mount(8)'s own): even a SIGKILL leaves nothing mounted or attached;
    a converted qcow2 in the store's tmp/ is removed by the next writing command.
    Yields None for a qcow2 image in a dry run (reading it needs a converted copy).
    """
    if not src.is_image:
        generator = check_system(src.path, f"{src.option} {src.path}", arch)
        log(f"{src.path}: systemd, {generator}")
        yield src.path
        return
    fmt = image_format(src.path)
    if fmt != "raw" and dry_run:
        log(f"{src.path}: a {fmt} image; a real run converts it to raw to find its root")
        yield None
        return
    with _terminated_as_interrupt(), contextlib.ExitStack() as stack:
        raw = src.path
        if fmt != "raw":
            tmp.mkdir(parents=True, exist_ok=True)
            work = Path(tempfile.mkdtemp(prefix=".import-", dir=tmp))
            stack.callback(shutil.rmtree, work, ignore_errors=True)
            raw = work / "image.raw"
            log(f"convert the {fmt} image to a raw one in the store ({raw})")
            run(["qemu-img", "convert", "-f", fmt, "-O", "raw", src.path, raw])
        found = volumes(raw)
        root = stack.enter_context(_mount_root(raw, src.path, found, log))
        generator = check_system(root, f"{src.option} {src.path}", arch)
        log(f"{src.path}: systemd, {generator}")
        yield root


@contextlib.contextmanager
def _mount_root(raw: Path, given: Path, found: list[Volume], log: Log) -> Iterator[Path]:
    private_mounts()
    readable = [v for v in found if v.fstype in FILESYSTEMS]
    if not readable and found:
        seen = "; ".join(f"{v.what} {v.fstype.removeprefix('unreadable: ')}" for v in found)
        raise RefusedError(
            f"--from-image {given}: no root filesystem it can read: {seen}; nothing was written"
        )
    if not readable:
        raise RefusedError(
            f"--from-image {given}: no root filesystem found: no {', '.join(FILESYSTEMS[:-1])}"
            f" or {FILESYSTEMS[-1]} filesystem on a partition, an LVM volume or the bare image;"
            " is it a disk of an installed Linux? Nothing was written"
        )
    top = Path(tempfile.mkdtemp(prefix="sharedroot-import-"))
    with contextlib.ExitStack() as stack:
        stack.callback(top.rmdir)
        roots: list[Volume] = []
        for v in readable:  # a root holds etc/ and usr/; /usr, /boot, /var do not
            with _mounted(raw, v, top, ()):
                if _is_dir(top, "/etc") and _is_dir(top, "/usr"):  # symlinks: not followed
                    roots.append(v)
        if len(roots) != 1:
            named = ", ".join(f"{v.what} ({v.fstype})" for v in readable)
            why = "several candidate roots" if roots else "no root filesystem (etc/ and usr/)"
            which = ", ".join(v.what for v in roots) if roots else named
            raise RefusedError(f"--from-image {given}: {why}: {which}; nothing was written")
        root = roots[0]
        stack.enter_context(_mounted(raw, root, top, ()))
        log(f"root: {root.what} ({root.fstype})")
        for mount, vol, opts in _fstab_mounts(top, readable, given, log):
            stack.enter_context(_mounted(raw, vol, top / mount.lstrip("/"), opts))
            log(f"{mount}: {vol.what} ({vol.fstype})")
        yield top


def _fstab_mounts(
    root: Path, found: list[Volume], given: Path, log: Log
) -> list[tuple[str, Volume, tuple[str, ...]]]:
    """The image's own fstab: its other filesystems, parents first."""
    fstab = root / "etc/fstab"
    if _resolve(root, "etc/fstab") is None or fstab.is_symlink():
        return []
    by_name = {n: v for v in found for n in v.names}
    out: list[tuple[str, Volume, tuple[str, ...]]] = []
    for line in fstab.read_text(errors="replace").splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 3 or os.path.normpath(fields[1]) in ("/", "."):
            continue
        spec, mount, fs = fields[0], os.path.normpath(fields[1]), fields[2]
        opts = fields[3].split(",") if len(fields) > 3 else []
        if fs not in (*FILESYSTEMS, "auto") or "noauto" in opts or "bind" in opts:
            continue  # swap, tmpfs, network filesystems: nothing of the system's files
        vol = by_name.get(spec.replace('"', ""))
        if vol is None or vol.fstype not in FILESYSTEMS:
            if "nofail" in opts:
                log(f"fstab: {spec} for {mount} is not in the image (nofail: left out)")
                continue
            why = vol.fstype if vol else "no such filesystem in the image"
            raise RefusedError(f"--from-image {given}: fstab mounts {spec} on {mount}: {why}")
        if not mount.startswith("/") or ".." in Path(mount).parts or not _is_dir(root, mount):
            raise RefusedError(
                f"--from-image {given}: fstab mounts {spec} on {mount}, which is no directory"
                " of the image's root"
            )
        keep = tuple(o for o in opts if o.startswith(("subvol=", "subvolid=")))
        out.append((mount, vol, keep))
    return sorted(out, key=lambda m: len(Path(m[0]).parts))


def _is_dir(root: Path, mount: str) -> bool:
    at = root
    for part in Path(mount).parts[1:]:
        at = at / part
        if at.is_symlink() or not at.is_dir():
            return False
    return True


@contextlib.contextmanager
def _mounted(raw: Path, vol: Volume, target: Path, extra: tuple[str, ...]) -> Iterator[None]:
    opts = ["ro", "loop", f"offset={vol.offset}", f"sizelimit={vol.size}"]
    opts += [o for o in RO_OPTIONS.get(vol.fstype, "").split(",") if o] + list(extra)
    run(["mount", "-t", vol.fstype, "-o", ",".join(opts), raw, target])
    try:
        yield
    finally:
        if run(["umount", target], check=False).returncode != 0:
            run(["umount", "--lazy", target], check=False)
