"""Tests for the disk copy engine, on real sparse images and real filesystems."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from sharedroot.errors import InputError, OperationError, SharedrootError
from sharedroot.hypervisor.copyengine import (
    ALL_METHODS,
    CopyResult,
    Method,
    content_hash,
    copy_image,
)
from sharedroot.run import have, run

MiB = 1 << 20
IMAGE_SIZE = 256 * MiB
IS_ROOT = os.geteuid() == 0


# --------------------------------------------------------------------------- helpers


def sha256(path: Path) -> str:
    """Hash of every byte, holes included: independent of content_hash."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(8 * MiB):
            h.update(chunk)
    return h.hexdigest()


def allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


def data_bytes(path: Path) -> int:
    """Bytes in data extents, per SEEK_DATA/SEEK_HOLE."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        total = off = 0
        while off < size:
            try:
                start = os.lseek(fd, off, os.SEEK_DATA)
            except OSError:
                break
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            total += end - start
            off = end
        return total
    finally:
        os.close(fd)


def fstype(path: Path) -> str:
    return run(["stat", "-f", "-c", "%T", path]).stdout.strip()


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".copy-" in p.name)


def assert_good_copy(src: Path, dst: Path, src_sha: str, result: CopyResult) -> None:
    assert dst.stat().st_size == src.stat().st_size == result.size
    assert sha256(dst) == src_sha
    # Holes stay holes.
    assert allocated(dst) <= allocated(src) + MiB
    assert leftovers(dst.parent) == []


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 256 MiB sparse ext4 image with ~78 MiB of files in several block groups."""
    base = tmp_path_factory.mktemp("image")
    tree = base / "tree"
    for sub, size in (("a", 5 * MiB + 123), ("b", 3 * MiB), ("c", 70 * MiB)):
        (tree / sub).mkdir(parents=True)
        (tree / sub / "blob").write_bytes(os.urandom(size))
    (tree / "a" / "zeros").write_bytes(bytes(2 * MiB))  # allocated zeros inside the fs
    (tree / "etc").mkdir()
    (tree / "etc" / "hostname").write_text("golden\n")
    img = base / "root.img"
    with img.open("wb") as f:
        f.truncate(IMAGE_SIZE)
    run(["mke2fs", "-q", "-t", "ext4", "-F", "-d", tree, img])
    # Some raw bytes near the end, at an offset that is not block aligned.
    with img.open("r+b") as f:
        f.seek(IMAGE_SIZE - 3 * MiB + 777)
        f.write(os.urandom(300_000))
    os.chmod(img, 0o640)
    os.sync()  # settle delayed allocation so the extent layout is stable
    return img


@pytest.fixture(scope="module")
def image_sha(image: Path) -> str:
    return sha256(image)


