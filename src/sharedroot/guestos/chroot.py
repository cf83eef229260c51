"""Package scripts in a tree: /proc, /sys and /dev mounted for a chroot, always unmounted."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sharedroot.run import run


@contextmanager
def chroot_mounts(root: Path) -> Iterator[None]:
    """Mount /proc, /sys and /dev for package scripts; always unmount them after."""
    mounted: list[Path] = []
    try:
        for argv, target in (
            (["mount", "-t", "proc", "proc"], root / "proc"),
            (["mount", "-t", "sysfs", "sysfs"], root / "sys"),
            (["mount", "--bind", "/dev"], root / "dev"),
            (["mount", "-t", "devpts", "devpts"], root / "dev/pts"),
        ):
            target.mkdir(parents=True, exist_ok=True)
            run([*argv, target])
            mounted.append(target)
        yield
    finally:
        for target in reversed(mounted):
            if run(["umount", target], check=False).returncode != 0:
                run(["umount", "-l", target], check=False)
