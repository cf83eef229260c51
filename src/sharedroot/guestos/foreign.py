"""Building a tree for another architecture: the worker runs its programs through QEMU.

debootstrap's `--foreign` stage only unpacks; its second stage and every package script
run the target's binaries, which the kernel hands to qemu-user-static once a binfmt_misc
entry for the architecture is registered (Debian's qemu-user-static ships the entries in
/usr/lib/binfmt.d; its `F` flag opens the interpreter at registration, so it also works
inside the chroot).
"""

from __future__ import annotations

import platform
from pathlib import Path

from sharedroot.errors import OperationError
from sharedroot.run import run

BINFMT = Path("/proc/sys/fs/binfmt_misc")
BINFMT_CONFS = Path("/usr/lib/binfmt.d")
# Debian architecture -> (the kernel's machine name, QEMU's name for it)
ARCHES = {
    "amd64": ("x86_64", "x86_64"),
    "s390x": ("s390x", "s390x"),
    "arm64": ("aarch64", "aarch64"),
}


def host_arch() -> str:
    machine = platform.machine()
    for arch, (name, _) in ARCHES.items():
        if name == machine:
            return arch
    return machine


def is_foreign(arch: str) -> bool:
    return arch != host_arch()


def ensure_binfmt(arch: str) -> str:
    """Make sure the kernel runs `arch` binaries through QEMU; what was done (for the log)."""
    if not is_foreign(arch):
        return f"{arch} is this machine's own architecture"
    if arch not in ARCHES:
        raise OperationError(f"no QEMU user emulation known for architecture {arch!r}")
    qemu = ARCHES[arch][1]
    entry = BINFMT / f"qemu-{qemu}"
    if not (BINFMT / "register").exists():
        run(["mount", "-t", "binfmt_misc", "binfmt_misc", BINFMT], check=False)
    if entry.exists():
        if entry.read_text().splitlines()[:1] == ["enabled"]:
            return f"binfmt_misc runs {arch} programs through qemu-{qemu}"
        entry.write_text("1")
        return f"binfmt_misc: enabled qemu-{qemu} again"
    conf = BINFMT_CONFS / f"qemu-{qemu}.conf"
    if not (BINFMT / "register").exists() or not conf.exists():
        raise OperationError(
            f"cannot run {arch} programs on this {host_arch()} machine: needs binfmt_misc and"
            f" {conf} (Debian package qemu-user-static; scripts/setup installs it)"
        )
    (BINFMT / "register").write_text(conf.read_text().strip() + "\n")
    return f"binfmt_misc: registered qemu-{qemu} from {conf}"
