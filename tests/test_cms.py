"""CMS EDF disks written by sharedroot, checked through an independent reader.

`EdfReader` follows the steps of s390-tools' cmsfs-fuse (`dasd.c` label probing and checks,
`cmsfs-fuse.c` directory walk, variable-file size via the last pointer's record number and
the back pointer), written from those sources and not from the module under test.
"""

from __future__ import annotations

import os
import string
import struct
from pathlib import Path
from typing import NamedTuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import PAPER_SAMPLE
from sharedroot.errors import InputError, OperationError
from sharedroot.hypervisor.zvm import cms
from sharedroot.hypervisor.zvm.cms_layout import ebcdic_decode, ebcdic_encode


def be32(b: bytes, off: int) -> int:
    return int(struct.unpack_from(">I", b, off)[0])


class RawFst(NamedTuple):
    name: bytes
    type: bytes
    recfm: int
    lrecl: int
    fop: int
    blocks: int
    records: int
    levels: int
    ptr_size: int


class EdfReader:
    """Reads an EDF image file the way cmsfs-fuse does (asserting what it checks)."""

    def __init__(self, path: Path) -> None:
        self.img = path.read_bytes()
        for off in (4096, 512, 2048, 1024, 8192):  # dasd.c label_offsets, for regular files
            if self.img[off : off + 4] == bytes.fromhex("c3d4e2f1"):
                self.label = off
                break
        else:
            raise AssertionError("CMS1 label not found")
        lab = self.img[self.label : self.label + 80]
        self.bs = be32(lab, 12)
        assert self.bs in (512, 1024, 2048, 4096)
        assert be32(lab, 16) in (4, 5)
        assert be32(lab, 36) == 64 and be32(lab, 40) == self.bs // 64
        self.total, self.used = be32(lab, 28), be32(lab, 32)
        assert self.total * self.bs <= len(self.img)
        self.fdir = (be32(lab, 16) - 1) * self.bs
        self.volid = ebcdic_decode(lab[4:10]).rstrip()
        d = self.fst(self.fdir)
        assert (
            d.name == bytes.fromhex("0000000100000000")
            and d.type == b"\xc4\xc9\xd9\xc5\xc3\xe3\xd6\xd9"
        )
        assert d.recfm == 0xC6 and d.lrecl == 64
        if d.levels == 0:
            assert self.abs(d.fop) == self.fdir
        a = self.fst(self.fdir + 64)
        assert a.type == ebcdic_encode("ALLOCMAP")
        self.dir, self.amap = d, a

    def abs(self, block: int) -> int:
        assert 1 <= block <= self.total
        return (block - 1) * self.bs

    def fst(self, addr: int) -> RawFst:
        r = self.img[addr : addr + 64]
        return RawFst(
            r[0:8], r[8:16], r[30], be32(r, 32), be32(r, 40), be32(r, 44), be32(r, 48), r[52],
            r[53],
        )  # fmt: skip

    def fixed_tree(self, fop: int, levels: int) -> list[int]:
        if levels == 0:
            return [fop]
        out: list[int] = []
        base = self.abs(fop)
        for off in range(0, self.bs, 4):
            p = be32(self.img, base + off)
            if p == 0:
                break
            out += self.fixed_tree(p, levels - 1)
        return out

    def files(self) -> dict[str, RawFst]:
        d = self.dir
        blocks = self.fixed_tree(d.fop, d.levels)
        found: dict[str, RawFst] = {}
        for blk in blocks:  # walk_dir_block: a block ends at its first empty name
            for k in range(self.bs // 64):
                f = self.fst(self.abs(blk) + k * 64)
                if f.name == bytes(8):
                    break
                if f.type in (ebcdic_encode("DIRECTOR"), ebcdic_encode("ALLOCMAP")):
                    continue
                assert f.recfm in (0xC6, 0xE5)
                name = ebcdic_decode(f.name).rstrip() + "." + ebcdic_decode(f.type).rstrip()
                assert name not in found
                found[name] = f
        assert len(found) == d.records - 2
        return found

    def var_ptrs(self, fop: int, levels: int) -> list[tuple[int, int, int]]:
        if levels == 0:
            return [(fop, 0, 0)]
        base, out = self.abs(fop), list[tuple[int, int, int]]()
        last = be32(self.img, base + self.bs - 4)  # back pointer: offset of the last entry
        assert last % 12 == 0 and last <= self.bs
        for off in range(0, (self.bs - 4) // 12 * 12, 12):
            nxt, hi, disp = struct.unpack_from(">III", self.img, base + off)
            if nxt == 0 and hi == 0:
                assert off == last + 12
                break
            out += [(nxt, hi, disp)] if levels == 1 else self.var_ptrs(nxt, levels - 1)
        return out

    def records(self, f: RawFst) -> list[bytes]:
        fop, levels, n = f.fop, f.levels, f.records
        if n == 0:
            return []
        if f.recfm == 0xC6:
            assert f.ptr_size == 4
            data = [
                self.img[self.abs(b) : self.abs(b) + self.bs] for b in self.fixed_tree(fop, levels)
            ]
            stream, lrecl = b"".join(data), f.lrecl
            return [stream[i * lrecl : (i + 1) * lrecl] for i in range(n)]
        assert f.ptr_size == 12
        ptrs = self.var_ptrs(fop, levels)
        assert len(ptrs) == f.blocks
        if levels:  # locate_last_data_vptr: the last pointer's record number is the count
            assert ptrs[-1][1] == n
        stream = b"".join(self.img[self.abs(b) : self.abs(b) + self.bs] for b, _, _ in ptrs)
        out, heads, pos = list[bytes](), list[int](), 0
        for _ in range(n):
            length = int.from_bytes(stream[pos : pos + 2], "big")
            assert 0 < length <= f.lrecl
            out.append(stream[pos + 2 : pos + 2 + length])
            heads.append(pos)
            pos += 2 + length
        assert not any(stream[pos : pos + 2])  # a zero length ends the data
        for k, (_, hi, disp) in enumerate(ptrs if levels else []):
            lo, top = k * self.bs, (k + 1) * self.bs
            inside = [h for h in heads if lo <= h < top]
            # continuation bytes before the first header, X'FFFFFFFF' for a whole block of them
            cont = min(inside[0] if inside else pos, top) - lo
            assert disp == (0xFFFFFFFF if cont == self.bs else cont)
            assert hi == sum(1 for h in heads if h < top)
        return out

    def bitmap_used(self) -> set[int]:
        blocks = self.fixed_tree(self.amap.fop, self.amap.levels)
        bm = b"".join(self.img[self.abs(b) : self.abs(b) + self.bs] for b in blocks)
        return {i + 1 for i in range(self.total) if bm[i // 8] & (0x80 >> i % 8)}

    def check(self) -> dict[str, list[bytes]]:
        """Every file readable, the allocation map and the label's count agreeing with them."""
        used = self.bitmap_used()
        assert len(used) == self.used
        out = {}
        for name, f in self.files().items():
            out[name] = self.records(f)
        return out


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    path = tmp_path / "cmsclone-0192.img"
    with path.open("wb") as f:
        f.truncate(16 * 1024 * 1024)
    cms.format_disk(path, label="CMSCLN")
    return path


def test_format_gives_an_empty_cms_disk(disk: Path) -> None:
    assert cms.is_formatted(disk)
    assert cms.list_files(disk) == []
    r = EdfReader(disk)
    assert r.label == 8192 and r.bs == 4096 and r.volid == "CMSCLN"
    assert r.total == 4096 and r.used == 5  # 3 reserved, the directory, the allocation map
    assert r.files() == {}
    assert r.bitmap_used() == {1, 2, 3, 4, 5}
    assert r.dir.records == 2 and r.amap.fop == 5


def test_text_round_trip_as_the_readers_see_it(disk: Path) -> None:
    cms.write_text(disk, "lnx227", "parm-s10", PAPER_SAMPLE)
    assert cms.read_text(disk, "LNX227", "PARM-S10") == PAPER_SAMPLE
    [info] = cms.list_files(disk)
    lines = PAPER_SAMPLE.splitlines()
    assert info == cms.CmsFile(
        "LNX227", "PARM-S10", "A1", cms.RecordFormat.V, max(map(len, lines)), len(lines), 1
    )
    recs = EdfReader(disk).check()["LNX227.PARM-S10"]
    assert [ebcdic_decode(r) for r in recs] == lines
    assert cms.read_text(disk, "LNX227", "NOPE") is None


def test_binary_round_trip_v_and_f_over_many_blocks(disk: Path) -> None:
    v = [os.urandom(n) for n in (1, 4095, 4094, 4093, 65535, 7, 9000)]
    f = [bytes([i]) * 80 for i in range(200)]
    cms.write_file(disk, "BIN", "DATA", v)
    cms.write_file(disk, "FIX", "DATA", f, recfm=cms.RecordFormat.F)
    cms.write_file(disk, "EMPTY", "FILE", [])
    assert cms.read_records(disk, "BIN", "DATA") == v
    assert cms.read_file(disk, "FIX", "DATA") == b"".join(f)
    assert cms.read_file(disk, "EMPTY", "FILE") == b""
    seen = EdfReader(disk).check()
    assert seen["BIN.DATA"] == v and seen["FIX.DATA"] == f and seen["EMPTY.FILE"] == []


def test_replace_keeps_one_entry_and_frees_the_old_blocks(disk: Path) -> None:
    cms.write_text(disk, "LNX227", "PARM-S10", PAPER_SAMPLE)
    cms.write_file(disk, "BIG", "DATA", [b"x" * 60000])
    used = EdfReader(disk).used
    cms.write_text(disk, "LNX227", "PARM-S10", "HostIP=10.0.0.1\n")
    cms.write_file(disk, "BIG", "DATA", [b"y" * 60000])
    assert [f.name for f in cms.list_files(disk)] == ["LNX227", "BIG"]
    assert cms.read_text(disk, "LNX227", "PARM-S10") == "HostIP=10.0.0.1\n"
    r = EdfReader(disk)
    assert r.used == used and r.check()["BIG.DATA"] == [b"y" * 60000]


def test_delete_compacts_the_directory(disk: Path) -> None:
    for n in range(5):
        cms.write_text(disk, f"F{n}", "PARM", f"line {n}\n")
    assert cms.delete_file(disk, "F1", "PARM")
    assert not cms.delete_file(disk, "F1", "PARM")
    assert [f.name for f in cms.list_files(disk)] == ["F0", "F4", "F2", "F3"]
    assert cms.read_text(disk, "F4", "PARM") == "line 4\n"
    for n in (0, 2, 3, 4):
        assert cms.delete_file(disk, f"F{n}", "PARM")
    r = EdfReader(disk)
    assert r.check() == {} and r.used == 5


def test_a_thousand_parm_files(disk: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Scale, not durability, is tested here: count the flushes instead of waiting for them.
    flushes: list[int] = []
    monkeypatch.setattr(os, "fsync", flushes.append)
    for n in range(1000):
        cms.write_text(disk, f"LNX{n:04d}", "PARM-S10", PAPER_SAMPLE.replace("227", str(n)))
    assert len(flushes) == 2000  # data before the FST, everything at the end
    files = cms.list_files(disk)
    assert len(files) == 1000 and files[999].name == "LNX0999"
    assert cms.read_text(disk, "LNX0500", "PARM-S10") == PAPER_SAMPLE.replace("227", "500")
    seen = EdfReader(disk).check()
    assert len(seen) == 1000 and EdfReader(disk).dir.levels == 1
    for n in range(0, 1000, 3):
        assert cms.delete_file(disk, f"LNX{n:04d}", "PARM-S10")
    seen = EdfReader(disk).check()
    assert len(seen) == 666 and ebcdic_decode(seen["LNX0998.PARM-S10"][1]).startswith("HostIP")


@pytest.mark.parametrize("block_size", [512, 1024, 2048])
def test_smaller_block_sizes(tmp_path: Path, block_size: int) -> None:
    path = tmp_path / "small.img"
    path.write_bytes(bytes(5 * 1024 * 1024))  # at 512, an allocation map of 3 blocks
    cms.format_disk(path, label="s", block_size=block_size)
    for n in range(40):  # several directory blocks and pointer levels at 512
        cms.write_text(path, f"G{n}", "PARM", PAPER_SAMPLE * 3)
    cms.write_file(path, "BIG", "BIN", [os.urandom(3000) for _ in range(60)])
    r = EdfReader(path)
    assert r.label == 2 * block_size and r.bs == block_size and r.volid == "S"
    assert r.amap.levels == (1 if block_size == 512 else 0)
    seen = r.check()
    assert len(seen) == 41 and seen["BIG.BIN"] == cms.read_records(path, "BIG", "BIN")
    assert cms.read_text(path, "G39", "PARM") == PAPER_SAMPLE * 3


def test_full_disk_is_refused_and_leaves_the_disk_whole(tmp_path: Path) -> None:
    path = tmp_path / "tiny.img"
    path.write_bytes(bytes(64 * 4096))
    cms.format_disk(path, label="TINY")
    cms.write_text(path, "KEEP", "PARM", PAPER_SAMPLE)
    with pytest.raises(OperationError, match="full"):
        cms.write_file(path, "HUGE", "DATA", [b"z" * 60000] * 5)
    cms.write_file(path, "FITS", "DATA", [b"z" * 60000] * 3)
    with pytest.raises(OperationError, match="full"):
        cms.write_file(path, "FITS", "DATA", [b"z" * 60000] * 3)  # old and new must both fit
    assert cms.read_text(path, "KEEP", "PARM") == PAPER_SAMPLE
    assert EdfReader(path).check().keys() == {"KEEP.PARM", "FITS.DATA"}


def test_unformatted_and_damaged_disks(tmp_path: Path, disk: Path) -> None:
    zeros, noise, empty = tmp_path / "zeros", tmp_path / "noise", tmp_path / "empty"
    zeros.write_bytes(bytes(1 << 20))
    noise.write_bytes(os.urandom(1 << 20))
    empty.write_bytes(b"")
    for p in (zeros, noise, empty):
        assert not cms.is_formatted(p)
        with pytest.raises(OperationError, match="not CMS-formatted"):
            cms.list_files(p)
        with pytest.raises(OperationError):
            cms.write_text(p, "A", "B", "x\n")
    with pytest.raises(InputError):
        cms.list_files(tmp_path / "missing")
    cms.write_text(disk, "LNX1", "PARM", PAPER_SAMPLE)
    img = bytearray(disk.read_bytes())
    struct.pack_into(">I", img, 3 * 4096 + 128 + 40, 99999)  # the file's origin pointer
    disk.write_bytes(bytes(img))
    with pytest.raises(OperationError, match="damaged"):
        cms.read_text(disk, "LNX1", "PARM")
    struct.pack_into(">I", img, 8192 + 12, 4000)  # a block size cmsfs-fuse refuses
    disk.write_bytes(bytes(img))
    with pytest.raises(OperationError, match="damaged CMS label"):
        cms.list_files(disk)


def test_names_labels_and_records_are_validated(disk: Path) -> None:
    for name, ftype in [("", "A"), ("NINECHARS", "A"), ("A.B", "C"), ("A", "B C"), ("Ä", "A")]:
        with pytest.raises(InputError):
            cms.write_text(disk, name, ftype, "x\n")
        with pytest.raises(InputError):
            cms.read_text(disk, name, ftype)
    for label in ("", "SEVENCH", "A B", "X/Y"):
        with pytest.raises(InputError):
            cms.format_disk(disk, label=label)
    with pytest.raises(InputError):
        cms.format_disk(disk, label="OK", block_size=800)
    with pytest.raises(InputError):
        cms.write_file(disk, "V", "EMPTYREC", [b"a", b""])
    with pytest.raises(InputError):
        cms.write_file(disk, "F", "MIXED", [b"a", b"bb"], recfm=cms.RecordFormat.F)
    with pytest.raises(InputError, match="CP1047"):
        cms.write_text(disk, "EURO", "SIGN", "price 5\u20ac\n")
    cms.write_text(disk, "lower", "case", "ok\n")
    assert cms.list_files(disk)[0].name == "LOWER"
    assert cms.is_formatted(disk)  # the refused FORMATs wrote nothing


def test_cp1047() -> None:
    printable = "".join(chr(c) for c in range(32, 127))
    assert ebcdic_decode(ebcdic_encode(printable)) == printable
    assert ebcdic_encode("A a 0[]^\n") == bytes.fromhex("c1408140f0adbd5f25")
    assert ebcdic_encode(string.ascii_uppercase[:9]) == bytes(range(0xC1, 0xCA))
    every = "".join(chr(c) for c in range(256))
    assert sorted(ebcdic_encode(every)) == list(range(256))
    assert ebcdic_decode(ebcdic_encode(every)) == every


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(st.binary(min_size=1, max_size=9000), max_size=12),
    st.lists(
        st.text(st.characters(max_codepoint=255, exclude_characters="\n"), max_size=90), max_size=20
    ),
)
def test_round_trip_property(disk: Path, records: list[bytes], lines: list[str]) -> None:
    cms.write_file(disk, "PROP", "BIN", records)
    text = "".join(line + "\n" for line in lines)
    cms.write_text(disk, "PROP", "TEXT", text)
    assert cms.read_records(disk, "PROP", "BIN") == records
    assert cms.read_text(disk, "PROP", "TEXT") == "".join(ln.rstrip(" ") + "\n" for ln in lines)
    assert EdfReader(disk).check()["PROP.BIN"] == records
