"""The Debian 12 golden image: build the tree once, split it onto a layout's disk images.

The tree is built with debootstrap and cached under a key of its recipe, so every
install after the first only runs `mke2fs -d` per disk (seconds). The boot configuration
lives on the /boot disk (the local analogue of the paper's zipl.conf) and is read
straight from its image file with debugfs, without mounting.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from sharedroot.errors import OperationError
from sharedroot.guestos import earlybind, foreign, pmem, zipl
from sharedroot.guestos.chroot import chroot_mounts
from sharedroot.guestos.fstab import write_fstab
from sharedroot.guestos.platform import VIRTIO, BootLoader, Platform, find
from sharedroot.guestos.vmlinux import extract_vmlinux
from sharedroot.hypervisor.images import make_filesystem
from sharedroot.hypervisor.ipl import BOOT_CONFIG_NAME, BootConfig, render_boot_config
from sharedroot.model.layout import PAPER_LAYOUT, Layout
from sharedroot.model.types import DeviceBus, DiskKind
from sharedroot.run import run

# Bump when the build code changes what the tree holds, so caches are rebuilt.
BUILD_VERSION = 5

COMPLETE_MARK = ".sharedroot-complete"


@dataclass(frozen=True)
class Recipe:
    """Everything that shapes the golden tree; its key names the cache entry."""

    suite: str = "bookworm"
    arch: str = "amd64"  # Debian architecture; another than the worker's builds through QEMU
    bus: DeviceBus = DeviceBus.VIRTIO  # how the guests' disks are named (fstab, root=)
    variant: str = "minbase"
    # Installed by debootstrap itself (resolved with its simple resolver).
    base_packages: tuple[str, ...] = ("systemd-sysv", "udev", "kmod", "iproute2")
    # Installed by apt inside the tree, without recommends.
    packages: tuple[str, ...] = (
        "initramfs-tools",
        "zstd",
        "qemu-guest-agent",
        "openssh-server",
        "python3",
        "e2fsprogs",
        "util-linux",
        "procps",
        "iputils-ping",
        "dbus",
        "ca-certificates",
    )
    kernel_package: str = "linux-image-amd64"
    # The slim initramfs: only what finds and mounts virtio disks (ext4 also mounts ext2),
    # and the gold's disks mapped as persistent memory (virtio_pmem pulls in libnvdimm).
    initramfs_modules: tuple[str, ...] = (
        "virtio_pci",
        "virtio_blk",
        "virtio_pmem",
        "nd_pmem",
        "ext4",
        "crc32c_generic",
    )
    initramfs_compress: str = "zstd"
    hostname: str = "s10rwmnt"
    # The fstab written into the gold; the initramfs fsck hook reads fs types from it.
    layout: Layout = PAPER_LAYOUT
    cmdline_extra: str = "console=ttyS0 quiet"

    @property
    def platform(self) -> Platform:
        return find(self.bus, self.arch)


DEFAULT_RECIPE = Recipe()

# s390x (the paper's Linux on IBM Z): s390-tools (zipl, chccwdev, cmsfs-fuse, chzdev,
# vmcp), and an initramfs that finds virtio-ccw disks as well as real ECKD and FBA DASD.
# On z/VM commands reach guests over SSH, so the QEMU guest agent is left out there.
S390X_PACKAGES = (*DEFAULT_RECIPE.packages, "s390-tools", "fuse3")
S390X_MODULES = ("virtio_blk", "dasd_eckd_mod", "dasd_fba_mod", "ext4", "crc32c_generic")


def recipe_for(platform: Platform, *, layout: Layout, hostname: str) -> Recipe:
    """The recipe of a platform's golden tree."""
    recipe = Recipe(layout=layout, hostname=hostname, bus=platform.bus)
    if platform.arch != "s390x":
        return recipe
    recipe = replace(
        recipe,
        arch="s390x",
        packages=S390X_PACKAGES,
        kernel_package=platform.kernel_package,
        initramfs_modules=S390X_MODULES,
        cmdline_extra="quiet",
    )
    if platform.boot_loader is BootLoader.ZIPL:
        # vmpoff=LOGOFF: a shutdown logs the z/VM user off (the paper's zipl.conf).
        packages = tuple(p for p in S390X_PACKAGES if p != "qemu-guest-agent")
        return replace(recipe, packages=packages, cmdline_extra="vmpoff=LOGOFF quiet")
    return recipe


