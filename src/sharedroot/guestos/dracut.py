"""The dracut part of a read-only root: a slim generic initramfs, and the module
90sharedroot that binds /etc, /root, /srv from /local before PID 1 starts.

The module runs the same shell function as the initramfs-tools script
(earlybind.BIND_FUNCTION) from a pre-pivot hook: the root is mounted at $NEWROOT then,
and /usr (usrmount, pre-pivot 50) is mounted after it from the clone's own fstab, as
initramfs-tools does. Like that script it is in every installed initramfs and idle
until the kernel command line says `sharedroot.local=ADDR:FSTYPE`.

The initramfs is generic, not host-only: it is built in a chroot on the worker, whose
own disks say nothing about the guests'. It holds exactly the recipe's drivers and the
dracut modules that find a root by /dev/disk/by-id/virtio-ADDR and mount a separate
/usr, with dracut's shell init (no systemd in the initramfs: smaller, and faster to
boot under TCG).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from sharedroot.errors import InputError
from sharedroot.guestos import pmem
from sharedroot.guestos.earlybind import BIND_FUNCTION, CMDLINE_KEY
from sharedroot.guestos.tree import replace_file

CONF = "etc/dracut.conf.d/50-sharedroot.conf"
MODULE_DIR = "usr/lib/dracut/modules.d/90sharedroot"
MODULE_SETUP = f"{MODULE_DIR}/module-setup.sh"
HOOK = f"{MODULE_DIR}/sharedroot-local.sh"
MARKER = "# sharedroot dracut module v1"  # a module without it is outdated: rebuild

# dash as /bin/sh (bash is larger), udev to name the disks by serial, the shell init,
# root= on a block device with its fsck, /usr from the root's fstab, and ours. No
# kernel-modules: it would pull in every storage driver; `drivers` lists exactly ours.
DRACUT_MODULES = (
    "dash",
    "udev-rules",
    "base",
    "fs-lib",
    "rootfs-block",
    "usrmount",
    "sharedroot",
)

_WORD = re.compile(r"[a-z0-9_-]+")  # a kernel module, a dracut module, a compressor


def config(drivers: Sequence[str], compress: str) -> str:
    """/etc/dracut.conf.d/50-sharedroot.conf for these kernel modules."""
    for word in (*drivers, compress, *DRACUT_MODULES):
        if not _WORD.fullmatch(word):
            raise InputError(f"dracut configuration word {word!r}: expected {_WORD.pattern}")
    return (
        "# sharedroot: a slim generic initramfs for virtio disks (built in a chroot, so\n"
        "# never host-only) with the early /etc binding (90sharedroot)\n"
        'hostonly="no"\n'
        'hostonly_cmdline="no"\n'
        f'dracutmodules=" {" ".join(DRACUT_MODULES)} "\n'
        f'drivers=" {" ".join(drivers)} "\n'
        # Only e2fsck: every filesystem of the layout is ext2/3/4.
        'fscks=" e2fsck "\n'
        f'compress="{compress}"\n'
        'early_microcode="no"\n'
    )


MODULE_SETUP_SCRIPT = f"""#!/bin/bash
{MARKER}
# sharedroot: bind /etc, /root, /srv from /local before PID 1 ({CMDLINE_KEY}=ADDR:FSTYPE).
check() {{ return 0; }}
depends() {{ echo base fs-lib; return 0; }}
install() {{
    inst_multiple e2fsck mount blockdev
    # udev's 71-seat.rules runs `loginctl lock-sessions` for one USB device; an initramfs
    # has no sessions, and the real loginctl drags in systemd's shared library and its
    # dependencies (6 MB). dracut copies no program already in place: a no-op it is.
    mkdir -p "$initdir/usr/bin"
    printf '#!/bin/sh\\nexit 0\\n' > "$initdir/usr/bin/loginctl"
    chmod 755 "$initdir/usr/bin/loginctl"
    # The gold's disks mapped as memory are named by this rule (root= may be one).
    if [ -e "/{pmem.RULE}" ]; then inst_rules "/{pmem.RULE}"; fi
    # Before usrmount (pre-pivot 50), so /usr comes from the clone's own fstab.
    inst_hook pre-pivot 40 "$moddir/sharedroot-local.sh"
}}
"""

HOOK_SCRIPT = f"""#!/bin/sh
{MARKER}
# Sourced by dracut's init after the root is mounted at $NEWROOT, before switch_root.
type warn >/dev/null 2>&1 || . /lib/dracut-lib.sh
sharedroot_warn() {{ warn "$*"; }}

{BIND_FUNCTION}
sharedroot_local "$NEWROOT"
"""


def write_config(root: Path, drivers: Sequence[str], compress: str) -> None:
    replace_file(root / CONF, config(drivers, compress))


def write_module(root: Path) -> None:
    """Put 90sharedroot into a tree (the next dracut run takes it)."""
    replace_file(root / MODULE_SETUP, MODULE_SETUP_SCRIPT, 0o755)
    replace_file(root / HOOK, HOOK_SCRIPT, 0o755)


def installed(root: Path) -> bool:
    """Whether the tree's initramfs was built with this version of the module."""
    path = root / MODULE_SETUP
    return path.is_file() and MARKER in path.read_text()


def uses_dracut(root: Path) -> bool:
    paths = ("usr/bin/dracut", "usr/sbin/dracut", "sbin/dracut", "etc/dracut.conf")
    return any((root / p).exists() for p in paths)


def rebuild_argv(root: Path, version: str) -> list[str | Path]:
    """dracut in the tree's chroot, writing the initramfs where the boot config has it.

    Never host-only (in the chroot the host is the worker) and always with our module,
    whatever the configuration of a system sharedroot did not build says.
    """
    if not re.fullmatch(r"[0-9][A-Za-z0-9.+~_-]*", version):
        raise InputError(f"kernel version {version!r}: not a kernel release")
    image = f"/boot/initrd.img-{version}"
    return [
        "chroot",
        root,
        "dracut",
        "-q",
        "-f",
        "--no-hostonly",
        "--add",
        "sharedroot",
        image,
        version,
    ]
