"""On-disk structures of the CMS EDF file system, and the CP1047 code page.

Byte layouts (all integers big-endian, as z/Architecture stores them):

Volume label (ADT label part, 80 bytes; s390-tools `cmsfs-fuse/edf.h` `struct cms_label`,
cmsfs `cmsfs.h` `CMSFSADT`):
  0 'CMS1' (EBCDIC C3 D4 E2 F1)   4 volume label, 6 EBCDIC chars   10 version (2)
  12 block size                   16 disk origin pointer (DOP)      20 formatted cylinders
  24 max cylinders                28 total blocks                   32 blocks used
  36 FST size (64)                40 FSTs per block                 44 creation date (6, BCD)
  50 flags (0x01: 20xx)           52 reserved-disk offset           56..79 hints, reserved
`cmsfs-fuse/dasd.c` `disk_supported()` accepts only block sizes 512/1024/2048/4096,
DOP 4 or 5, FST size 64 and FSTs per block = block size / 64.

File status table entry (FST, 64 bytes; `edf.h` `struct fst_entry`, `cmsfs.h` `FSTD`):
  0 file name (8, EBCDIC, blank padded)   8 file type (8)   16..23 CDF-era date/pointers
  24 file mode (2, EBCDIC, e.g. 'A1')     26..29 CDF-era record count / chain pointer
  30 record format (EBCDIC 'F' 0xC6 / 'V' 0xE5)             31 flags (0x08: date is 20xx)
  32 logical record length (V: the longest record)         36..39 CDF-era blocks / year
  40 file origin pointer (FOP)   44 data blocks (pointer blocks not counted)
  48 records                     52 pointer levels         53 pointer size (F 4, V 12)
  54 date written (6, BCD YYMMDDHHMMSS)                    60..63 real mode, flags, reserved
Both readers use only the fields from 24 on plus name and type; the CDF-era fields are left
zero, as cmsfs-fuse's own `cmsfs_create()` leaves them.

Block numbers are 1-based: block n starts at byte (n - 1) * block size (`cmsfs-fuse.h` ABS/REL).
The directory is itself a file, F 64, whose first FST (at block DOP) describes it: name
X'0000000100000000', type 'DIRECTOR', records = files + 2; the second FST is the allocation map
(name X'0000000200000000', type 'ALLOCMAP'), one bit per block, most significant bit first,
bit 0 = block 1 (`cmsfs-fuse/amap.c`). A file of one data block has FOP = that block and
levels 0; a larger one has FOP = the root pointer block of a tree `levels` deep. F files and the
two pseudo files use 4-byte pointers (block number, 0 = a null block of zeros); V files use
12-byte pointers (block, highest record number reaching into that block, displacement of the
first record header in it, or X'FFFFFFFF' when no header starts there), zero entries after the
last one, and the offset of the last entry in the block's last 4 bytes (`cmsfs-fuse.c`
`rewrite_pointer_block_variable`, `store_back_pointer`, `locate_last_data_vptr`).
V data is one byte stream of records, each a 2-byte length and the data, spanning blocks even
inside the length; a zero length ends the data, so a V record is never empty.
A directory block is read up to its first all-zero name (`walk_dir_block`), so the directory is
kept without holes: a deleted entry is replaced by the last one (`delete_file`).
"""

from __future__ import annotations

import enum
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