def recipe_key(recipe: Recipe = DEFAULT_RECIPE) -> str:
    """A short stable hash of the recipe and the build code version.

    Disk sizes are left out: they shape the disks, not the tree, and a site with bigger
    disks reuses the same tree.
    """
    fields = asdict(recipe)
    fields["layout"] = [
        {k: v for k, v in disk.items() if k != "size"} for disk in fields["layout"]["disks"]
    ]
    data = json.dumps({"build": BUILD_VERSION, "recipe": fields}, sort_keys=True, default=str)
    arch = "" if recipe.arch == "amd64" else f"{recipe.arch}-"
    return f"debian-{recipe.suite}-{arch}" + hashlib.sha256(data.encode()).hexdigest()[:12]


def _noop(_: str) -> None:
    pass


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
    """Config that must exist before the kernel's postinst builds the initramfs."""
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
    write_fstab(root, recipe.layout, platform=recipe.platform)
    if recipe.arch == "amd64":  # virtio-pmem (PCI) for the gold in memory: x86_64 only
        pmem.write_rule(root, recipe.layout)
    earlybind.write_scripts(root)  # idle until a read-only root's boot config switches it on
    (root / "etc/hostname").write_text(recipe.hostname + "\n")
    (root / "etc/hosts").write_text(
        f"127.0.0.1\tlocalhost\n127.0.1.1\t{recipe.hostname}\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\n"
    )


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


def _configure(root: Path, recipe: Recipe, env: Mapping[str, str]) -> None:
    net = root / "etc/systemd/network/80-sharedroot-default.network"
    net.parent.mkdir(parents=True, exist_ok=True)
    net.write_text(NETWORK_DEFAULT)
    (root / "etc/systemd/system/sharedroot-ssh-keygen.service").write_text(SSH_KEYGEN_UNIT)
    run(
        ["chroot", root, "systemctl", "enable", "systemd-networkd", "sharedroot-ssh-keygen"],
        env=env,
    )
    # Nothing here needs network-online; waiting for it only fails boots without DHCP.
    # e2scrub only works on LVM snapshots; here it costs seconds of every TCG boot.
    run(
        [
            "chroot",
            root,
            "systemctl",
            "disable",
            "systemd-networkd-wait-online",
            "e2scrub_reap",
            "e2scrub_all.timer",
        ],
        env=env,
    )
    run(["chroot", root, "passwd", "-l", "root"], env=env)
    # Each clone must get its own identity: no host keys, machine-id made at first boot.
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/machine-id").write_text("uninitialized\n")
    with contextlib.suppress(FileNotFoundError):
        (root / "var/lib/dbus/machine-id").unlink()


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
    _replace(path, render_boot_config(BootConfig(kernel, initrd, cmdline, arch)))
    return path


# ---------------------------------------------------------------- extras and disks


def install_extra(
    root: Path,
    files: Mapping[str, bytes | str],
    enable_units: Sequence[str] = (),
    *,
    modes: Mapping[str, int] | None = None,
) -> None:
    """Add files (path inside the guest -> content) and enable systemd units.

    Files are replaced, never written in place, so this is safe on a hard-linked
    staging copy of the cached tree (see `staged_tree`). A unit is enabled by
    linking it into the targets its [Install] WantedBy= names.
    """
    for rel, content in files.items():
        data = content.encode() if isinstance(content, str) else content
        default = 0o755 if data.startswith(b"#!") else 0o644  # scripts are executable
        _replace(root / rel.lstrip("/"), data, (modes or {}).get(rel, default))
    for unit in enable_units:
        _enable_unit(root, unit)


def _enable_unit(root: Path, unit: str) -> None:
    candidates = [root / d / unit for d in ("etc/systemd/system", "usr/lib/systemd/system")]
    found = next((p for p in candidates if p.exists()), None)
    if found is None:
        raise OperationError(f"cannot enable {unit}: no such unit in the tree")
    wanted: list[str] = []
    for line in found.read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() in ("WantedBy", "RequiredBy"):
            kind = "wants" if key.strip() == "WantedBy" else "requires"
            wanted += [f"{t}.{kind}" for t in value.split()]
    if not wanted:
        raise OperationError(f"cannot enable {unit}: it has no WantedBy= or RequiredBy=")
    target_unit = "/" + str(found.relative_to(root))
    for d in wanted:
        link = root / "etc/systemd/system" / d / unit
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(target_unit)


