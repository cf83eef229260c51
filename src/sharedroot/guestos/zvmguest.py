"""findself on s390x: the guest's user ID, its 0191 CMS disk and its OSA card, as in the paper.

Under z/VM (and under the CP emulator's qemu-system-s390x) a guest learns who it is from z/VM
itself: `vmcp q userid` where the vmcp driver is loaded (/dev/vmcp), else the `VM00 Name:`
line of /proc/sysinfo (STSI 3.2.2; QEMU puts its `-name` there).  Its parm file is a CMS file
on the 0191 minidisk (an EDF volume, not a Linux filesystem), read with s390-tools'
cmsfs-fuse after `chccwdev -e`.  The parm file's ReadChannel/WriteChannel/DataChannel,
Layer2 and Portname words name the OSA card; a real OSA (a qeth group device) is grouped and
enabled with `chzdev`, a virtio-net-ccw NIC (the emulator's) needs nothing.

Every value that reaches a command line is first checked whole by a full-match rule here.
Runs inside guests: standard library and sharedroot.model/errors/run only.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from sharedroot.errors import InputError
from sharedroot.model.parm import parse_parm
from sharedroot.model.types import guest_name as check_guest_name
from sharedroot.model.types import shown
from sharedroot.run import CommandError, have, run

Log = Callable[[str], None]

ADMIN_BUS_ID = "0.0.0191"
ADMIN_DEVICE = f"/dev/disk/by-path/ccw-{ADMIN_BUS_ID}"
SYSINFO = "proc/sysinfo"  # below the system root
VMCP_DEVICE = "dev/vmcp"
CIO_IGNORE = "proc/cio_ignore"
FUSE_DEVICE = Path("/dev/fuse")
MAX_SYSINFO_BYTES = 256 * 1024
CMD_TIMEOUT = 60.0

# A ccw bus ID as Linux writes it: css 0, subchannel set 0-3, four lower-case hex digits.
_BUS_ID = re.compile(r"0\.[0-3]\.[0-9a-f]{4}")
_LAYER2 = re.compile(r"[01]")
# An OSA port name (the paper: Portname=dontcare): 1-8 letters or digits.
_PORTNAME = re.compile(r"[A-Za-z0-9]{1,8}")
_SYSINFO_KEY = "VM00 Name:"
_IFNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,14}")
# Control-unit types (sysfs `cutype`): virtio-ccw devices are 3832/<virtio id>,
# OSA-Express and HiperSockets (qeth) 1731/01 and 1731/05.
_VIRTIO_CU = "3832/"
_QETH_CU = "1731/"


# --- who am I ----------------------------------------------------------------------


def read_sysinfo_name(sysinfo: Path, where: str | None = None) -> str:
    """The user ID in /proc/sysinfo's `VM00 Name:` line (`VM00 Name:            LNX227`).

    The kernel prints the 8-byte name padded with blanks (`%-8.8s`); only blanks are
    taken off, and the line must be there exactly once.  `where` names the file in
    messages (default: its path).
    """
    where = where or str(sysinfo)
    try:
        with open(sysinfo, "rb") as f:
            data = f.read(MAX_SYSINFO_BYTES)
    except OSError as exc:
        raise InputError(f"no guest name: cannot read {where} ({exc.strerror})") from None
    text = data.decode("ascii", errors="replace")
    values = [
        line.removeprefix(_SYSINFO_KEY).strip(" ")
        for line in text.split("\n")
        if line.startswith(_SYSINFO_KEY)
    ]
    if not values:
        raise InputError(f"no guest name: {where} has no '{_SYSINFO_KEY}' line (not under z/VM?)")
    if len(values) > 1:
        raise InputError(f"no guest name: {where} has {len(values)} '{_SYSINFO_KEY}' lines")
    return check_guest_name(values[0], f"guest name in {where}")


def vmcp_user_id() -> str:
    """The user ID from CP: the first word of `vmcp q userid` (`LNX227 AT ZVMSIM1`)."""
    proc = run(["vmcp", "q", "userid"], timeout=CMD_TIMEOUT)
    first = proc.stdout.split("\n", 1)[0]
    words = first.split(" ")
    return check_guest_name(words[0], "guest name from 'vmcp q userid'")


def read_user_id(root: Path, log: Log, sysinfo: Path | None = None) -> str:
    """This guest's z/VM user ID: vmcp where /dev/vmcp exists, else /proc/sysinfo."""
    if (root / VMCP_DEVICE).exists():
        try:
            return vmcp_user_id()
        except (CommandError, InputError) as exc:
            log(f"findself: vmcp q userid: {exc}; trying /{SYSINFO}")
    if sysinfo is not None:
        return read_sysinfo_name(sysinfo)
    return read_sysinfo_name(root / SYSINFO, f"/{SYSINFO}")


