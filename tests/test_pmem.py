"""The gold as persistent memory: the udev rule, the DAX flags, the QEMU devices."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import guest_spec
from sharedroot.guestos import pmem
from sharedroot.hypervisor.base import StartRequest
from sharedroot.hypervisor.ipl import BootConfig
from sharedroot.hypervisor.local import _memory_map
from sharedroot.hypervisor.qemu import accel, cmdline
from sharedroot.model.layout import PAPER_LAYOUT, pmem_slots

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="loop mounts need root")
M = 1 << 20


def test_every_shared_filesystem_has_a_slot_and_a_name() -> None:
    assert pmem_slots(PAPER_LAYOUT) == {"01B0": 0x18, "01B1": 0x19, "01B7": 0x1A, "01B8": 0x1B}
    rule = pmem.udev_rule(PAPER_LAYOUT)
    assert (
        'SUBSYSTEM=="block", KERNEL=="pmem*", KERNELS=="0000:00:1a.0",'
        ' SYMLINK+="disk/by-id/virtio-01B7", RUN+="/usr/sbin/blockdev --setro $devnode"'
    ) in rule.splitlines()
    assert "01B5" not in rule and "01B6" not in rule  # private disks are never shared


@pytest.fixture
def mounted(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A 4 KiB-block ext2 image mounted at root/usr under a 1 KiB-block root."""
    root, usr = tmp_path / "root", tmp_path / "usr.img"
    top = tmp_path / "top.img"
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext2", "-b", "1024", top, "8M"], check=True)
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext2", "-b", "4096", usr, "8M"], check=True)
    root.mkdir()
    subprocess.run(["mount", "-o", "loop", top, root], check=True)
    (root / "usr").mkdir()
    subprocess.run(["mount", "-o", "loop", usr, root / "usr"], check=True)
    try:
        yield root, root / "usr"
    finally:
        subprocess.run(["umount", root / "usr"], check=False)
        subprocess.run(["umount", root], check=False)


@needs_root
def test_dax_flags_and_readiness_on_real_filesystems(mounted: tuple[Path, Path]) -> None:
    root, usr = mounted
    (usr / "lib").mkdir()
    (usr / "lib/libc.so").write_bytes(b"\0" * 8192)
    (usr / "lib/link").symlink_to("libc.so")
    (root / "etc").mkdir()
    (root / "etc/hostname").write_text("x\n")
    # usr itself, lost+found, lib, libc.so; not the symlink
    assert pmem.set_dax_flags(usr) == 4
    flags = subprocess.run(
        ["lsattr", "-d", usr, usr / "lib", usr / "lib/libc.so"], capture_output=True, text=True
    ).stdout
    assert all("x" in line.split()[0] for line in flags.splitlines())
    pmem.set_dax_flags(root)  # stays on its own filesystem: /usr is not walked again
    assert "x" in subprocess.run(["lsattr", root / "etc/hostname"], capture_output=True,
                                 text=True).stdout.split()[0]  # fmt: skip
    # ready: named by the rule and 4 KiB blocks; / here has 1 KiB blocks
    assert pmem.dax_ready(root, PAPER_LAYOUT) == {}
    pmem.write_rule(root, PAPER_LAYOUT)
    assert pmem.dax_ready(root, PAPER_LAYOUT) == {"01B7": 0x1A}
    # /boot: 4 KiB blocks too, but nothing reads it after IPL, so it is never mapped
    (root / "boot").mkdir()
    subprocess.run(["mount", "--bind", usr, root / "boot"], check=True)
    try:
        assert pmem.dax_ready(root, PAPER_LAYOUT) == {"01B7": 0x1A}
    finally:
        subprocess.run(["umount", root / "boot"], check=False)
    assert pmem.render_ready({"01B1": 0x19, "01B7": 0x1A}) == "01B1:19,01B7:1a"


def test_qemu_maps_the_gold_shared_and_read_only(tmp_path: Path) -> None:
    mapped = (cmdline.Pmem(tmp_path / "a,b.img", "01B7", 0x1A, 1536 * M),)
    spec = guest_spec(tmp_path, pmem=mapped)
    argv = cmdline.qemu_argv(spec)
    assert argv[argv.index("-m") + 1] == "512,slots=1,maxmem=2048M"
    assert (
        f"memory-backend-file,id=m01B7,mem-path={tmp_path}/a,,b.img,size={1536 * M},"
        "share=on,readonly=on"
    ) in argv
    assert "virtio-pmem-pci,memdev=m01B7,id=pmem01B7,addr=0x1a" in argv


def test_only_ready_aligned_read_only_disks_are_mapped(tmp_path: Path) -> None:
    def image(name: str, size: int) -> Path:
        path = tmp_path / name
        with open(path, "wb") as f:
            f.truncate(size)
        return path

    drives = [
        cmdline.Drive(image("21B1.img", 256 * M), "01B1", readonly=True),
        cmdline.Drive(image("21B0.img", 192 * M), "01B0", readonly=True),  # not aligned
        cmdline.Drive(image("21B7.img", 1536 * M), "01B7", readonly=True),
        cmdline.Drive(image("01B5.img", 128 * M), "01B5"),  # private: never
    ]
    conf = BootConfig("k", "i", "ro", dax="01B0:18,01B1:19,01B5:1c")
    on = StartRequest("01B0", dax=True)
    memory = _memory_map(drives, conf, on)
    assert memory == {
        "01B1": cmdline.Pmem(tmp_path / "21B1.img", "01B1", 0x19, 256 * M),
        "01B0": "virtio-blk: 192 MiB is not a multiple of 128 MiB",
    }  # 01B7: not in the gold's map; 01B5: private
    off = _memory_map(drives, conf, StartRequest("01B0"))
    assert off["01B1"] == "virtio-blk: the site's dax setting is off"
    s390 = BootConfig("k", "i", "ro", arch="s390x", dax="01B1:19")
    assert _memory_map(drives, s390, on) == {}


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="no qemu-system-x86_64")
def test_the_host_qemu_is_asked_for_the_device() -> None:
    assert accel.has_device("virtio-pmem-pci")
    assert not accel.has_device("virtio-pmem-pci-nonexistent")
