"""A logged-on user's virtual machine: an s390x Linux guest under QEMU, IPLed from 01B0.

XAUTOLOG calls `started` once the user's devices exist: its V-DISKs are made fresh (the
paper's SWAPGEN), then, unless control.json says `"ipl": false`, 01B0's boot record is
read (ipl.py) and a detached QEMU (its own session, inside DIR's network namespace) runs
the guest with every DASD device of the user at its virtual address and a NIC per
NICDEF on the VSWITCH. Nothing to boot leaves the user logged on without a guest, with
a line in its console log.

No daemon watches the guests: every program opens a Session, and the Session first calls
`reap`, which logs off each user whose QEMU has exited (a guest that powered off or
rebooted, `-no-reboot`: the paper's vmpoff=LOGOFF) or whose SIGNAL SHUTDOWN interval has
run out (its QEMU is killed). Logoff (SIGNAL SHUTDOWN, FORCE, the reaper) calls `stopped`
before the devices are released: QEMU is killed by its PID if it still runs.

DIR/guests/USERID/ holds console.log (appended; the guest's SCLP console and the
emulator's `zvmsim:` lines), qmp.sock, qemu.pid, qemu.err (QEMU's own messages), and the
kernel and initrd copied out of 01B0 at the last IPL.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from zvmsim import ipl
    from zvmsim.state import Session

# Every program reaps (a few /proc reads); what IPL and QMP need is imported when used,
# so that vmcp starts fast.
GUESTS = "guests"
START_TIMEOUT = 60
QEMU = "qemu-system-s390x"


def run_dir(root: Path, userid: str) -> Path:
    return root / GUESTS / userid


def console_line(root: Path, userid: str, text: str) -> None:
    d = run_dir(root, userid)
    d.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    with open(d / "console.log", "a+b") as f:
        # on a line of its own, whatever the guest wrote last
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - 1))
        lead = b"\n" if size and f.read(1) != b"\n" else b""
        f.write(lead + f"zvmsim: {stamp} {userid} {text}\n".encode())


# --- process bookkeeping -------------------------------------------------------------------
def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks) of a process, None if there is none."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[19])


def alive(rec: dict[str, Any]) -> bool:
    """Does the QEMU of this guest record still run (same PID, same start time)?"""
    st = _proc_stat(int(rec["pid"]))
    return st is not None and st[0] not in ("Z", "X") and st[1] == rec.get("start")


def kill(rec: dict[str, Any], wait: float = 10.0) -> None:
    """SIGKILL the guest's QEMU by its PID (if it is still that process) and wait for it."""
    if not alive(rec):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(int(rec["pid"]), signal.SIGKILL)
    deadline = time.monotonic() + wait
    while alive(rec) and time.monotonic() < deadline:
        time.sleep(0.02)


def running(s: Session, userid: str) -> bool:
    return s.logged_on(userid) and "guest" in s.users[userid]


# --- QMP -----------------------------------------------------------------------------------
def qmp(rundir: Path, command: str, timeout: float = 5.0) -> dict[str, Any]:
    """Run one QMP command on the guest's monitor socket; its answer."""
    import json
    import socket

    dfd = os.open(rundir, os.O_PATH | os.O_DIRECTORY)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        # through the directory's fd: the absolute path may be too long for a socket
        sock.connect(f"/proc/self/fd/{dfd}/qmp.sock")
        f = sock.makefile("rb")

        def answer() -> dict[str, Any]:
            while True:
                line = f.readline()
                if not line:
                    raise OSError("QMP connection closed")
                msg: dict[str, Any] = json.loads(line)
                if "return" in msg or "error" in msg:
                    return msg

        f.readline()  # greeting
        sock.sendall(b'{"execute": "qmp_capabilities"}\n')
        answer()
        sock.sendall(json.dumps({"execute": command}).encode() + b"\n")
        return answer()
    finally:
        sock.close()
        os.close(dfd)


