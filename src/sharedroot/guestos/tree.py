"""A root tree laid onto disks: staged hard-linked copies, extra files and units, the
split by mount point, and each disk's image built from its part."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from sharedroot.errors import OperationError
from sharedroot.guestos.fstab import write_fstab
from sharedroot.guestos.lvmdisk import write_lvm_disk
from sharedroot.guestos.platform import VIRTIO, Platform
from sharedroot.hypervisor.images import make_filesystem
from sharedroot.model.layout import Layout
from sharedroot.model.types import DiskKind
from sharedroot.run import run


def install_extra(
    root: Path,
    files: Mapping[str, bytes | str],
    enable_units: Sequence[str] = (),
    *,
    modes: Mapping[str, int] | None = None,
) -> None:
    """Add files (path inside the guest -> content) and enable systemd units.

    Files are replaced, never written in place, so this is safe on a hard-linked
    staging copy of the cached tree (see `staged_tree`). A unit is enabled by
    linking it into the targets its [Install] WantedBy= names.
    """
    for rel, content in files.items():
        data = content.encode() if isinstance(content, str) else content
        default = 0o755 if data.startswith(b"#!") else 0o644  # scripts are executable
        replace_file(root / rel.lstrip("/"), data, (modes or {}).get(rel, default))
    for unit in enable_units:
        _enable_unit(root, unit)


def _enable_unit(root: Path, unit: str) -> None:
    candidates = [root / d / unit for d in ("etc/systemd/system", "usr/lib/systemd/system")]
    found = next((p for p in candidates if p.exists()), None)
    if found is None:
        raise OperationError(f"cannot enable {unit}: no such unit in the tree")
    wanted: list[str] = []
    for line in found.read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() in ("WantedBy", "RequiredBy"):
            kind = "wants" if key.strip() == "WantedBy" else "requires"
            wanted += [f"{t}.{kind}" for t in value.split()]
    if not wanted:
        raise OperationError(f"cannot enable {unit}: it has no WantedBy= or RequiredBy=")
    target_unit = "/" + str(found.relative_to(root))
    for d in wanted:
        link = root / "etc/systemd/system" / d / unit
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(target_unit)


@contextlib.contextmanager
def staged_tree(
    tree: Path, under: Path | None = None, *, real_copy: bool = False
) -> Iterator[Path]:
    """A throw-away hard-linked copy of the cached tree (seconds), removed afterwards.

    It lives beside the tree so hard links work, or `under` a directory of the caller's
    (a tree that is not ours: nothing is written beside it). Change files in it only by
    replacing them (as `install_extra` and `write_fstab` do), or the tree changes too.
    With `real_copy`, a real copy at once (a tree on another filesystem, e.g. a mounted image).
    """
    if under is not None:
        under.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".stage-", dir=under or tree.parent))
    try:
        copy = stage / "root"
        res = None if real_copy else run(["cp", "-al", tree, copy], check=False)
        # Another filesystem: a real copy is slower but works.
        if res is None or res.returncode != 0:
            shutil.rmtree(copy, ignore_errors=True)
            run(["cp", "-a", tree, copy])
        yield copy
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def populate_disks(
    tree: Path,
    layout: Layout,
    images: Mapping[str, Path],
    *,
    guest_fstab: bool = True,
    staged: bool = False,
) -> None:
    """Build each layout disk's image from the tree: filesystems from their subtree, swap,
    an LVM disk's volume group with each volume's filesystem.

    VDISKs are skipped: they are made fresh at each start. With `guest_fstab`,
    /etc/fstab is rewritten for `layout`. With `staged`, `tree` is already a
    throw-away copy (from `staged_tree`) and is taken apart in place.
    """
    if not staged:
        with staged_tree(tree) as copy:
            populate_disks(copy, layout, images, guest_fstab=guest_fstab, staged=True)
        return
    sources = split_tree(tree, layout, guest_fstab=guest_fstab)
    for disk in layout:
        image = images.get(disk.address)
        if image is None or disk.kind is DiskKind.VDISK:
            continue
        image.parent.mkdir(parents=True, exist_ok=True)
        # Build beside and rename: a running guest keeps the image it opened.
        tmp = image.with_name(f".{image.name}.new")
        try:
            if disk.kind is DiskKind.LVM:
                with open(tmp, "wb") as f:
                    f.truncate(disk.size)
                write_lvm_disk(tmp, disk, sources)
            else:
                make_filesystem(tmp, disk.kind, disk.size, disk.fs, sources.get(disk.address))
            tmp.rename(image)
        finally:
            tmp.unlink(missing_ok=True)


def split_tree(
    tree: Path, layout: Layout, *, guest_fstab: bool = True, platform: Platform = VIRTIO
) -> dict[str, Path]:
    """Take a staged tree apart by mount point: each filesystem's source directory.

    Each filesystem (a disk by its address, or a logical volume as ADDR:LV) gets what
    lies under its mount point, without what belongs to deeper mount points (those stay
    as empty directories on the parent). With `guest_fstab`, /etc/fstab is rewritten for
    `layout` on `platform` first.
    """
    if guest_fstab:
        write_fstab(tree, layout, platform=platform)
    parts = tree.parent / "parts"
    parts.mkdir(exist_ok=True)
    sources: dict[str, Path] = {}
    # Deepest mount points first, so /usr/local leaves /usr before /usr leaves /, and
    # /opt/mw leaves /opt with an empty directory behind: its mount point on /opt's disk.
    for fs in reversed(layout.filesystems):
        if fs.mount == "/":
            sources[fs.key] = tree
            continue
        inside = tree / fs.mount.lstrip("/")
        part = parts / fs.key.replace(":", "-")
        if inside.is_symlink() or (inside.exists() and not inside.is_dir()):
            raise OperationError(f"mount point {fs.mount} is not a directory in the tree")
        if inside.is_dir():
            st = inside.stat()
            inside.rename(part)
        else:
            st = None
            part.mkdir(mode=0o755)
        inside.mkdir(mode=0o755)
        if st is not None:
            os.chown(inside, st.st_uid, st.st_gid)
            inside.chmod(st.st_mode & 0o7777)
        sources[fs.key] = part
    return sources


def replace_file(path: Path, content: bytes | str, mode: int = 0o644) -> None:
    """Write a file by rename, breaking any hard link to the cached tree."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.sharedroot-tmp")
    data = content.encode() if isinstance(content, str) else content
    with open(tmp, "wb") as f:
        f.write(data)
    tmp.chmod(mode)
    tmp.replace(path)
