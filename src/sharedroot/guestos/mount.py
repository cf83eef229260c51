"""A guest's filesystems mounted as one tree on the worker (as LNXCLONE links and mounts them)."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from sharedroot.namespace import private_mounts
from sharedroot.run import run


@contextlib.contextmanager
def mounted_tree(
    filesystems: Sequence[tuple[str, Path, str]],
    *,
    readonly: bool = False,
    at: Path | None = None,
    ranges: Mapping[str, tuple[int, int]] | None = None,
) -> Iterator[Path]:
    """Mount (mount point, device or image file, fs type) parents first; unmount after.

    Image files are loop-mounted by mount(8) itself.  Unmounting happens in reverse
    order even when the body fails, so the worker never keeps a guest's disk mounted;
    all of it happens in this command's private mount namespace, so even a killed
    command leaves nothing mounted. `ranges` gives, per mount point, a filesystem that
    lies at (byte offset, size) of its device: a logical volume read without
    device-mapper, through a loop device that mount(8) sets up and clears.
    """
    private_mounts()
    if at is not None:  # a stable place, for work that must find the same paths again
        at.mkdir(parents=True, exist_ok=True)
    root = at or Path(tempfile.mkdtemp(prefix="sharedroot-mnt-"))
    done: list[Path] = []
    try:
        for mount, device, fs in sorted(filesystems, key=lambda f: len(Path(f[0]).parts)):
            target = root / mount.lstrip("/")
            if not target.is_dir():
                if readonly and done:  # a look cannot make a mount point; nothing is there
                    continue
                target.mkdir(parents=True)
            # noload: a read-only look must not even replay an ext3/4 journal.
            opts = ("ro,noload" if fs in ("ext3", "ext4") else "ro") if readonly else "rw"
            if ranges and mount in ranges:
                offset, size = ranges[mount]
                opts += f",loop,offset={offset},sizelimit={size}"
            run(["mount", "-t", fs, "-o", opts, device, target])
            done.append(target)
        yield root
    finally:
        for target in reversed(done):
            # A busy mount (a shell left in it) is detached lazily rather than left behind.
            if run(["umount", target], check=False).returncode != 0:
                run(["umount", "--lazy", target], check=False)
        with contextlib.suppress(OSError):
            root.rmdir()
