"""Reaching a z/VM guest from the worker: shutdown by CP, commands over SSH, CMS files.

A running Linux guest is reached at its parm file's HostIP (the identity findself gives
it), with the site's own key (home/ssh/id_ed25519).
"""

from __future__ import annotations

import importlib
import os
import shlex
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, cast

from sharedroot.errors import InputError, OperationError, RefusedError
from sharedroot.hypervisor.zvm.cp import Cp
from sharedroot.model.parm import MAX_PARM_CHARS, check_ipv4, parse_parm
from sharedroot.model.types import GuestState
from sharedroot.run import run

Say = Callable[[str], None]
ZTHIN_SMCLI = "/opt/zthin/bin/smcli"
CONNECT_RETRY = 15.0  # seconds `ssh` tries again while it cannot connect


def smcli_program(configured: str) -> str:
    """config.zvm.smcli on PATH (or as a path), else zthin's place for it."""
    found = shutil.which(configured)
    if found:
        return found
    return ZTHIN_SMCLI if Path(ZTHIN_SMCLI).exists() else configured


class CmsFiles(Protocol):
    """The CMS file system functions of sharedroot.hypervisor.zvm.cms used here."""

    def format_disk(self, device: Path, *, label: str) -> None: ...
    def is_formatted(self, device: Path) -> bool: ...
    def read_text(self, device: Path, name: str, ftype: str) -> str | None: ...
    def write_text(self, device: Path, name: str, ftype: str, text: str) -> None: ...
    def delete_file(self, device: Path, name: str, ftype: str) -> bool: ...


def cms() -> CmsFiles:
    return cast(CmsFiles, importlib.import_module("sharedroot.hypervisor.zvm.cms"))


# LOGOFF ------------------------------------------------------------------------------
def _wait_off(cp: Cp, guest: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while cp.user_state(guest) is GuestState.LOGGED_ON:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.5)
    return True


def shutdown(cp: Cp, guest: str, timeout: float, signal_within: int) -> str:
    """SIGNAL SHUTDOWN ... WITHIN n, then FORCE ... IMMED: "clean" or "forced"."""
    if signal_within > 0:  # 0: the site wants no shutdown signal, FORCE at once
        within = max(1, min(int(timeout), signal_within))
        cp.signal_shutdown(guest, within)  # a guest not enabled for signals is forced below
        if _wait_off(cp, guest, max(timeout, 1)):
            return "clean"
    r = cp.force(guest)
    if not _wait_off(cp, guest, 30):
        raise OperationError(
            f"{guest} is still logged on after FORCE {guest} IMMED ({r.message()});"
            " check it with CP QUERY and FORCE it from an operator console"
        )
    return "forced"


# SSH ---------------------------------------------------------------------------------
def parm_ip(guest: str, parm: str | None) -> str:
    if parm is None:
        raise RefusedError(f"{guest} has no parm file ({guest} PARM-S10 on the admin disk)")
    # Only HostIP: a guest whose parm file is wrong elsewhere (and so keeps its last
    # identity) is still reached at the address the file gives.
    try:
        return check_ipv4(parse_parm(parm[:MAX_PARM_CHARS]).get("hostip"), "HostIP")
    except InputError as exc:
        raise RefusedError(f"{guest} PARM-S10: {exc}") from None


def wait_ssh(ip: str, guest: str, timeout: float) -> None:
    """Until the guest accepts TCP connections on port 22."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((ip, 22), timeout=2):
                return
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise OperationError(
                    f"{guest} ({ip}) did not answer on SSH within {timeout:.0f}s ({exc});"
                    " look at its console from CP"
                ) from None
            time.sleep(1)


def site_key(home: Path) -> str:
    """The public half of the site's SSH key (home/ssh/id_ed25519), made on first use."""
    key = home / "ssh" / "id_ed25519"
    pub = key.with_name(key.name + ".pub")
    if not (key.exists() and pub.exists()):
        key.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = key.with_name(f".{key.name}.{os.getpid()}")
        for p in (tmp, tmp.with_name(tmp.name + ".pub")):
            p.unlink(missing_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "sharedroot", "-f", str(tmp)])
        os.replace(tmp.with_name(tmp.name + ".pub"), pub)
        os.replace(tmp, key)
    return pub.read_text()


def ssh(home: Path, ip: str, argv: list[str], timeout: float) -> tuple[int, bytes, bytes]:
    key = home / "ssh" / "id_ed25519"
    base = ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new"]
    base += ["-o", f"UserKnownHostsFile={home / 'ssh' / 'known_hosts'}", "-i", str(key)]
    # ssh runs its remote command through the guest's shell: quote each word.
    command = [*base, f"root@{ip}", "--", shlex.join(argv)]
    start = time.monotonic()
    while True:
        left = timeout - (time.monotonic() - start)
        proc = run(command, check=False, timeout=max(1.0, left))
        # No connection (a busy guest left an ARP probe unanswered): the command never
        # ran, so it is tried again for a few seconds.
        lost = proc.returncode == 255 and proc.stderr.startswith("ssh: connect to host")
        if not lost or time.monotonic() - start + 1 > min(timeout, CONNECT_RETRY):
            return proc.returncode, proc.stdout.encode(), proc.stderr.encode()
        time.sleep(1)
