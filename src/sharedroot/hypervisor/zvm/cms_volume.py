"""The inside of a CMS (EDF) minidisk: its label, directory, allocation map and pointer
trees, opened for reading or writing (the file operations are in `cms`)."""

from __future__ import annotations

import fcntl
import os
import re
import stat
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sharedroot.errors import InputError, OperationError
from sharedroot.hypervisor.zvm.cms_layout import (
    AMAP_NAME,
    AMAP_TYPE,
    CMS1,
    DIR_NAME,
    DIR_TYPE,
    FST_CENTURY,
    FST_SIZE,
    LABEL_SIZE,
    USED_OFFSET,
    Fst,
    Label,
    RecordFormat,
    bcd_date,
    build_tree,
    ebcdic_decode,
    ebcdic_encode,
)

_NAME = re.compile(r"[A-Z0-9@#$+\-_]{1,8}")
LABEL_RE = re.compile(r"[A-Z0-9@#$+\-_]{1,6}")
_BLKGETSIZE64 = 0x80081272
_BLKSSZGET = 0x1268
_PROBES = (4096, 512, 2048, 1024, 8192)  # cmsfs-fuse's order for image files
MAX_V_RECORD = 0xFFFF  # the 2-byte V length
_NOT_FULL = re.compile(rb"[^\xff]")
BLOCKS_PER_TRACK_3390 = {512: 49, 1024: 33, 2048: 21, 4096: 12}


@dataclass(frozen=True)
class CmsFile:
    name: str
    ftype: str
    mode: str
    recfm: RecordFormat
    lrecl: int
    records: int
    blocks: int


