"""How much host memory a guest's QEMU holds, and how much of an image the host caches.

RSS and PSS come from /proc/PID/smaps_rollup (PSS divides a page shared by several
processes, as KSM's merged pages are, among them), the balloon from QMP, an image's
pages in the host's page cache from fincore: those pages are the host's, read once for
every guest that links the image, so they are counted once, by image, never by guest.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from sharedroot.errors import OperationError
from sharedroot.hypervisor.base import GuestMemory
from sharedroot.hypervisor.qemu.control import QMP
from sharedroot.run import run

_ROLLUP_LINE = re.compile(r"(Rss|Pss|KSM):\s+([0-9]{1,15}) kB")


def rollup(pid: int) -> dict[str, int] | None:
    """Rss, Pss and (on kernels that count it) KSM of a process in bytes; None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:  # ended meanwhile, or a kernel without smaps_rollup
        return None
    found = {}
    for line in text.splitlines():
        m = _ROLLUP_LINE.fullmatch(line)
        if m:
            found[m[1]] = int(m[2]) * 1024
    return found if "Rss" in found and "Pss" in found else None


def balloon(qmp_sock: Path) -> int | None:
    """Bytes the balloon holds back from the guest; None without a balloon (or an answer)."""
    try:
        with QMP.connect(qmp_sock, timeout=2) as qmp:
            actual = qmp.command("query-balloon")["actual"]
            base = qmp.command("query-memory-size-summary")["base-memory"]
    except (OSError, OperationError, KeyError, TypeError):
        return None  # no balloon device (DeviceNotActive), or QEMU is busy or stopping
    return int(base) - int(actual)


def guest_memory(pid: int, qmp_sock: Path) -> GuestMemory | None:
    """What the QEMU process `pid` holds; None once it has ended."""
    found = rollup(pid)
    if found is None:
        return None
    return GuestMemory(found["Rss"], found["Pss"], found.get("KSM"), balloon(qmp_sock))


def page_cache(paths: list[Path]) -> dict[Path, int]:
    """Bytes of each file in the host's page cache (a file that cannot be read is left out)."""
    if not paths:
        return {}
    proc = run(["fincore", "--json", "--bytes", "--output", "RES,FILE", "--", *paths], check=False)
    try:
        rows = json.loads(proc.stdout)["fincore"] if proc.stdout.strip() else []
        cached = {Path(r["file"]): int(r["res"]) for r in rows}
    except (ValueError, KeyError, TypeError):
        raise OperationError(f"fincore: unexpected output: {proc.stdout[:200]!r}") from None
    return {p: cached[p] for p in paths if p in cached}
