"""Writable paths on a read-only root, put in place by mnt2rogld (see model/writable.py).

Per path, a mount unit binds the clone's private copy over the path; one oneshot
service before them makes the copies the first time (or, on tmpfs, at every boot).
Everything goes onto the gold's read-only /usr, units included (with their
local-fs.target.wants links): a clone gets exactly the gold's set, and a migrate to a
slot with another table changes the set with the disks it relinks, without touching
the clone's /etc.  An admin can still mask or override a unit in a clone's /etc.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Sequence
from pathlib import Path

from sharedroot.errors import InputError, RefusedError
from sharedroot.guestos.tree import replace_file
from sharedroot.model.writable import Kind, Start, WritablePath

UNIT_DIR = "usr/lib/systemd/system"
WANTS = f"{UNIT_DIR}/local-fs.target.wants"
SERVICE = "sharedroot-writable.service"
PREPARE = "/usr/lib/sharedroot/writable-prepare"
# What may stand in a unit: absolute paths of plain components, unit names as
# model/writable.escape_path makes them (nothing systemd would read as a specifier).
_PATH_RE = re.compile(r"(?:/[A-Za-z0-9._+-]{1,255})+")
_UNIT_RE = re.compile(
    r"(?:[A-Za-z0-9:_.]|\\x[0-9a-f]{2})(?:[A-Za-z0-9:_.-]|\\x[0-9a-f]{2})*\.mount"
)

Log = Callable[[str], None]

# $1 the private copy, $2 the path on the read-only root, $3 copy|empty, $4 dir|file.
# Runs before the bind, so $2 still shows the gold's content.  A copy is made under a
# temporary name and renamed, so a boot cut short never leaves half a copy behind.
PREPARE_FUNCTION = """sharedroot_writable() {
    private="$1"; gold="$2"; start="$3"; kind="$4"
    [ -e "$private" ] && return 0
    parent="${private%/*}"
    tmp="$parent/.sharedroot-tmp.${private##*/}"
    mkdir -p "$parent" && rm -rf "$tmp" || return 1
    if [ "$start" = copy ]; then
        cp -a "$gold" "$tmp" || return 1
    else
        if [ "$kind" = dir ]; then mkdir "$tmp"; else : > "$tmp"; fi || return 1
        chown --reference="$gold" "$tmp" && chmod --reference="$gold" "$tmp" || return 1
    fi
    mv -T "$tmp" "$private" || return 1
    echo "sharedroot: made $private for $gold ($start)"
}
"""


def _path(value: str) -> str:
    if not _PATH_RE.fullmatch(value) or os.path.normpath(value) != value:
        raise InputError(f"writable path {value!r}: not a plain absolute path")
    return value


def _unit(value: str) -> str:
    if not _UNIT_RE.fullmatch(value) or len(value) > 255:
        raise InputError(f"unit name {value!r}: not an escaped mount unit name")
    return value


def prepare_script(paths: Sequence[WritablePath]) -> str:
    calls = [
        f"sharedroot_writable {_path(w.private)} {_path(w.path)} {w.start.value} {w.kind.value}"
        " || rc=1"
        for w in paths
    ]
    return (
        "#!/bin/sh\n"
        "# sharedroot: each clone's own copies of the writable paths (site.toml [writable]),\n"
        "# made by mnt2rogld. The mount units bind them over the paths after this.\n"
        f"{PREPARE_FUNCTION}\nrc=0\n" + "\n".join(calls) + "\nexit $rc\n"
    )


def service_text(paths: Sequence[WritablePath]) -> str:
    # The gold's path must be mounted (to copy it) and so must the private copy's disk;
    # the parents, since a path's own mount unit comes after this service.
    parents = {p.rsplit("/", 1)[0] for w in paths for p in (w.path, w.private)}
    needed = sorted(_path(p) for p in parents if p)  # "" is /, mounted before anything
    return (
        "[Unit]\n"
        "Description=sharedroot: each clone's own copies of its writable paths\n"
        "DefaultDependencies=no\n"
        "Conflicts=umount.target\n"
        "After=local-fs-pre.target\n"
        "Before=local-fs.target umount.target\n"
        f"RequiresMountsFor={' '.join(needed)}\n"
        "\n[Service]\n"
        "Type=oneshot\n"
        "RemainAfterExit=yes\n"
        f"ExecStart={PREPARE}\n"
    )


def mount_text(w: WritablePath) -> str:
    # Before=local-fs.target: every ordinary service starts after it, so the software
    # that needs the path finds it writable without knowing about any of this.
    return (
        "[Unit]\n"
        f"Description=sharedroot writable path {_path(w.path)} ({w.where.value}, {w.start.value})\n"
        f"Requires={SERVICE}\n"
        f"After={SERVICE}\n"
        "Before=local-fs.target\n"
        "\n[Mount]\n"
        f"What={_path(w.private)}\n"
        f"Where={_path(w.path)}\n"
        "Type=none\n"
        "Options=bind\n"
        "\n[Install]\n"
        "WantedBy=local-fs.target\n"
    )


def unit_files(paths: Sequence[WritablePath]) -> dict[str, str]:
    """Unit name -> text for a table; none at all for an empty one."""
    if not paths:
        return {}
    units = {_unit(w.unit): mount_text(w) for w in paths}
    return {SERVICE: service_text(paths), **units}


def check_tree(root: Path, paths: Sequence[WritablePath]) -> None:
    """Refuse a table the system at `root` cannot take: a symlink on the way (a bind
    would land where it points), the wrong type, or nothing to copy."""
    for w in paths:
        at = root
        parts = w.path.strip("/").split("/")
        for n, part in enumerate(parts, start=1):
            at = at / part
            try:
                st = at.lstat()
            except FileNotFoundError:
                if w.start is Start.COPY:
                    raise RefusedError(
                        f'[writable."{w.path}"] start = "copy": {w.path} is not in the'
                        ' maintenance system; install it there, or use start = "empty"'
                    ) from None
                break
            here = "/" + "/".join(parts[:n])
            if stat.S_ISLNK(st.st_mode):
                raise RefusedError(
                    f'[writable."{w.path}"]: {here} is a symlink in the maintenance system;'
                    " list the path it points to"
                )
            last = n == len(parts)
            if not last or w.kind is Kind.DIR:
                if not stat.S_ISDIR(st.st_mode):
                    raise RefusedError(f'[writable."{w.path}"]: {here} is not a directory')
            elif not stat.S_ISREG(st.st_mode):
                raise RefusedError(
                    f'[writable."{w.path}"] kind = "file": {here} is not a regular file'
                )


def install(root: Path, paths: Sequence[WritablePath], log: Log) -> None:
    """Put the table in place in a read-only-root tree (check_tree passed): mount
    points, script, units."""
    if not paths:
        return
    for w in paths:
        log(f"writable: {w.path} ({w.kind.value}) bound from {w.private}, {w.start.value}")
        point = root / w.path.lstrip("/")
        point.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        if w.kind is Kind.DIR:
            point.mkdir(mode=0o755, exist_ok=True)
        elif not point.exists():
            replace_file(point, b"")
    replace_file(root / PREPARE.lstrip("/"), prepare_script(paths), 0o755)
    wants = root / WANTS
    wants.mkdir(parents=True, exist_ok=True)
    for name, text in unit_files(paths).items():
        replace_file(root / UNIT_DIR / name, text)
        if name.endswith(".mount"):
            link = wants / name
            link.unlink(missing_ok=True)
            link.symlink_to(f"../{name}")
