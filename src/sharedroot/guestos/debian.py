"""Debian golden trees (any suite the distros registry names): built once, then cached.

The tree is built with debootstrap and cached under a key of its recipe, so every
install after the first only runs `mke2fs -d` per disk (seconds). The boot configuration
lives on the /boot disk (the local analogue of the paper's zipl.conf) and is read
straight from its image file with debugfs, without mounting.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path

from sharedroot.errors import OperationError
from sharedroot.guestos import dracut, earlybind, foreign, pmem, zipl
from sharedroot.guestos.chroot import chroot_mounts
from sharedroot.guestos.fstab import write_fstab
from sharedroot.guestos.platform import BootLoader
from sharedroot.guestos.recipe import DEFAULT_RECIPE, Recipe, recipe_key
from sharedroot.guestos.tree import replace_file
from sharedroot.guestos.vmlinux import extract_vmlinux
from sharedroot.hypervisor.ipl import BOOT_CONFIG_NAME, BootConfig, render_boot_config
from sharedroot.model.types import Initramfs, Network
from sharedroot.run import run

COMPLETE_MARK = ".sharedroot-complete"


# ---------------------------------------------------------------- build


def build_tree(
    cache_dir: Path,
    recipe: Recipe = DEFAULT_RECIPE,
    *,
    log: Callable[[str], None] = print,
) -> Path:
    """Return the finished root directory of `recipe`, building it on the first call.

    The build runs in a temporary directory beside the entry and is renamed into place
    only when complete, so an interrupted build never leaves a half tree under the key.
    """
    entry = cache_dir / recipe_key(recipe)
    root = entry / "root"
    if (entry / COMPLETE_MARK).exists():
        return root
    cache_dir.mkdir(parents=True, exist_ok=True)
    for stale in cache_dir.glob(f".{entry.name}.build-*"):
        # A build that died earlier (its pid is gone) leaves its temp dir behind.
        pid = stale.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or not Path(f"/proc/{pid}").exists():
            _unmount_below(stale)
            shutil.rmtree(stale, ignore_errors=True)
    work = cache_dir / f".{entry.name}.build-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    t0 = time.monotonic()
    try:
        _build(work / "root", recipe, log)
        (work / COMPLETE_MARK).write_text(json.dumps(asdict(recipe), default=str) + "\n")
        if (entry / COMPLETE_MARK).exists():  # a concurrent build finished first
            _unmount_below(work)
            shutil.rmtree(work, ignore_errors=True)
            return root
        if entry.exists():  # an incomplete entry (not made by this code): replace it
            shutil.rmtree(entry)
        work.rename(entry)
    except BaseException:
        _unmount_below(work)
        shutil.rmtree(work, ignore_errors=True)
        raise
    log(f"golden tree {entry.name} built in {time.monotonic() - t0:.0f}s")
    return root


def _build(root: Path, recipe: Recipe, log: Callable[[str], None]) -> None:
    cross = foreign.is_foreign(recipe.arch)
    if cross:
        log(foreign.ensure_binfmt(recipe.arch))
    log(
        f"debootstrap --arch={recipe.arch} --variant={recipe.variant} {recipe.suite}"
        + (" (foreign: every package script runs under QEMU, 15 minutes or more)" if cross else "")
    )
    run(
        [
            "debootstrap",
            f"--arch={recipe.arch}",
            *(["--foreign"] if cross else []),
            f"--variant={recipe.variant}",
            "--include=" + ",".join(recipe.base_packages),
            recipe.suite,
            root,
        ],
        timeout=1800,
    )
    if cross:
        log("debootstrap --second-stage (under QEMU)")
        run(["chroot", root, "/debootstrap/debootstrap", "--second-stage"], timeout=3600)
    _preconfigure(root, recipe)
    with chroot_mounts(root):
        # Keep services from starting inside the build chroot.
        policy = root / "usr/sbin/policy-rc.d"
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "DEBIAN_FRONTEND": "noninteractive",
            "LC_ALL": "C.UTF-8",
        }
        log("apt-get install the kernel and the server packages (about a minute)")
        run(["chroot", root, "apt-get", "update", "-q"], env=env, timeout=1800)
        run(
            [
                "chroot",
                root,
                "apt-get",
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
                "-o",
                "Dpkg::Options::=--force-confold",
                "-o",
                "Dpkg::Options::=--force-confdef",
                recipe.kernel_package,
                *recipe.packages,
            ],
            env=env,
            timeout=3600,
        )
        _configure(root, recipe, env)
        policy.unlink()
        run(["chroot", root, "apt-get", "clean"], env=env)
    _finish_boot(root, recipe, log)
    for lists in (root / "var/lib/apt/lists").glob("*_*"):
        lists.unlink()  # the package lists are large and stale by the next install


def _preconfigure(root: Path, recipe: Recipe) -> None:
    """Config that must exist before the kernel's postinst builds the initramfs.

    The early /etc binding goes in from the start (initramfs-tools scripts or the dracut
    module), idle until a read-only root's boot configuration switches it on.
    """
    if recipe.initramfs is Initramfs.DRACUT:
        dracut.write_config(root, recipe.initramfs_modules, recipe.initramfs_compress)
        dracut.write_module(root)
    else:
        _initramfs_tools_config(root, recipe)
        earlybind.write_scripts(root)
    write_fstab(root, recipe.layout, platform=recipe.platform)
    if recipe.arch == "amd64":  # virtio-pmem (PCI) for the gold in memory: x86_64 only
        pmem.write_rule(root, recipe.layout)
    (root / "etc/hostname").write_text(recipe.hostname + "\n")
    (root / "etc/hosts").write_text(
        f"127.0.0.1\tlocalhost\n127.0.1.1\t{recipe.hostname}\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\n"
    )


def _initramfs_tools_config(root: Path, recipe: Recipe) -> None:
    conf = root / "etc/initramfs-tools"
    (conf / "conf.d").mkdir(parents=True, exist_ok=True)
    (conf / "conf.d/sharedroot").write_text(
        "# sharedroot: a slim initramfs for virtio disks (see /etc/initramfs-tools/modules)\n"
        "MODULES=list\n"
        f"COMPRESS={recipe.initramfs_compress}\n"
        # Swap is on a disk of its own and VDISKs are new at each start: never resume.
        "RESUME=none\n"
    )
    (conf / "modules").write_text("\n".join(recipe.initramfs_modules) + "\n")


NETWORK_DEFAULT = """\
# sharedroot default: DHCP on the virtio NIC. A guest's identity replaces this file.
[Match]
Name=en* eth*