# --- the parm file's OSA words -----------------------------------------------------


def check_bus_id(value: str, what: str) -> str:
    """A ccw bus ID such as 0.0.0600 (hex digits in either case; returned lower-case)."""
    if not value.isascii() or not _BUS_ID.fullmatch(value.lower()):
        raise InputError(f"{what} {shown(value)}: must be a bus ID such as 0.0.0600")
    return value.lower()


@dataclass(frozen=True)
class Nic:
    """The parm file's network card: its three channels, layer and port name."""

    read: str
    write: str | None = None
    data: str | None = None
    layer2: str | None = None
    portname: str | None = None

    def __post_init__(self) -> None:
        check_nic(self)

    def record(self) -> dict[str, str | None]:
        return {
            "read": self.read,
            "write": self.write,
            "data": self.data,
            "layer2": self.layer2,
            "portname": self.portname,
        }


def _check_words(layer2: str | None, portname: str | None) -> None:
    if layer2 is not None and not _LAYER2.fullmatch(layer2):
        raise InputError(f"Layer2 {shown(layer2)}: must be 0 or 1")
    if portname is not None and not _PORTNAME.fullmatch(portname):
        raise InputError(f"Portname {shown(portname)}: must be 1-8 letters or digits")


def check_nic(nic: Nic) -> Nic:
    """Every value against its rule; chzdev_argv calls it again right before use."""
    channels = [(nic.read, "ReadChannel"), (nic.write, "WriteChannel"), (nic.data, "DataChannel")]
    for value, what in channels:
        if value is not None and check_bus_id(value, what) != value:
            raise InputError(f"{what} {shown(value)}: must be written in lower case here")
    given = [v for v, _ in channels if v is not None]
    if len(set(given)) != len(given):
        raise InputError(f"channels {' '.join(given)}: must be different devices")
    _check_words(nic.layer2, nic.portname)
    return nic


def nic_from_parm(text: str) -> Nic | None:
    """The OSA words of a parm file, checked; None when it names no ReadChannel.

    A value that breaks its rule makes the whole parm file unusable (InputError), as a
    bad address does: the guest keeps its previous identity.
    """
    values = parse_parm(text)

    def get(key: str) -> str | None:
        value = values.get(key)
        return value if value else None

    read, write, data = get("readchannel"), get("writechannel"), get("datachannel")
    layer2, portname = get("layer2"), get("portname")
    channels = [(read, "ReadChannel"), (write, "WriteChannel"), (data, "DataChannel")]
    checked = [check_bus_id(v, what) if v is not None else None for v, what in channels]
    _check_words(layer2, portname)
    if checked[0] is None:
        if checked[1] or checked[2]:
            raise InputError("parm file: WriteChannel/DataChannel without ReadChannel")
        return None
    return Nic(checked[0], checked[1], checked[2], layer2, portname)


# --- ccw devices in sysfs ----------------------------------------------------------


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return None


def ccw_device(root: Path, bus_id: str) -> Path:
    return root / "sys/bus/ccw/devices" / check_bus_id(bus_id, "device")


def _bus_key(text: str) -> tuple[int, int] | None:
    if not _BUS_ID.fullmatch(text):
        return None
    _css, ssid, devno = text.split(".")
    return int(ssid), int(devno, 16)


def is_ignored(root: Path, bus_id: str) -> bool:
    """Whether Linux was told to ignore the device (cio_ignore=all,!condev at boot).

    /proc/cio_ignore lists the ignored devices, one `0.0.0190` or `0.0.0000-0.0.0190`
    a line (kernel drivers/s390/cio/blacklist.c).
    """
    key = _bus_key(check_bus_id(bus_id, "device"))
    try:
        text = (root / CIO_IGNORE).read_text(errors="replace")
    except OSError:
        return False
    for line in text.split("\n"):
        first, _, last = line.strip().partition("-")
        lo, hi = _bus_key(first), _bus_key(last or first)
        if lo is not None and hi is not None and key is not None and lo <= key <= hi:
            return True
    return False


class NicKind(StrEnum):
    QETH = "qeth"  # an OSA card (or HiperSockets): three channels grouped by chzdev
    VIRTIO = "virtio"  # virtio-net-ccw (QEMU, the CP emulator): one device, online already
    OTHER = "other"
    ABSENT = "absent"