@contextlib.contextmanager
def staged_tree(tree: Path, under: Path | None = None) -> Iterator[Path]:
    """A throw-away hard-linked copy of the cached tree (seconds), removed afterwards.

    It lives beside the tree so hard links work, or `under` a directory of the caller's
    (a tree that is not ours: nothing is written beside it). Change files in it only by
    replacing them (as `install_extra` and `write_fstab` do), or the tree changes too.
    """
    if under is not None:
        under.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".stage-", dir=under or tree.parent))
    try:
        copy = stage / "root"
        res = run(["cp", "-al", tree, copy], check=False)
        if res.returncode != 0:  # another filesystem: a real copy is slower but works
            shutil.rmtree(copy, ignore_errors=True)
            run(["cp", "-a", tree, copy])
        yield copy
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def populate_disks(
    tree: Path,
    layout: Layout,
    images: Mapping[str, Path],
    *,
    guest_fstab: bool = True,
    staged: bool = False,
) -> None:
    """Build each layout disk's image from the tree: filesystems from their subtree, swap.

    VDISKs are skipped: they are made fresh at each start. With `guest_fstab`,
    /etc/fstab is rewritten for `layout`. With `staged`, `tree` is already a
    throw-away copy (from `staged_tree`) and is taken apart in place.
    """
    if not staged:
        with staged_tree(tree) as copy:
            populate_disks(copy, layout, images, guest_fstab=guest_fstab, staged=True)
        return
    sources = split_tree(tree, layout, guest_fstab=guest_fstab)
    for disk in layout:
        image = images.get(disk.address)
        if image is None or disk.kind is DiskKind.VDISK:
            continue
        image.parent.mkdir(parents=True, exist_ok=True)
        # Build beside and rename: a running guest keeps the image it opened.
        tmp = image.with_name(f".{image.name}.new")
        try:
            make_filesystem(tmp, disk.kind, disk.size, disk.fs, sources.get(disk.address))
            tmp.rename(image)
        finally:
            tmp.unlink(missing_ok=True)


def split_tree(
    tree: Path, layout: Layout, *, guest_fstab: bool = True, platform: Platform = VIRTIO
) -> dict[str, Path]:
    """Take a staged tree apart by mount point: each filesystem disk's source directory.

    Each filesystem disk gets what lies under its mount point, without what belongs to
    deeper mount points (those stay as empty directories on the parent). With
    `guest_fstab`, /etc/fstab is rewritten for `layout` on `platform` first.
    """
    if guest_fstab:
        write_fstab(tree, layout, platform=platform)
    parts = tree.parent / "parts"
    parts.mkdir(exist_ok=True)
    fs_disks = [d for d in layout if d.kind is DiskKind.FS and d.mount is not None]
    sources: dict[str, Path] = {}
    # Deepest mount points first, so /usr/local leaves /usr before /usr leaves /.
    for disk in sorted(fs_disks, key=lambda d: -len(Path(str(d.mount)).parts)):
        assert disk.mount is not None
        if disk.mount == "/":
            sources[disk.address] = tree
            continue
        inside = tree / disk.mount.lstrip("/")
        part = parts / disk.address
        if inside.is_symlink() or (inside.exists() and not inside.is_dir()):
            raise OperationError(f"mount point {disk.mount} is not a directory in the tree")
        if inside.is_dir():
            st = inside.stat()
            inside.rename(part)
        else:
            st = None
            part.mkdir(mode=0o755)
        inside.mkdir(mode=0o755)
        if st is not None:
            os.chown(inside, st.st_uid, st.st_gid)
            inside.chmod(st.st_mode & 0o7777)
        sources[disk.address] = part
    return sources


def _replace(path: Path, content: bytes | str, mode: int = 0o644) -> None:
    """Write a file by rename, breaking any hard link to the cached tree."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.sharedroot-tmp")
    data = content.encode() if isinstance(content, str) else content
    with open(tmp, "wb") as f:
        f.write(data)
    tmp.chmod(mode)
    tmp.replace(path)
