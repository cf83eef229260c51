"""The uncompressed ELF kernel inside an x86 bzImage, for QEMU's fast PVH entry."""

from __future__ import annotations

import lzma
import tempfile
import zlib
from pathlib import Path

from sharedroot.errors import OperationError
from sharedroot.run import CommandError, run

_MAGICS: tuple[tuple[bytes, str], ...] = (
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\x1f\x8b\x08", "gzip"),
    (b"\x5d\x00\x00", "lzma"),
)


def extract_vmlinux(image: bytes) -> bytes:
    """The uncompressed ELF kernel inside a bzImage (scripts/extract-vmlinux, in Python).

    QEMU boots an ELF vmlinux through its PVH entry, skipping the in-guest
    decompression that costs seconds under TCG.
    """
    exact = _header_payload(image)
    if exact is not None:
        return exact
    for magic, kind in _MAGICS:
        start = 0
        while (pos := image.find(magic, start)) >= 0:
            start = pos + 1
            try:
                data = _decompress(kind, image[pos:])
            except (lzma.LZMAError, OSError, EOFError, zlib.error, CommandError):
                continue
            if data[:4] == b"\x7fELF":
                return data
    raise OperationError("no compressed ELF payload found in the kernel image")


def _header_payload(image: bytes) -> bytes | None:
    """The payload where the boot protocol (2.08+) header says it is, decompressed.

    A scan for magic bytes feeds the decompressor whatever follows the payload too, which
    the zstd program refuses (Debian 13's kernels are zstd).
    """
    if len(image) < 0x250 or image[0x202:0x206] != b"HdrS":
        return None
    if int.from_bytes(image[0x206:0x208], "little") < 0x208:
        return None
    setup_sects = image[0x1F1] or 4
    start = (setup_sects + 1) * 512 + int.from_bytes(image[0x248:0x24C], "little")
    payload = image[start : start + int.from_bytes(image[0x24C:0x250], "little")]
    for magic, kind in _MAGICS:
        if not payload.startswith(magic):
            continue
        # The build appends the uncompressed size (4 bytes) to the compressed stream.
        try:
            data = _decompress(kind, payload[:-4] if kind == "zstd" else payload)
        except (lzma.LZMAError, OSError, EOFError, zlib.error, CommandError):
            return None
        return data if data[:4] == b"\x7fELF" else None
    return None


def _decompress(kind: str, payload: bytes) -> bytes:
    if kind == "xz":
        return lzma.LZMADecompressor(lzma.FORMAT_XZ).decompress(payload)
    if kind == "lzma":
        return lzma.LZMADecompressor(lzma.FORMAT_ALONE).decompress(payload)
    if kind == "gzip":
        # A decompressobj stops at the end of the stream, ignoring what follows.
        return zlib.decompressobj(wbits=31).decompress(payload)
    # zstd: not in the 3.11 standard library; the zstd program ignores trailing data
    # badly, so hand it the payload in a file and read what it wrote.
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp, "payload.zst"), Path(tmp, "out")
        src.write_bytes(payload)
        run(["zstd", "-d", "-q", "-f", "-o", dst, src], check=False)
        if not dst.exists():
            raise OSError("zstd wrote nothing")
        return dst.read_bytes()
