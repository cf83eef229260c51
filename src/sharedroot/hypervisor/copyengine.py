"""Copy raw disk images: reflink when the filesystem can share blocks, else a sparse copy.

This is the z/VM FLASHCOPY-else-DDR idea on Linux files. The destination is never written
in place: the copy goes to a temporary file beside it, which is fsynced (and optionally
verified) and then renamed over the destination, so a guest that still has the old image
open keeps reading its old inode and a failed copy leaves the destination as it was.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import stat
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from sharedroot.errors import InputError, OperationError

__all__ = [
    "ALL_METHODS",
    "CopyResult",
    "Method",
    "Progress",
    "content_hash",
    "copy_image",
]


class Method(StrEnum):
    """How the bytes get to the destination, in order of preference."""

    REFLINK = "reflink"
    COPY_FILE_RANGE = "copy_file_range"
    SPARSE = "sparse"
    FLASHCOPY = "flashcopy"  # z/VM: CP FLASHCOPY between two linked minidisks
    DD = "dd"  # z/VM: the COPYMDSK fallback, dd between the enabled devices


ALL_METHODS: tuple[Method, ...] = (Method.REFLINK, Method.COPY_FILE_RANGE, Method.SPARSE)

Progress = Callable[[int, int], None]
"""Called with (bytes_done, bytes_total) of data (non-hole) bytes."""


@dataclass(frozen=True)
class CopyResult:
    method: Method
    size: int  # logical size of the image
    bytes_copied: int  # data bytes actually moved (0 for reflink: blocks are shared)
    seconds: float
    verified: bool  # True when verify=True and hashes matched


# _IOW(0x94, 9, int): clone all of one file's extents into another (btrfs, XFS, bcachefs).
FICLONE = 0x40049409

_CFR_CHUNK = 64 << 20  # large, so the kernel does few round trips; progress still moves
_SPARSE_BLOCK = 4 << 20  # big enough for pread/pwrite throughput, small enough to find zeros
_HASH_BLOCK = 1 << 20  # fixed: content_hash values depend on it

_ZERO_SPARSE = bytes(_SPARSE_BLOCK)
_ZERO_HASH = bytes(_HASH_BLOCK)

# Errors that mean "this method does not work here", not "the copy failed".
_REFLINK_UNSUPPORTED = frozenset(
    {errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY, errno.ENOSYS}
)
_CFR_UNSUPPORTED = frozenset({errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL})


class _Unsupported(Exception):
    """The method cannot be used on these files; try the next one."""


# --------------------------------------------------------------------------- extents


def _extents(fd: int, size: int) -> list[tuple[int, int]]:
    """The [start, end) data ranges of an open file, in order; holes are left out."""
    out: list[tuple[int, int]] = []
    off = 0
    while off < size:
        try:
            start = os.lseek(fd, off, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data after off
                break
            if exc.errno == errno.EINVAL and not out:
                # Filesystem without SEEK_DATA: treat the whole file as data.
                return [(0, size)] if size else []
            raise
        if start >= size:
            break
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        out.append((start, end))
        off = end
    return out


def _data_bytes(extents: Sequence[tuple[int, int]]) -> int:
    return sum(end - start for start, end in extents)


# --------------------------------------------------------------------------- hashing


def data_bytes(path: Path) -> int:
    """Bytes a file holds in data extents: what a sparse-aware copy moves."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return _data_bytes(_extents(fd, os.fstat(fd).st_size))
    finally:
        os.close(fd)


