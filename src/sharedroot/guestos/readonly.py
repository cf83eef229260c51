"""make_readonly: turn a copied read-write system into a read-only-root one (mnt2rogld.sh).

Works on the staging guest's disks mounted as one tree on the worker.  For a modern
systemd distribution the paper's boot.rootfsck patch becomes an initramfs-tools
local-bottom script (earlybind.py) or a dracut module (dracut.py): /local is mounted and
etc, root and srv are bound from it over the read-only root BEFORE PID 1 starts, so
systemd reads the clone's own /etc (its hostname, machine-id, fstab) and never the gold's.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path

from sharedroot.errors import RefusedError
from sharedroot.guestos import dracut, earlybind, pmem, writable, zipl
from sharedroot.guestos.chroot import chroot_mounts
from sharedroot.guestos.earlybind import BOUND, CMDLINE_KEY, cmdline_words
from sharedroot.guestos.fstab import write_fstab
from sharedroot.guestos.platform import VIRTIO, BootLoader, Platform
from sharedroot.hypervisor.ipl import BOOT_CONFIG_NAME, parse_boot_config, render_boot_config
from sharedroot.model.layout import Layout
from sharedroot.model.writable import WritablePath
from sharedroot.run import run

# The gold's package database, kept on the read-only /usr and bound read-only over
# /var/lib/dpkg (the paper binds /var/lib/rpm so): apt and dpkg in a clone then fail
# cleanly instead of half-changing a root they cannot write.
PKGDB = "usr/lib/sharedroot/dpkg"
PKGDB_MOUNT = "var/lib/dpkg"

Log = Callable[[str], None]


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.sharedroot-tmp")
    tmp.write_text(text)
    tmp.chmod(mode)
    tmp.replace(path)


def check_supported(root: Path) -> None:
    """The system must build its initramfs with initramfs-tools or dracut: the early
    /etc binding lives there."""
    if (root / "usr/sbin/update-initramfs").exists() or dracut.uses_dracut(root):
        return
    raise RefusedError(
        "no initramfs tool in this system (neither initramfs-tools' update-initramfs nor"
        " dracut): cannot bind /etc from /local before PID 1"
    )


def _kernel_versions(root: Path) -> list[str]:
    return sorted(p.name.removeprefix("vmlinuz-") for p in (root / "boot").glob("vmlinuz-*"))


def _update_initramfs_argv(root: Path, version: str) -> list[str | Path]:
    return ["chroot", root, "update-initramfs", "-u", "-k", version]


def _ensure_early_bind(root: Path, log: Log) -> None:
    """Rebuild the initramfs when its early bind is missing or outdated (a system
    installed before the switch existed, or an older module)."""
    argv: Callable[[str], list[str | Path]]
    if (root / "usr/sbin/update-initramfs").exists():
        if earlybind.installed(root):
            return
        earlybind.write_scripts(root)
        what = "update-initramfs for {} (adds the early bind script)"
        argv = partial(_update_initramfs_argv, root)
    else:  # dracut (check_supported let nothing else through)
        if dracut.installed(root):
            return
        dracut.write_module(root)
        what = "dracut for {} (adds the module 90sharedroot)"
        argv = partial(dracut.rebuild_argv, root)
    with chroot_mounts(root):
        for version in _kernel_versions(root):
            log(what.format(version))
            run(argv(version), timeout=900)


def make_readonly(
    root: Path,
    layout: Layout,
    log: Log,
    platform: Platform = VIRTIO,
    paths: Sequence[WritablePath] = (),
) -> None:
    """Convert the system mounted at `root` (all its layout disks, read-write) in place;
    `paths` are site.toml's writable paths (guestos/writable.py)."""
    check_supported(root)
    writable.check_tree(root, paths)
    local = next((d for d in layout.private if d.mount == "/local"), None)
    if local is None or local.fs is None:
        raise RefusedError("the layout has no read-write /local disk to hold etc, root and srv")
    log("fstab: /, /boot, /usr, /opt read-only and never checked; /local, /var read-write")
    write_fstab(
        root,
        layout,
        readonly=True,
        extra=[f"/{PKGDB}\t/{PKGDB_MOUNT}\tnone\tbind,ro\t0 0"],
        platform=platform,
    )
    log("machine-id: uninitialized (each clone makes its own at first boot)")
    _write(root / "etc/machine-id", "uninitialized\n", 0o444)
    log(f"package database: /{PKGDB_MOUNT} kept on /{PKGDB}, bound read-only in clones")
    shutil.rmtree(root / PKGDB, ignore_errors=True)
    (root / PKGDB).parent.mkdir(parents=True, exist_ok=True)
    run(["cp", "-a", root / PKGDB_MOUNT, root / PKGDB])
    writable.install(root, paths, log)
    # A directory with a filesystem of its own in the layout (/srv on a logical volume)
    # is not bound: the early bind skips a name /local lacks, and systemd then mounts
    # the filesystem where a bind would have made it think /srv was mounted already.
    own = {m.mount for m in layout.filesystems}
    bound = [name for name in BOUND if f"/{name}" not in own]
    extra = cmdline_words(local.address, local.fs)
    log(f"boot: {' '.join(extra)}: bind {', '.join('/' + b for b in bound)} from /local")
    _ensure_early_bind(root, log)
    conf_path = root / "boot" / BOOT_CONFIG_NAME
    conf = parse_boot_config(conf_path.read_text())
    words = [w for w in conf.cmdline.split() if w not in extra and w != "rw"]
    words = [w for w in words if not w.startswith(f"{CMDLINE_KEY}=")]
    words += [] if "ro" in words else ["ro"]
    if platform.boot_loader is BootLoader.ZIPL:
        # The paper's sed: `ro dasd=1b0(ro),1b1(ro),1b2-1b7,...` and vmpoff=LOGOFF.
        words = zipl.with_dasd(words, zipl.dasd_parameter(layout, readonly=True))
        words += [] if "vmpoff=LOGOFF" in words else ["vmpoff=LOGOFF"]
    cmdline = " ".join([*words, *extra])
    ready = pmem.dax_ready(root, layout) if conf.arch == "amd64" else {}
    for address in ready:
        mount = layout.get(address).mount or "/"
        count = pmem.set_dax_flags(root / mount.lstrip("/"))
        log(f"DAX: {address} {mount} ready to be mapped as memory ({count} files flagged)")
    _write(
        conf_path, render_boot_config(replace(conf, cmdline=cmdline, dax=pmem.render_ready(ready)))
    )
    if platform.boot_loader is BootLoader.ZIPL:
        log(f"zipl.conf: {cmdline}")
        zipl.write_zipl_conf(root, conf.kernel, conf.initrd, cmdline)
        zipl.write_ipl_record(root, log)
    # Last, so /local gets the /etc changed above: at boot it is the clone's /etc.
    log(f"/local: copies of {', '.join('/' + b for b in bound)}")
    for name in BOUND:
        shutil.rmtree(root / "local" / name, ignore_errors=True)
    for name in bound:
        (root / name).mkdir(mode=0o755, exist_ok=True)
    # One cp for all three: each process start costs about as much as the copy.
    run(["cp", "-a", *(root / name for name in bound), root / "local"])