# --- logon: V-DISKs and IPL ------------------------------------------------------------------
def fresh_vdisk(path: Path, blocks: int) -> None:
    """A new V-DISK as SWAPGEN leaves it: partition 1 holding a Linux swap signature."""
    from zvmsim import loops

    size = blocks * 512
    tmp = path.with_name(f".{path.name}.new")
    path.parent.mkdir(parents=True, exist_ok=True)
    table = loops.mbr(size, loops.TYPE_SWAP)
    part = loops.read_partition_table(table)
    with open(tmp, "wb") as f:
        f.truncate(size)
        f.write(table)
        if part is not None:
            f.seek(part[0])
            f.write(loops.swap_v1(part[1]))
    os.replace(tmp, path)


def started(s: Session, userid: str) -> None:
    """XAUTOLOG: fresh V-DISKs, then IPL 01B0 unless the `ipl` knob is false."""
    from zvmsim import ipl

    for dev in s.devices(userid).values():
        if dev.get("vdisk") and dev["owner"] == userid:
            fresh_vdisk(s.device_image(dev), int(dev["size"]))
    control = s.control()
    if control.get("ipl", True) is False:
        return
    try:
        boot(s, userid, control)
    except ipl.IplError as exc:
        console_line(s.root, userid, f"IPL {ipl.IPL_DEVICE} failed: {exc}")


def nicdefs(s: Session, userid: str) -> list[tuple[str, str]]:
    """(vdev, VSWITCH) of each `NICDEF vdev TYPE QDIO LAN SYSTEM name` (profile included)."""
    from zvmsim import directory as dirmod

    entry = s.directory.user(userid)
    if entry is None:
        return []
    out = []
    for w in s.directory.expanded(entry):
        if w[0] == "NICDEF" and len(w) > 1 and "SYSTEM" in w[:-1] and dirmod.is_vdev(w[1]):
            out.append((dirmod.norm_vdev(w[1]), w[w.index("SYSTEM") + 1]))
    return out


def spec_for(s: Session, userid: str, kernel: Path, initrd: Path, cmdline: str) -> ipl.GuestSpec:
    """The guest of `userid` as its directory entry and current devices make it."""
    from zvmsim import ipl, vswitch

    entry = s.directory.user(userid)
    assert entry is not None
    disks = tuple(
        ipl.Disk(vdev, s.device_image(dev), dev["access"] != "R/W")
        for vdev, dev in sorted(s.devices(userid).items())
    )
    nics = tuple(
        ipl.Nic(vdev, vswitch.tap_name(userid, vdev), ipl.mac_of(userid, vdev))
        for vdev, _ in nicdefs(s, userid)
    )
    return ipl.GuestSpec(
        userid=userid,
        storage=ipl.storage(entry.words),
        kernel=kernel,
        initrd=initrd,
        cmdline=cmdline,
        run_dir=run_dir(s.root, userid),
        disks=disks,
        nics=nics,
    )


