"""findself: a guest takes its identity from its parm file at every boot (boot.findself).

The paper's boot.findself links the guest's 191 disk (CMSCLONE 192), reads
`<USERID> PARM-S10` and sed-edits hostname, hosts and the ifcfg file.  Here the guest
learns its user ID from the hypervisor, mounts the admin disk read-only, validates the
parm file with identity_from_parm and writes each file whole, only when the identity
differs from what it last applied (recorded in /etc/sharedroot/identity).  A guest that
is a new clone (another guest's record, or none) also gets its own machine-id and SSH
host keys.

Two platforms (`--platform`, the unit names its backend's; by default from the machine):
- virtio (the local backend's QEMU): the user ID is the SMBIOS serial (x86_64) or the
  QEMU guest name in /proc/sysinfo (s390x), the admin disk the virtio disk with serial
  0191, an ext filesystem.
- ccw (s390x under z/VM or the CP emulator): the paper's way, in zvmguest: the user ID
  from `vmcp q userid` or /proc/sysinfo, the 0191 CMS disk read with cmsfs-fuse, the
  parm file's OSA card grouped with chzdev.

This module reads and decides; findself_apply writes the files.  Runs inside guests
from a systemd unit, before the network and sshd start: standard library,
sharedroot.model/errors/run and its guestos siblings only.  Never fails the boot: a bad
parm file, no parm file or no admin disk is logged and the previous identity is kept.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import stat
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sharedroot.errors import InputError, SharedrootError
from sharedroot.guestos import zvmguest
from sharedroot.guestos.findself_apply import Log, apply_identity, read_or_none, write_if_changed
from sharedroot.model.parm import Identity, identity_from_parm
from sharedroot.model.types import DeviceBus
from sharedroot.model.types import guest_name as check_guest_name
from sharedroot.run import CommandError, run

UNIT_NAME = "sharedroot-findself.service"
ADMIN_ADDRESS = "0191"
ADMIN_DEVICE = f"/dev/disk/by-id/virtio-{ADMIN_ADDRESS}"
PARM_SUFFIX = ".PARM-S10"
SERIAL_FILE = "sys/class/dmi/id/product_serial"
RECORD_FILE = "etc/sharedroot/identity"
MAX_PARM_BYTES = 64 * 1024


def _print(line: str) -> None:
    # Under systemd stdout goes to the journal; flush so lines keep their order.
    print(line, flush=True)


@dataclass
class Result:
    """What one run did: `changes` one line each; `problem` why nothing was applied."""

    guest: str | None = None
    identity: Identity | None = None
    changes: list[str] = field(default_factory=list)
    problem: str | None = None
    interface: str | None = None  # the parm file's network card, where findself found it


def machine_platform() -> DeviceBus:
    """ccw on s390x (z/VM, or QEMU's s390x under the CP emulator), else virtio."""
    return DeviceBus.CCW if os.uname().machine == "s390x" else DeviceBus.VIRTIO


def unit_text(pythonpath: str, platform: DeviceBus) -> str:
    """The systemd unit that runs findself early at every boot.

    Ordering: after local-fs.target (on read-only clones /etc is already /local/etc,
    bound before PID 1; /var is mounted), before anything that reads the hostname,
    the network configuration (networkd, ifupdown or NetworkManager), resolv.conf or
    the host keys.  It is Before=sysinit.target so every ordinary service starts
    after it.  It is also before
    systemd-machine-id-commit.service, so on a first boot it sees systemd's fresh
    transient machine-id still mounted over /etc/machine-id and leaves it alone.
    WantedBy=sysinit.target (Wants, not Requires): a failure never stops the boot.

    On s390x findself brings the 0191 disk (and the OSA card) online itself and waits
    for udev's by-path link, so it needs udevd running (after systemd-udevd.service and
    the coldplug trigger), and cmsfs-fuse needs /dev/fuse (modprobe@fuse.service; the
    code loads the module too when it is missing).  The platform is the backend's, not
    the machine's: an s390x guest of the local backend has an ext admin disk, as x86.
    """
    if not re.fullmatch(r"/[A-Za-z0-9._/:+-]*", pythonpath):
        raise InputError(f"PYTHONPATH {pythonpath!r}: must be absolute paths of plain characters")
    return f"""\
[Unit]
Description=sharedroot findself: hostname and address from this guest's parm file
DefaultDependencies=no
After=local-fs.target systemd-remount-fs.service
After=systemd-udevd.service systemd-udev-trigger.service modprobe@fuse.service
Wants=modprobe@fuse.service
Before=sysinit.target shutdown.target systemd-machine-id-commit.service
Before=network-pre.target systemd-networkd.service networking.service
Before=NetworkManager.service
Before=systemd-resolved.service systemd-hostnamed.service ssh.service
Wants=network-pre.target
Conflicts=shutdown.target

[Service]
Type=oneshot
RemainAfterExit=yes
Environment=PYTHONPATH={pythonpath}
# The root may be read-only: no __pycache__ writes.
Environment=PYTHONDONTWRITEBYTECODE=1
ExecStart=/usr/bin/python3 -m sharedroot.guestos.findself --platform {DeviceBus(platform)}
StandardOutput=journal+console
# Two TCG guests beside four others on two cores ran past 90 s (in ssh-keygen); a run
# cut short is redone whole at the next boot.
TimeoutStartSec=300

[Install]
WantedBy=sysinit.target
"""


# --- reading -----------------------------------------------------------------------


def read_guest_name(root: Path) -> str:
    """This guest's z/VM-style user ID, as QEMU gives it: -smbios type=1,serial=GUEST,
    or on s390x (no SMBIOS) -name GUEST, which /proc/sysinfo shows as `VM00 Name:`."""
    path = root / SERIAL_FILE
    if not path.exists() and (root / zvmguest.SYSINFO).exists():
        return zvmguest.read_sysinfo_name(root / zvmguest.SYSINFO, f"/{zvmguest.SYSINFO}")
    try:
        raw = path.read_text(errors="replace")
    except OSError as exc:
        raise InputError(f"no guest name: cannot read /{SERIAL_FILE} ({exc.strerror})") from None
    # sysfs ends the value with one line end; nothing else is taken off.
    return check_guest_name(raw.removesuffix("\n"), f"guest name in /{SERIAL_FILE}")


def read_parm(parm_dir: Path, guest: str) -> tuple[str, str]:
    """(file name, text) of `<GUEST>.PARM-S10` on the admin disk; InputError if unusable."""
    name = f"{guest}{PARM_SUFFIX}"
    try:
        entries = os.listdir(parm_dir)
    except OSError as exc:
        raise InputError(f"admin disk at {parm_dir}: {exc.strerror}") from None
    if name not in entries:
        # CMS file names are upper case, but a hand-made disk may differ in case.
        matches = [e for e in entries if e.upper() == name]
        if not matches:
            raise InputError(f"no parm file {name} on the admin disk")
        name = sorted(matches)[0]
    try:
        # No symlinks: a link on the shared disk could point at this guest's own secrets.
        fd = os.open(parm_dir / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise InputError(f"parm file {name}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InputError(f"parm file {name}: not a regular file")
        data = f.read(MAX_PARM_BYTES + 1)
    if len(data) > MAX_PARM_BYTES:
        raise InputError(f"parm file {name}: larger than {MAX_PARM_BYTES} bytes")
    try:
        return name, data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"parm file {name}: not UTF-8 text") from None


def _record(guest: str, identity: Identity) -> dict[str, object]:
    return {
        "guest": guest,
        "hostname": identity.hostname,
        "ip": identity.ip,
        "prefix": identity.prefix,
        "gateway": identity.gateway,
        "nameserver": identity.nameserver,
    }


def _load_record(root: Path, log: Log) -> dict[str, object] | None:
    path = root / RECORD_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log(f"findself: ignoring unreadable /{RECORD_FILE}: {exc}")
        return None
    return data if isinstance(data, dict) else None


# --- the core ----------------------------------------------------------------------


def findself(
    root: Path = Path("/"),
    *,
    guest_name: str | None = None,
    parm_dir: Path | None = None,
    platform: DeviceBus = DeviceBus.VIRTIO,
    sysinfo: Path | None = None,
    log: Log = _print,
) -> Result:
    """Apply this guest's parm file to the system at `root`; see the module docstring.

    Writes nothing when the guest name or the parm file is missing or invalid.  When
    the identity equals the recorded one, changes nothing, even files edited by hand
    since (the admin's edits survive reboots; a new parm file rewrites them).

    On ccw the user ID comes from <root>/dev/vmcp or `sysinfo` (default
    <root>/proc/sysinfo), the parm file's OSA words are checked with the rest, and the
    card is set up at every boot from the devices in <root>/sys (zvmguest.setup_nic).
    """
    platform = DeviceBus(platform)
    result = Result()

    def keep(reason: str) -> Result:
        result.problem = reason
        log(f"findself: {reason}; keeping the current identity")
        return result

    try:
        if guest_name is not None:
            guest = check_guest_name(guest_name)
        elif platform is DeviceBus.CCW:
            guest = zvmguest.read_user_id(root, log, sysinfo)
        else:
            guest = read_guest_name(root)
    except InputError as exc:
        return keep(str(exc))
    result.guest = guest
    if parm_dir is None:
        return keep(f"no admin disk ({ADMIN_ADDRESS}) for {guest}")
    try:
        name, text = read_parm(parm_dir, guest)
        identity = identity_from_parm(text)
        nic = zvmguest.nic_from_parm(text) if platform is DeviceBus.CCW else None
    except InputError as exc:
        return keep(f"{guest}: {exc}")
    result.identity = identity

    wanted = _record(guest, identity)
    if platform is DeviceBus.CCW:
        # The card is set up for this boot only (the root is shared): at every boot.
        wanted["nic"] = nic.record() if nic is not None else None
        if nic is not None:
            result.interface = zvmguest.setup_nic(root, nic, log)
    old = _load_record(root, log)
    summary = f"{identity.hostname} {identity.ip}/{identity.prefix}"
    if old == wanted:
        log(f"findself: {guest} is {summary} as recorded; nothing to do")
        return result
    new_clone = old is None or old.get("guest") != guest
    log(f"findself: {guest} from {name}: {summary}" + (" (new clone)" if new_clone else ""))

    def change(line: str) -> None:
        result.changes.append(line)
        log(f"findself: {line}")

    apply_identity(
        root, identity, new_clone=new_clone, interface=result.interface, change=change, log=log
    )
    # Last: a run cut short is redone whole at the next boot.
    write_if_changed(root / RECORD_FILE, json.dumps(wanted, indent=2) + "\n")
    return result


# --- the unit's entry --------------------------------------------------------------


def find_admin_device(device: str, wait: float) -> Path | None:
    """The admin disk's device node, waiting up to `wait` seconds for it to appear.

    The by-id link needs udev; the kernel's own /sys/block/*/serial does not, so it
    is the fallback when findself runs before udev has caught up.
    """
    deadline = time.monotonic() + wait
    while True:
        if Path(device).exists():
            return Path(device)
        if device == ADMIN_DEVICE:
            for serial in sorted(Path("/sys/block").glob("*/serial")):
                if (read_or_none(serial) or "").strip() == ADMIN_ADDRESS:
                    node = Path("/dev") / serial.parent.name
                    if node.exists():
                        return node
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.25)


@contextlib.contextmanager
def admin_disk(device: str, wait: float, log: Log) -> Iterator[Path | None]:
    """Mount the admin disk read-only on a temporary directory; None if it cannot."""
    node = find_admin_device(device, wait)
    if node is None:
        log(f"findself: no admin disk: {device} did not appear within {wait:g}s")
        yield None
        return
    # /run is a tmpfs from PID 1 on; /tmp may not be mounted this early.
    base = "/run" if os.path.isdir("/run") else None
    mnt = Path(tempfile.mkdtemp(prefix="sharedroot-findself-", dir=base))
    try:
        try:
            run(["mount", "-o", "ro,nosuid,nodev,noexec", str(node), str(mnt)])
        except CommandError as exc:
            log(f"findself: cannot mount the admin disk: {exc}")
            yield None
            return
        try:
            yield mnt
        finally:
            try:
                run(["umount", str(mnt)])
            except CommandError as exc:
                log(f"findself: cannot unmount the admin disk: {exc}")
    finally:
        with contextlib.suppress(OSError):
            mnt.rmdir()


def main(argv: Sequence[str] | None = None) -> int:
    """0 unless findself itself broke: a missing or bad parm file keeps the boot going."""
    parser = argparse.ArgumentParser(
        prog="python3 -m sharedroot.guestos.findself",
        description="Take this guest's hostname and address from its parm file.",
    )
    parser.add_argument("--root", type=Path, default=Path("/"), help="system root (default /)")
    parser.add_argument(
        "--platform",
        choices=[b.value for b in DeviceBus],
        help="virtio (local backend): the guest name QEMU gives and an ext admin disk; ccw"
        " (z/VM): the user ID, CMS disk 0191 and OSA card (default: ccw on s390x, else virtio)",
    )
    parser.add_argument(
        "--guest", help="guest name (default: the SMBIOS serial or /proc/sysinfo; on ccw vmcp)"
    )
    parser.add_argument("--parm-dir", type=Path, help="a mounted admin disk (default: mount it)")
    parser.add_argument(
        "--device",
        help=f"admin disk (default {ADMIN_DEVICE}; on ccw {zvmguest.ADMIN_DEVICE})",
    )
    parser.add_argument("--wait", type=float, default=10.0, help="seconds to wait for the disk")
    args = parser.parse_args(argv)
    platform = DeviceBus(args.platform) if args.platform else machine_platform()
    ccw = platform is DeviceBus.CCW
    device = args.device or (zvmguest.ADMIN_DEVICE if ccw else ADMIN_DEVICE)
    try:
        if args.parm_dir is not None:
            findself(args.root, guest_name=args.guest, parm_dir=args.parm_dir, platform=platform)
        else:
            disk = (
                zvmguest.admin_disk(args.root, device, args.wait, _print)
                if ccw
                else admin_disk(device, args.wait, _print)
            )
            with disk as mnt:
                findself(args.root, guest_name=args.guest, parm_dir=mnt, platform=platform)
    except (OSError, SharedrootError) as exc:
        # A real failure (disk full, I/O error): the unit shows failed, the boot goes on.
        print(f"findself: failed: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
