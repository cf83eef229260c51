"""cloneprep: clean a maintenance system's tree before it is copied to the gold.

The paper's cloneprep.sh ran inside S10RWMNT before shutdown.  Here the worker runs it
against the maintenance guest's disks mounted under `root` (the guest logged off).
Each cleanup is a named operation, after virt-sysprep's list; each returns the paths
it changed, relative to root, so a second run reports nothing.

The tree is not trusted: every path is opened one component at a time from a
descriptor of root with O_NOFOLLOW, so a symlink (say /var/log -> /) is never followed
and nothing outside root is read or written.  Symlinks met on the way are skipped and
logged; symlinks inside a directory being emptied are removed themselves.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import os
import re
import shutil
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from sharedroot.errors import InputError, RefusedError
from sharedroot.guestos.fdpath import join, lstat_at

Log = Callable[[str], None]
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _quiet(_line: str) -> None:
    pass


# Where skipped paths are reported; cloneprep() sets it, Operation.func keeps its shape.
_LOG: contextvars.ContextVar[Log] = contextvars.ContextVar("cloneprep_log", default=_quiet)


class _Tree:
    """A mounted system tree reached only through directory descriptors."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.log = _LOG.get()

    @contextlib.contextmanager
    def dir(self, rel: str) -> Iterator[int | None]:
        """A descriptor of directory `rel` (relative to root), or None when it is missing,
        not a directory, or reached through a symlink."""
        fd = os.open(self.root, _DIR_FLAGS)
        try:
            found = True
            for part in [p for p in rel.split("/") if p]:
                try:
                    nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        self.log(f"cloneprep: {rel}: not a plain directory (symlink?); skipped")
                    elif exc.errno != errno.ENOENT:
                        raise
                    found = False
                    break
                os.close(fd)
                fd = nfd
            yield fd if found else None
        finally:
            os.close(fd)


def _remove_entry(fd: int, name: str) -> None:
    """Remove a file, symlink or whole directory below `fd` without following links."""
    st = lstat_at(name, fd)
    if st is None:
        return
    if stat.S_ISDIR(st.st_mode):
        # rmtree with dir_fd is the symlink-attack-safe variant (fd-based walk).
        shutil.rmtree(name, dir_fd=fd)
    else:
        os.unlink(name, dir_fd=fd)


def _remove(tree: _Tree, rel_dir: str, names: Sequence[str]) -> list[str]:
    """Remove the named entries of a directory; those that were there."""
    done = []
    with tree.dir(rel_dir) as fd:
        if fd is None:
            return []
        for name in names:
            if lstat_at(name, fd) is not None:
                _remove_entry(fd, name)
                done.append(join(rel_dir, name))
    return done


def _remove_matching(tree: _Tree, rel_dir: str, match: Callable[[str], bool]) -> list[str]:
    """Remove every entry of a directory whose name matches (the directory itself stays)."""
    with tree.dir(rel_dir) as fd:
        if fd is None:
            return []
        with os.scandir(fd) as entries:
            names = sorted(e.name for e in entries if match(e.name))
    return _remove(tree, rel_dir, names)


def _empty_dir(tree: _Tree, rel_dir: str) -> list[str]:
    return _remove_matching(tree, rel_dir, lambda _name: True)


def _write_file(tree: _Tree, rel_dir: str, name: str, text: str, mode: int) -> list[str]:
    """Make `name` hold exactly `text` (a symlink there is replaced by a plain file)."""
    with tree.dir(rel_dir) as fd:
        if fd is None:
            return []
        st = lstat_at(name, fd)
        if st is not None and stat.S_ISREG(st.st_mode):
            with os.fdopen(os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=fd), "rb") as f:
                if f.read(len(text) + 1) == text.encode():
                    return []
        elif st is not None:
            _remove_entry(fd, name)
        # O_TRUNC on the existing inode keeps its owner and mode.
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
        with os.fdopen(os.open(name, flags, mode, dir_fd=fd), "w") as f:
            f.write(text)
    return [join(rel_dir, name)]


# --- the operations ----------------------------------------------------------------