def boot(s: Session, userid: str, control: dict[str, Any]) -> None:
    import subprocess

    from zvmsim import ipl, vswitch

    dev = s.devices(userid).get(ipl.IPL_DEVICE)
    if dev is None or dev.get("vdisk"):
        raise ipl.IplError(f"no DASD {ipl.IPL_DEVICE}")
    rundir = run_dir(s.root, userid)
    kernel, initrd, cmdline = ipl.read_boot(s.device_image(dev), rundir)
    ns = vswitch.netns_name(s.root)
    if not vswitch.exists(s.root):
        raise ipl.IplError(f"no VSWITCH: network namespace {ns} is missing")
    spec = spec_for(s, userid, kernel, initrd, cmdline)
    taps = []
    try:
        for vdev, lan in nicdefs(s, userid):
            address = vswitch.gateway(control) if lan == vswitch.DEFAULT_VSWITCH else None
            vswitch.ensure_bridge(ns, lan, address)
            tap = vswitch.tap_name(userid, vdev)
            vswitch.add_tap(ns, tap, lan)
            taps.append(tap)
        pidfile = rundir / "qemu.pid"
        pidfile.unlink(missing_ok=True)
        (rundir / "qmp.sock").unlink(missing_ok=True)
        argv = ["nsenter", f"--net={vswitch.netns_path(s.root)}", "--", *ipl.qemu_argv(spec)]
        with open(rundir / "qemu.err", "w") as err:
            # -daemonize: QEMU detaches (own session) once it has started; its exit
            # status says whether it did
            proc = subprocess.run(
                argv,
                cwd=rundir,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                timeout=START_TIMEOUT,
                start_new_session=True,
                check=False,
            )
        if proc.returncode != 0 or not pidfile.exists():
            lines = (rundir / "qemu.err").read_text(errors="replace").strip().splitlines()
            raise ipl.IplError(
                f"QEMU did not start (exit {proc.returncode}): {lines[-1] if lines else ''}"
            )
        pid = int(pidfile.read_text().split()[0])
        st = _proc_stat(pid)
        if st is None:
            raise ipl.IplError(f"QEMU (pid {pid}) ended at once; see qemu.err")
    except (ipl.IplError, OSError, subprocess.SubprocessError, ValueError) as exc:
        for tap in taps:
            vswitch.del_tap(ns, tap)
        if isinstance(exc, ipl.IplError):
            raise
        raise ipl.IplError(str(exc)) from exc
    s.users[userid]["guest"] = {
        "pid": pid,
        "start": st[1],
        "netns": ns,
        "taps": taps,
        "deadline": None,
    }
    s.dirty = True
    console_line(s.root, userid, f"IPL {ipl.IPL_DEVICE}: QEMU pid {pid}, cmdline: {cmdline}")


# --- SIGNAL, logoff, the reaper --------------------------------------------------------------
def powerdown(s: Session, userid: str, within: int) -> None:
    """SIGNAL SHUTDOWN: ask the guest to shut down (QMP system_powerdown, which QEMU
    delivers as the signal-quiesce event); CP logs it off `within` seconds later at the
    latest (see `reap`)."""
    rec = s.users[userid]["guest"]
    rec["deadline"] = time.time() + within
    s.dirty = True
    try:
        qmp(run_dir(s.root, userid), "system_powerdown")
        console_line(s.root, userid, f"SIGNAL SHUTDOWN WITHIN {within}: system_powerdown sent")
    except (OSError, ValueError) as exc:
        console_line(s.root, userid, f"SIGNAL SHUTDOWN: QMP failed ({exc})")


def stopped(s: Session, userid: str, why: str = "") -> None:
    """Before a logoff releases the devices: the guest's QEMU is gone (killed if need be)."""
    rec = s.users[userid].pop("guest", None)
    if rec is None:
        return
    from zvmsim import vswitch

    s.dirty = True
    was_running = alive(rec)
    kill(rec)
    for tap in rec.get("taps", []):
        vswitch.del_tap(str(rec.get("netns", "")), tap)
    how = "QEMU killed" if was_running else "QEMU had ended"
    console_line(s.root, userid, f"LOGOFF ({why or 'logoff'}; {how})")


def reap(s: Session) -> None:
    """Log off every user whose guest has ended, or whose SIGNAL SHUTDOWN ran out."""
    from zvmsim import links

    now = time.time()
    for userid in [u for u, rec in s.users.items() if "guest" in rec]:
        rec = s.users[userid]["guest"]
        if not alive(rec):
            links.logoff(s, userid, "the guest stopped: QEMU exited")
        elif rec.get("deadline") is not None and now >= float(rec["deadline"]):
            links.logoff(s, userid, "no shutdown within the SIGNAL SHUTDOWN interval")


def kill_all(root: Path) -> list[int]:
    """Every guest QEMU of DIR still running in its network namespace (state or not):
    SIGKILL by PID. Returns the PIDs killed."""
    from zvmsim import vswitch

    ns = vswitch.netns_name(root)
    if not vswitch.exists(root):
        return []
    mine = str(root / GUESTS) + "/"
    killed = []
    for pid in vswitch.pids(ns):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        qemu = bool(cmdline) and cmdline[0].endswith(QEMU.encode())
        if qemu and any(mine.encode() in arg for arg in cmdline):
            st = _proc_stat(pid)
            if st is not None:
                kill({"pid": pid, "start": st[1]})
                killed.append(pid)
    return killed
