"""make_readonly on a tree (fast): what mnt2rogld changes, without a boot."""

from __future__ import annotations

from pathlib import Path

import pytest

from sharedroot.errors import RefusedError
from sharedroot.guestos import dracut, earlybind
from sharedroot.guestos.readonly import PKGDB, make_readonly
from sharedroot.hypervisor.ipl import BootConfig, parse_boot_config, render_boot_config
from sharedroot.model.layout import PAPER_LAYOUT
from sharedroot.run import run


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    for d in ("usr/sbin", "boot", "var/lib/dpkg", "etc/ssh", "root", "srv/www", "local"):
        (root / d).mkdir(parents=True)
    (root / "usr/sbin/update-initramfs").write_text("#!/bin/sh\n")
    (root / "var/lib/dpkg/status").write_text("Package: base-files\n")
    (root / "etc/hostname").write_text("s10rwmnt\n")
    (root / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    (root / "root/.profile").write_text("# root's\n")
    (root / "boot/sharedroot.conf").write_text(
        render_boot_config(
            BootConfig("vmlinux-6.1", "initrd.img-6.1", "root=/dev/disk/by-id/virtio-01B1 rw")
        )
    )
    earlybind.write_scripts(root)  # as the golden tree has it since install
    return root


def test_make_readonly_changes_what_the_paper_changes(tree: Path) -> None:
    lines: list[str] = []
    make_readonly(tree, PAPER_LAYOUT, lines.append)
    fstab = (tree / "etc/fstab").read_text()
    assert "/dev/disk/by-id/virtio-01B1\t/\text2\tro\t0 0" in fstab
    assert "/dev/disk/by-id/virtio-01B7\t/usr\text2\tro\t0 0" in fstab
    assert "/dev/disk/by-id/virtio-01B5\t/local\text4\tdefaults\t0 2" in fstab
    assert f"/{PKGDB}\t/var/lib/dpkg\tnone\tbind,ro\t0 0" in fstab
    assert "UUID=" not in fstab and "LABEL=" not in fstab
    # /local holds the system's etc, root and srv, taken after the changes above.
    assert (tree / "local/etc/fstab").read_text() == fstab
    assert (tree / "local/etc/machine-id").read_text() == "uninitialized\n"
    assert (tree / "local/root/.profile").read_text() == "# root's\n"
    assert (tree / "local/srv/www").is_dir()
    assert (tree / PKGDB / "status").read_text() == "Package: base-files\n"
    cmdline = parse_boot_config((tree / "boot/sharedroot.conf").read_text()).cmdline.split()
    assert "ro" in cmdline and "rw" not in cmdline
    assert cmdline[-2:] == ["sharedroot.local=01B5:ext4", "fsck.mode=skip"]
    # A rerun gives the same tree (mnt2rogld always starts from a fresh copy anyway).
    make_readonly(tree, PAPER_LAYOUT, lines.append)
    again = parse_boot_config((tree / "boot/sharedroot.conf").read_text()).cmdline.split()
    assert again == cmdline


def test_early_bind_script_is_valid_shell(tmp_path: Path) -> None:
    earlybind.write_scripts(tmp_path)
    for rel in (earlybind.LOCAL_BOTTOM, earlybind.HOOK):
        run(["sh", "-n", tmp_path / rel])
    assert earlybind.installed(tmp_path)


def test_a_system_without_an_initramfs_tool_is_refused_clearly(tree: Path) -> None:
    (tree / "usr/sbin/update-initramfs").unlink()
    with pytest.raises(RefusedError, match=r"neither initramfs-tools.* nor dracut"):
        make_readonly(tree, PAPER_LAYOUT, print)
    assert not (tree / "etc/fstab").exists()


def test_a_dracut_system_is_made_read_only_without_a_rebuild(tree: Path) -> None:
    (tree / "usr/sbin/update-initramfs").unlink()
    (tree / "usr/bin").mkdir()
    (tree / "usr/bin/dracut").write_text("#!/bin/sh\nexit 1\n")
    dracut.write_module(tree)  # as a dracut golden tree has it since install
    said: list[str] = []
    make_readonly(tree, PAPER_LAYOUT, said.append)
    assert not any(line.startswith("dracut for") for line in said), said
    cmdline = parse_boot_config((tree / "boot/sharedroot.conf").read_text()).cmdline.split()
    assert cmdline[-2:] == ["sharedroot.local=01B5:ext4", "fsck.mode=skip"]
    assert (tree / "local/etc/fstab").is_file()