def _machine_id(tree: _Tree) -> list[str]:
    # "uninitialized": systemd treats the boot as the first one, makes a fresh ID and
    # commits it where /etc is writable (every clone's own /etc or /local/etc).
    done = _write_file(tree, "etc", "machine-id", "uninitialized\n", 0o444)
    with tree.dir("var/lib/dbus") as fd:
        st = None if fd is None else lstat_at("machine-id", fd)
    # A regular copy would give every clone the gold's ID over D-Bus; Debian's symlink
    # to /etc/machine-id is right and stays.
    if st is not None and stat.S_ISREG(st.st_mode):
        done += _remove(tree, "var/lib/dbus", ["machine-id"])
    return done


def _ssh_hostkeys(tree: _Tree) -> list[str]:
    return _remove_matching(tree, "etc/ssh", lambda n: n.startswith("ssh_host_"))


# Rotated logs are deleted (nothing writes them; an empty .gz would not even unpack).
_ROTATED = re.compile(r"(\.\d+|-\d{8})(\.(gz|xz|bz2|zst))?$|\.(gz|xz|bz2|zst|old)$")


def _logfiles(tree: _Tree) -> list[str]:
    """Truncate current logs to 0 (services expect them, with their owner and mode)."""
    done: list[str] = []
    with tree.dir("var/log") as top:
        if top is None:
            return []
        for dirpath, dirnames, filenames, dfd in os.fwalk(".", dir_fd=top):
            rel = os.path.normpath(os.path.join("var/log", dirpath))
            if dirpath == ".":
                # The journal has an operation of its own.
                dirnames[:] = [d for d in dirnames if d != "journal"]
            dirnames.sort()
            for name in sorted(filenames):
                st = lstat_at(name, dfd)
                if st is None or not stat.S_ISREG(st.st_mode):
                    continue  # symlinks, sockets: never followed
                if _ROTATED.search(name):
                    os.unlink(name, dir_fd=dfd)
                elif st.st_size > 0:
                    fd = os.open(name, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dfd)
                    try:
                        os.ftruncate(fd, 0)
                    finally:
                        os.close(fd)
                else:
                    continue
                done.append(join(rel, name))
    return done


def _journal(tree: _Tree) -> list[str]:
    # The directory stays: its existence is what makes journald keep logs on disk.
    return _empty_dir(tree, "var/log/journal")


def _bash_history(tree: _Tree) -> list[str]:
    done = _remove(tree, "root", [".bash_history"])
    users: list[str] = []
    with tree.dir("home") as fd:
        if fd is not None:
            with os.scandir(fd) as entries:
                users = sorted(e.name for e in entries)
    for user in users:
        done += _remove(tree, f"home/{user}", [".bash_history"])
    return done


def _tmp_files(tree: _Tree) -> list[str]:
    return _empty_dir(tree, "tmp") + _empty_dir(tree, "var/tmp")


def _package_manager_cache(tree: _Tree) -> list[str]:
    # Downloaded packages and apt's binary caches go; /var/lib/apt/lists stays, or apt
    # could not install anything on a clone before an `apt update` (see apt-lists).
    done = _remove_matching(tree, "var/cache/apt/archives", lambda n: n.endswith(".deb"))
    done += _remove_matching(tree, "var/cache/apt/archives/partial", lambda _n: True)
    done += _remove_matching(tree, "var/cache/apt", lambda n: n.endswith(".bin"))
    return done


def _apt_lists(tree: _Tree) -> list[str]:
    # lock and partial/ are apt's own bookkeeping.
    return _remove_matching(
        tree, "var/lib/apt/lists", lambda n: n not in ("lock", "partial", "auxfiles")
    )


def _dhcp_client_state(tree: _Tree) -> list[str]:
    done = _empty_dir(tree, "var/lib/dhcp") + _empty_dir(tree, "var/lib/dhclient")
    done += _empty_dir(tree, "var/lib/systemd/network")
    done += _remove_matching(
        tree, "var/lib/NetworkManager", lambda n: n.endswith((".lease", ".leases"))
    )
    return done


def _udev_persistent_net(tree: _Tree) -> list[str]:
    return _remove(tree, "etc/udev/rules.d", ["70-persistent-net.rules"])


def _random_seed(tree: _Tree) -> list[str]:
    # Clones sharing one seed would start with the same entropy pool state.
    return _remove(tree, "var/lib/systemd", ["random-seed"]) + _remove(
        tree, "var/lib/urandom", ["random-seed"]
    )


