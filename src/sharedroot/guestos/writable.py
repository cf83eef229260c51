"""Writable paths on a read-only root, put in place by mnt2rogld (see model/writable.py).

Per path, a mount unit puts the clone's private copy over the path.  What makes the
copies costs boot time under every clone, so each kind gets the cheapest way:
- kept copies (on /local or /var): a shell script that makes them atomically, in a
  service that runs only while one of them is missing (the first boot, in practice);
- copies in memory that start as the gold's content, or as an empty file: one
  systemd-tmpfiles run at each boot, into /run;
- empty directories in memory: a tmpfs mounted on the path, nothing to make.
Everything goes onto the gold's read-only /usr, units included (with their
local-fs.target.wants links): a clone gets exactly the gold's set, and a migrate to a
slot with another table changes the set with the disks it relinks, without touching
the clone's /etc.  An admin can still mask or override a unit in a clone's /etc.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sharedroot.errors import InputError, RefusedError
from sharedroot.guestos.tree import replace_file
from sharedroot.model.writable import Kind, Start, Where, WritablePath

UNIT_DIR = "usr/lib/systemd/system"
WANTS = f"{UNIT_DIR}/local-fs.target.wants"
SERVICE = "sharedroot-writable.service"  # the kept copies, while one is missing
RUN_SERVICE = "sharedroot-writable-run.service"  # the copies in /run, at each boot
PREPARE = "/usr/lib/sharedroot/writable-prepare"
RUN_CONF = "/usr/lib/sharedroot/writable-run.conf"
LISTED = "/usr/lib/sharedroot/writable.list"  # the paths, one a line: what verify checks
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


@dataclass(frozen=True)
class Owner:
    """The gold's owner and mode of a path: what an empty copy in memory gets."""

    mode: int
    uid: int
    gid: int

    @classmethod
    def of(cls, path: Path) -> Owner:
        st = path.lstat()
        return cls(stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)


def _path(value: str) -> str:
    if not _PATH_RE.fullmatch(value) or os.path.normpath(value) != value:
        raise InputError(f"writable path {value!r}: not a plain absolute path")
    return value


def _unit(value: str) -> str:
    if not _UNIT_RE.fullmatch(value) or len(value) > 255:
        raise InputError(f"unit name {value!r}: not an escaped mount unit name")
    return value


def kept(paths: Sequence[WritablePath]) -> list[WritablePath]:
    """Copies on the clone's own disks, made once by the script."""
    return [w for w in paths if w.where is not Where.TMPFS]


def in_memory(w: WritablePath) -> bool:
    """An empty directory in memory: a tmpfs on the path itself, no copy to make."""
    return w.where is Where.TMPFS and w.start is Start.EMPTY and w.kind is Kind.DIR


def in_run(paths: Sequence[WritablePath]) -> list[WritablePath]:
    """Copies in /run made at each boot by systemd-tmpfiles."""
    return [w for w in paths if w.where is Where.TMPFS and not in_memory(w)]


def prepare_script(paths: Sequence[WritablePath]) -> str:
    calls = [
        f"sharedroot_writable {_path(w.private)} {_path(w.path)} {w.start.value} {w.kind.value}"
        " || rc=1"
        for w in kept(paths)
    ]
    return (
        "#!/bin/sh\n"
        "# sharedroot: each clone's own kept copies of the writable paths (site.toml\n"
        "# [writable]), made by mnt2rogld. The mount units bind them over the paths after this.\n"
        f"{PREPARE_FUNCTION}\nrc=0\n" + "\n".join(calls) + "\nexit $rc\n"
    )


def run_conf(paths: Sequence[WritablePath], owners: Mapping[str, Owner]) -> str:
    """tmpfiles.d lines for the copies in /run: `C` copies the gold's content (owner
    and mode kept), `f` makes an empty file with the gold's owner and mode."""
    lines = ["# sharedroot: the writable paths' copies in memory, made at each boot"]
    for w in in_run(paths):
        if w.start is Start.COPY:
            lines.append(f"C {_path(w.private)} - - - - {_path(w.path)}")
        else:
            o = owners[w.path]
            lines.append(f"f {_path(w.private)} {o.mode:04o} {o.uid:d} {o.gid:d} -")
    return "\n".join(lines) + "\n"