[Network]
DHCP=yes
"""

SSH_KEYGEN_UNIT = """\
[Unit]
Description=Generate this guest's SSH host keys (the gold ships none)
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target
"""


IFUPDOWN_DEFAULT = """\
# sharedroot default: the loopback only. findself writes this guest's NIC from its parm
# file into interfaces.d.
auto lo
iface lo inet loopback

source /etc/network/interfaces.d/*
"""

# NetworkManager reads connections from keyfiles only (Debian also loads its ifupdown
# plugin, which would leave a NIC named in /etc/network/interfaces unmanaged). Its
# automatic DHCP profile stays for a system without a parm file: NM makes none for a NIC
# that findself's keyfile matches.
NM_CONF = "etc/NetworkManager/conf.d/10-sharedroot.conf"
NM_DEFAULT = """\
# sharedroot: connections from keyfiles only; findself writes this guest's from its
# parm file (system-connections/sharedroot.nmconnection).
[main]
plugins=keyfile
"""

# Units that wait for network-online: nothing here needs it, and waiting only fails
# boots without DHCP.  Masked, not disabled: enabling the stack's own unit (again at a
# clone's first boot, by preset) enables its wait-online unit through Also=.
_WAIT_ONLINE = {
    Network.NETWORKD: "systemd-networkd-wait-online",
    Network.IFUPDOWN: "ifupdown-wait-online",
    Network.NETWORKMANAGER: "NetworkManager-wait-online",
}


def _configure(root: Path, recipe: Recipe, env: Mapping[str, str]) -> None:
    enable = ["sharedroot-ssh-keygen"]
    if recipe.network is Network.NETWORKD:
        net = root / "etc/systemd/network/80-sharedroot-default.network"
        net.parent.mkdir(parents=True, exist_ok=True)
        net.write_text(NETWORK_DEFAULT)
        enable.append("systemd-networkd")
    elif recipe.network is Network.IFUPDOWN:
        (root / "etc/network/interfaces.d").mkdir(parents=True, exist_ok=True)
        (root / "etc/network/interfaces").write_text(IFUPDOWN_DEFAULT)
    elif recipe.network is Network.NETWORKMANAGER:
        conf = root / NM_CONF
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(NM_DEFAULT)
        enable.append("NetworkManager")
    (root / "etc/systemd/system/sharedroot-ssh-keygen.service").write_text(SSH_KEYGEN_UNIT)
    run(["chroot", root, "systemctl", "enable", *enable], env=env)
    # e2scrub only works on LVM snapshots; here it costs seconds of every TCG boot.
    disable = ["e2scrub_reap", "e2scrub_all.timer"]
    wait = _WAIT_ONLINE[recipe.network]
    if _unit_exists(root, f"{wait}.service"):
        run(["chroot", root, "systemctl", "mask", wait], env=env)
    if recipe.network is not Network.NETWORKD and _unit_exists(root, "systemd-networkd.service"):
        # One stack owns the NIC: findself writes for the one that is enabled.
        disable += [
            "systemd-networkd.service",
            "systemd-networkd.socket",
            "systemd-networkd-wait-online.service",
        ]
    run(["chroot", root, "systemctl", "disable", *disable], env=env)
    _write_presets(root, disable)
    run(["chroot", root, "passwd", "-l", "root"], env=env)
    # Each clone must get its own identity: no host keys, machine-id made at first boot.
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/machine-id").write_text("uninitialized\n")
    with contextlib.suppress(FileNotFoundError):
        (root / "var/lib/dbus/machine-id").unlink()


PRESET_FILE = "etc/systemd/system-preset/10-sharedroot.preset"


def _write_presets(root: Path, disabled: list[str]) -> None:
    """Keep what the gold disables disabled at a clone's first boot.

    With /etc/machine-id `uninitialized` PID 1 runs `preset-all` (enable only), and
    Debian's presets enable systemd-networkd and every unit they do not name: a
    NetworkManager or ifupdown clone would come up with networkd as well.  /etc's
    preset files come before /usr's, and the first matching line wins.
    """
    units = [u if "." in u else f"{u}.service" for u in disabled]
    text = "# sharedroot: disabled in the gold, not to be enabled at first boot\n" + "".join(
        f"disable {u}\n" for u in units
    )
    path = root / PRESET_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _unit_exists(root: Path, unit: str) -> bool:
    return any((root / d / unit).exists() for d in ("usr/lib/systemd/system", "lib/systemd/system"))


def _finish_boot(root: Path, recipe: Recipe, log: Callable[[str], None]) -> None:
    """Write /boot/sharedroot.conf (and /etc/zipl.conf on s390x) for the newest kernel.

    On x86_64 the kernel is the uncompressed vmlinux (QEMU's PVH entry boots it faster
    under TCG); an s390x kernel image boots as it is.
    """
    platform = recipe.platform
    boot = root / "boot"
    kernels = sorted(boot.glob("vmlinuz-*"))
    if not kernels:
        raise OperationError(f"no kernel in {boot} after installing {recipe.kernel_package}")
    vmlinuz = kernels[-1]
    version = vmlinuz.name.removeprefix("vmlinuz-")
    initrd = boot / f"initrd.img-{version}"
    if not initrd.exists():
        raise OperationError(f"no initramfs {initrd.name} in {boot}")
    kernel_name = vmlinuz.name
    words = [f"root={platform.filesystem(recipe.layout.root.address)}", "ro"]
    if platform.boot_loader is BootLoader.ZIPL:
        words.append(zipl.dasd_parameter(recipe.layout, readonly=False))
        words += recipe.cmdline_extra.split()
        zipl.write_zipl_conf(root, kernel_name, initrd.name, " ".join(words))
        log(f"zipl.conf: {' '.join(words)}")
    else:
        words += recipe.cmdline_extra.split()
        vmlinux = boot / f"vmlinux-{version}"
        try:
            data = extract_vmlinux(vmlinuz.read_bytes())
        except OperationError as exc:
            log(f"keeping the compressed kernel: {exc}")
        else:
            vmlinux.write_bytes(data)
            kernel_name = vmlinux.name
            log(f"extracted {vmlinux.name} ({len(data) >> 20} MiB, boots faster under TCG)")
    write_boot_config(root, kernel_name, initrd.name, " ".join(words), arch=recipe.arch)


def _unmount_below(path: Path) -> None:
    """Lazily unmount anything still mounted under `path` (a build that died)."""
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mounts") as f:
        targets = [line.split()[1] for line in f if line.split()[1].startswith(prefix)]
    for target in sorted(targets, key=len, reverse=True):
        run(["umount", "-l", target], check=False)


# ---------------------------------------------------------------- fstab and boot config


def write_boot_config(
    root_dir: Path, kernel: str, initrd: str, cmdline: str, *, arch: str = "amd64"
) -> Path:
    """Write root_dir/boot/sharedroot.conf (kernel and initrd relative to /boot)."""
    path = root_dir / "boot" / BOOT_CONFIG_NAME
    replace_file(path, render_boot_config(BootConfig(kernel, initrd, cmdline, arch)))
    return path