def _crash_data(tree: _Tree) -> list[str]:
    return _empty_dir(tree, "var/crash") + _empty_dir(tree, "var/lib/systemd/coredump")


def _findself_identity(tree: _Tree) -> list[str]:
    # Without the record each clone's findself applies its own parm file at first boot.
    return _remove(tree, "etc/sharedroot", ["identity"])


def _check_root(root: Path) -> None:
    if not root.is_dir():
        raise InputError(f"cloneprep: {root} is not a directory")
    if os.path.samefile(root, "/"):
        # Cleaning the worker's own system would wipe its keys and logs.
        raise RefusedError("cloneprep: refusing to run on / (mount the guest's disks first)")


@dataclass(frozen=True)
class Operation:
    """One cleanup: `func` takes the tree root and returns what it changed (relative)."""

    name: str
    description: str
    default: bool
    func: Callable[[Path], list[str]]


def _op(
    name: str, description: str, func: Callable[[_Tree], list[str]], default: bool = True
) -> Operation:
    def call(root: Path) -> list[str]:
        _check_root(root)
        return func(_Tree(root))

    return Operation(name, description, default, call)


OPERATIONS: tuple[Operation, ...] = (
    _op("machine-id", "set /etc/machine-id to 'uninitialized' (systemd first boot)", _machine_id),
    _op("ssh-hostkeys", "remove the SSH host keys (each clone makes its own)", _ssh_hostkeys),
    _op("logfiles", "truncate logs under /var/log, remove rotated ones", _logfiles),
    _op("journal", "remove the systemd journal files under /var/log/journal", _journal),
    _op("bash-history", "remove .bash_history of root and /home/*", _bash_history),
    _op("tmp-files", "empty /tmp and /var/tmp", _tmp_files),
    _op(
        "package-manager-cache",
        "remove downloaded .deb files and apt's binary caches",
        _package_manager_cache,
    ),
    _op("dhcp-client-state", "remove DHCP leases (dhclient, networkd, NM)", _dhcp_client_state),
    _op(
        "udev-persistent-net",
        "remove /etc/udev/rules.d/70-persistent-net.rules",
        _udev_persistent_net,
    ),
    _op("random-seed", "remove the saved random seed", _random_seed),
    _op("crash-data", "remove /var/crash and systemd core dumps", _crash_data),
    _op(
        "findself-identity",
        "remove /etc/sharedroot/identity so clones re-identify",
        _findself_identity,
    ),
    _op(
        "apt-lists",
        "remove apt's package lists (smaller gold; clones must `apt update`)",
        _apt_lists,
        default=False,
    ),
)


def operation_names() -> list[str]:
    return [op.name for op in OPERATIONS]


def format_operations() -> str:
    """The operation list for `--list`: name, default or optional, description."""
    width = max(len(op.name) for op in OPERATIONS)
    return "".join(
        f"{op.name:<{width}}  {'default ' if op.default else 'optional'}  {op.description}\n"
        for op in OPERATIONS
    )


def select(operations: Sequence[str] | None) -> list[Operation]:
    """The operations to run, in list order; None means every default one."""
    if operations is None:
        return [op for op in OPERATIONS if op.default]
    unknown = sorted(set(operations) - set(operation_names()))
    if unknown:
        raise InputError(
            f"unknown cloneprep operation {', '.join(unknown)}; "
            f"valid: {', '.join(operation_names())}"
        )
    return [op for op in OPERATIONS if op.name in operations]


def cloneprep(
    root: Path, operations: Sequence[str] | None = None, *, log: Log = _quiet
) -> dict[str, list[str]]:
    """Run the operations on the tree at `root`: {operation: paths it changed}.

    Every selected operation is a key; all lists empty means the tree was clean.
    """
    ops = select(operations)
    root = Path(root)
    _check_root(root)
    report: dict[str, list[str]] = {}
    token = _LOG.set(log)
    try:
        for op in ops:
            report[op.name] = changed = op.func(root)
            for path in changed:
                log(f"cloneprep: {op.name}: {path}")
    finally:
        _LOG.reset(token)
    return report
