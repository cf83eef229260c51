"""The VSWITCH: one persistent network namespace per emulated system (DIR).

`zvmsim-<first 8 hex digits of sha256(DIR's real path)>` (created with `ip netns add`)
holds `lo` (up) and one Linux bridge per VSWITCH named in a NICDEF (`LAN SYSTEM VSW1` ->
bridge `vsw1`). VSW1's bridge carries the guests' gateway address, control.json
`"vswitch": {"address": "129.40.179.254/24"}` by default (the paper's sample parm file:
Gateway=129.40.179.254, Netmask=255.255.255.0). A booted guest's NIC is a tap device
`<userid>-<vdev>` on that bridge, and its QEMU runs inside the namespace; the worker's
command (`scripts/zvmsim DIR -- COMMAND`) runs there too, so it reaches a guest at its
parm file's HostIP as on z/VM.

With ZVMSIM_UPLINK=1 a worker command gets a way out, the VSWITCH's uplink: slirp4netns
on a tap of its own (10.0.2.100, NAT through the host's own sockets, DNS by the host's
resolver), so the worker reaches package mirrors (install's debootstrap) without any
change to the host's network. It lives exactly as long as the command. Guests get no
route out: the namespace does not forward.

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
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NETNS_DIR = Path("/run/netns")
REGISTRY = Path("/run/zvmsim")
DEFAULT_VSWITCH = "VSW1"
DEFAULT_ADDRESS = "129.40.179.254/24"


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
    return ns


@dataclass(frozen=True)
class Uplink:
    proc: subprocess.Popen[bytes]
    exit_fd: int  # slirp4netns exits when this end of its pipe closes


def start_uplink(root: Path) -> Uplink | None:
    """slirp4netns on a tap of its own in DIR's namespace, for one worker command: it ends
    with the command (stop_uplink), or when the launcher dies (its exit fd closes)."""
    if shutil.which("slirp4netns") is None:
        sys.stderr.write("zvmsim: no slirp4netns: the VSWITCH has no uplink\n")
        return None
    ns = netns_name(root)
    tap = f"uplink{os.getpid() % 100000}"
    keep, give = os.pipe()
    os.set_inheritable(keep, False)
    with open(root / "uplink.log", "ab") as log:
        proc = subprocess.Popen(
            ["slirp4netns", "--configure", "--mtu=65520", "--disable-host-loopback",
             f"--exit-fd={give}", "--netns-type=path", str(NETNS_DIR / ns), tap],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            pass_fds=(give,),
        )  # fmt: skip
    os.close(give)
    uplink = Uplink(proc, keep)
    deadline = time.monotonic() + 5
    while "inet " not in _ip(ns, "-4", "addr", "show", "dev", tap, check=False).stdout:
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.stderr.write("zvmsim: the VSWITCH's uplink did not come up (DIR/uplink.log)\n")
            stop_uplink(uplink)
            return None
        time.sleep(0.05)
    return uplink


def stop_uplink(uplink: Uplink | None) -> None:
    if uplink is None:
        return
    with contextlib.suppress(OSError):
        os.close(uplink.exit_fd)
    uplink.proc.terminate()
    try:
        uplink.proc.wait(5)
    except subprocess.TimeoutExpired:
        uplink.proc.kill()
        uplink.proc.wait()


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
            subprocess.run(["ip", "netns", "delete", entry.name], check=False, capture_output=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry)
