"""The s390x boot: zipl.conf, the paper's `dasd=` parameter, and zipl on a real DASD.

On z/VM a guest IPLs its 01B0 disk, on which `zipl` wrote a boot record from
/etc/zipl.conf (kernel, initrd, parameters). The paper's mnt2rogld.sh turns the read-write
`dasd=1b0-1bf` into `ro dasd=1b0(ro),1b1(ro),1b2-1b7,1b8(ro),1b9-1bf` and adds
`vmpoff=LOGOFF`, then runs `chroot $TGT zipl`. sharedroot writes zipl.conf whole from the
same parameters as /boot/sharedroot.conf, and runs zipl only when /boot is on a real DASD
(an emulated z/VM's IPL reads /boot/sharedroot.conf instead).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from sharedroot.errors import InputError
from sharedroot.guestos.chroot import chroot_mounts
from sharedroot.model.layout import Layout
from sharedroot.model.types import DiskKind, shown
from sharedroot.run import run

ZIPL_CONF = "etc/zipl.conf"
SECTION = "sharedroot"
# What a zipl.conf value may hold: no quotes, line ends or '#' (a comment in zipl.conf).
_PARAMETER = re.compile(r"[A-Za-z0-9._=,:/()+@-]+")
_BOOT_FILE = re.compile(r"[A-Za-z0-9._+-]+")
_DASD_NODE = re.compile(r"dasd[a-z]+[0-9]*")

Log = Callable[[str], None]


def dasd_parameter(layout: Layout, *, readonly: bool) -> str:
    """The paper's `dasd=` kernel parameter for the layout's disk block (1B0-1BF).

    Read-write (the maintenance system): one range. Read-only: the shared disks marked
    `(ro)`, runs of the others as ranges, as mnt2rogld.sh's sed makes it.
    """
    addresses = [int(d.address, 16) for d in layout]
    first = min(addresses) & ~0xF
    last = max(addresses) | 0xF
    if not readonly:
        return f"dasd={first:x}-{last:x}"
    shared = {int(d.address, 16) for d in layout.shared if d.kind is DiskKind.FS}
    items: list[str] = []
    run_start: int | None = None
    for addr in range(first, last + 2):
        plain = addr <= last and addr not in shared
        if plain and run_start is None:
            run_start = addr
        if not plain and run_start is not None:
            end = addr - 1
            items.append(f"{run_start:x}" if end == run_start else f"{run_start:x}-{end:x}")
            run_start = None
        if addr <= last and addr in shared:
            items.append(f"{addr:x}(ro)")
    return "dasd=" + ",".join(items)


def with_dasd(words: Iterable[str], dasd: str) -> list[str]:
    """Kernel parameters with their `dasd=` word replaced by `dasd`."""
    return [w for w in words if not w.startswith("dasd=")] + [dasd]


def render_zipl_conf(kernel: str, initrd: str, parameters: str) -> str:
    """/etc/zipl.conf with one boot section; kernel and initrd are file names in /boot."""
    for name, what in ((kernel, "kernel"), (initrd, "initrd")):
        if not _BOOT_FILE.fullmatch(name):
            raise InputError(f"zipl.conf {what} {shown(name)}: must be a plain file name")
    words = parameters.split()
    bad = [w for w in words if not _PARAMETER.fullmatch(w)]
    if not words or bad:
        raise InputError(
            f"zipl.conf parameters {shown(parameters)}: each word must be letters, digits"
            " and . _ = , : / ( ) + @ -"
        )
    return (
        "# Written by sharedroot: the IPL record of 01B0. Run zipl after changing it.\n"
        "[defaultboot]\n"
        f"default = {SECTION}\n"
        "\n"
        f"[{SECTION}]\n"
        "target = /boot\n"
        f"image = /boot/{kernel}\n"
        f"ramdisk = /boot/{initrd}\n"
        f'parameters = "{" ".join(words)}"\n'
    )


def write_zipl_conf(root: Path, kernel: str, initrd: str, parameters: str) -> Path:
    path = root / ZIPL_CONF
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.sharedroot-tmp")
    tmp.write_text(render_zipl_conf(kernel, initrd, parameters))
    tmp.chmod(0o644)
    tmp.replace(path)
    return path


def boot_source(root: Path) -> str | None:
    """The device mounted on root/boot (from /proc/self/mounts), or None."""
    target = str(root.resolve() / "boot")
    source = None
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 2 and fields[1] == target:
                source = fields[0]  # the last mount on a path is the one seen
    return source


def write_ipl_record(root: Path, log: Log) -> bool:
    """`chroot root zipl` when root/boot is a real DASD partition; True if it ran.

    Under the CP emulator the disks are loop devices: the emulated IPL reads
    /boot/sharedroot.conf, which holds the same kernel, initrd and parameters.
    """
    source = boot_source(root)
    node = os.path.basename(os.path.realpath(source)) if source else ""
    if not _DASD_NODE.fullmatch(node):
        log(f"zipl: /boot is on {source or 'no device'}, not a DASD; the IPL reads the boot config")
        return False
    log(f"zipl: writing the IPL record onto {source}")
    with chroot_mounts(root):
        run(["chroot", root, "zipl"], timeout=300)
    return True