def _loop_fs(base: Path, kind: str) -> Iterator[Path]:
    if not IS_ROOT:
        pytest.skip("loop-mounting a reflink filesystem needs root")
    mkfs = {"xfs": "mkfs.xfs", "btrfs": "mkfs.btrfs"}[kind]
    if not have(mkfs):
        pytest.skip(f"{mkfs} is not installed")
    backing = base / f"{kind}.img"
    mnt = base / "mnt"
    mnt.mkdir()
    with backing.open("wb") as f:
        f.truncate(2 << 30)
    if kind == "xfs":
        run(["mkfs.xfs", "-q", "-m", "reflink=1", backing])
    else:
        run(["mkfs.btrfs", "-q", backing])
    run(["mount", "-o", "loop", backing, mnt])
    try:
        yield mnt
    finally:
        run(["umount", mnt], check=False)
        backing.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def xfs_mount(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield from _loop_fs(tmp_path_factory.mktemp("xfs"), "xfs")


@pytest.fixture(scope="module")
def btrfs_mount(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield from _loop_fs(tmp_path_factory.mktemp("btrfs"), "btrfs")


# --------------------------------------------------------------------------- copying


def test_default_copy_on_host_fs(image: Path, image_sha: str, tmp_path: Path) -> None:
    kind = fstype(tmp_path)
    if kind not in ("ext2/ext3", "tmpfs"):
        pytest.skip(f"expects a filesystem without reflink under {tmp_path}, got {kind}")
    dst = tmp_path / "copy.img"
    result = copy_image(image, dst)
    assert result.method is Method.COPY_FILE_RANGE
    assert result.bytes_copied == data_bytes(image)
    assert result.verified is False
    assert_good_copy(image, dst, image_sha, result)
    assert stat.S_IMODE(dst.stat().st_mode) == 0o640


def test_forced_sparse(image: Path, image_sha: str, tmp_path: Path) -> None:
    dst = tmp_path / "copy.img"
    result = copy_image(image, dst, methods=(Method.SPARSE,))
    assert result.method is Method.SPARSE
    # The 2 MiB zero file is allocated in the source but not written to the copy.
    assert result.bytes_copied < data_bytes(image)
    assert_good_copy(image, dst, image_sha, result)
    assert stat.S_IMODE(dst.stat().st_mode) == 0o640


def test_cross_filesystem_falls_back(image: Path, image_sha: str, xfs_mount: Path) -> None:
    # Reflink cannot cross filesystems; the engine must fall back to a data copy.
    dst = xfs_mount / "cross.img"
    result = copy_image(image, dst, verify=True)
    assert result.method in (Method.COPY_FILE_RANGE, Method.SPARSE)
    assert result.verified
    assert_good_copy(image, dst, image_sha, result)


@pytest.mark.parametrize("kind", ["xfs", "btrfs"])
def test_reflink(
    image: Path, image_sha: str, kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    mnt: Path = request.getfixturevalue(f"{kind}_mount")
    work = mnt / tmp_path.name
    work.mkdir()
    src = work / "golden.img"
    copy_image(image, src, methods=(Method.COPY_FILE_RANGE, Method.SPARSE))
    seen: list[tuple[int, int]] = []
    result = copy_image(src, work / "clone.img", progress=lambda d, t: seen.append((d, t)))
    assert result.method is Method.REFLINK
    assert result.bytes_copied == 0
    assert seen and seen[-1][0] == seen[-1][1]
    assert_good_copy(src, work / "clone.img", image_sha, result)


# --------------------------------------------------------------------------- verify / hash


@pytest.mark.parametrize("method", [Method.COPY_FILE_RANGE, Method.SPARSE])
def test_verify(image: Path, tmp_path: Path, method: Method) -> None:
    result = copy_image(image, tmp_path / "v.img", verify=True, methods=(method,))
    assert result.verified is True
    assert result.method is method


def test_content_hash_ignores_hole_layout(image: Path, tmp_path: Path) -> None:
    dense = tmp_path / "dense.img"
    # Every byte written, zeros included: same content, no holes.
    with image.open("rb") as f, dense.open("wb") as g:
        shutil.copyfileobj(f, g, 8 * MiB)
    assert allocated(dense) >= IMAGE_SIZE - MiB > allocated(image)
    assert content_hash(dense) == content_hash(image)
    # And it does see a one-byte change and a change of size (a trailing hole).
    with dense.open("r+b") as g:
        g.seek(100 * MiB + 5)
        g.write(b"\x01")
    assert content_hash(dense) != content_hash(image)
    grown = tmp_path / "grown.img"
    copy_image(image, grown)
    os.truncate(grown, IMAGE_SIZE + MiB)
    assert content_hash(grown) != content_hash(image)


def test_content_hash_missing(tmp_path: Path) -> None:
    missing = tmp_path / "nope.img"
    with pytest.raises(SharedrootError, match=re.escape(str(missing))):
        content_hash(missing)


def test_progress(image: Path, tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    result = copy_image(
        image,
        tmp_path / "p.img",
        progress=lambda done, total: seen.append((done, total)),
        methods=(Method.COPY_FILE_RANGE,),
    )
    total = data_bytes(image)
    assert len(seen) > 1  # the 70 MiB file spans more than one 64 MiB chunk
    dones = [d for d, _ in seen]
    assert dones == sorted(dones)
    assert {t for _, t in seen} == {total}
    assert dones[-1] == total == result.bytes_copied


def test_sparse_progress_reaches_total(image: Path, tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    result = copy_image(
        image,
        tmp_path / "p.img",
        progress=lambda d, t: seen.append((d, t)),
        methods=[Method.SPARSE],
    )
    assert result.bytes_copied < seen[-1][0]  # allocated zero blocks are counted, not written
    assert seen[-1] == (data_bytes(image), data_bytes(image))


# --------------------------------------------------------------------------- atomicity


@pytest.fixture()
def old_dst(tmp_path: Path) -> tuple[Path, str]:
    """An existing destination with other content, and its hash."""
    dst = tmp_path / "disk" / "guest.img"
    dst.parent.mkdir()
    dst.write_bytes(b"old image " * 100_000)
    return dst, sha256(dst)


def test_unwritable_directory_leaves_dst(image: Path, old_dst: tuple[Path, str]) -> None:
    dst, before = old_dst
    directory = dst.parent
    # Root ignores mode bits, so make the directory immutable instead.
    if IS_ROOT:
        run(["chattr", "+i", directory])
    else:
        directory.chmod(0o555)
    try:
        with pytest.raises(OperationError, match=re.escape(str(directory))):
            copy_image(image, dst)
    finally:
        if IS_ROOT:
            run(["chattr", "-i", directory])
        else:
            directory.chmod(0o755)
    assert sha256(dst) == before
    assert leftovers(directory) == []


def test_failure_midway_leaves_dst(image: Path, old_dst: tuple[Path, str]) -> None:
    dst, before = old_dst

    def boom(done: int, total: int) -> None:
        if done > 0:
            raise RuntimeError("guest moved under us")

    for method in (Method.COPY_FILE_RANGE, Method.SPARSE):
        with pytest.raises(RuntimeError, match="guest moved"):
            copy_image(image, dst, progress=boom, methods=(method,))
        assert sha256(dst) == before
        assert leftovers(dst.parent) == []


def test_verify_mismatch_leaves_dst(
    image: Path, image_sha: str, old_dst: tuple[Path, str], tmp_path: Path
) -> None:
    dst, before = old_dst
    src = tmp_path / "src.img"
    copy_image(image, src)
    first = True

    def scribble(done: int, total: int) -> None:
        # The source changes under the copy, in a range that was already copied.
        nonlocal first
        if first:
            first = False
            fd = os.open(src, os.O_WRONLY)
            try:
                start = os.lseek(fd, 0, os.SEEK_DATA)
                os.pwrite(fd, b"\xa5" * 4096, start)
            finally:
                os.close(fd)

    with pytest.raises(OperationError, match="verification failed"):
        copy_image(src, dst, progress=scribble, verify=True, methods=(Method.COPY_FILE_RANGE,))
    assert sha256(dst) == before
    assert leftovers(dst.parent) == []


def test_open_guest_keeps_old_inode(image: Path, image_sha: str, old_dst: tuple[Path, str]) -> None:
    dst, _ = old_dst
    with dst.open("rb") as guest:
        result = copy_image(image, dst)
        assert guest.read(10) == b"old image "
        assert os.fstat(guest.fileno()).st_ino != dst.stat().st_ino
    assert_good_copy(image, dst, image_sha, result)


# --------------------------------------------------------------------------- bad input


def test_missing_source(tmp_path: Path) -> None:
    src = tmp_path / "vanished.img"
    with pytest.raises((InputError, OperationError), match=re.escape(str(src))):
        copy_image(src, tmp_path / "dst.img")
    assert list(tmp_path.iterdir()) == []


def test_source_not_regular(tmp_path: Path) -> None:
    with pytest.raises(OperationError, match="not a regular file"):
        copy_image(tmp_path, tmp_path / "dst.img")


def test_missing_destination_directory(image: Path, tmp_path: Path) -> None:
    dst = tmp_path / "no" / "such" / "dst.img"
    with pytest.raises(InputError, match=r"no/such"):
        copy_image(image, dst)


def test_same_file_refused(image: Path) -> None:
    with pytest.raises(InputError, match="same file"):
        copy_image(image, image)


def test_no_methods(image: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError):
        copy_image(image, tmp_path / "x.img", methods=())


def test_all_methods_order() -> None:
    assert ALL_METHODS == (Method.REFLINK, Method.COPY_FILE_RANGE, Method.SPARSE)
    assert Method("reflink") is Method.REFLINK
