"""The VSWITCH: one persistent network namespace per emulated system (DIR).

`zvmsim-<first 8 hex digits of sha256(DIR's real path)>` (created with `ip netns add`)
holds `lo` (up) and one Linux bridge per VSWITCH named in a NICDEF (`LAN SYSTEM VSW1` ->
bridge `vsw1`). VSW1's bridge carries the guests' gateway address, control.json
`"vswitch": {"address": "129.40.179.254/24"}` by default (the paper's sample parm file:
Gateway=129.40.179.254, Netmask=255.255.255.0). A booted guest's NIC is a tap device
`<userid>-<vdev>` on that bridge, and its QEMU runs inside the namespace; the worker's
command (`scripts/zvmsim DIR -- COMMAND`) runs there too, so it reaches a guest at its
parm file's HostIP as on z/VM.

The namespace's way out is an uplink (the VSWITCH's OSA): slirp4netns on a tap device
`uplink` (10.0.2.100, NAT through the host's own sockets, DNS by the host's resolver),
so the worker reaches package mirrors (install's debootstrap) without any change to the
host's network. Guests get no route out: the namespace does not forward. Its pid is in
DIR/uplink.pid; without slirp4netns there is no uplink.

/run/zvmsim/<name> records which DIR a namespace belongs to: when a new one is made, the
namespaces of DIRs that no longer exist (and that hold no process) are deleted.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

NETNS_DIR = Path("/run/netns")
REGISTRY = Path("/run/zvmsim")
DEFAULT_VSWITCH = "VSW1"
DEFAULT_ADDRESS = "129.40.179.254/24"
UPLINK_PID = "uplink.pid"


def netns_name(root: Path) -> str:
    digest = hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()
    return f"zvmsim-{digest[:8]}"


def netns_path(root: Path) -> Path:
    return NETNS_DIR / netns_name(root)


def exists(root: Path) -> bool:
    return is_netns(netns_path(root))


def is_netns(path: Path) -> bool:
    """A live namespace mount, not a file left behind when the mount namespace that held
    the mount went away (a test run's private mount namespace, say)."""
    try:
        return os.stat(path).st_dev != os.stat(path.parent).st_dev
    except OSError:
        return False


def bridge_name(lan: str) -> str:
    return lan.lower()[:15]


def tap_name(userid: str, vdev: str) -> str:
    return f"{userid.lower()}-{vdev.lower()}"[:15]


def gateway(control: dict[str, Any]) -> str:
    """VSW1's address (with prefix length) from control.json."""
    conf = control.get("vswitch")
    address = conf.get("address") if isinstance(conf, dict) else None
    text = str(address or DEFAULT_ADDRESS)
    ipaddress.ip_interface(text)  # refuses nonsense early
    return text if "/" in text else f"{text}/24"


def _ip(ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "-n", ns, *args], check=check, capture_output=True, text=True)


def ensure(root: Path, control: dict[str, Any]) -> str:
    """The namespace of DIR, made (lo up, VSW1's bridge) if it does not exist yet. Call it
    from the host's mount namespace: `ip netns add` publishes the namespace as a mount."""
    ns = netns_name(root)
    path = NETNS_DIR / ns
    if not is_netns(path):
        collect_garbage()
        if path.exists():
            # a file left behind (or live in another mount namespace: unlinking it would
            # unmount it there): a new namespace mounted on it, here
            subprocess.run(["unshare", f"--net={path}", "true"], check=True, capture_output=True)
        else:
            subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True, text=True)
        REGISTRY.mkdir(parents=True, exist_ok=True)
        (REGISTRY / ns).write_text(json.dumps({"dir": str(Path(root).resolve())}) + "\n")
        _ip(ns, "link", "set", "lo", "up")
        ensure_bridge(ns, DEFAULT_VSWITCH, gateway(control))
    ensure_uplink(root, ns)
    return ns


