"""The host's kernel samepage merging (KSM), for sites with `ksm = on`.

KSM is host-wide: /sys/kernel/mm/ksm/run starts ksmd, which then merges identical pages
of every process that marked its memory mergeable (QEMU with mem-merge=on). sharedroot
only ever turns it on, when it starts a guest; it never turns it off, as other programs
on the host may rely on it.
"""

from __future__ import annotations

import re
from pathlib import Path

from sharedroot.errors import OperationError

KSM_DIR = Path("/sys/kernel/mm/ksm")
_COUNT = re.compile(r"[0-9]{1,19}")


def ensure_running(ksm_dir: Path = KSM_DIR) -> None:
    """ksmd runs (run = 1; 0 is stopped, 2 is stopped with every page unmerged)."""
    run_file = ksm_dir / "run"
    try:
        if run_file.read_text().strip() != "1":
            run_file.write_text("1\n")
    except OSError as exc:
        raise OperationError(
            f"ksm = on, but the host's KSM cannot be started ({run_file}: {exc.strerror});"
            " a kernel without CONFIG_KSM, or not root: set ksm = off in site.toml"
        ) from None


def pages_sharing(ksm_dir: Path = KSM_DIR) -> int:
    """How many pages KSM saves on the whole host right now (pages_sharing)."""
    text = (ksm_dir / "pages_sharing").read_text().strip()
    if not _COUNT.fullmatch(text):
        raise OperationError(f"{ksm_dir}/pages_sharing: not a count: {text[:40]!r}")
    return int(text)
