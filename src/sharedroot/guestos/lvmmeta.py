"""LVM2 volumes read from the on-disk metadata of an image's physical volumes.

An imported image's logical volumes are located without device-mapper: each linear LV
is a byte range of the image, which a read-only loop mount at that offset reads. So
nothing of the image's volume group is ever activated, and a VG named like one of the
worker's own is no clash at all: the worker's LVM never sees the image. (This worker's
kernel has no device-mapper either.) Format: LVM2's lib/format_text (label, pv_header,
mda_header, raw_locn) and its text metadata.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import BinaryIO

from sharedroot.errors import RefusedError

SECTOR = 512
LABEL_ID = b"LABELONE"
LABEL_TYPE = b"LVM2 001"
MDA_MAGIC = b" LVM2 x[5A%r0N*>"
MDA_HEADER_SIZE = 512

Value = int | str | list["Value"] | dict[str, "Value"]


@dataclass(frozen=True)
class PhysicalVolume:
    uuid: str  # without dashes, as the label holds it
    offset: int  # where the PV starts in the image (its partition)
    metadata: str  # the VG's newest text metadata, from this PV's first metadata area


@dataclass(frozen=True)
class LogicalVolume:
    vg: str
    name: str
    offset: int | None  # byte offset in the image; None when it cannot be read as a range
    size: int
    problem: str | None  # why it cannot be read without device-mapper

    @property
    def paths(self) -> tuple[str, ...]:
        """The names an fstab may use for it."""
        mangled = f"{self.vg.replace('-', '--')}-{self.name.replace('-', '--')}"
        return (f"/dev/mapper/{mangled}", f"/dev/{self.vg}/{self.name}")


def read_pv(f: BinaryIO, offset: int) -> PhysicalVolume | None:
    """The PV whose label lies in the first four sectors at `offset`, or None."""
    f.seek(offset)
    head = f.read(4 * SECTOR)
    for sector in range(4):
        label = head[sector * SECTOR : (sector + 1) * SECTOR]
        if label[:8] == LABEL_ID and label[24:32] == LABEL_TYPE:
            break
    else:
        return None
    (pvh_at,) = struct.unpack_from("<I", label, 20)
    pvh = label[pvh_at:]
    uuid = pvh[:32].decode("ascii", "replace")
    pos = 40  # after the uuid and the device size: data areas, then metadata areas
    areas: list[list[tuple[int, int]]] = [[], []]
    for kind in range(2):
        while pos + 16 <= len(pvh):
            at, size = struct.unpack_from("<QQ", pvh, pos)
            pos += 16
            if at == 0 and size == 0:
                break
            areas[kind].append((at, size))
    for mda_at, _ in areas[1]:
        text = _metadata_text(f, offset + mda_at)
        if text is not None:
            return PhysicalVolume(uuid, offset, text)
    raise RefusedError(f"an LVM physical volume at byte {offset} holds no readable metadata")


def _metadata_text(f: BinaryIO, at: int) -> str | None:
    f.seek(at)
    header = f.read(MDA_HEADER_SIZE)
    if header[4:20] != MDA_MAGIC:
        return None
    (size,) = struct.unpack_from("<Q", header, 32)  # the area's, header included
    loc_off, loc_size = struct.unpack_from("<QQ", header, 40)
    if loc_size == 0:
        return None
    # The metadata area is a ring after its header: the text may wrap to its start.
    f.seek(at + loc_off)
    first = min(loc_size, size - loc_off)
    data = f.read(first)
    if first < loc_size:
        f.seek(at + MDA_HEADER_SIZE)
        data += f.read(loc_size - first)
    return data.rstrip(b"\0").decode("utf-8", "replace")


_TOKEN = re.compile(
    r'\s+|#[^\n]*|(?P<str>"(?:[^"\\]|\\.)*")|(?P<num>-?\d+)(?![\w.])'
    r"|(?P<id>[A-Za-z0-9_.+\-]+)|(?P<punct>[={}\[\],])"
)


def parse_metadata(text: str) -> dict[str, Value]:
    """LVM2's text metadata (`name = value`, `section { ... }`) as nested dicts."""
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise RefusedError(f"LVM metadata: cannot read {text[pos : pos + 20]!r}")
        pos = m.end()
        if m.lastgroup is not None:
            tokens.append((m.lastgroup, m.group(m.lastgroup)))
    items, end = _section(tokens, 0)
    if end != len(tokens):
        raise RefusedError("LVM metadata: unbalanced braces")
    return items


