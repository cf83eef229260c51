"""IPL from a disk: the boot configuration on a guest's /boot disk (the local zipl.conf).

As CP's IPL reads the boot record zipl wrote onto the 01B0 disk, the local backend
reads `/sharedroot.conf` straight from the /boot disk's image file (debugfs, no mount)
and boots the kernel and initramfs it names, so a guest boots whatever its /boot holds.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sharedroot.errors import OperationError
from sharedroot.run import run

BOOT_CONFIG_NAME = "sharedroot.conf"
# The Debian architectures whose kernels a backend can boot (a file from before the
# key existed holds an x86_64 system).
ARCH_RULE = re.compile(r"amd64|s390x")
# Shared disks the system can use as persistent memory (DAX), ADDRESS:PCI-SLOT pairs
# such as 01B1:18,01B7:19 (written by mnt2rogld, see guestos.pmem).
DAX_RULE = re.compile(r"[0-9A-F]{4}:1[89a-f](?:,[0-9A-F]{4}:1[89a-f]){0,7}")
KEYS = ("kernel", "initrd", "cmdline", "arch", "dax")


@dataclass(frozen=True)
class BootConfig:
    """What sharedroot.conf says: files relative to the /boot disk, a cmdline, the
    kernel's architecture."""

    kernel: str
    initrd: str
    cmdline: str
    arch: str = "amd64"
    dax: str = ""  # DAX_RULE, or empty: no disk is ready to be mapped as memory
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def pmem_slots(self) -> dict[str, int]:
        """Address -> PCI slot of each disk the system can use as persistent memory."""
        pairs = (p.split(":") for p in self.dax.split(",") if p)
        return {address: int(slot, 16) for address, slot in pairs}


def _check(conf: BootConfig) -> BootConfig:
    if not ARCH_RULE.fullmatch(conf.arch):
        raise OperationError(f"{BOOT_CONFIG_NAME}: unknown architecture {conf.arch!r}")
    if conf.dax and not DAX_RULE.fullmatch(conf.dax):
        raise OperationError(f"{BOOT_CONFIG_NAME}: bad persistent-memory map {conf.dax!r}")
    return conf


def render_boot_config(conf: BootConfig) -> str:
    _check(conf)
    return (
        "# sharedroot boot configuration (the local zipl.conf); paths relative to /boot\n"
        f"kernel={conf.kernel}\ninitrd={conf.initrd}\ncmdline={conf.cmdline}\n"
        f"arch={conf.arch}\n" + (f"dax={conf.dax}\n" if conf.dax else "")
    )


def parse_boot_config(text: str) -> BootConfig:
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        values[key.strip()] = value.strip()
    missing = [k for k in ("kernel", "initrd", "cmdline") if k not in values]
    if missing:
        raise OperationError(f"{BOOT_CONFIG_NAME}: missing {', '.join(missing)}")
    extra = {k: v for k, v in values.items() if k not in KEYS}
    return _check(
        BootConfig(
            values["kernel"],
            values["initrd"],
            values["cmdline"],
            values.get("arch", "amd64"),
            values.get("dax", ""),
            extra,
        )
    )


def _dump(image: Path, name: str, out: Path) -> str:
    """Copy one file out of an ext2/3/4 image; debugfs exits 0 even when it fails."""
    out.unlink(missing_ok=True)
    proc = run(["debugfs", "-R", f"dump /{name} {out}", image])
    return proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "empty file"


def read_boot_config(boot_image: Path) -> BootConfig:
    """Read sharedroot.conf from the /boot disk's image file without mounting it."""
    if not boot_image.is_file():
        raise OperationError(f"boot disk image {boot_image} does not exist")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp, BOOT_CONFIG_NAME)
        why = _dump(boot_image, BOOT_CONFIG_NAME, out)
        if not out.exists():
            raise OperationError(
                f"{boot_image}: no /{BOOT_CONFIG_NAME} on the boot disk ({why});"
                " has Linux been installed (sharedroot install)?"
            )
        return parse_boot_config(out.read_text())


def extract_boot_files(boot_image: Path, dest_dir: Path) -> tuple[Path, Path, BootConfig]:
    """Copy the kernel and initrd named by the boot config out of the /boot image."""
    conf = read_boot_config(boot_image)
    dest_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in (conf.kernel, conf.initrd):
        rel = name.lstrip("/")
        if not rel or ".." in Path(rel).parts:
            raise OperationError(f"{BOOT_CONFIG_NAME}: bad file name {name!r}")
        out = dest_dir / Path(rel).name
        why = _dump(boot_image, rel, out)
        if not out.exists() or out.stat().st_size == 0:
            raise OperationError(
                f"{boot_image}: cannot read /{rel} named by {BOOT_CONFIG_NAME}: {why}"
            )
        paths.append(out)
    return paths[0], paths[1], conf