def nic_kind(root: Path, bus_id: str) -> NicKind:
    """What the device at the read channel is, from its driver or control-unit type."""
    dev = ccw_device(root, bus_id)
    if not dev.is_dir():
        return NicKind.ABSENT
    driver = os.path.basename(os.readlink(dev / "driver")) if (dev / "driver").is_symlink() else ""
    cutype = (_read(dev / "cutype") or "").lower()
    if driver == "virtio_ccw" or cutype.startswith(_VIRTIO_CU):
        return NicKind.VIRTIO
    if driver == "qeth" or cutype.startswith(_QETH_CU):
        return NicKind.QETH
    return NicKind.OTHER


def _wait_for(path: Path, wait: float) -> bool:
    deadline = time.monotonic() + wait
    while not path.exists():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.25)
    return True


def unignore(root: Path, bus_id: str, wait: float, log: Log) -> bool:
    """Make a device Linux was told to ignore visible (`cio_ignore -r`); whether it exists."""
    dev = ccw_device(root, bus_id)
    if dev.exists():
        return True
    if not is_ignored(root, bus_id):
        return False
    if not have("cio_ignore"):
        log(f"findself: {bus_id} is ignored (cio_ignore) and there is no cio_ignore to free it")
        return False
    try:
        run(["cio_ignore", "-r", bus_id], timeout=CMD_TIMEOUT)
    except CommandError as exc:
        log(f"findself: {exc}")
        return False
    return _wait_for(dev, wait)


def set_online(root: Path, bus_id: str, wait: float, log: Log) -> bool:
    """Bring a ccw device online as the paper does (`chccwdev -e`); whether it is online."""
    if not unignore(root, bus_id, wait, log):
        log(f"findself: no device {bus_id}")
        return False
    online = _read(ccw_device(root, bus_id) / "online")
    if online == "1":
        return True
    try:
        run(["chccwdev", "-e", bus_id], timeout=CMD_TIMEOUT)
    except CommandError as exc:
        log(f"findself: cannot set {bus_id} online: {exc}")
        return False
    return True


def find_disk(root: Path, bus_id: str, device: str, wait: float) -> Path | None:
    """The whole disk's node: `device` (the by-path link udev makes), else the block device
    sysfs shows below the ccw device (dasdX, or vdX of virtio-blk-ccw), waiting for either."""
    dev = ccw_device(root, bus_id)
    deadline = time.monotonic() + wait
    while True:
        if Path(device).exists():
            return Path(device)
        if device == f"/dev/disk/by-path/ccw-{bus_id}":
            blocks = [*dev.glob("block/*"), *dev.glob("virtio*/block/*")]
            for block in sorted(blocks):
                node = Path("/dev") / block.name
                if node.exists():
                    return node
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.25)


# --- the CMS disk ------------------------------------------------------------------


def cmsfs_argv(node: Path, mountpoint: Path) -> list[str]:
    """cmsfs-fuse, read-only, every file converted from EBCDIC (CP1047) to ISO-8859-1.

    `-a` turns each record into a line; `-o ro` mounts read-only (cmsfs-fuse itself opens
    the disk read-write unless the kernel refuses, as it does for an R/O link).
    """
    return ["cmsfs-fuse", "-a", "-o", "ro", str(node), str(mountpoint)]


def unmount_argv(mountpoint: Path) -> list[str]:
    for prog in ("fusermount3", "fusermount"):
        if have(prog):
            return [prog, "-u", str(mountpoint)]
    return ["umount", str(mountpoint)]


def load_fuse(log: Log) -> None:
    """cmsfs-fuse needs /dev/fuse: load the module when the unit's modprobe@fuse did not."""
    if FUSE_DEVICE.exists() or not have("modprobe"):
        return
    try:
        run(["modprobe", "fuse"], timeout=CMD_TIMEOUT)
    except CommandError as exc:
        log(f"findself: {exc}")


@contextlib.contextmanager
def cms_mount(node: Path, log: Log) -> Iterator[Path | None]:
    """Mount a CMS disk with cmsfs-fuse on a temporary directory; None if it cannot."""
    if not have("cmsfs-fuse"):
        log("findself: no cmsfs-fuse (package s390-tools) to read the CMS admin disk")
        yield None
        return
    load_fuse(log)
    # /run is a tmpfs from PID 1 on; /tmp may not be mounted this early.
    base = "/run" if os.path.isdir("/run") else None
    mnt = Path(tempfile.mkdtemp(prefix="sharedroot-findself-", dir=base))
    try:
        try:
            run(cmsfs_argv(node, mnt), timeout=CMD_TIMEOUT)
        except CommandError as exc:
            log(f"findself: cannot mount the CMS admin disk: {exc}")
            if os.path.ismount(mnt):  # killed at the timeout after it had mounted
                _unmount(mnt, log)
            yield None
            return
        try:
            yield mnt
        finally:
            _unmount(mnt, log)
    finally:
        with contextlib.suppress(OSError):
            mnt.rmdir()


