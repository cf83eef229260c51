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

import os
from pathlib import Path

from sharedroot.errors import InputError, OperationError
from sharedroot.hypervisor.zvm.cms_layout import (
    AMAP_NAME,
    AMAP_TYPE,
    BLOCK_SIZES,
    DIR_NAME,
    DIR_TYPE,
    DOP,
    FST_CENTURY,
    FST_SIZE,
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
from sharedroot.hypervisor.zvm.cms_volume import (
    BLOCKS_PER_TRACK_3390,
    LABEL_RE,
    MAX_V_RECORD,
    CmsFile,
    Volume,
    name_bytes,
    opened,
    to_info,
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


def format_disk(device: Path, *, label: str, block_size: int = 4096) -> None:
    """CMS FORMAT the whole device or image: an empty EDF file system labelled `label`."""
    volid = label.upper()
    if not LABEL_RE.fullmatch(volid):
        raise InputError(f"CMS disk label {label!r}: 1-6 characters of A-Z 0-9 @ # $ + - _")
    if block_size not in BLOCK_SIZES:
        raise InputError(f"CMS block size {block_size}: one of {', '.join(map(str, BLOCK_SIZES))}")
    bs = block_size
    with opened(device, True) as disk:
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
        cyl = -(-total // (15 * BLOCKS_PER_TRACK_3390[bs]))
        lab = Label(volid, bs, DOP, cyl, total, meta_end, date, century)
        os.fsync(disk.fd)
        disk.write(label_at, lab.pack())  # last: until here the disk is not a CMS disk
        os.fsync(disk.fd)


def is_formatted(device: Path) -> bool:
    with opened(device, False) as disk:
        try:
            Volume(disk, False)
        except OperationError:
            return False
        return True


def list_files(device: Path) -> list[CmsFile]:
    with opened(device, False) as disk:
        return [to_info(fst) for _slot, fst in Volume(disk, False).entries]


def read_records(device: Path, name: str, ftype: str) -> list[bytes] | None:
    """The file's records, or None when there is no such file."""
    key = (name_bytes(name, "name"), name_bytes(ftype, "type"))
    with opened(device, False) as disk:
        vol = Volume(disk, False)
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
    key = (name_bytes(name, "name"), name_bytes(ftype, "type"))
    longest = max((len(r) for r in records), default=0)
    if recfm is RecordFormat.V:
        if any(not r for r in records) or longest > MAX_V_RECORD:
            raise InputError(f"{name}.{ftype}: V records must be 1-{MAX_V_RECORD} bytes long")
        if lrecl is not None and not longest <= lrecl <= MAX_V_RECORD:
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
    with opened(device, True) as disk:
        vol = Volume(disk, True)
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
    key = (name_bytes(name, "name"), name_bytes(ftype, "type"))
    with opened(device, True) as disk:
        vol = Volume(disk, True)
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
