"""`scripts/hostlab DIR -- COMMAND...`: run COMMAND with two libvirt hosts on this machine.

COMMAND gets SHAREDROOT_LAB_HOSTS (the hosts' URIs, space-separated: host 1 first) and
SHAREDROOT_LAB_POOL (DIR/pool, the storage both hosts see) and runs in host 1's mount
namespace. When it ends, however it ends (also on SIGTERM, SIGINT or SIGHUP, which are
passed on to it), both hosts' domains are destroyed and their daemons stopped by PID.
A SIGKILL of the lab leaves them running: the next lab on the same DIR stops them first.
Exit: COMMAND's code (128+N if a signal N ended it); 125 if the lab itself failed.
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from hostlab.hosts import Host, LabError, say

TCP_PORT = 16510
LAB_FAILED = 125
USAGE = "usage: scripts/hostlab DIR -- COMMAND...\n"
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Interrupted(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _from_terminal(signum: int) -> bool:
    """A SIGINT while the lab is the terminal's foreground: ^C, sent to COMMAND too."""
    if signum != signal.SIGINT:
        return False
    try:
        return os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
    except OSError:
        return False


def hosts(root: Path) -> list[Host]:
    return [Host(1, root / "host1"), Host(2, root / "host2", TCP_PORT)]


def command_env(lab: list[Host], pool: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("LIBVIRT_DEFAULT_URI", None)  # COMMAND names its hosts
    env["SHAREDROOT_LAB_HOSTS"] = " ".join(h.uri for h in lab)
    env["SHAREDROOT_LAB_POOL"] = str(pool)
    return env


def run_lab(root: Path, command: list[str]) -> int:
    lab = hosts(root)
    pool = root / "pool"
    pool.mkdir(parents=True, exist_ok=True)
    child: list[subprocess.Popen[bytes]] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if child and child[0].poll() is None:
            if not _from_terminal(signum):  # the terminal's ^C reached COMMAND already
                child[0].send_signal(signum)  # COMMAND decides; the lab ends when it does
        else:
            raise Interrupted(signum)

    for s in SIGNALS:
        signal.signal(s, on_signal)
    try:
        for host in lab:
            if host.running("libvirtd") or host.running("virtlogd"):
                # The lock was free, so no lab owns them: a killed run's leftovers.
                say(f"host {host.number}: stopping daemons a previous run left behind")
                host.stop()
        for host in lab:
            took = host.start()
            say(f"host {host.number} ({host.uri}) up in {took:.1f} s")
        ns1 = lab[0].running("libvirtd")
        if ns1 is None:
            raise LabError(f"host 1: libvirtd ended; see {lab[0].log}")
        argv = ["nsenter", f"--mount=/proc/{ns1}/ns/mnt", f"--wd={os.getcwd()}", "--", *command]
        child.append(subprocess.Popen(argv, env=command_env(lab, pool)))
        rc = child[0].wait()
        return 128 - rc if rc < 0 else rc
    except Interrupted as e:
        return 128 + e.signum
    finally:
        for s in SIGNALS:  # tearing down is short and must not be cut short
            signal.signal(s, signal.SIG_IGN)
        began = time.monotonic()
        for host in lab:
            forced = host.stop()
            if forced:
                say(f"host {host.number}: had to kill {', '.join(forced)}")
        say(f"stopped in {time.monotonic() - began:.1f} s")


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        sys.stderr.write(USAGE)
        return 2
    if os.geteuid() != 0:
        say("must run as root (libvirt's system daemons, mount namespaces)")
        return LAB_FAILED
    root = Path(argv[0]).resolve()
    # DIR goes into socket URIs and libvirt's configuration: plain characters only.
    if not re.fullmatch(r"(/[A-Za-z0-9._+-]+)+", str(root)):
        say(f"{str(root)!r}: DIR must be a path of A-Z a-z 0-9 . _ + - components")
        return 2
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "lab.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"{root} is in use by another hostlab")
            return LAB_FAILED
        try:
            return run_lab(root, argv[2:])
        except (LabError, OSError) as e:
            say(str(e))
            return LAB_FAILED
