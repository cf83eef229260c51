"""The one check before the store's own files are opened: there, and a regular file.

A FIFO would hang the reader and a directory would give a confusing error; either
means the store is damaged, and the message says which file.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from sharedroot.errors import SharedrootError, StoreError


def regular_file(
    path: Path, error: type[SharedrootError], *, what: str = "", missing: str = "missing"
) -> os.stat_result:
    """stat() of `path`, or `error` naming it (`what` goes before the path)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise error(f"{what}{path}: {missing}") from None
    except OSError as exc:
        raise error(f"{what}{path}: cannot read: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{what}{path}: not a regular file; the store is damaged")
    return st


def run_directory(path: Path) -> None:
    """The store's run/ (locks, sockets): made when missing, refused when not a directory."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise StoreError(f"{path}: not a directory; the store is damaged") from None
