"""The local backend's disk images: raw files holding a filesystem or swap."""

from __future__ import annotations

from pathlib import Path

from sharedroot.errors import InputError, OperationError
from sharedroot.files import regular_file
from sharedroot.model.types import DiskKind
from sharedroot.run import run


def make_filesystem(
    image: Path,
    kind: DiskKind,
    size: int,
    fs: str | None,
    source: Path | None = None,
    label: str | None = None,
) -> None:
    """Create `image` (sparse, `size` bytes) holding an empty filesystem or swap.

    With `source`, the filesystem is filled from that directory (mke2fs -d).
    """
    with open(image, "wb") as f:
        f.truncate(size)
    if kind is DiskKind.LVM:
        return  # left empty: install writes the physical volume (guestos.lvmdisk)
    if kind is DiskKind.SWAP:
        run(["mkswap", "-q", *(["-L", label] if label else []), image])
    elif fs in ("ext2", "ext3", "ext4"):
        # 4 KiB blocks even on small disks: DAX maps whole pages (see guestos.pmem).
        argv: list[str | Path] = ["mke2fs", "-q", "-F", "-t", fs, "-b", "4096"]
        if label:
            argv += ["-L", label]
        if source is not None:  # files owned as in the tree, the top directory by root
            argv += ["-E", "root_owner=0:0", "-d", source]
        run([*argv, image])
    else:
        raise InputError(f"cannot make a filesystem of type {fs!r}")


def check_image(path: Path, size: int, what: str) -> None:
    """The image the store records: a regular file of the recorded size.

    A truncated or replaced image is never copied onward as if it were good.
    """
    st = regular_file(path, OperationError, what=f"{what}: image ")
    if st.st_size != size:
        raise OperationError(
            f"{what}: image {path} is {st.st_size} bytes, the store records {size}:"
            " truncated or replaced; restore it, or rerun the operation that writes it"
        )
