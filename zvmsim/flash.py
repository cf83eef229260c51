"""FLASHCOPY: copy cylinder extents between two of the issuer's DASD, sparse-aware."""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path

from zvmsim import CYL_BYTES, WORKER, loops
from zvmsim import directory as dirmod
from zvmsim.state import Device, Session

Result = tuple[str, int]
FALLOC_FL_KEEP_SIZE = 1
FALLOC_FL_PUNCH_HOLE = 2
_libc = ctypes.CDLL(None, use_errno=True)  # the interpreter's own libc
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]


def punch(fd: int, offset: int, length: int) -> None:
    """Make [offset, offset+length) read as zeros without allocating blocks."""
    mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
    if _libc.fallocate(fd, mode, offset, length) == 0:
        return
    zeros = bytes(1 << 20)
    end = offset + length
    while offset < end:
        offset += os.pwrite(fd, zeros[: min(len(zeros), end - offset)], offset)


def copy_range(src: Path, src_off: int, dst: Path, dst_off: int, length: int) -> None:
    """Copy bytes, leaving the source's holes as holes in the target."""
    with open(src, "rb") as s, open(dst, "r+b") as d:
        sfd, dfd = s.fileno(), d.fileno()
        punch(dfd, dst_off, length)
        pos, end = src_off, src_off + length
        while pos < end:
            try:
                data = os.lseek(sfd, pos, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:  # only a hole is left
                    break
                raise
            if data >= end:
                break
            hole = min(os.lseek(sfd, data, os.SEEK_HOLE), end)
            off = data
            while off < hole:
                n = os.copy_file_range(sfd, dfd, hole - off, off, dst_off + (off - src_off))
                if n == 0:
                    break
                off += n
            pos = hole
        os.fsync(dfd)


def _extent(begin: str, end: str, size: int) -> tuple[int, int] | None:
    try:
        b = int(begin)
        e = size - 1 if end == "END" else int(end)
    except ValueError:
        return None
    return (b, e) if 0 <= b <= e else None


def flashcopy(s: Session, issuer: str, ops: list[str]) -> Result:
    """FLASHCOPY src b e [TO] tgt b e [SYNCHRONOUS] (class B)."""
    entry = s.directory.user(issuer)
    if entry is None or "B" not in entry.privclasses:
        # CP hides commands outside the user's classes
        return "HCPCMD001E Unknown CP command: FLASHCOPY", 1
    words = [w for w in ops if w != "TO"]
    words = [w for w in words if w not in ("SYNCHRONOUS", "SYNC", "SYNCH")]
    if len(words) != 6:
        return "HCPNFC026E Operand missing or invalid", 26
    try:
        src, tgt = dirmod.norm_vdev(words[0]), dirmod.norm_vdev(words[3])
    except ValueError:
        return "HCPNFC026E Operand missing or invalid", 26
    devs = s.devices(issuer)
    for v in (src, tgt):
        if v not in devs:
            return f"HCPQVD040E Device {v} does not exist", 40
    sdev, tdev = devs[src], devs[tgt]
    for v, d in ((src, sdev), (tgt, tdev)):
        if d.get("vdisk"):
            # unconfirmed text (FACTS §1.7: "Flashcopy only supports ECKD volumes")
            return f"HCPNFC1106E Device {v} is not an ECKD DASD", 1106
    sext = _extent(words[1], words[2], int(sdev["size"]))
    text = _extent(words[4], words[5], int(tdev["size"]))
    if sext is None or text is None or sext[1] >= sdev["size"] or text[1] >= tdev["size"]:
        # unconfirmed text (FACTS §1.7)
        return "HCPNFC1103E Extent is not within the device", 1103
    if tdev["access"] != "R/W":
        # unconfirmed text (FACTS §1.7)
        return f"HCPNFC1105E Target device {tgt} is read-only", 1105
    ncyl = sext[1] - sext[0] + 1
    if text[1] - text[0] + 1 < ncyl:
        # unconfirmed text (FACTS §1.7)
        return "HCPNFC1107E Target extent is smaller than source extent", 1107
    if s.control().get("flashcopy") == "fail":
        # unconfirmed text (FACTS §1.7); the paper notes FLASHCOPY fails while a previous
        # background copy still runs
        return "HCPNFC1110E FLASHCOPY failed; a previous background copy is in progress", 1110
    copy_range(
        _image(s, sdev),
        sext[0] * CYL_BYTES,
        _image(s, tdev),
        text[0] * CYL_BYTES,
        ncyl * CYL_BYTES,
    )
    _refresh_online(s, issuer, tgt)
    return (
        f"Command complete: FLASHCOPY {src} {words[1]} {words[2]} TO {tgt} {words[4]} {words[5]}"
    ), 0


def _image(s: Session, dev: Device) -> Path:
    return s.device_image(dev)


def _refresh_online(s: Session, issuer: str, vdev: str) -> None:
    """Linux caches blocks of an online target; drop them so reads see the new bytes."""
    rec = s.online.get(vdev) if issuer == WORKER else None
    if rec:
        for key in ("loop", "part1"):
            if rec.get(key):
                loops.flush(str(rec[key]))