def _section(tokens: list[tuple[str, str]], i: int) -> tuple[dict[str, Value], int]:
    items: dict[str, Value] = {}
    while i < len(tokens) and tokens[i] != ("punct", "}"):
        kind, name = tokens[i]
        nxt = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if kind not in ("id", "str") or nxt not in ("=", "{"):
            raise RefusedError(f"LVM metadata: unexpected {name!r}")
        if nxt == "{":
            items[name], i = _section(tokens, i + 2)
            i += 1  # the closing brace
        else:
            items[name], i = _value(tokens, i + 2)
    return items, i


def _value(tokens: list[tuple[str, str]], i: int) -> tuple[Value, int]:
    kind, text = tokens[i]
    if kind == "num":
        return int(text), i + 1
    if kind == "str":
        return re.sub(r"\\(.)", r"\1", text[1:-1]), i + 1
    if text == "[":
        out: list[Value] = []
        i += 1
        while tokens[i][1] != "]":
            v, i = _value(tokens, i)
            out.append(v)
            if tokens[i][1] == ",":
                i += 1
        return out, i + 1
    raise RefusedError(f"LVM metadata: unexpected {text!r}")


def logical_volumes(pvs: list[PhysicalVolume]) -> list[LogicalVolume]:
    """Every visible LV of the VGs on `pvs`, located in the image where it can be."""
    found: dict[tuple[str, str], LogicalVolume] = {}
    by_uuid = {pv.uuid: pv for pv in pvs}
    for pv in pvs:
        meta = parse_metadata(pv.metadata)
        for vg_name, vg in meta.items():
            if isinstance(vg, dict) and "physical_volumes" in vg:
                for lv in _vg_lvs(vg_name, vg, by_uuid):
                    found.setdefault((lv.vg, lv.name), lv)
    return list(found.values())


def _vg_lvs(
    vg_name: str, vg: dict[str, Value], by_uuid: dict[str, PhysicalVolume]
) -> list[LogicalVolume]:
    extent = _int(vg.get("extent_size")) * SECTOR
    pv_at: dict[str, int | None] = {}
    for key, pv in _dict(vg.get("physical_volumes")).items():
        d = _dict(pv)
        held = by_uuid.get(str(d.get("id", "")).replace("-", ""))
        pv_at[key] = None if held is None else held.offset + _int(d.get("pe_start")) * SECTOR
    out: list[LogicalVolume] = []
    for name, lv_v in _dict(vg.get("logical_volumes")).items():
        lv = _dict(lv_v)
        if "VISIBLE" not in _list(lv.get("status")):
            continue  # pool metadata, mirror legs, ...: parts of other LVs
        segs = [_dict(v) for k, v in lv.items() if k.startswith("segment") and isinstance(v, dict)]
        size = sum(_int(s.get("extent_count")) for s in segs) * extent
        offset: int | None = None
        problem: str | None = None
        if len(segs) != 1:
            problem = f"has {len(segs)} segments"
        elif segs[0].get("type") != "striped" or _int(segs[0].get("stripe_count")) != 1:
            problem = f"is of type {segs[0].get('type')}"
        else:
            stripes = _list(segs[0].get("stripes"))
            start = pv_at.get(str(stripes[0])) if len(stripes) == 2 else None
            if start is None:
                problem = (
                    f"lies on physical volume {stripes[0] if stripes else '?'}, not in the image"
                )
            else:
                offset = start + _int(stripes[1]) * extent
        if problem is not None:
            problem += " (sharedroot reads linear LVs of one segment, without device-mapper)"
        out.append(LogicalVolume(vg_name, name, offset, size, problem))
    return out


def _int(v: Value | None) -> int:
    return v if isinstance(v, int) else 0


def _dict(v: Value | None) -> dict[str, Value]:
    return v if isinstance(v, dict) else {}


def _list(v: Value | None) -> list[Value]:
    return v if isinstance(v, list) else []
