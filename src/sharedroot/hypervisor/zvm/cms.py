"""Small files on a CMS (EDF) minidisk, read and written from Linux: the guests' parm files.

The worker links the admin minidisk (CMSCLONE 0192) read/write; the guests link it read-only and
read it with s390-tools' cmsfs-fuse or cmsfs' cmsfscat, so what is written here follows their
view of the format (see `cms_layout` for the byte layout and where each fact comes from).

Where the label sits: `cmsfs-fuse/dasd.c` `get_device_info()` looks on a block device at twice
its logical sector size (ECKD: the third record of track 0) and then at the sector size (FBA),
and in an image file at 4096, 512, 2048, 1024, 8192. cmsfs (`cmsfsany.c` `cmsfs_find_label()`)
looks at byte 512 (FBA) and then at the third block of each block size. `format_disk` therefore
puts the label in block 3 (byte 2 x block size), where both find it, except on a block device
whose sector size differs from the block size (an FBA disk, a loop device), where it goes to
byte 512 as CMS puts it on FBA.

Writes never overwrite a block that the current directory points to, except the file's FST, the
directory's own FST, the allocation map and the label: new data and pointer blocks go to free
blocks, are flushed, and only then is the FST switched; the old blocks are freed last. Blocks
are handed out after the highest one in use first, so a guest that still holds the old directory
keeps reading the old data until the disk wraps around.
"""

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
    BLOCK_SIZES,
    CMS1,
    DIR_NAME,
    DIR_TYPE,
    DOP,
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
    tree_blocks,
    var_block_info,
)

__all__ = [
    "CmsFile",
    "RecordFormat",
    "delete_file",
    "format_disk",
    "is_formatted",
    "list_files",
    "read_file",
    "read_records",
    "read_text",
    "write_file",
    "write_text",
]

_NAME = re.compile(r"[A-Z0-9@#$+\-_]{1,8}")
_LABEL_RE = re.compile(r"[A-Z0-9@#$+\-_]{1,6}")
_BLKGETSIZE64 = 0x80081272
_BLKSSZGET = 0x1268
_PROBES = (4096, 512, 2048, 1024, 8192)  # cmsfs-fuse's order for image files
_MAX_V_RECORD = 0xFFFF  # the 2-byte V length
_NOT_FULL = re.compile(rb"[^\xff]")
_BLOCKS_PER_TRACK_3390 = {512: 49, 1024: 33, 2048: 21, 4096: 12}


@dataclass(frozen=True)
class CmsFile:
    name: str
    ftype: str
    mode: str
    recfm: RecordFormat
    lrecl: int
    records: int
    blocks: int


class _Disk:
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
def _opened(device: Path, write: bool) -> Iterator[_Disk]:
    disk = _Disk(Path(device), write)
    try:
        yield disk
    finally:
        disk.close()


def _name_bytes(name: str, what: str) -> bytes:
    up = name.upper()
    if not _NAME.fullmatch(up):
        raise InputError(f"CMS file {what} {name!r}: 1-8 characters of A-Z 0-9 @ # $ + - _")
    return ebcdic_encode(up.ljust(8))


class _Volume:
    """One CMS disk's label, directory and (for writes) allocation map, read once per call."""

    def __init__(self, disk: _Disk, with_map: bool) -> None:
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


def _to_info(fst: Fst) -> CmsFile:
    if fst.recfm not in (RecordFormat.F.code, RecordFormat.V.code):
        raise OperationError(f"CMS file with unknown record format {fst.recfm:#x}: damaged")
    return CmsFile(
        ebcdic_decode(fst.name).rstrip(), ebcdic_decode(fst.ftype).rstrip(),
        ebcdic_decode(fst.mode).strip(), RecordFormat(ebcdic_decode(bytes([fst.recfm]))),
        fst.lrecl, fst.records, fst.blocks,
    )  # fmt: skip


