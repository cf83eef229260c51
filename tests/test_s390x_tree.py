"""The s390x golden system's pieces that need no boot: recipe, zipl.conf, dasd=, binfmt."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from sharedroot.errors import InputError
from sharedroot.guestos import earlybind, foreign, zipl
from sharedroot.guestos.platform import CCW, VIRTIO, VIRTIO_S390X, find
from sharedroot.guestos.recipe import DEFAULT_RECIPE, recipe_for, recipe_key
from sharedroot.model.layout import PAPER_LAYOUT, Layout
from sharedroot.model.types import DEFAULT_DISTRO, DeviceBus


def test_recipe_for_s390x_is_its_own_cache_entry() -> None:
    amd = recipe_for(VIRTIO, layout=PAPER_LAYOUT, hostname="s10rwmnt")
    s390 = recipe_for(CCW, layout=PAPER_LAYOUT, hostname="s10rwmnt")
    local = recipe_for(VIRTIO_S390X, layout=PAPER_LAYOUT, hostname="s10rwmnt")
    assert amd == DEFAULT_RECIPE and "initramfs-tools" in amd.packages
    assert s390.arch == "s390x" and s390.kernel_package == "linux-image-s390x"
    assert "s390-tools" in s390.packages and "qemu-guest-agent" not in s390.packages
    assert {"virtio_blk", "dasd_eckd_mod", "dasd_fba_mod", "ext4"} <= set(s390.initramfs_modules)
    assert "vmpoff=LOGOFF" in s390.cmdline_extra.split()
    # the local backend's s390x guests: the guest agent instead of SSH, disks by serial
    assert local.platform is VIRTIO_S390X and s390.platform is CCW and amd.platform is VIRTIO
    assert "qemu-guest-agent" in local.packages and "s390-tools" in local.packages
    assert "vmpoff=LOGOFF" not in local.cmdline_extra.split()
    key = recipe_key(s390)
    assert key.startswith(f"{DEFAULT_DISTRO}-s390x-") and key != recipe_key(amd)
    assert len({key, recipe_key(local), recipe_key(amd)}) == 3
    assert find(DeviceBus.CCW) is CCW and find(DeviceBus.CCW, "s390x") is CCW
    assert find(DeviceBus.VIRTIO) is VIRTIO and find(DeviceBus.VIRTIO, "s390x") is VIRTIO_S390X
    with pytest.raises(InputError, match="ppc64el"):
        find(DeviceBus.VIRTIO, "ppc64el")
    with pytest.raises(InputError, match="ccw disks run s390x only"):
        find(DeviceBus.CCW, "amd64")


def test_dasd_parameter_in_the_papers_form() -> None:
    assert zipl.dasd_parameter(PAPER_LAYOUT, readonly=False) == "dasd=1b0-1bf"
    # The paper's sed gives 1b0(ro),1b1(ro),1b2-1b7,1b8(ro),1b9-1bf; /usr at 1B7 is a
    # read-only link as well, so it is marked too.
    assert (
        zipl.dasd_parameter(PAPER_LAYOUT, readonly=True)
        == "dasd=1b0(ro),1b1(ro),1b2-1b6,1b7(ro),1b8(ro),1b9-1bf"
    )
    words = zipl.with_dasd(["root=x", "dasd=1b0-1bf", "ro"], "dasd=1b0(ro)")
    assert words == ["root=x", "ro", "dasd=1b0(ro)"]


def test_zipl_conf_is_written_whole_and_checked(tmp_path: Path) -> None:
    params = "root=/dev/disk/by-path/ccw-0.0.01b1-part1 ro dasd=1b0-1bf vmpoff=LOGOFF"
    path = zipl.write_zipl_conf(tmp_path, "vmlinuz-6.1.0-50-s390x", "initrd.img-6.1.0", params)
    text = path.read_text()
    assert path == tmp_path / "etc/zipl.conf"
    assert "[defaultboot]\ndefault = sharedroot\n" in text
    assert "image = /boot/vmlinuz-6.1.0-50-s390x\n" in text
    assert f'parameters = "{params}"\n' in text
    for kernel, parm in (
        ("vmlinuz", 'ro" \n[evil]'),
        ("vmlinuz", "ro # comment"),
        ("../../etc/shadow", "ro"),
        ("vmlinuz\nimage=/x", "ro"),
        ("vmlinuz", ""),
    ):
        with pytest.raises(InputError):
            zipl.render_zipl_conf(kernel, "initrd", parm)


def test_zipl_runs_only_on_a_real_dasd(tmp_path: Path) -> None:
    """Under the emulator /boot is a loop device: no zipl, the IPL reads sharedroot.conf."""
    image = tmp_path / "boot.img"
    subprocess.run(["mke2fs", "-q", "-t", "ext2", str(image), "8M"], check=True)
    root = tmp_path / "root"
    (root / "boot").mkdir(parents=True)
    subprocess.run(["mount", "-o", "loop,ro", str(image), str(root / "boot")], check=True)
    try:
        assert zipl.boot_source(root) is not None
        said: list[str] = []
        assert zipl.write_ipl_record(root, said.append) is False
        assert "not a DASD" in said[0]
    finally:
        subprocess.run(["umount", str(root / "boot")], check=True)
    assert zipl.boot_source(root) is None


def test_the_early_bind_takes_locals_device_from_the_fstab() -> None:
    script = earlybind.LOCAL_BOTTOM_SCRIPT
    assert "/dev/disk/by-path/ccw-0.0.[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-part1) dev=" in script
    subprocess.run(["sh", "-n"], input=script.encode(), check=True)


def test_binfmt_for_s390x_on_this_machine() -> None:
    assert foreign.host_arch() == "amd64"
    assert foreign.is_foreign("s390x") and not foreign.is_foreign("amd64")
    said = foreign.ensure_binfmt("s390x")
    assert "qemu-s390x" in said
    assert Path("/proc/sys/fs/binfmt_misc/qemu-s390x").read_text().startswith("enabled")


def test_disk_sizes_do_not_change_the_tree() -> None:
    """A site with bigger minidisks (the emulator's s390x directory) reuses the tree."""
    bigger = Layout(tuple(replace(d, size=d.size * 2) for d in PAPER_LAYOUT))
    moved = Layout(
        tuple(replace(d, mount="/srv") if d.mount == "/opt" else d for d in PAPER_LAYOUT)
    )
    key = recipe_key(recipe_for(CCW, layout=PAPER_LAYOUT, hostname="s10rwmnt"))
    assert recipe_key(recipe_for(CCW, layout=bigger, hostname="s10rwmnt")) == key
    assert recipe_key(recipe_for(CCW, layout=moved, hostname="s10rwmnt")) != key