class Disk:
    """The device or image, opened and flock()ed for the length of one operation."""

    def __init__(self, device: Path, write: bool) -> None:
        try:
            self.fd = os.open(device, os.O_RDWR if write else os.O_RDONLY)
        except OSError as exc:
            raise InputError(f"{device}: cannot open: {exc.strerror}") from None
        self.path = device
        st = os.fstat(self.fd)
        self.is_block = stat.S_ISBLK(st.st_mode)
        if not (self.is_block or stat.S_ISREG(st.st_mode)):
            os.close(self.fd)
            raise InputError(f"{device}: neither a block device nor a regular file")
        self.sector = 512
        if self.is_block:
            buf = fcntl.ioctl(self.fd, _BLKGETSIZE64, b"\0" * 8)
            self.size: int = struct.unpack("Q", buf)[0]
            self.sector = struct.unpack("i", fcntl.ioctl(self.fd, _BLKSSZGET, b"\0" * 4))[0]
        else:
            self.size = st.st_size
        fcntl.flock(self.fd, fcntl.LOCK_EX if write else fcntl.LOCK_SH)

    def read(self, offset: int, length: int) -> bytes:
        data = os.pread(self.fd, length, offset)
        if len(data) != length:
            raise OperationError(f"{self.path}: short read at byte {offset}: damaged CMS disk")
        return data

    def write(self, offset: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            done = os.pwrite(self.fd, view, offset)
            view, offset = view[done:], offset + done

    def close(self) -> None:
        os.close(self.fd)


@contextmanager
def opened(device: Path, write: bool) -> Iterator[Disk]:
    disk = Disk(Path(device), write)
    try:
        yield disk
    finally:
        disk.close()


def name_bytes(name: str, what: str) -> bytes:
    up = name.upper()
    if not _NAME.fullmatch(up):
        raise InputError(f"CMS file {what} {name!r}: 1-8 characters of A-Z 0-9 @ # $ + - _")
    return ebcdic_encode(up.ljust(8))


class Volume:
    """One CMS disk's label, directory and (for writes) allocation map, read once per call."""

    def __init__(self, disk: Disk, with_map: bool) -> None:
        self.disk = disk
        self.label_at, self.label = self._find_label()
        self.bs = self.label.block_size
        self.per_block = self.bs // FST_SIZE
        self.used = self.label.used_blocks
        self.dir_fst = Fst.unpack(self.disk.read(self._addr(self.label.dop), FST_SIZE))
        if (self.dir_fst.name, self.dir_fst.ftype) != (DIR_NAME, DIR_TYPE):
            raise OperationError(f"{disk.path}: CMS directory FST missing: damaged CMS disk")
        self.dir_blocks, self.dir_ptrs = self._tree(self.dir_fst, None)
        if not self.dir_blocks or self.dir_blocks[0] != self.label.dop:
            raise OperationError(f"{disk.path}: CMS directory does not start at its origin")
        first = self.disk.read(self._addr(self.label.dop), self.bs)
        self.amap_fst = Fst.unpack(first[FST_SIZE : 2 * FST_SIZE])
        if (self.amap_fst.name, self.amap_fst.ftype) != (AMAP_NAME, AMAP_TYPE):
            raise OperationError(f"{disk.path}: CMS allocation map FST missing: damaged")
        self.entries = self._read_entries(first)
        self.bitmap = bytearray()
        self.amap_blocks: list[int] = []
        self.dirty: set[int] = set()
        if with_map:
            self.amap_blocks = self._tree(self.amap_fst, None)[0]
            self.bitmap = bytearray(b"".join(self._block(b) for b in self.amap_blocks))
            if len(self.bitmap) * 8 < self.label.total_blocks:
                raise OperationError(f"{disk.path}: CMS allocation map too short: damaged")

    def _find_label(self) -> tuple[int, Label]:
        d = self.disk
        probes = ((2 * d.sector, d.sector) if d.is_block else ()) + _PROBES
        damaged = False
        for offset in dict.fromkeys(probes):
            if offset + LABEL_SIZE > d.size:
                continue
            raw = d.read(offset, LABEL_SIZE)
            if raw[:4] != CMS1:
                continue
            label = Label.unpack(raw)
            if label and label.total_blocks * label.block_size <= d.size:
                return offset, label
            damaged = True
        state = "has a damaged CMS label" if damaged else "is not CMS-formatted"
        raise OperationError(f"{d.path} {state}")

    def _addr(self, block: int) -> int:
        if not 1 <= block <= self.label.total_blocks:
            raise OperationError(f"{self.disk.path}: block pointer {block} out of range: damaged")
        return (block - 1) * self.bs

    def _block(self, block: int) -> bytes:
        return bytes(self.bs) if block == 0 else self.disk.read(self._addr(block), self.bs)

    def _tree(self, fst: Fst, count: int | None) -> tuple[list[int], list[int]]:
        """Data blocks (0: a null block) and pointer blocks of a file; None: up to a null one."""
        if fst.fop == 0 or count == 0:
            return [], []
        if fst.levels == 0:
            return [fst.fop], []
        var = fst.recfm == RecordFormat.V.code
        step = 12 if var else 4
        data: list[int] = []
        ptrs: list[int] = []

        per = (self.bs - 4) // step if var else self.bs // step

        def walk(block: int, level: int) -> bool:  # False once the file's end is reached
            ptrs.append(block)
            raw = self._block(block)
            for off in range(0, per * step, step):
                nxt = int.from_bytes(raw[off : off + 4], "big")
                # V: an all-zero entry ends the file; F: a null pointer is a block of zeros
                if nxt == 0 and (
                    not any(raw[off : off + 8]) if var else count is None or level > 1
                ):
                    return False
                if level > 1:
                    if not walk(nxt, level - 1):
                        return False
                    continue
                data.append(nxt)
                if count is not None and len(data) >= count:
                    return False
            return True

        walk(fst.fop, fst.levels)
        return data, ptrs

    def _read_entries(self, first: bytes) -> list[tuple[int, Fst]]:
        want = self.dir_fst.records - 2
        found: list[tuple[int, Fst]] = []
        for i, blk in enumerate(self.dir_blocks):
            raw = first if i == 0 else self._block(blk)
            for k in range(2 if i == 0 else 0, self.per_block):
                if len(found) == want:
                    return found
                fst = Fst.unpack(raw[k * FST_SIZE : (k + 1) * FST_SIZE])
                if not fst.is_empty:
                    found.append((i * self.per_block + k, fst))
        if len(found) != want:
            raise OperationError(
                f"{self.disk.path}: CMS directory lists {len(found)} files, its FST says {want}"
            )
        return found

    def find(self, name: bytes, ftype: bytes) -> int | None:
        for i, (_slot, fst) in enumerate(self.entries):
            if fst.name == name and fst.ftype == ftype:
                return i
        return None

    def slot_addr(self, slot: int) -> int:
        return self._addr(self.dir_blocks[slot // self.per_block]) + slot % self.per_block * 64

    def records(self, fst: Fst) -> list[bytes]:
        if fst.records == 0:
            return []
        if fst.recfm == RecordFormat.F.code:
            count = -(-fst.records * fst.lrecl // self.bs)
        elif fst.recfm == RecordFormat.V.code:
            count = fst.blocks
        else:
            raise OperationError(f"{self.disk.path}: unknown record format {fst.recfm:#x}")
        blocks = self._tree(fst, count)[0]
        if len(blocks) != count:
            raise OperationError(f"{self.disk.path}: CMS file shorter than its FST: damaged")
        stream = b"".join(self._block(b) for b in blocks)
        if fst.recfm == RecordFormat.F.code:
            n = fst.lrecl
            return [stream[i * n : (i + 1) * n] for i in range(fst.records)]
        out, pos = [], 0
        for _ in range(fst.records):
            length = int.from_bytes(stream[pos : pos + 2], "big")
            if length == 0 or pos + 2 + length > len(stream):
                raise OperationError(f"{self.disk.path}: CMS V records damaged")
            out.append(stream[pos + 2 : pos + 2 + length])
            pos += 2 + length
        return out

    def file_blocks(self, fst: Fst) -> list[int]:
        if fst.recfm == RecordFormat.F.code:
            count = -(-fst.records * fst.lrecl // self.bs)
        else:
            count = fst.blocks
        data, ptrs = self._tree(fst, count)
        return [b for b in data if b] + ptrs

    # --- allocation map -------------------------------------------------------------

    def _set(self, block: int, used: bool) -> None:
        byte, bit = divmod(block - 1, 8)
        if used:
            self.bitmap[byte] |= 0x80 >> bit
        else:
            self.bitmap[byte] &= ~(0x80 >> bit) & 0xFF
        self.used += 1 if used else -1
        self.dirty.add(byte // self.bs)

    def allocate(self, n: int) -> list[int]:
        """`n` free blocks, taken after the highest used block first; marked used in memory."""
        total = self.label.total_blocks
        if self.used + n > total:
            raise OperationError(f"{self.disk.path}: CMS disk full ({n} more blocks needed)")
        nonzero = len(self.bitmap.rstrip(b"\0"))
        top = 0  # bit index just past the highest used block
        if nonzero:
            last = self.bitmap[nonzero - 1]
            top = nonzero * 8 - ((last & -last).bit_length() - 1)
        got: list[int] = []
        for start, end in ((top, total), (0, top)):
            idx = start
            while len(got) < n and idx < end:
                if idx % 8 == 0:
                    m = _NOT_FULL.search(self.bitmap, idx // 8)
                    if not m:
                        break
                    idx = max(idx, m.start() * 8)
                    if idx >= end:
                        break
                if not self.bitmap[idx // 8] & (0x80 >> idx % 8):
                    got.append(idx + 1)
                idx += 1
        if len(got) < n:
            raise OperationError(f"{self.disk.path}: CMS disk full ({n} more blocks needed)")
        for b in got:
            self._set(b, True)
        return got

    def free(self, blocks: list[int]) -> None:
        for b in blocks:
            self._set(b, False)

    def flush_map(self) -> None:
        for i in sorted(self.dirty):
            self.disk.write(
                self._addr(self.amap_blocks[i]), bytes(self.bitmap[i * self.bs : (i + 1) * self.bs])
            )
        self.dirty.clear()

    def write_used(self) -> None:
        self.disk.write(self.label_at + USED_OFFSET, struct.pack(">I", self.used))

    # --- pointer trees --------------------------------------------------------------

    def build_tree(
        self, leaves: list[tuple[int, int, int]], var: bool, spare: list[int]
    ) -> tuple[int, int]:
        """Write the pointer blocks over `leaves` into `spare`; return (origin, levels)."""
        return build_tree(
            leaves, self.bs, var, spare.pop, lambda b, data: self.disk.write(self._addr(b), data)
        )

    def write_dir_fst(self, spare: list[int] | None) -> list[int]:
        """Rewrite the directory's FST, its pointers rebuilt from `spare` unless None.

        Returns the pointer blocks no longer used."""
        old = self.dir_fst
        fop, levels = old.fop, old.levels
        if spare is not None:
            fop, levels = self.build_tree([(b, 0, 0) for b in self.dir_blocks], False, spare)
        date, century = bcd_date()
        flags = (old.flags & ~FST_CENTURY) | (FST_CENTURY if century else 0)
        self.dir_fst = Fst(
            DIR_NAME, DIR_TYPE, old.mode, RecordFormat.F.code, flags, FST_SIZE, fop,
            len(self.dir_blocks), len(self.entries) + 2, levels, 4, date,
        )  # fmt: skip
        self.disk.write(self._addr(self.label.dop), self.dir_fst.pack())
        if spare is None:
            return []
        stale, self.dir_ptrs = self.dir_ptrs, self._tree(self.dir_fst, None)[1]
        return stale


def to_info(fst: Fst) -> CmsFile:
    if fst.recfm not in (RecordFormat.F.code, RecordFormat.V.code):
        raise OperationError(f"CMS file with unknown record format {fst.recfm:#x}: damaged")
    return CmsFile(
        ebcdic_decode(fst.name).rstrip(), ebcdic_decode(fst.ftype).rstrip(),
        ebcdic_decode(fst.mode).strip(), RecordFormat(ebcdic_decode(bytes([fst.recfm]))),
        fst.lrecl, fst.records, fst.blocks,
    )  # fmt: skip