def _unmount(mnt: Path, log: Log) -> None:
    try:
        run(unmount_argv(mnt), timeout=CMD_TIMEOUT)
    except CommandError as exc:
        log(f"findself: cannot unmount the CMS admin disk: {exc}")


@contextlib.contextmanager
def admin_disk(
    root: Path, device: str, wait: float, log: Log, bus_id: str = ADMIN_BUS_ID
) -> Iterator[Path | None]:
    """The paper's 191 disk, online and mounted read-only with cmsfs-fuse; None if not.

    `root` is where sysfs and /proc are looked at (<root>/sys, <root>/proc).
    """
    node = None
    if set_online(root, bus_id, wait, log):
        node = find_disk(root, bus_id, device, wait)
        if node is None:
            log(f"findself: no admin disk: {device} did not appear within {wait:g}s")
    elif Path(device).exists():
        node = Path(device)  # not a ccw device here (a test image, a copied disk)
    if node is None:
        yield None
        return
    with cms_mount(node, log) as mnt:
        yield mnt


# --- the network card --------------------------------------------------------------


def chzdev_argv(nic: Nic) -> list[str]:
    """Group and enable the OSA card, for this boot only (`-a`: the root is shared and
    read-only; findself does it again at every boot from the parm file).

    Portname is passed as the paper writes it; kernels since 4.x ignore it (with a
    one-time warning), older ones need it on some OSA models.
    """
    check_nic(nic)
    if nic.write is None or nic.data is None:
        raise InputError(f"OSA {nic.read}: needs WriteChannel and DataChannel")
    argv = ["chzdev", "-e", "-a", "qeth", f"{nic.read}:{nic.write}:{nic.data}"]
    if nic.layer2 is not None:
        argv.append(f"layer2={nic.layer2}")
    if nic.portname is not None:
        argv.append(f"portname={nic.portname}")
    return argv


def interface_of(root: Path, bus_id: str) -> str | None:
    """The network interface the card at `bus_id` provides (qeth or virtio-net-ccw)."""
    group = root / "sys/bus/ccwgroup/devices" / check_bus_id(bus_id, "device")
    dev = ccw_device(root, bus_id)
    for net in [group / "net", *sorted(dev.glob("virtio*/net"))]:
        with contextlib.suppress(OSError):
            names = sorted(p.name for p in net.iterdir())
            for name in names:
                if _IFNAME.fullmatch(name):
                    return name
    return None


def setup_nic(root: Path, nic: Nic, log: Log, wait: float = 5.0) -> str | None:
    """Make the parm file's card usable; the interface it provides, when known.

    A virtio-net-ccw NIC at the read channel is used as it is.  An OSA card is grouped
    with chzdev unless its group device is online already.  Failures are logged: the
    addresses are still written, for whichever card comes up.
    """
    if not unignore(root, nic.read, wait, log):
        log(f"findself: ReadChannel {nic.read}: no such device; network card left alone")
        return None
    kind = nic_kind(root, nic.read)
    group = root / "sys/bus/ccwgroup/devices" / nic.read
    grouped = kind is NicKind.QETH and _read(group / "online") == "1"
    if kind is NicKind.QETH and not grouped:
        try:
            argv = chzdev_argv(nic)
            run(argv, timeout=CMD_TIMEOUT)
        except (InputError, CommandError) as exc:
            log(f"findself: OSA {nic.read} not enabled: {exc}")
            return None
        log(f"findself: OSA {nic.read}: {' '.join(argv)}")
        return interface_of(root, nic.read)  # chzdev waited for udev itself
    if kind is NicKind.OTHER:
        log(f"findself: ReadChannel {nic.read}: not an OSA card; left alone")
    layer2 = _read(group / "layer2") if grouped else None
    if nic.layer2 is not None and layer2 is not None and layer2 != nic.layer2:
        log(f"findself: OSA {nic.read} is online with layer2={layer2}, not {nic.layer2}")
    # Coldplugged at boot: let udev finish renaming it (eth0 -> enc600) first.
    settle(log)
    return interface_of(root, nic.read)


def settle(log: Log) -> None:
    """Wait (bounded) until udev has handled the events queued so far."""
    if not have("udevadm"):
        return
    try:
        run(["udevadm", "settle", "--timeout=10"], timeout=CMD_TIMEOUT)
    except CommandError as exc:
        log(f"findself: {exc}")