# IBM-1047 to Latin-1, byte by byte; equal to glibc iconv's CP1047, which cmsfs-fuse uses for
# its text mode (`CODEPAGE_EDF`).
_CP1047 = (
    "\x00\x01\x02\x03\x9c\x09\x86\x7f\x97\x8d\x8e\x0b\x0c\x0d\x0e\x0f"
    "\x10\x11\x12\x13\x9d\x85\x08\x87\x18\x19\x92\x8f\x1c\x1d\x1e\x1f"
    "\x80\x81\x82\x83\x84\x0a\x17\x1b\x88\x89\x8a\x8b\x8c\x05\x06\x07"
    "\x90\x91\x16\x93\x94\x95\x96\x04\x98\x99\x9a\x9b\x14\x15\x9e\x1a"
    "\x20\xa0\xe2\xe4\xe0\xe1\xe3\xe5\xe7\xf1\xa2\x2e\x3c\x28\x2b\x7c"
    "\x26\xe9\xea\xeb\xe8\xed\xee\xef\xec\xdf\x21\x24\x2a\x29\x3b\x5e"
    "\x2d\x2f\xc2\xc4\xc0\xc1\xc3\xc5\xc7\xd1\xa6\x2c\x25\x5f\x3e\x3f"
    "\xf8\xc9\xca\xcb\xc8\xcd\xce\xcf\xcc\x60\x3a\x23\x40\x27\x3d\x22"
    "\xd8\x61\x62\x63\x64\x65\x66\x67\x68\x69\xab\xbb\xf0\xfd\xfe\xb1"
    "\xb0\x6a\x6b\x6c\x6d\x6e\x6f\x70\x71\x72\xaa\xba\xe6\xb8\xc6\xa4"
    "\xb5\x7e\x73\x74\x75\x76\x77\x78\x79\x7a\xa1\xbf\xd0\x5b\xde\xae"
    "\xac\xa3\xa5\xb7\xa9\xa7\xb6\xbc\xbd\xbe\xdd\xa8\xaf\x5d\xb4\xd7"
    "\x7b\x41\x42\x43\x44\x45\x46\x47\x48\x49\xad\xf4\xf6\xf2\xf3\xf5"
    "\x7d\x4a\x4b\x4c\x4d\x4e\x4f\x50\x51\x52\xb9\xfb\xfc\xf9\xfa\xff"
    "\x5c\xf7\x53\x54\x55\x56\x57\x58\x59\x5a\xb2\xd4\xd6\xd2\xd3\xd5"
    "\x30\x31\x32\x33\x34\x35\x36\x37\x38\x39\xb3\xdb\xdc\xd9\xda\x9f"
)
_TO_EBCDIC = {ord(ch): code for code, ch in enumerate(_CP1047)}


def ebcdic_decode(data: bytes) -> str:
    return "".join(_CP1047[b] for b in data)


def ebcdic_encode(text: str) -> bytes:
    """CP1047 bytes of `text`; ValueError names the first character CP1047 has no code for."""
    try:
        return bytes(_TO_EBCDIC[ord(ch)] for ch in text)
    except KeyError as exc:
        raise ValueError(f"character {chr(exc.args[0])!r} has no CP1047 code") from None


class RecordFormat(enum.Enum):
    F = "F"
    V = "V"

    @property
    def code(self) -> int:
        return ebcdic_encode(self.value)[0]


CMS1 = ebcdic_encode("CMS1")
BLOCK_SIZES = (512, 1024, 2048, 4096)
FST_SIZE = 64
LABEL_SIZE = 80
DOP = 4  # directory block; blocks 1-3 hold IPL records and the label
SPANNED = 0xFFFFFFFF
DIR_NAME = bytes.fromhex("0000000100000000")
DIR_TYPE = ebcdic_encode("DIRECTOR")
AMAP_NAME = bytes.fromhex("0000000200000000")
AMAP_TYPE = ebcdic_encode("ALLOCMAP")
FST_CENTURY = 0x08
LABEL_CENTURY = 0x01


