"""make_readonly: turn a copied read-write system into a read-only-root one (mnt2rogld.sh).

Works on the staging guest's disks mounted as one tree on the worker.  For a modern
systemd distribution the paper's boot.rootfsck patch becomes an initramfs-tools
local-bottom script: /local is mounted and etc, root and srv are bound from it over
the read-only root BEFORE PID 1 starts, so systemd reads the clone's own /etc (its
hostname, machine-id, fstab) and never the gold's.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from sharedroot.errors import RefusedError
from sharedroot.guestos.debian import chroot_mounts
from sharedroot.guestos.fstab import write_fstab
from sharedroot.model.layout import Layout
from sharedroot.run import run

BOUND = ("etc", "root", "srv")  # bound from /local at boot (the paper's three)
LOCAL_BOTTOM = "etc/initramfs-tools/scripts/local-bottom/sharedroot-local"
HOOK = "etc/initramfs-tools/hooks/sharedroot-local"
# The gold's package database, kept on the read-only /usr and bound read-only over
# /var/lib/dpkg (the paper binds /var/lib/rpm so): apt and dpkg in a clone then fail
# cleanly instead of half-changing a root they cannot write.
PKGDB = "usr/lib/sharedroot/dpkg"
PKGDB_MOUNT = "var/lib/dpkg"

Log = Callable[[str], None]


def local_bottom_script(address: str, fs: str) -> str:
    return f"""#!/bin/sh
# sharedroot: the clone's own /etc, /root and /srv come from its /local disk ({address}),
# bound over the read-only root before PID 1 starts (the paper's boot.rootfsck change).
PREREQ=""
prereqs() {{ echo "$PREREQ"; }}
case "$1" in prereqs) prereqs; exit 0 ;; esac
. /scripts/functions

dev=/dev/disk/by-id/virtio-{address}
n=0
while [ ! -b "$dev" ] && [ "$n" -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
if [ ! -b "$dev" ]; then
    log_failure_msg "sharedroot: no /local disk $dev; /etc stays the gold's (read-only)"
    exit 0
fi
# As boot.rootfsck did: check /local before using it (exit 1 means errors were fixed).
if [ -x /sbin/e2fsck ]; then /sbin/e2fsck -p "$dev" >/dev/null 2>&1; fi
if ! mount -t {fs} -o rw "$dev" "${{rootmnt}}/local"; then
    log_failure_msg "sharedroot: cannot mount $dev on /local; /etc stays the gold's"
    exit 0
fi
for d in {" ".join(BOUND)}; do
    [ -d "${{rootmnt}}/local/$d" ] && mount -o bind "${{rootmnt}}/local/$d" "${{rootmnt}}/$d"
done
exit 0
"""


HOOK_SCRIPT = """#!/bin/sh
# sharedroot: e2fsck for the /local check in local-bottom/sharedroot-local.
PREREQ=""
prereqs() { echo "$PREREQ"; }
case "$1" in prereqs) prereqs; exit 0 ;; esac
. /usr/share/initramfs-tools/hook-functions
copy_exec /sbin/e2fsck /sbin
"""


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.sharedroot-tmp")
    tmp.write_text(text)
    tmp.chmod(mode)
    tmp.replace(path)


def check_supported(root: Path) -> None:
    """Only initramfs-tools systems can bind /etc early so far; say so for dracut ones."""
    if (root / "usr/sbin/update-initramfs").exists():
        return
    if (root / "usr/bin/dracut").exists() or (root / "etc/dracut.conf").exists():
        raise RefusedError(
            "this system builds its initramfs with dracut (SUSE, RHEL, Fedora); binding"
            " /etc from /local before PID 1 needs a dracut module that sharedroot does not"
            " have yet. Only initramfs-tools systems (Debian, Ubuntu) can be made read-only"
        )
    raise RefusedError("no initramfs-tools in this system: cannot bind /etc before PID 1")


def _kernel_versions(root: Path) -> list[str]:
    return sorted(p.name.removeprefix("vmlinuz-") for p in (root / "boot").glob("vmlinuz-*"))


def make_readonly(root: Path, layout: Layout, log: Log) -> None:
    """Convert the system mounted at `root` (all its layout disks, read-write) in place."""
    check_supported(root)
    local = next((d for d in layout.private if d.mount == "/local"), None)
    if local is None or local.fs is None:
        raise RefusedError("the layout has no read-write /local disk to hold etc, root and srv")
    log("fstab: /, /boot, /usr, /opt read-only and never checked; /local, /var read-write")
    write_fstab(
        root,
        layout,
        readonly=True,
        extra=[f"/{PKGDB}\t/{PKGDB_MOUNT}\tnone\tbind,ro\t0 0"],
    )
    log("machine-id: uninitialized (each clone makes its own at first boot)")
    _write(root / "etc/machine-id", "uninitialized\n", 0o444)
    log(f"package database: /{PKGDB_MOUNT} kept on /{PKGDB}, bound read-only in clones")
    shutil.rmtree(root / PKGDB, ignore_errors=True)
    (root / PKGDB).parent.mkdir(parents=True, exist_ok=True)
    run(["cp", "-a", root / PKGDB_MOUNT, root / PKGDB])
    log(f"initramfs: bind {', '.join('/' + b for b in BOUND)} from /local before PID 1")
    _write(root / LOCAL_BOTTOM, local_bottom_script(local.address, local.fs), 0o755)
    _write(root / HOOK, HOOK_SCRIPT, 0o755)
    versions = _kernel_versions(root)
    with chroot_mounts(root):
        for version in versions:
            log(f"update-initramfs for {version}")
            run(["chroot", root, "update-initramfs", "-u", "-k", version], timeout=900)
    # Last, so /local gets the /etc changed above: at boot it is the clone's /etc.
    for name in BOUND:
        target = root / "local" / name
        log(f"/local/{name}: copy of /{name}")
        shutil.rmtree(target, ignore_errors=True)
        if (root / name).is_dir():
            run(["cp", "-a", root / name, target])
        else:
            target.mkdir(mode=0o755)