def _uplink_pid(root: Path) -> int | None:
    """The pid of DIR's running slirp4netns, or None."""
    try:
        pid = int((root / UPLINK_PID).read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"slirp4netns" in cmdline and str(NETNS_DIR).encode() in cmdline else None


def ensure_uplink(root: Path, ns: str) -> None:
    if _uplink_pid(root) is not None or shutil.which("slirp4netns") is None:
        return
    _ip(ns, "link", "del", "uplink", check=False)
    with open(root / "uplink.log", "ab") as log:
        proc = subprocess.Popen(
            [
                "slirp4netns",
                "--configure",
                "--mtu=65520",
                "--disable-host-loopback",
                "--netns-type=path",
                str(NETNS_DIR / ns),
                "uplink",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    (root / UPLINK_PID).write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + 5
    while _ip(ns, "-4", "addr", "show", "dev", "uplink", check=False).stdout.find("inet ") < 0:
        if proc.poll() is not None or time.monotonic() > deadline:
            return  # no uplink: the namespace still works, only without a way out
        time.sleep(0.05)


def stop_uplink(root: Path) -> None:
    pid = _uplink_pid(root)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    with contextlib.suppress(FileNotFoundError):
        (root / UPLINK_PID).unlink()


def ensure_bridge(ns: str, lan: str, address: str | None) -> str:
    """The bridge of VSWITCH `lan` in `ns`, made if missing; `address` set if given."""
    br = bridge_name(lan)
    if _ip(ns, "link", "show", "dev", br, check=False).returncode != 0:
        _ip(ns, "link", "add", br, "type", "bridge", "stp_state", "0", "forward_delay", "0")
    if address is not None:
        shown = _ip(ns, "-j", "addr", "show", "dev", br).stdout
        have = [
            f"{a['local']}/{a['prefixlen']}"
            for link in json.loads(shown or "[]")
            for a in link.get("addr_info", [])
            if a.get("family") == "inet"
        ]
        if have != [address]:
            _ip(ns, "addr", "flush", "dev", br)
            _ip(ns, "addr", "add", address, "dev", br)
    _ip(ns, "link", "set", br, "up")
    return br


def add_tap(ns: str, tap: str, lan: str) -> None:
    """A fresh tap device on the VSWITCH's bridge; QEMU attaches to it by name."""
    _ip(ns, "link", "del", tap, check=False)
    _ip(ns, "tuntap", "add", "dev", tap, "mode", "tap")
    _ip(ns, "link", "set", tap, "master", bridge_name(lan), "up")


def del_tap(ns: str, tap: str) -> None:
    _ip(ns, "link", "del", tap, check=False)


def pids(ns: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def delete(root: Path) -> None:
    ns = netns_name(root)
    stop_uplink(root)
    if (NETNS_DIR / ns).exists():
        subprocess.run(["ip", "netns", "delete", ns], check=False, capture_output=True)
    with contextlib.suppress(FileNotFoundError):
        (NETNS_DIR / ns).unlink()
    with contextlib.suppress(FileNotFoundError):
        (REGISTRY / ns).unlink()


def collect_garbage() -> None:
    """Delete the namespaces of emulated systems whose DIR is gone and that hold nothing."""
    if not REGISTRY.is_dir():
        return
    for entry in REGISTRY.iterdir():
        try:
            owner = Path(json.loads(entry.read_text())["dir"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if (owner / "state.json").exists():
            continue
        path = NETNS_DIR / entry.name
        if is_netns(path):
            if pids(entry.name):
                continue
            for pid in _uplinks_of(path):  # its DIR, with the pid file, is gone
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            subprocess.run(["ip", "netns", "delete", entry.name], check=False, capture_output=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry)


def _uplinks_of(path: Path) -> list[int]:
    """The slirp4netns processes serving the namespace at `path`."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[:1] and argv[0].endswith(b"slirp4netns") and str(path).encode() in argv:
            found.append(int(proc.name))
    return found
