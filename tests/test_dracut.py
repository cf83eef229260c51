"""The dracut boot path: the generated configuration and module (fast), and read-only
clones of a dracut golden tree booted side by side (real boots)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import BootSite
from sharedroot.errors import InputError, RefusedError
from sharedroot.guestos import distros, dracut, earlybind
from sharedroot.guestos.recipe import DEFAULT_RECIPE
from sharedroot.model.types import Distro, Initramfs, Network


def test_the_configuration_is_generic_and_holds_exactly_the_recipes_drivers() -> None:
    conf = dracut.config(DEFAULT_RECIPE.initramfs_modules, "zstd")
    assert 'hostonly="no"\n' in conf and 'compress="zstd"\n' in conf
    assert 'drivers=" virtio_pci virtio_blk virtio_pmem nd_pmem ext4 crc32c_generic "' in conf
    assert " sharedroot " in conf and "kernel-modules" not in conf and "systemd" not in conf
    subprocess.run(["bash", "-n"], input=conf.encode(), check=True)
    for bad in ('ext4"; rm -rf /', "virtio blk", ""):
        with pytest.raises(InputError):
            dracut.config(("virtio_blk", bad), "zstd")
    with pytest.raises(InputError):
        dracut.config(("virtio_blk",), "$(reboot)")


def test_the_module_is_valid_shell_and_shares_the_bind_with_initramfs_tools(
    tmp_path: Path,
) -> None:
    dracut.write_module(tmp_path)
    assert dracut.installed(tmp_path)
    subprocess.run(["bash", "-n", tmp_path / dracut.MODULE_SETUP], check=True)
    subprocess.run(["sh", "-n", tmp_path / dracut.HOOK], check=True)
    subprocess.run(["sh", "-n"], input=earlybind.LOCAL_BOTTOM_SCRIPT.encode(), check=True)
    # One body, two glues: the shell logic is written once.
    hook = (tmp_path / dracut.HOOK).read_text()
    assert earlybind.BIND_FUNCTION in hook and earlybind.BIND_FUNCTION in (
        earlybind.LOCAL_BOTTOM_SCRIPT
    )
    # Sourced into dracut's init: an exit would end init itself.
    assert not re.search(r"(^|;)\s*exit\b", hook, re.M)
    (tmp_path / dracut.MODULE_SETUP).write_text("#!/bin/bash\n# an older module\n")
    assert not dracut.installed(tmp_path)


def bind(cmdline: str, newroot: Path) -> str:
    """Run the shared bind function with this kernel command line (cat and sleep are
    shell functions here, so nothing of the host is read or waited for)."""
    script = (
        f"cat() {{ echo '{cmdline}'; }}\nsleep() {{ :; }}\n"
        'sharedroot_warn() { echo "WARN $*"; }\n'
        f'{earlybind.BIND_FUNCTION}\nsharedroot_local "$1"; echo rc=$?\n'
    )
    return subprocess.run(
        ["sh", "-c", script, "sh", str(newroot)], capture_output=True, text=True, check=True
    ).stdout


def test_the_command_line_word_switches_the_bind_on_and_is_checked(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/fstab").write_text(
        "/dev/disk/by-id/virtio-01B5\t/local\text4\tdefaults\t0 2\n"
    )
    assert bind("root=/dev/vda ro quiet", tmp_path) == "rc=0\n"  # idle without the word
    for word in ("01b5:ext4", "01B5:vfat", "1B5:ext4", "01B5:ext4;reboot", "../x:ext4"):
        out = bind(f"ro sharedroot.local={word} quiet", tmp_path)
        assert out == f"WARN sharedroot: bad sharedroot.local={word}\nrc=0\n", out
    # A good word: /local's device is taken from the fstab (no such disk on this host).
    out = bind("ro sharedroot.local=01B5:ext4", tmp_path)
    assert out.startswith("WARN sharedroot: no /local disk /dev/disk/by-id/virtio-01B5;"), out
    words = earlybind.cmdline_words("01B5", "ext4")
    assert words == ["sharedroot.local=01B5:ext4", "fsck.mode=skip"]
    with pytest.raises(InputError):
        earlybind.cmdline_words("01B5", "ext4 init=/bin/sh")
    argv = dracut.rebuild_argv(Path("/t"), "6.1.0-50-amd64")
    assert argv[-2:] == ["/boot/initrd.img-6.1.0-50-amd64", "6.1.0-50-amd64"]
    assert "--no-hostonly" in argv  # in the chroot the host is the worker
    with pytest.raises(InputError):
        dracut.rebuild_argv(Path("/t"), "../../etc/passwd")


def test_both_distributions_offer_dracut_on_amd64_only() -> None:
    for distro in (Distro.DEBIAN_BOOKWORM, Distro.DEBIAN_TRIXIE):
        dist = distros.get(distro)
        assert dist.choose("amd64", Initramfs.DRACUT, None)[0] is Initramfs.DRACUT
        assert "dracut" in dist.packages(Initramfs.DRACUT, Network.NETWORKD)
        with pytest.raises(RefusedError, match="no dracut boot path on s390x"):
            dist.choose("s390x", Initramfs.DRACUT, None)


# ---------------------------------------------------------------- real boots

CLONES = {"LNX227": "10.0.2.27", "LNX242": "10.0.2.42"}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BootSite]:
    if os.geteuid() != 0:
        pytest.skip("guests need root (loop mounts, QEMU)")
    s = BootSite.installed(
        tmp_path_factory,
        "dracut",
        "--distro", "debian-bookworm", "--initramfs", "dracut", "--network", "ifupdown",
    )  # fmt: skip
    s.run("mnt2rogld", "--yes")
    s.run("ro2gold", "--yes")
    for name, ip in CLONES.items():
        s.run("define", name, "--ro", "--hostname", name.lower(), "--ip", ip,
              "--gateway", "10.0.2.2")  # fmt: skip
    s.run("clonero", *CLONES, "--yes")
    yield s
    for g in CLONES:
        s.run("stop", g, "--timeout", "30", check=False)


@pytest.mark.boot
def test_read_only_clones_of_a_dracut_gold_boot_and_pass_verify(site: BootSite) -> None:
    t0 = time.monotonic()
    site.start(*CLONES)
    print(f"both clones up in {time.monotonic() - t0:.0f}s")
    for guest, ip in CLONES.items():
        report = json.loads(site.run("verify", guest, "--json", check=False).stdout)
        failed = [c for c in report["checks"] if not c["ok"]]
        assert report["ok"], f"{guest}: {failed}"
        assert site.sh(guest, "hostname") == f"{guest.lower()}\n"
        assert f"inet {ip}/" in site.sh(guest, "ip -4 addr show")
        # ifupdown owns the NIC through findself's stanza; the first boot's preset-all left
        # networkd off (Debian's presets would enable it beside ifupdown)
        assert f"address {ip}/" in site.sh(guest, "cat /etc/network/interfaces.d/sharedroot")
        enabled = site.sh(guest, "systemctl is-enabled systemd-networkd || true").strip()
        assert enabled == "disabled", enabled
        # /etc, /root and /srv are bound from /local before PID 1; / and /usr read-only.
        local = site.sh(guest, "findmnt -n -o SOURCE /local").strip()
        for target in ("/etc", "/root", "/srv"):
            source = site.sh(guest, f"findmnt -n -o SOURCE {target}").strip()
            assert source == f"{local}[{target}]", (target, source)
        for target in ("/", "/usr"):
            options = site.sh(guest, f"findmnt -n -o OPTIONS {target}").split(",")
            assert options[0] == "ro", (target, options)
        # The initramfs is dracut's, with the module.
        listing = site.sh(guest, 'lsinitrd "/boot/$(sed -n "s/^initrd=//p" /boot/sharedroot.conf)"')
        assert "sharedroot-local.sh" in listing and "dracut-" in listing
    ids = {g: site.sh(g, "cat /etc/machine-id").strip() for g in CLONES}
    assert len(set(ids.values())) == 2 and "uninitialized" not in ids.values()
