"""One lab host: its directories and configuration, its two daemons, started and stopped."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

# A privileged libvirtd's fixed paths, each replaced by the host's own directory.
MOUNTS = {
    "etc": "/etc/libvirt",
    "lib": "/var/lib/libvirt",
    "run": "/run/libvirt",
    "log": "/var/log/libvirt",
    "cache": "/var/cache/libvirt",  # QEMU capabilities: probed once per host, kept
}
DAEMONS = ("libvirtd", "virtlogd")
START_TIMEOUT = 180.0  # the first start probes every installed QEMU
STOP_TIMEOUT = 20.0
# Daemons get a plain environment: nothing of the caller's (LIBVIRT_*, PYTHONPATH) leaks in.
DAEMON_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}

# Runs inside the host's new mount namespace: its directories over libvirt's paths, then
# the daemons; `libvirtd -d` returns once it has forked, the namespace lives on in them.
_START = """set -e
root=$1; shift
mount --bind "$root/etc" /etc/libvirt
mount --bind "$root/lib" /var/lib/libvirt
mount --bind "$root/run" /run/libvirt
mount --bind "$root/log" /var/log/libvirt
mount --bind "$root/cache" /var/cache/libvirt
virtlogd -d -p "$root/virtlogd.pid"
exec libvirtd -d -p "$root/libvirtd.pid" "$@"
"""

# The lab's QEMU runs as root on plain files, as the local backend's does: no DAC chown of
# shared gold images by one host behind the other's back, no cgroups (this machine's are
# not libvirt's to rearrange), no per-guest /dev namespace.
QEMU_CONF = """user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
"""


class LabError(Exception):
    """The lab could not be set up or torn down (one line, for stderr)."""


@dataclass(frozen=True)
class Host:
    number: int
    root: Path  # DIR/hostN
    port: int | None = None  # loopback TCP port; None: reached on its UNIX socket only

    @property
    def uri(self) -> str:
        """How COMMAND reaches the host (it runs in host 1's mount namespace)."""
        if self.port is None:
            return "qemu:///system"
        return f"qemu+tcp://127.0.0.1:{self.port}/system"

    @property
    def socket_uri(self) -> str:
        """How the lab reaches the host from any namespace: its socket by path."""
        return f"qemu:///system?socket={self.root / 'run' / 'libvirt-sock'}"

    @property
    def log(self) -> Path:
        return self.root / "log" / "libvirtd.log"

    def pid_file(self, daemon: str) -> Path:
        return self.root / f"{daemon}.pid"

    def running(self, daemon: str) -> int | None:
        """The PID in the daemon's pid file if that process is alive and is the daemon."""
        try:
            pid = int(self.pid_file(daemon).read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid, daemon) else None

    def mount_ns(self) -> str | None:
        """The host's mount namespace (as /proc/PID/ns/mnt reads), while its libvirtd runs."""
        pid = self.running("libvirtd")
        if pid is None:
            return None
        try:
            return os.readlink(f"/proc/{pid}/ns/mnt")
        except OSError:
            return None

    # configuration ------------------------------------------------------------
    def prepare(self) -> None:
        """The host's directories and configuration; its UUID is made once and kept."""
        for sub in MOUNTS:
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        for path in MOUNTS.values():
            os.makedirs(path, exist_ok=True)  # the mount points, as libvirt's packages make them
        # Nothing of a previous run's sockets or domain status may survive into this one.
        run = self.root / "run"
        for entry in run.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        id_file = self.root / "host-uuid"
        if not id_file.is_file():
            id_file.write_text(f"{uuid.uuid4()}\n")
        host_uuid = str(uuid.UUID(id_file.read_text().strip()))
        conf = [
            f'host_uuid = "{host_uuid}"',
            'log_outputs = "3:file:/var/log/libvirt/libvirtd.log"',
            'auth_unix_rw = "none"',  # the sockets are root's only (0700)
            'unix_sock_rw_perms = "0700"',
            "listen_tls = 0",
        ]
        if self.port is not None:
            conf += [
                "listen_tcp = 1",
                'listen_addr = "127.0.0.1"',  # loopback only: auth none is for this machine
                f'tcp_port = "{self.port}"',
                'auth_tcp = "none"',
            ]
        etc = self.root / "etc"
        (etc / "libvirtd.conf").write_text("\n".join(conf) + "\n")
        (etc / "qemu.conf").write_text(QEMU_CONF)
        (etc / "virtlogd.conf").write_text('log_outputs = "3:file:/var/log/libvirt/virtlogd.log"\n')

    # start and stop -------------------------------------------------------------
    def start(self) -> float:
        """Start virtlogd and libvirtd in a new mount namespace; seconds until libvirtd answers."""
        if self.port is not None and _port_taken(self.port):
            raise LabError(f"127.0.0.1:{self.port} is already in use; host {self.number} needs it")
        self.prepare()
        for daemon in DAEMONS:
            self.pid_file(daemon).unlink(missing_ok=True)
        began = time.monotonic()
        # Slave propagation: the host sees the machine's later mounts, its own stay inside.
        argv = ["unshare", "--mount", "--propagation", "slave", "--", "sh", "-c", _START]
        argv += ["hostlab", str(self.root), *(["--listen"] if self.port is not None else [])]
        done = subprocess.run(argv, env=DAEMON_ENV, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            why = (done.stderr.strip().splitlines() or ["no message"])[-1]
            raise LabError(f"host {self.number}: the daemons did not start: {why}")
        while not self._answers():
            if self.running("libvirtd") is None:
                raise LabError(f"host {self.number}: libvirtd ended at start; see {self.log}")
            if time.monotonic() - began > START_TIMEOUT:
                waited = f"{START_TIMEOUT:.0f} s"
                raise LabError(f"host {self.number}: libvirtd did not answer in {waited}")
            time.sleep(0.2)
        return time.monotonic() - began

    def stop_libvirtd(self) -> None:
        """The host's libvirtd goes away (its guests run on, as on a real host)."""
        pid = self.running("libvirtd")
        if pid is not None and not _terminate(pid, "libvirtd"):
            raise LabError(f"host {self.number}: libvirtd {pid} had to be killed")

    def restart_libvirtd(self) -> float:
        """libvirtd again, in the host's namespace (its virtlogd kept it); seconds to answer."""
        keeper = self.running("virtlogd")
        if keeper is None or self.running("libvirtd") is not None:
            raise LabError(f"host {self.number}: needs its virtlogd and no libvirtd to restart")
        began = time.monotonic()
        argv = ["nsenter", f"--mount=/proc/{keeper}/ns/mnt", "--", "libvirtd", "-d"]
        argv += ["-p", str(self.pid_file("libvirtd"))]
        argv += ["--listen"] if self.port is not None else []
        done = subprocess.run(argv, env=DAEMON_ENV, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise LabError(f"host {self.number}: libvirtd did not restart: {done.stderr.strip()}")
        while not self._answers():
            if time.monotonic() - began > START_TIMEOUT:
                raise LabError(f"host {self.number}: libvirtd did not answer again")
            time.sleep(0.2)
        return time.monotonic() - began

    def _answers(self) -> bool:
        return _virsh(self.socket_uri, "uri", timeout=30).returncode == 0

    def stop(self) -> list[str]:
        """Destroy the host's running domains, then end its daemons (by their PIDs).

        Returns what had to be forced, for the caller to report.
        """
        forced = []
        ns = self.mount_ns()
        if self.running("libvirtd") is not None:
            listed = _virsh(self.socket_uri, "list", "--name", timeout=30)
            for name in listed.stdout.split() if listed.returncode == 0 else []:
                _virsh(self.socket_uri, "destroy", name, timeout=60)
        for daemon in DAEMONS:
            pid = self.running(daemon)
            if pid is not None and not _terminate(pid, daemon):
                forced.append(f"{daemon} {pid}")
        if ns is not None:
            # A guest whose libvirtd could not destroy it lives on in the host's namespace.
            for pid in _qemu_in(ns):
                os.kill(pid, signal.SIGKILL)
                forced.append(f"QEMU {pid}")
        return forced


def _virsh(uri: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    argv = ["virsh", "--quiet", "-c", uri, *args]
    try:
        return subprocess.run(
            argv, env=DAEMON_ENV, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(argv, 124, "", "timed out")


def _alive(pid: int, comm: str) -> bool:
    """Whether `pid` runs `comm` (not a zombie, not a reused PID)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    name, _, rest = stat.partition("(")[2].rpartition(")")
    return name == comm[:15] and rest.split()[0] != "Z"


def _terminate(pid: int, comm: str) -> bool:
    """SIGTERM, then SIGKILL after STOP_TIMEOUT; True if it ended on SIGTERM."""
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline:
        if not _alive(pid, comm):
            return True
        time.sleep(0.1)
    if _alive(pid, comm):
        os.kill(pid, signal.SIGKILL)
    return False


def _qemu_in(ns: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            same = os.readlink(proc / "ns" / "mnt") == ns
            exe = os.readlink(proc / "exe") if same else ""
        except OSError:
            continue
        if Path(exe).name.startswith("qemu-system-"):
            found.append(int(proc.name))
    return found


def _port_taken(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def say(text: str) -> None:
    sys.stderr.write(f"hostlab: {text}\n")
    sys.stderr.flush()
