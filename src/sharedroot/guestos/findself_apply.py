"""What findself writes into a guest's /etc: hostname, hosts, network, new-clone secrets.

The writing half of findself (findself.py reads the guest name and parm file and decides
whether anything is to be done): every file is written whole and atomically, and only
when its text differs, so a second boot with the same identity changes nothing.
Runs inside guests: standard library, sharedroot.model/errors/run and guestos.network.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import uuid
from collections.abc import Callable
from pathlib import Path

from sharedroot.guestos import network
from sharedroot.model.parm import Identity
from sharedroot.model.types import Network
from sharedroot.run import CommandError, have, run

Log = Callable[[str], None]


def apply_identity(
    root: Path, identity: Identity, *, new_clone: bool, interface: str | None, change: Log, log: Log
) -> None:
    """Write `identity` into the system at `root`; each change goes to `change`.

    `interface` is the parm file's card where findself found it (ccw), else None.
    """
    short = identity.short_name
    hostname_file = root / "etc/hostname"
    before = (read_or_none(hostname_file) or "").strip() or "(none)"
    if write_if_changed(hostname_file, short + "\n"):
        change(f"hostname {before} -> {short}")
    if write_if_changed(root / network.HOSTS, network.hosts_text(identity)):
        change(f"hosts: {identity.ip} {identity.hostname}")
    if root.resolve() == Path("/"):
        # The kernel's name too, before ssh-keygen writes it into the key comments.
        running = socket.gethostname()
        if running != short:
            try:
                socket.sethostname(short)
            except OSError as exc:
                # /etc/hostname is right; PID 1 sets the kernel's name from it next boot.
                log(f"findself: cannot set the running hostname: {exc}")
            else:
                change(f"running hostname {running} -> {short}")
    write_network(root, identity, change, log, interface)
    if new_clone:
        _report(change, fresh_machine_id(root))
        _report(change, fresh_ssh_keys(root, log))


def _report(change: Log, line: str | None) -> None:
    if line:
        change(line)


def read_or_none(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def write_if_changed(path: Path, text: str, mode: int = 0o644, *, exact: bool = False) -> bool:
    """Replace `path` with `text` atomically, unless it already holds exactly that.

    A reboot mid-write must never leave a half-written /etc/hosts; an existing file
    keeps its mode and owner, unless `exact`: then the file must be ours with `mode`
    (NetworkManager ignores a keyfile that is not root's 0600), and one that is not is
    rewritten even when its text is right.
    """
    if not path.is_symlink() and read_or_none(path) == text and (not exact or _is(path, mode)):
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    uid = gid = -1
    with contextlib.suppress(FileNotFoundError):
        st = path.lstat()
        if stat.S_ISREG(st.st_mode) and not exact:
            mode, uid, gid = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
    tmp = path.with_name(f".{path.name}.findself")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), mode)
            if uid != -1 and (uid, gid) != (os.getuid(), os.getgid()):
                os.fchown(f.fileno(), uid, gid)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return True


def _is(path: Path, mode: int) -> bool:
    """Whether `path` is a regular file of this process's user with exactly `mode`."""
    st = path.lstat()
    return (
        stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == mode and st.st_uid == os.geteuid()
    )


def _systemd_made(root: Path, current: str) -> bool:
    """Whether PID 1 generated this boot's machine-id itself (first boot of this clone).

    On a first boot ("uninitialized" in /etc/machine-id) systemd makes a fresh ID,
    mounts /run/machine-id over /etc/machine-id and later commits it: it is new already,
    and replacing it now would split PID 1's ID from the one on disk.
    """
    path = root / "etc/machine-id"
    try:
        if path.stat().st_dev != path.parent.stat().st_dev:
            return True
    except OSError:
        return False
    return read_or_none(root / "run/machine-id") in (current, current + "\n")


def fresh_machine_id(root: Path) -> str | None:
    """Give a copied clone its own machine-id; what changed, or None."""
    path = root / "etc/machine-id"
    current = (read_or_none(path) or "").strip()
    if current in ("", "uninitialized") or _systemd_made(root, current):
        # systemd makes (or just made) one of its own at this first boot.
        return None
    write_if_changed(path, uuid.uuid4().hex + "\n", mode=0o444)
    # libdbus reads its own copy before /etc/machine-id; a Debian symlink is fine.
    dbus = root / "var/lib/dbus/machine-id"
    if dbus.is_file() and not dbus.is_symlink():
        dbus.unlink()
    return "machine-id: replaced the one copied from another guest (systemd uses it from next boot)"


def fresh_ssh_keys(root: Path, log: Log) -> str | None:
    """Remove copied SSH host keys and make this guest's own with `ssh-keygen -A`."""
    ssh = root / "etc/ssh"
    if not ssh.is_dir():
        return None
    old = sorted(p for p in ssh.glob("ssh_host_*") if not p.is_dir())
    has_sshd = any((root / d / "sshd").exists() for d in ("usr/sbin", "sbin"))
    if not old and not has_sshd:
        return None
    for p in old:
        p.unlink()
    if not have("ssh-keygen"):
        return f"ssh host keys: removed {len(old)} copied keys (no ssh-keygen to make new ones)"
    try:
        # -f is a prefix: keys land in <root>/etc/ssh, so this also works on a tree.
        run(["ssh-keygen", "-A", "-f", str(root)])
    except CommandError as exc:
        log(f"findself: ssh-keygen failed, sshd has no host keys: {exc}")
        return f"ssh host keys: removed {len(old)} copied keys (ssh-keygen failed)"
    made = sorted(p.name for p in ssh.glob("ssh_host_*_key"))
    verb = "replaced" if old else "generated"
    return f"ssh host keys: {verb} ({', '.join(made)})"


def write_network(
    root: Path, identity: Identity, change: Log, log: Log, interface: str | None = None
) -> None:
    route = f" gateway {identity.gateway}" if identity.gateway else ""
    address = f"{identity.ip}/{identity.prefix}{route}"
    stack = network.detect(root)
    if stack is Network.NETWORKMANAGER:
        # The parm file's card where findself found it, else any Ethernet device.
        text = network.nm_keyfile_text(identity, interface)
        path = root / network.NM_FILE
        if write_if_changed(path, text, mode=network.NM_MODE, exact=True):
            change(f"network (NetworkManager{f', {interface}' if interface else ''}): {address}")
    elif stack is Network.NETWORKD:
        if write_if_changed(root / network.NETWORKD_FILE, network.networkd_text(identity)):
            change(f"network (systemd-networkd): {address}")
    elif stack is Network.IFUPDOWN:
        # The parm file's card where findself found it, else the first Ethernet NIC.
        iface = interface or network.ifupdown_interface(root)
        text = network.ifupdown_text(identity, iface)
        if write_if_changed(root / network.IFUPDOWN_FILE, text):
            change(f"network (ifupdown, {iface}): {address}")
        if network.ifupdown_conflicts(root, iface):
            log(f"findself: /etc/network/interfaces also defines {iface}; remove that stanza")
    else:
        log(
            "findself: none of NetworkManager, systemd-networkd, ifupdown found;"
            " address not configured"
        )
    resolv = network.resolv_conf_text(identity)
    if (
        resolv is not None
        and not network.uses_resolved(root)
        and write_if_changed(root / network.RESOLV_CONF, resolv)
    ):
        change(f"resolv.conf: nameserver {identity.nameserver}")
