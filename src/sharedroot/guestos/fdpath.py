"""Small helpers for walking an untrusted tree by directory descriptors (never following
a symlink out of it), shared by cloneprep and etcmerge."""

from __future__ import annotations

import os


def lstat_at(name: str, dir_fd: int) -> os.stat_result | None:
    """lstat of `name` inside the directory `dir_fd`, or None if it is not there."""
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def join(rel: str, name: str) -> str:
    """A relative path below `rel` ("" or "a/b"), for reports."""
    rel = rel.strip("/")
    return f"{rel}/{name}" if rel else name