def format_disk(device: Path, *, label: str, block_size: int = 4096) -> None:
    """CMS FORMAT the whole device or image: an empty EDF file system labelled `label`."""
    volid = label.upper()
    if not _LABEL_RE.fullmatch(volid):
        raise InputError(f"CMS disk label {label!r}: 1-6 characters of A-Z 0-9 @ # $ + - _")
    if block_size not in BLOCK_SIZES:
        raise InputError(f"CMS block size {block_size}: one of {', '.join(map(str, BLOCK_SIZES))}")
    bs = block_size
    with _opened(device, True) as disk:
        total = disk.size // bs
        amap_n = -(-total // (8 * bs))
        amap_ptrs = tree_blocks(amap_n, bs, False)
        meta_end = DOP + amap_n + amap_ptrs  # last block in use after FORMAT
        if total < meta_end + 2:
            raise InputError(f"{device}: {disk.size} bytes is too small for a CMS disk")
        # The FBA layout only where the device's own sector size says it is not ECKD-like.
        label_at = 512 if disk.is_block and disk.sector != bs else 2 * bs
        # Zeroed first, so no older label at any probed offset outlives this FORMAT.
        disk.write(0, bytes(min(disk.size, max(meta_end * bs, 3 * 4096))))
        bitmap = bytearray(amap_n * bs)
        for b in range(meta_end):
            bitmap[b // 8] |= 0x80 >> b % 8
        amap_blocks = list(range(DOP + 1, DOP + 1 + amap_n))
        for i, b in enumerate(amap_blocks):
            disk.write((b - 1) * bs, bytes(bitmap[i * bs : (i + 1) * bs]))
        ptr_blocks = iter(range(DOP + 1 + amap_n, meta_end + 1))
        amap_fop, amap_levels = build_tree(
            [(b, 0, 0) for b in amap_blocks], bs, False, ptr_blocks.__next__,
            lambda b, data: disk.write((b - 1) * bs, data),
        )  # fmt: skip
        date, century = bcd_date()
        flags = FST_CENTURY if century else 0
        dir_fst = Fst(
            DIR_NAME, DIR_TYPE, bytes(2), RecordFormat.F.code, flags, FST_SIZE, DOP, 1, 2, 0, 4,
            date,
        )  # fmt: skip
        amap_fst = Fst(
            AMAP_NAME, AMAP_TYPE, bytes(2), RecordFormat.F.code, flags, bs, amap_fop, amap_n,
            amap_n, amap_levels, 4, date,
        )  # fmt: skip
        block = dir_fst.pack() + amap_fst.pack()
        disk.write((DOP - 1) * bs, block + bytes(bs - len(block)))
        cyl = -(-total // (15 * _BLOCKS_PER_TRACK_3390[bs]))
        lab = Label(volid, bs, DOP, cyl, total, meta_end, date, century)
        os.fsync(disk.fd)
        disk.write(label_at, lab.pack())  # last: until here the disk is not a CMS disk
        os.fsync(disk.fd)


def is_formatted(device: Path) -> bool:
    with _opened(device, False) as disk:
        try:
            _Volume(disk, False)
        except OperationError:
            return False
        return True


def list_files(device: Path) -> list[CmsFile]:
    with _opened(device, False) as disk:
        return [_to_info(fst) for _slot, fst in _Volume(disk, False).entries]


def read_records(device: Path, name: str, ftype: str) -> list[bytes] | None:
    """The file's records, or None when there is no such file."""
    key = (_name_bytes(name, "name"), _name_bytes(ftype, "type"))
    with _opened(device, False) as disk:
        vol = _Volume(disk, False)
        i = vol.find(*key)
        return None if i is None else vol.records(vol.entries[i][1])


def read_file(device: Path, name: str, ftype: str) -> bytes | None:
    """The file's records joined (V length prefixes left out), or None when there is none."""
    records = read_records(device, name, ftype)
    return None if records is None else b"".join(records)


def read_text(device: Path, name: str, ftype: str) -> str | None:
    """The file as CP1047 text, a line per record, trailing blanks dropped (F pads with them)."""
    records = read_records(device, name, ftype)
    if records is None:
        return None
    return "".join(ebcdic_decode(r).rstrip(" ") + "\n" for r in records)


def write_text(device: Path, name: str, ftype: str, text: str) -> None:
    """Write `text` as a V file, a record per line; an empty line is stored as one blank."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    records = []
    for no, line in enumerate(lines, 1):
        try:
            records.append(ebcdic_encode(line or " "))
        except ValueError as exc:
            raise InputError(f"{name}.{ftype} line {no}: {exc}") from None
    write_file(device, name, ftype, records)


def write_file(
    device: Path,
    name: str,
    ftype: str,
    records: list[bytes],
    *,
    recfm: RecordFormat = RecordFormat.V,
    lrecl: int | None = None,
) -> None:
    """Create or replace the file `name ftype A1` with `records`."""
    key = (_name_bytes(name, "name"), _name_bytes(ftype, "type"))
    longest = max((len(r) for r in records), default=0)
    if recfm is RecordFormat.V:
        if any(not r for r in records) or longest > _MAX_V_RECORD:
            raise InputError(f"{name}.{ftype}: V records must be 1-{_MAX_V_RECORD} bytes long")
        if lrecl is not None and not longest <= lrecl <= _MAX_V_RECORD:
            raise InputError(f"{name}.{ftype}: LRECL {lrecl} below its longest record {longest}")
        width = longest if lrecl is None else lrecl
        starts, pos = [], 0
        for r in records:
            starts.append(pos)
            pos += 2 + len(r)
        stream = b"".join(len(r).to_bytes(2, "big") + r for r in records)
    else:
        width = lrecl if lrecl is not None else longest
        if not 1 <= width <= 0x7FFFFFFF or any(len(r) != width for r in records):
            raise InputError(f"{name}.{ftype}: F records must all be LRECL ({width}) bytes long")
        stream, starts = b"".join(records), []
    with _opened(device, True) as disk:
        vol = _Volume(disk, True)
        bs, var = vol.bs, recfm is RecordFormat.V
        nblocks = -(-len(stream) // bs)
        i = vol.find(*key)
        slot = (
            vol.entries[i][0] if i is not None else (vol.entries[-1][0] + 1 if vol.entries else 2)
        )
        grow = i is None and slot == len(vol.dir_blocks) * vol.per_block
        dir_extra = 1 + tree_blocks(len(vol.dir_blocks) + 1, bs, False) if grow else 0
        spare = vol.allocate(nblocks + tree_blocks(nblocks, bs, var) + dir_extra)
        spare.reverse()  # pop() then hands them out in ascending order
        data = [spare.pop() for _ in range(nblocks)]
        for k, blk in enumerate(data):
            chunk = stream[k * bs : (k + 1) * bs]
            disk.write(vol._addr(blk), chunk + bytes(bs - len(chunk)))
        info = var_block_info(len(stream), starts, bs) if var else [(0, 0)] * nblocks
        fop, levels = vol.build_tree(
            [(b, hi, disp) for b, (hi, disp) in zip(data, info, strict=True)], var, spare
        )
        vol.flush_map()
        os.fsync(disk.fd)  # data, pointers and their allocation are durable before any FST
        date, century = bcd_date()
        fst = Fst(
            key[0], key[1], ebcdic_encode("A1"), recfm.code, FST_CENTURY if century else 0,
            width, fop, nblocks, len(records), levels, 12 if var else 4, date,
        )  # fmt: skip
        stale: list[int] = []
        if i is not None:
            stale = vol.file_blocks(vol.entries[i][1])
            disk.write(vol.slot_addr(slot), fst.pack())
            vol.entries[i] = (slot, fst)
        else:
            if grow:
                new_dir = spare.pop()
                vol.dir_blocks.append(new_dir)
                disk.write(vol._addr(new_dir), fst.pack() + bytes(bs - FST_SIZE))
            else:
                disk.write(vol.slot_addr(slot), fst.pack())
            vol.entries.append((slot, fst))
            stale = vol.write_dir_fst(spare if grow else None)
        vol.free(stale)
        vol.flush_map()
        vol.write_used()
        os.fsync(disk.fd)


def delete_file(device: Path, name: str, ftype: str) -> bool:
    """Erase the file; False when there is no such file."""
    key = (_name_bytes(name, "name"), _name_bytes(ftype, "type"))
    with _opened(device, True) as disk:
        vol = _Volume(disk, True)
        i = vol.find(*key)
        if i is None:
            return False
        slot, fst = vol.entries[i]
        blocks = vol.file_blocks(fst)
        last_slot, last = vol.entries[-1]
        if last_slot != slot:  # keep the directory without holes, as cmsfs-fuse does
            disk.write(vol.slot_addr(slot), last.pack())
            vol.entries[i] = (slot, last)
        disk.write(vol.slot_addr(last_slot), bytes(FST_SIZE))
        vol.entries.pop()
        vol.free(blocks)
        stale: list[int] = []
        if last_slot % vol.per_block == 0 and last_slot // vol.per_block == len(vol.dir_blocks) - 1:
            stale.append(vol.dir_blocks.pop())
            spare = vol.allocate(tree_blocks(len(vol.dir_blocks), vol.bs, False))
            stale += vol.write_dir_fst(spare)
        else:
            vol.write_dir_fst(None)
        vol.free(stale)
        vol.flush_map()
        vol.write_used()
        os.fsync(disk.fd)
        return True
