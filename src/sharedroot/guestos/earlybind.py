"""The initramfs-tools part of a read-only root: bind /etc, /root, /srv from /local
before PID 1 starts (the paper's boot.rootfsck change, for systemd systems).

The script is in every installed system's initramfs from the start and does nothing
until the kernel command line says `sharedroot.local=ADDR:FSTYPE`; mnt2rogld only adds
that word to the boot configuration, so making a read-only root needs no initramfs
rebuild.
"""

from __future__ import annotations

import re
from pathlib import Path

from sharedroot.errors import InputError

LOCAL_BOTTOM = "etc/initramfs-tools/scripts/local-bottom/sharedroot-local"
HOOK = "etc/initramfs-tools/hooks/sharedroot-local"
BOUND = ("etc", "root", "srv")  # bound from /local at boot (the paper's three)
CMDLINE_KEY = "sharedroot.local"
# A script without it predates the command-line switch. Still v4 since the body became
# a function shared with dracut: it does the same, so built trees need no rebuild.
MARKER = "# sharedroot early bind v4"


def cmdline_words(address: str, fs: str) -> list[str]:
    """What a read-only root's kernel command line gets: the switch, and no fsck before
    it (the script checks /local and /var itself)."""
    word = f"{CMDLINE_KEY}={address}:{fs}"
    if not re.fullmatch(r"sharedroot\.local=[0-9A-F]{4}:ext[234]", word):
        raise InputError(f"boot configuration word {word!r}: expected ADDR:ext2|ext3|ext4")
    return [word, "fsck.mode=skip"]


# The work itself, as one shell function shared by both initramfs tools: each wraps it
# in its own glue (initramfs-tools runs a script, dracut sources a hook into its init,
# where `exit` would end init and names would clobber its own: so `return` and `local`).
# $1 is where the new root is mounted; the glue defines sharedroot_warn.
BIND_FUNCTION = f"""sharedroot_local() {{
    local newroot spec addr fs dev n word fdev fdir ftype fopts ffreq fpass rest d
    newroot="$1"
    spec=""
    for word in $(cat /proc/cmdline); do
        case "$word" in {CMDLINE_KEY}=*) spec="${{word#{CMDLINE_KEY}=}}" ;; esac
    done
    [ -n "$spec" ] || return 0
    addr="${{spec%%:*}}"
    fs="${{spec#*:}}"
    case "$addr" in [0-9A-F][0-9A-F][0-9A-F][0-9A-F]) ;; *)
        sharedroot_warn "sharedroot: bad {CMDLINE_KEY}=$spec"; return 0 ;; esac
    case "$fs" in ext2|ext3|ext4|xfs) ;; *)
        sharedroot_warn "sharedroot: bad {CMDLINE_KEY}=$spec"; return 0 ;; esac

    # The gold's fstab names /local's device as the platform does (virtio serial or ccw
    # by-path): take it from there; a virtio serial is the fallback.
    dev="/dev/disk/by-id/virtio-$addr"
    if [ -r "$newroot/etc/fstab" ]; then
        while read -r fdev fdir rest; do
            [ "$fdir" = /local ] || continue
            case "$fdev" in
                /dev/disk/by-id/virtio-[0-9A-F][0-9A-F][0-9A-F][0-9A-F]) dev="$fdev" ;;
                /dev/disk/by-path/ccw-0.0.[0-9a-f][0-9a-f][0-9a-f][0-9a-f]) dev="$fdev" ;;
                /dev/disk/by-path/ccw-0.0.[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-part1) dev="$fdev" ;;
            esac
        done < "$newroot/etc/fstab"
    fi
    n=0
    while [ ! -b "$dev" ] && [ "$n" -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
    if [ ! -b "$dev" ]; then
        sharedroot_warn "sharedroot: no /local disk $dev; /etc stays the gold's (read-only)"
        return 0
    fi
    # As boot.rootfsck did: check /local before using it (exit 1 means errors were fixed).
    if command -v e2fsck >/dev/null && [ "$fs" != xfs ]; then e2fsck -p "$dev" >/dev/null 2>&1; fi
    if ! mount -t "$fs" -o rw "$dev" "$newroot/local"; then
        sharedroot_warn "sharedroot: cannot mount $dev on /local; /etc stays the gold's"
        return 0
    fi
    for d in {" ".join(BOUND)}; do
        [ -d "$newroot/local/$d" ] && mount -o bind "$newroot/local/$d" "$newroot/$d"
    done
    # As boot.rootfsck did: check the other read-write filesystems (/var) here, while the
    # root stays read-only. The boot configuration passes fsck.mode=skip, since a check of
    # the read-only disks fails (they cannot be opened for writing) and costs a 5 s pause.
    if command -v e2fsck >/dev/null && [ -r "$newroot/etc/fstab" ]; then
        while read -r fdev fdir ftype fopts ffreq fpass rest; do
            case "$fdev" in /dev/disk/by-id/virtio-*|/dev/disk/by-path/ccw-*) ;; *) continue ;; esac
            case "$ftype" in ext2|ext3|ext4) ;; *) continue ;; esac
            [ "${{fpass:-0}}" != 0 ] && [ "$fdir" != /local ] || continue
            e2fsck -p "$fdev" >/dev/null 2>&1
        done < "$newroot/etc/fstab"
    fi
    return 0
}}
"""

LOCAL_BOTTOM_SCRIPT = f"""#!/bin/sh
{MARKER}
# A read-only clone's own /etc, /root and /srv come from its /local disk, bound over the
# read-only root before PID 1 starts. Active only with {CMDLINE_KEY}=ADDR:FSTYPE.
PREREQ=""
prereqs() {{ echo "$PREREQ"; }}
case "$1" in prereqs) prereqs; exit 0 ;; esac
. /scripts/functions
sharedroot_warn() {{ log_failure_msg "$*"; }}

{BIND_FUNCTION}
sharedroot_local "${{rootmnt}}"
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


def write_scripts(root: Path) -> None:
    """Put the script and its hook into a tree (the next initramfs build takes them)."""
    for rel, text in ((LOCAL_BOTTOM, LOCAL_BOTTOM_SCRIPT), (HOOK, HOOK_SCRIPT)):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.sharedroot-tmp")
        tmp.write_text(text)
        tmp.chmod(0o755)
        tmp.replace(path)


def installed(root: Path) -> bool:
    """Whether the tree's initramfs was built with this version of the script."""
    path = root / LOCAL_BOTTOM
    return path.is_file() and MARKER in path.read_text()