def _hash_fd(fd: int, size: int) -> str:
    """Hash of the logical content; see content_hash."""
    h = hashlib.blake2b(digest_size=32)
    last = -1
    for start, end in _extents(fd, size):
        # Extent edges need not fall on block edges: a block may touch two extents.
        first = max(start // _HASH_BLOCK, last + 1)
        for idx in range(first, (end - 1) // _HASH_BLOCK + 1):
            off = idx * _HASH_BLOCK
            n = min(_HASH_BLOCK, size - off)
            data = os.pread(fd, n, off)
            if len(data) != n:
                raise OperationError(f"file shrank while hashing (short read at offset {off})")
            zero = _ZERO_HASH if n == _HASH_BLOCK else bytes(n)
            if data != zero:
                h.update(idx.to_bytes(8, "little"))
                h.update(data)
            last = idx
    h.update(size.to_bytes(8, "little"))
    return h.hexdigest()


def content_hash(path: Path, length: int | None = None) -> str:
    """Hex digest of the logical content of `path`, an image or a disk (holes read as zeros).

    Only 1 MiB blocks that hold data are read; all-zero blocks are skipped like holes, so
    files with the same bytes but different hole layout hash the same. With `length`,
    only the first `length` bytes count (a copy onto a bigger disk).
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise InputError(f"cannot hash {path}: no such file") from None
    except OSError as exc:
        raise OperationError(f"cannot hash {path}: {exc.strerror}") from exc
    try:
        st = os.fstat(fd)
        if stat.S_ISBLK(st.st_mode):  # a disk attached to the worker (z/VM minidisk)
            size = os.lseek(fd, 0, os.SEEK_END)
        elif stat.S_ISREG(st.st_mode):
            size = st.st_size
        else:
            raise InputError(f"cannot hash {path}: not a regular file or block device")
        try:
            return _hash_fd(fd, size if length is None else min(length, size))
        except OSError as exc:
            raise OperationError(f"cannot hash {path}: {exc.strerror}") from exc
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- methods


def _copy_reflink(sfd: int, dfd: int) -> int:
    try:
        fcntl.ioctl(dfd, FICLONE, sfd)
    except OSError as exc:
        if exc.errno in _REFLINK_UNSUPPORTED:
            raise _Unsupported(exc.strerror) from exc
        raise
    return 0


def _copy_file_range(
    sfd: int,
    dfd: int,
    size: int,
    extents: Sequence[tuple[int, int]],
    progress: Progress | None,
) -> int:
    total = _data_bytes(extents)
    # Setting the size first means every range we do not copy stays a hole.
    os.ftruncate(dfd, size)
    done = 0
    first = True
    for start, end in extents:
        off = start
        while off < end:
            count = min(_CFR_CHUNK, end - off)
            try:
                n = os.copy_file_range(sfd, dfd, count, off, off)
            except OSError as exc:
                if first and exc.errno in _CFR_UNSUPPORTED:
                    raise _Unsupported(exc.strerror) from exc
                raise
            first = False
            if n == 0:
                raise OperationError(f"source shrank during copy (nothing at offset {off})")
            off += n
            done += n
            if progress is not None:
                progress(done, total)
    return done


def _copy_sparse(
    sfd: int,
    dfd: int,
    size: int,
    extents: Sequence[tuple[int, int]],
    progress: Progress | None,
) -> int:
    total = _data_bytes(extents)
    os.ftruncate(dfd, size)
    done = 0
    written = 0
    for start, end in extents:
        off = start
        while off < end:
            count = min(_SPARSE_BLOCK, end - off)
            data = os.pread(sfd, count, off)
            if len(data) != count:
                raise OperationError(f"source shrank during copy (short read at offset {off})")
            zero = _ZERO_SPARSE if count == _SPARSE_BLOCK else bytes(count)
            # Zero blocks that the source has allocated need not be allocated in the copy.
            if data != zero:
                view = memoryview(data)
                pos = 0
                while pos < count:
                    pos += os.pwrite(dfd, view[pos:], off + pos)
                written += count
            off += count
            done += count
            if progress is not None:
                progress(done, total)
    return written


# --------------------------------------------------------------------------- copy_image


def _open_source(src: Path) -> tuple[int, os.stat_result]:
    try:
        st = os.stat(src)  # stat first: opening a FIFO for reading would block
    except FileNotFoundError:
        raise InputError(f"source image {src} does not exist") from None
    except OSError as exc:
        raise InputError(f"cannot stat source image {src}: {exc.strerror}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise OperationError(f"source image {src} is not a regular file")
    try:
        fd = os.open(src, os.O_RDONLY)
    except FileNotFoundError:
        raise InputError(f"source image {src} does not exist") from None
    except OSError as exc:
        raise OperationError(f"cannot open source image {src}: {exc.strerror}") from exc
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):  # replaced between stat and open
        os.close(fd)
        raise OperationError(f"source image {src} is not a regular file")
    return fd, st


def _check_destination(dst: Path, src_st: os.stat_result) -> None:
    parent = dst.parent
    if not parent.is_dir():
        raise InputError(f"destination directory {parent} does not exist (for {dst})")
    try:
        dst_st = os.stat(dst)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise InputError(f"cannot stat destination {dst}: {exc.strerror}") from exc
    if not stat.S_ISREG(dst_st.st_mode):
        raise OperationError(f"destination {dst} exists and is not a regular file")
    if (dst_st.st_dev, dst_st.st_ino) == (src_st.st_dev, src_st.st_ino):
        raise InputError(f"source and destination are the same file: {dst}")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:
        # Some filesystems cannot fsync a directory; the rename is still done.
        if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
            raise
    finally:
        os.close(fd)


def copy_image(
    src: Path,
    dst: Path,
    *,
    progress: Progress | None = None,
    verify: bool = False,
    methods: Sequence[Method] = ALL_METHODS,
) -> CopyResult:
    """Copy the disk image `src` to `dst`, keeping holes, atomically replacing `dst`.

    The methods are tried in order; one that the filesystem does not support is skipped.
    With `verify`, the new file's content_hash must equal the source's before it replaces
    `dst`, else OperationError. On any failure `dst` is left untouched.
    """
    src = Path(src)
    dst = Path(dst)
    order = [Method(m) for m in methods]
    if not order:
        raise InputError("copy_image: no copy methods given")
    t0 = time.monotonic()
    sfd, src_st = _open_source(src)
    try:
        _check_destination(dst, src_st)
        size = src_st.st_size
        try:
            tfd, tmp_name = tempfile.mkstemp(prefix=f".{dst.name}.copy-", dir=dst.parent)
        except OSError as exc:
            raise OperationError(
                f"cannot create a temporary file in {dst.parent} to copy {src} to {dst}: "
                f"{exc.strerror}"
            ) from exc
        tmp = Path(tmp_name)
        try:
            used, copied = _copy_with(sfd, tfd, size, order, progress, src, dst)
            os.fchmod(tfd, stat.S_IMODE(src_st.st_mode))
            os.fsync(tfd)
            verified = False
            if verify:
                want = _hash_fd(sfd, os.fstat(sfd).st_size)
                got = _hash_fd(tfd, os.fstat(tfd).st_size)
                if want != got:
                    raise OperationError(
                        f"verification failed copying {src} to {dst} ({used}): content hash "
                        f"{got[:16]}... differs from source {want[:16]}...; {dst} left unchanged"
                    )
                verified = True
            os.replace(tmp, dst)
        except BaseException as exc:
            os.close(tfd)
            tmp.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise OperationError(
                    f"copying {src} to {dst} failed: {exc.strerror or exc}; {dst} left unchanged"
                ) from exc
            raise
        os.close(tfd)
        try:
            _fsync_dir(dst.parent)
        except OSError as exc:
            raise OperationError(
                f"{dst} was replaced but syncing {dst.parent} failed: {exc.strerror}"
            ) from exc
    finally:
        os.close(sfd)
    return CopyResult(
        method=used,
        size=size,
        bytes_copied=copied,
        seconds=time.monotonic() - t0,
        verified=verified,
    )


def _copy_with(
    sfd: int,
    tfd: int,
    size: int,
    order: Sequence[Method],
    progress: Progress | None,
    src: Path,
    dst: Path,
) -> tuple[Method, int]:
    """Copy with the first method that works; returns it and the data bytes moved."""
    reasons: list[str] = []
    extents: list[tuple[int, int]] | None = None
    for method in order:
        try:
            if method is Method.REFLINK:
                copied = _copy_reflink(sfd, tfd)
                if progress is not None:
                    total = _data_bytes(_extents(sfd, size))
                    progress(total, total)
                return method, copied
            if extents is None:
                extents = _extents(sfd, size)
            if method is Method.COPY_FILE_RANGE:
                return method, _copy_file_range(sfd, tfd, size, extents, progress)
            return method, _copy_sparse(sfd, tfd, size, extents, progress)
        except _Unsupported as exc:
            reasons.append(f"{method}: {exc}")
            # Nothing was written yet, but start the next method from an empty file anyway.
            os.ftruncate(tfd, 0)
    raise OperationError(f"no copy method works for {src} -> {dst}: " + "; ".join(reasons))