def _needs(paths: Sequence[str]) -> str:
    # the parents, since a path's own mount unit comes after the service; "" is /,
    # mounted before anything
    parents = {p.rsplit("/", 1)[0] for p in paths}
    return " ".join(sorted(_path(p) for p in parents if p))


_SERVICE_HEAD = (
    "DefaultDependencies=no\n"
    "Conflicts=umount.target\n"
    "After=local-fs-pre.target\n"
    "Before=local-fs.target umount.target\n"
)


def service_text(paths: Sequence[WritablePath]) -> str:
    # The gold's path must be mounted (to copy it) and so must the private copy's disk.
    ours = kept(paths)
    missing = "".join(f"ConditionPathExists=|!{_path(w.private)}\n" for w in ours)
    return (
        "[Unit]\n"
        "Description=sharedroot: each clone's own kept copies of its writable paths\n"
        f"{_SERVICE_HEAD}"
        f"RequiresMountsFor={_needs([p for w in ours for p in (w.path, w.private)])}\n"
        f"{missing}"
        "\n[Service]\n"
        "Type=oneshot\n"
        "RemainAfterExit=yes\n"
        f"ExecStart={PREPARE}\n"
    )


def run_service_text(paths: Sequence[WritablePath]) -> str:
    copied = [w.path for w in in_run(paths) if w.start is Start.COPY]
    mounts = _needs(copied)
    needs = f"RequiresMountsFor={mounts}\n" if mounts else ""
    return (
        "[Unit]\n"
        "Description=sharedroot: the copies in memory of writable paths\n"
        f"{_SERVICE_HEAD}{needs}"
        "\n[Service]\n"
        "Type=oneshot\n"
        "RemainAfterExit=yes\n"
        f"ExecStart=systemd-tmpfiles --create {RUN_CONF}\n"
    )


def mount_text(w: WritablePath, owner: Owner) -> str:
    # Before=local-fs.target: every ordinary service starts after it, so the software
    # that needs the path finds it writable without knowing about any of this.
    if in_memory(w):
        needs = ""
        mount = (
            f"What=tmpfs\nWhere={_path(w.path)}\nType=tmpfs\n"
            f"Options=mode={owner.mode:04o},uid={owner.uid:d},gid={owner.gid:d}\n"
        )
    else:
        service = SERVICE if w.where is not Where.TMPFS else RUN_SERVICE
        needs = f"Requires={service}\nAfter={service}\n"
        mount = f"What={_path(w.private)}\nWhere={_path(w.path)}\nType=none\nOptions=bind\n"
    return (
        "[Unit]\n"
        f"Description=sharedroot writable path {_path(w.path)} ({w.where.value}, {w.start.value})\n"
        f"{needs}"
        "Before=local-fs.target\n"
        f"\n[Mount]\n{mount}"
        "\n[Install]\n"
        "WantedBy=local-fs.target\n"
    )


def unit_files(paths: Sequence[WritablePath], owners: Mapping[str, Owner]) -> dict[str, str]:
    """Unit name -> text for a table; no service a table does not need."""
    units = {_unit(w.unit): mount_text(w, owners[w.path]) for w in paths}
    if kept(paths):
        units[SERVICE] = service_text(paths)
    if in_run(paths):
        units[RUN_SERVICE] = run_service_text(paths)
    return units


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
    owners: dict[str, Owner] = {}
    for w in paths:
        source = "a tmpfs" if in_memory(w) else w.private
        log(f"writable: {w.path} ({w.kind.value}) bound from {source}, {w.start.value}")
        point = root / w.path.lstrip("/")
        point.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        if w.kind is Kind.DIR:
            point.mkdir(mode=0o755, exist_ok=True)
        elif not point.exists():
            replace_file(point, b"")
        owners[w.path] = Owner.of(point)
    if kept(paths):
        replace_file(root / PREPARE.lstrip("/"), prepare_script(paths), 0o755)
    if in_run(paths):
        replace_file(root / RUN_CONF.lstrip("/"), run_conf(paths, owners))
    replace_file(root / LISTED.lstrip("/"), "".join(f"{_path(w.path)}\n" for w in paths))
    wants = root / WANTS
    wants.mkdir(parents=True, exist_ok=True)
    for name, text in unit_files(paths, owners).items():
        replace_file(root / UNIT_DIR / name, text)
        if name.endswith(".mount"):
            link = wants / name
            link.unlink(missing_ok=True)
            link.symlink_to(f"../{name}")