def bcd_date(when: float | None = None) -> tuple[bytes, bool]:
    """YYMMDDHHMMSS as BCD bytes (local time, as cmsfs-fuse writes it) and the 20xx flag."""
    tm = time.localtime(when)
    parts = (tm.tm_year % 100, tm.tm_mon, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec)
    return bytes((v // 10) << 4 | v % 10 for v in parts), tm.tm_year >= 2000


_LABEL = struct.Struct(">4s6s2sIIIIIIII6sBx4x24x")
_FST = struct.Struct(">8s8s8s2s4sBBI4sIIIBB6s4x")
assert _LABEL.size == LABEL_SIZE and _FST.size == FST_SIZE


@dataclass(frozen=True)
class Label:
    volid: str
    block_size: int
    dop: int
    cylinders: int
    total_blocks: int
    used_blocks: int
    date: bytes
    century: bool

    def pack(self) -> bytes:
        return _LABEL.pack(
            CMS1, ebcdic_encode(self.volid.ljust(6)), b"\0\0", self.block_size, self.dop,
            self.cylinders, self.cylinders, self.total_blocks, self.used_blocks, FST_SIZE,
            self.block_size // FST_SIZE, self.date, LABEL_CENTURY if self.century else 0,
        )  # fmt: skip

    @staticmethod
    def unpack(raw: bytes) -> Label | None:
        """The label in `raw`, or None where cmsfs-fuse's `disk_supported()` would refuse it."""
        (ident, volid, _v, bs, dop, cyl, _mcyl, total, used, fsz, nfst, date, flags) = (
            _LABEL.unpack(raw[:LABEL_SIZE])
        )
        if ident != CMS1 or bs not in BLOCK_SIZES or dop not in (4, 5):
            return None
        if fsz != FST_SIZE or nfst != bs // FST_SIZE or used > total or total < dop:
            return None
        return Label(
            ebcdic_decode(volid).rstrip(), bs, dop, cyl, total, used, date,
            bool(flags & LABEL_CENTURY),
        )  # fmt: skip


USED_OFFSET = 32  # of the label's blocks-used counter, the one field rewritten after FORMAT


@dataclass(frozen=True)
class Fst:
    name: bytes
    ftype: bytes
    mode: bytes
    recfm: int
    flags: int
    lrecl: int
    fop: int
    blocks: int
    records: int
    levels: int
    ptr_size: int
    date: bytes

    def pack(self) -> bytes:
        return _FST.pack(
            self.name, self.ftype, bytes(8), self.mode, bytes(4), self.recfm, self.flags,
            self.lrecl, bytes(4), self.fop, self.blocks, self.records, self.levels,
            self.ptr_size, self.date,
        )  # fmt: skip

    @staticmethod
    def unpack(raw: bytes) -> Fst:
        (name, ftype, _cdf, mode, _cdf2, recfm, flags, lrecl, _cdf3, fop, blocks, records,
         levels, ptr_size, date) = _FST.unpack(raw)  # fmt: skip
        return Fst(
            name, ftype, mode, recfm, flags, lrecl, fop, blocks, records, levels, ptr_size, date
        )

    @property
    def is_empty(self) -> bool:
        return self.name == bytes(8)

    @property
    def is_pseudo(self) -> bool:
        return (self.name, self.ftype) in ((DIR_NAME, DIR_TYPE), (AMAP_NAME, AMAP_TYPE))


def per_pointer_block(block_size: int, var: bool) -> int:
    """Pointers in one pointer block (a V block keeps its last 4 bytes for the back pointer)."""
    return (block_size - 4) // 12 if var else block_size // 4


def tree_blocks(count: int, block_size: int, var: bool) -> int:
    """Pointer blocks of the shallowest tree over `count` data blocks (none for one block)."""
    total = 0
    while count > 1:
        count = -(-count // per_pointer_block(block_size, var))
        total += count
    return total


def build_tree(
    leaves: list[tuple[int, int, int]],
    block_size: int,
    var: bool,
    take: Callable[[], int],
    put: Callable[[int, bytes], None],
) -> tuple[int, int]:
    """Pointer blocks over `leaves` (block, highest record, displacement), bottom up.

    Each new block's number comes from `take` and its contents go to `put`; returns the file
    origin pointer and the number of levels."""
    if not leaves:
        return 0, 0
    per = per_pointer_block(block_size, var)
    level, levels = leaves, 0
    while len(level) > 1:
        upper = []
        for i in range(0, len(level), per):
            chunk, blk = level[i : i + per], take()
            buf = bytearray(block_size)
            for k, (b, hi, disp) in enumerate(chunk):
                if var:
                    struct.pack_into(">III", buf, k * 12, b, hi, disp)
                else:
                    struct.pack_into(">I", buf, k * 4, b)
            if var:  # the back pointer: where the last entry is
                struct.pack_into(">I", buf, block_size - 4, (len(chunk) - 1) * 12)
            put(blk, bytes(buf))
            upper.append((blk, chunk[-1][1], chunk[0][2]))
        level, levels = upper, levels + 1
    return level[0][0], levels


def var_block_info(stream_len: int, starts: list[int], block_size: int) -> list[tuple[int, int]]:
    """(highest record number, displacement) for each block of a V file's byte stream.

    `starts` are the offsets of the record headers in the stream, ascending. The record number
    counts every record whose header starts before the block's end (cmsfs-fuse counts a record
    from its first header byte); the displacement is where the first header starting in the
    block lies, or SPANNED when the block holds only the middle of one record.
    """
    info: list[tuple[int, int]] = []
    nblocks = -(-stream_len // block_size)
    i = 0  # index of the first header at or after the current block's start
    for blk in range(nblocks):
        lo, hi = blk * block_size, (blk + 1) * block_size
        while i < len(starts) and starts[i] < lo:
            i += 1
        j = i
        while j < len(starts) and starts[j] < hi:
            j += 1
        # the data of the record before `i` reaches at most `stream_len`
        cont = min(starts[i] if i < len(starts) else stream_len, hi) - lo
        info.append((j, SPANNED if cont >= block_size else cont))
    return info
