"""Tests of zvmsim's guests (a test double for the zvm backend, not product code): IPL at
XAUTOLOG, logoff following the guest, the VSWITCH network namespace, fdasd's partition table.

What needs no Linux boot is checked without one (the QEMU command line, the table read back
by the host's kernel and tools, the reaper, FORCE and SIGNAL on a stand-in process); one
smoke boot of the Debian s390x kernel and initramfs runs when they are on this machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import S390X_DISTRO
from test_zvmsim import admin, ok, run, state, vmcp

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from zvmsim import guest, ipl, loops, vswitch  # noqa: E402
from zvmsim.state import open_session  # noqa: E402

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="loop devices and namespaces need root")


def _s390x_boot() -> Path:
    """/boot of the cached s390x golden tree (install on a zvm site builds it)."""
    from sharedroot.guestos.platform import CCW
    from sharedroot.guestos.recipe import recipe_for, recipe_key
    from sharedroot.hypervisor import cache_dir
    from sharedroot.model.layout import PAPER_LAYOUT
    from sharedroot.model.types import Distro

    recipe = recipe_for(CCW, layout=PAPER_LAYOUT, hostname="s10rwmnt", distro=Distro(S390X_DISTRO))
    return cache_dir() / recipe_key(recipe) / "root" / "boot"


S390_BOOT = Path(os.environ.get("ZVMSIM_S390_BOOT") or _s390x_boot())
CONF = "sharedroot.conf"
CONF_LINE = "kernel=vmlinuz\ninitrd=initrd.img\ncmdline={}\n"

LNX227 = """USER LNX227 PASSWD 256M 1G G
  INCLUDE S10DFLT
  MDISK 01B2 FB-512 V-DISK 4096 MWV
  MDISK 01B4 3390 0001 0010 DM63CD MR PASSWD PASSWD PASSWD
  MDISK 01B5 3390 0011 0020 DM63CD MR PASSWD PASSWD PASSWD
  MDISK 01B6 3390 0031 0030 DM63CD MR PASSWD PASSWD PASSWD
"""


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "zvm"
    yield root
    if (root / "state.json").exists():
        admin(root, "cleanup")
        assert not vswitch.netns_path(root).exists()
    attached = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    assert str(tmp_path) not in attached


def console(root: Path, userid: str) -> str:
    path = root / "guests" / userid / "console.log"
    return path.read_text(errors="replace") if path.exists() else ""


def lay_boot_disk(root: Path, files: dict[str, bytes] | None) -> None:
    """S10RWMNT's 01B0 as the worker makes it: dasdfmt, fdasd -a, an ext4 file system
    holding `files` on partition 1 (None: formatted and partitioned, no file system)."""
    assert ok(root, "link", "s10rwmnt", "1b0", "11b0", "mr") == ""
    assert run(root, "chccwdev", "-e", "11b0").code == 0
    dev = "/dev/disk/by-path/ccw-0.0.11b0"
    assert run(root, "dasdfmt", "-b", "4096", "-y", "-M", "quick", dev).code == 0
    assert run(root, "fdasd", "-a", dev).code == 0
    if files is not None:
        tree = root.parent / "boot-tree"
        shutil.rmtree(tree, ignore_errors=True)
        tree.mkdir()
        for name, data in files.items():
            (tree / name).write_bytes(data)
        r = run(root, "mke2fs", "-q", "-t", "ext4", "-d", str(tree), f"{dev}-part1")
        assert r.code == 0, r
    assert run(root, "chccwdev", "-d", "11b0").code == 0
    ok(root, "detach", "11b0")


def stand_in(root: Path) -> subprocess.Popen[bytes]:
    """A process standing in for a guest's QEMU (a copy of sleep named like QEMU, under
    DIR/guests, so cleanup's search for stray guests finds it too)."""
    exe = root / "guests" / "bin" / ipl.QEMU
    if not exe.exists():  # a second stand-in reuses it: a running one cannot be rewritten
        exe.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shutil.which("sleep") or "/bin/sleep", exe)
    return subprocess.Popen(
        ["nsenter", f"--net={vswitch.netns_path(root)}", "--", str(exe), "300"],
        start_new_session=True,
    )


def adopt(root: Path, userid: str, proc: subprocess.Popen[bytes]) -> None:
    """Record `proc` as `userid`'s running guest, as a successful IPL does."""
    deadline = time.monotonic() + 5
    while Path(f"/proc/{proc.pid}/cmdline").read_bytes().find(ipl.QEMU.encode()) < 0:
        assert time.monotonic() < deadline
        time.sleep(0.01)  # nsenter has not exec'd the stand-in yet
    st = guest._proc_stat(proc.pid)
    assert st is not None
    with open_session(root) as s:
        s.users[userid]["guest"] = {
            "pid": proc.pid,
            "start": st[1],
            "netns": vswitch.netns_name(root),
            "taps": [],
            "deadline": None,
        }
        s.dirty = True


def drive_options(argv: list[str]) -> dict[str, dict[str, str]]:
    out = {}
    for i, arg in enumerate(argv):
        if arg == "-drive":
            opts = dict(kv.split("=", 1) for kv in argv[i + 1].split(","))
            out[opts["id"]] = opts
    return out


# --- the QEMU command line -----------------------------------------------------------------
def test_qemu_command_line_from_the_directory_entry(sim: Path, tmp_path: Path) -> None:
    entry = tmp_path / "lnx227.direct"
    entry.write_text(LNX227)
    assert admin(sim, "apply-direct", str(entry)).code == 0
    vdisk = sim / "disks" / "LNX227" / "01B2.vdisk"
    vdisk.parent.mkdir(parents=True, exist_ok=True)
    vdisk.write_bytes(b"old swap contents" * 1000)
    ok(sim, "xautolog", "lnx227")
    # the gold 01B0 (S10GOLD 21B0) is empty: logged on with its devices, no guest
    assert "IPL 01B0 failed: no Linux file system on 01B0" in console(sim, "LNX227")
    assert ok(sim, "q", "lnx227") == "LNX227   - DSC\n"
    devices = state(sim)["devices"]["LNX227"]

    with open_session(sim) as s:
        assert not guest.running(s, "LNX227")
        spec = guest.spec_for(s, "LNX227", Path("/k"), Path("/i"), "root=/dev/x ro")
    argv = ipl.qemu_argv(spec)
    assert argv[:22] == [
        "qemu-system-s390x",
        "-machine",
        "s390-ccw-virtio",
        "-accel",
        "tcg",
        "-nodefaults",
        "-display",
        "none",
        "-no-user-config",
        "-m",
        "256M",
        "-smp",
        "1",
        "-no-reboot",
        "-name",
        "LNX227",
        "-kernel",
        "/k",
        "-initrd",
        "/i",
        "-append",
        "root=/dev/x ro",
    ]
    drives = drive_options(argv)
    # every DASD device: own MDISKs, the profile's LINKs, the V-DISK
    assert sorted(drives) == sorted(f"d{v.lower()}" for v in devices)
    assert drives["d01b1"]["file"] == str(sim / "disks" / "S10GOLD" / "21B1.img")
    assert drives["d01b1"]["readonly"] == "on"
    assert drives["d0191"]["readonly"] == "on"  # LINK CMSCLONE 192 191 RR
    assert drives["d01b4"]["file"] == str(sim / "disks" / "LNX227" / "01B4.img")
    assert drives["d01b4"]["readonly"] == "off"
    assert drives["d01b2"]["file"] == str(vdisk)
    assert all(d["format"] == "raw" and d["if"] == "none" for d in drives.values())
    assert "virtio-blk-ccw,drive=d01b1,devno=fe.0.01b1" in argv
    i = argv.index("-netdev")
    assert argv[i + 1] == "tap,id=n0600,ifname=lnx227-0600,script=no,downscript=no"
    mac = ipl.mac_of("LNX227", "0600")
    assert argv[i + 3] == f"virtio-net-ccw,netdev=n0600,devno=fe.0.0600,mac={mac}"
    assert mac == ipl.mac_of("LNX227", "0600") != ipl.mac_of("LNX226", "0600")
    run_dir = sim / "guests" / "LNX227"
    assert argv[argv.index("-serial") + 1] == "chardev:con"
    assert f"file,id=con,path={run_dir / 'console.log'},append=on" in argv
    assert argv[argv.index("-qmp") + 1].endswith("qmp.sock,server=on,wait=off")
    assert argv[argv.index("-pidfile") + 1] == str(run_dir / "qemu.pid")
    assert argv[-1] == "-daemonize"

    # the V-DISK is new at each logon, as SWAPGEN leaves it: partition 1 is swap
    assert b"old swap" not in vdisk.read_bytes()
    assert vdisk.stat().st_size == 4096 * 512
    found = subprocess.run(
        ["blkid", "-p", "-o", "export", str(vdisk)], capture_output=True, text=True
    ).stdout
    assert "PTTYPE=dos" in found
    found = subprocess.run(
        ["blkid", "-p", "-O", str(loops.PART_START), "-o", "export", str(vdisk)],
        capture_output=True,
        text=True,
    ).stdout
    assert "TYPE=swap" in found


# --- fdasd ---------------------------------------------------------------------------------
def test_fdasd_writes_a_dos_table_the_kernel_reads(sim: Path) -> None:
    ok(sim, "link", "s10gold", "11b1", "2b1", "mr")
    assert run(sim, "chccwdev", "-e", "2b1").code == 0
    dev = "/dev/disk/by-path/ccw-0.0.02b1"
    assert run(sim, "dasdfmt", "-b", "4096", "-y", "-l", "GOLD01", dev).code == 0
    assert run(sim, "fdasd", "-a", dev).code == 0
    image = sim / "disks" / "S10GOLD" / "11B1.img"
    size = image.stat().st_size
    sectors = (size - 98304) // 512
    data = image.read_bytes()[:98304]
    assert data[510:512] == b"\x55\xaa"
    assert data[8192:8206] == "VOL1VOL1GOLD01".encode("cp500")  # the label stays
    found = subprocess.run(["blkid", "-p", "-o", "export", str(image)], capture_output=True)
    assert b"PTTYPE=dos" in found.stdout
    table = subprocess.run(
        ["partx", "-g", "-o", "NR,START,SECTORS,TYPE", str(image)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert table == ["1", "192", str(sectors), "0x83"]
    if shutil.which("sfdisk"):
        dump = subprocess.run(["sfdisk", "-d", str(image)], capture_output=True, text=True)
        assert "start=         192" in dump.stdout and "type=83" in dump.stdout
    # the host's kernel reads it as a guest's does on a virtio disk (if it was built with
    # DOS partition support; the smoke boot shows the guest's s390x kernel reading it)
    loop = subprocess.run(
        ["losetup", "--find", "--show", "--read-only", "--partscan", str(image)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    try:
        name = Path(loop).name
        part = Path(f"/sys/block/{name}/{name}p1")
        deadline = time.monotonic() + 2
        while not part.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if part.exists():
            assert (part / "start").read_text().strip() == "192"
            assert (part / "size").read_text().strip() == str(sectors)
    finally:
        subprocess.run(["losetup", "-d", loop], check=False)
    # and the worker's -part1 device is partition 1
    assert run(sim, "mkfs.ext4", "-q", "-L", "gold", f"{dev}-part1").code == 0
    with open(image, "rb") as f:
        assert loops.read_partition(f.fileno()) == (98304, sectors * 512)
    found = subprocess.run(
        ["blkid", "-p", "-O", "98304", "-o", "export", str(image)], capture_output=True
    )
    assert b"LABEL=gold" in found.stdout
    assert run(sim, "chccwdev", "-d", "2b1").code == 0


# --- what does not boot --------------------------------------------------------------------
def test_a_01b0_without_an_s390x_kernel_boots_nothing(sim: Path) -> None:
    def xautolog_fails(why: str) -> None:
        before = console(sim, "S10RWMNT")
        assert ok(sim, "xautolog", "s10rwmnt").startswith("Command accepted")
        new = console(sim, "S10RWMNT")[len(before) :]
        assert f"IPL 01B0 failed: {why}" in new, new
        st = state(sim)
        assert "S10RWMNT" in st["logged_on"] and "01B7" in st["devices"]["S10RWMNT"]
        with open_session(sim) as s:
            assert not guest.running(s, "S10RWMNT")
        # nothing runs, so nothing answers the signal: logged off at once, as before
        out = ok(sim, "signal", "shutdown", "s10rwmnt", "within", "30")
        assert out.startswith("HCPSIG2113I User S10RWMNT has reported successful termination")
        assert vmcp(sim, "q", "s10rwmnt").code == 1

    xautolog_fails("no Linux file system on 01B0")
    lay_boot_disk(sim, None)
    xautolog_fails("no Linux file system on partition 1 of 01B0")
    lay_boot_disk(sim, {"hello": b"no boot record"})
    xautolog_fails("01B0 holds no /sharedroot.conf")
    bzimage = bytearray(4096)
    bzimage[0:2] = b"MZ"
    bzimage[0x202:0x206] = b"HdrS"
    conf = b"kernel=vmlinuz\ninitrd=initrd.img\ncmdline=root=/dev/vda1 ro\n"
    lay_boot_disk(sim, {CONF: conf, "vmlinuz": bytes(bzimage), "initrd.img": b"x" * 100})
    xautolog_fails("/vmlinuz is an x86 bzImage, not an s390x kernel")
    lay_boot_disk(sim, {CONF: b"kernel=vmlinuz\n", "vmlinuz": b"x"})
    xautolog_fails("/sharedroot.conf names no initrd, no cmdline")
    # "ipl": false: logged on with its devices, no IPL tried
    admin(sim, "set", "ipl", "false")
    before = console(sim, "S10RWMNT")
    ok(sim, "xautolog", "s10rwmnt")
    assert console(sim, "S10RWMNT") == before
    assert ok(sim, "q", "s10rwmnt") == "S10RWMNT - DSC\n"


# --- logoff follows the guest --------------------------------------------------------------
def test_the_reaper_logs_off_a_user_whose_guest_ended(sim: Path) -> None:
    ok(sim, "xautolog", "s10rwmnt")
    proc = stand_in(sim)
    try:
        adopt(sim, "S10RWMNT", proc)
        assert ok(sim, "q", "s10rwmnt") == "S10RWMNT - DSC\n"
        assert "S10RWMNT - DSC" in ok(sim, "q", "names")
        os.kill(proc.pid, signal.SIGTERM)  # the guest powers off by itself
        proc.wait(timeout=10)
        r = vmcp(sim, "q", "s10rwmnt")
        assert (r.code, r.out) == (1, "HCPCQU045E S10RWMNT not logged on\n")
        assert "S10RWMNT" not in ok(sim, "q", "names")
        assert "S10RWMNT" not in state(sim)["devices"]
        assert "LOGOFF (the guest stopped: QEMU exited" in console(sim, "S10RWMNT")
        # its minidisks are free again: the worker links one R/W
        assert ok(sim, "link", "s10rwmnt", "1b1", "11b1", "mw") == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_signal_and_force_stop_the_guest_process(sim: Path) -> None:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        # FORCE: SIGKILL by PID, logged off at once
        ok(sim, "xautolog", "s10rwmnt")
        procs.append(stand_in(sim))
        adopt(sim, "S10RWMNT", procs[-1])
        out = ok(sim, "force", "s10rwmnt", "immed")
        assert out == "USER DSC   LOGOFF AS  S10RWMNT USERS = 1    FORCED BY LNXCLONE\n"
        assert procs[-1].wait(timeout=10) == -signal.SIGKILL
        assert vmcp(sim, "q", "s10rwmnt").code == 1
        assert "LOGOFF (FORCE by LNXCLONE; QEMU killed)" in console(sim, "S10RWMNT")

        # SIGNAL: answered at once; a guest that does not stop is killed WITHIN n later
        ok(sim, "xautolog", "s10rwmnt")
        procs.append(stand_in(sim))
        adopt(sim, "S10RWMNT", procs[-1])
        start = time.monotonic()
        r = vmcp(sim, "signal", "shutdown", "s10rwmnt", "within", "2")
        assert (r.code, r.out) == (0, "")
        assert time.monotonic() - start < 5
        assert ok(sim, "q", "s10rwmnt") == "S10RWMNT - DSC\n"
        assert procs[-1].poll() is None
        time.sleep(2.2)
        assert vmcp(sim, "q", "s10rwmnt").code == 1
        assert procs[-1].wait(timeout=10) == -signal.SIGKILL
        assert "no shutdown within the SIGNAL SHUTDOWN interval" in console(sim, "S10RWMNT")

        # ignore_signal: no signal, no deadline; logged on until FORCE
        admin(sim, "set", "ignore_signal", '["S10RWMNT"]')
        ok(sim, "xautolog", "s10rwmnt")
        procs.append(stand_in(sim))
        adopt(sim, "S10RWMNT", procs[-1])
        out = ok(sim, "signal", "shutdown", "s10rwmnt", "within", "1")
        assert out == "HCPSIG2115I User S10RWMNT did not respond to signal within 1 seconds\n"
        time.sleep(1.2)
        assert ok(sim, "q", "s10rwmnt") == "S10RWMNT - DSC\n"
        assert procs[-1].poll() is None
        ok(sim, "force", "s10rwmnt")
        assert procs[-1].wait(timeout=10) == -signal.SIGKILL
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


# --- the VSWITCH ---------------------------------------------------------------------------
def test_the_vswitch_namespace_and_cleanup(tmp_path: Path) -> None:
    root = tmp_path / "zvm"
    assert run(root, "true").code == 0
    ns = vswitch.netns_name(root)
    path = Path("/run/netns") / ns
    assert ns.startswith("zvmsim-") and len(ns) == len("zvmsim-") + 8 and vswitch.exists(root)
    # the worker's command runs in it, beside lo and VSW1's bridge at the paper's gateway
    r = run(root, "readlink", "/proc/self/ns/net")
    assert r.out.strip() == f"net:[{os.stat(path).st_ino}]"
    links = json.loads(run(root, "ip", "-j", "addr", "show").out)
    addrs = {
        ln["ifname"]: [f"{a['local']}/{a['prefixlen']}" for a in ln["addr_info"]] for ln in links
    }
    assert "129.40.179.254/24" in addrs["vsw1"] and "127.0.0.1/8" in addrs["lo"]
    assert admin(root, "set", "vswitch", '{"address": "10.11.12.1/24"}').code == 0
    shown = run(root, "ip", "-4", "-o", "addr", "show", "dev", "vsw1").out
    assert "10.11.12.1/24" in shown and "129.40.179.254" not in shown

    # cleanup kills every guest QEMU of DIR (a stray one too) and deletes the namespace
    ok(root, "xautolog", "s10rwmnt")
    recorded, stray = stand_in(root), stand_in(root)
    try:
        adopt(root, "S10RWMNT", recorded)
        assert admin(root, "cleanup").code == 0
        assert recorded.wait(timeout=10) == -signal.SIGKILL
        assert stray.wait(timeout=10) == -signal.SIGKILL
        assert not path.exists() and not (vswitch.REGISTRY / ns).exists()
        assert "S10RWMNT" not in json.loads(admin(root, "state").out)["logged_on"]
    finally:
        for p in (recorded, stray):
            if p.poll() is None:
                p.kill()
                p.wait()
    admin(root, "cleanup")
    assert not path.exists()

    # the namespace of a DIR that was removed without cleanup goes when another is made
    gone = tmp_path / "gone"
    assert run(gone, "true").code == 0
    gone_ns = Path("/run/netns") / vswitch.netns_name(gone)
    assert gone_ns.exists()
    shutil.rmtree(gone)
    other = tmp_path / "other"
    assert run(other, "true").code == 0
    assert not gone_ns.exists()
    admin(other, "cleanup")


# --- a real boot ---------------------------------------------------------------------------
def _s390_boot_files() -> tuple[Path, Path] | None:
    kernels = sorted(S390_BOOT.glob("vmlinuz-*")) if S390_BOOT.is_dir() else []
    if not kernels or shutil.which(ipl.QEMU) is None:
        return None
    initrd = S390_BOOT / kernels[-1].name.replace("vmlinuz-", "initrd.img-")
    return (kernels[-1], initrd) if initrd.exists() else None


@pytest.mark.boot
@pytest.mark.skipif(_s390_boot_files() is None, reason="no s390x kernel+initrd or QEMU here")
def test_smoke_boot_of_an_s390x_kernel(sim: Path) -> None:
    found = _s390_boot_files()
    assert found is not None
    kernel, initrd = found
    files = {"vmlinuz": kernel.read_bytes(), "initrd.img": initrd.read_bytes()}

    # the initramfs finds 01B0's partition 1 by path, mounts it as root, finds no init,
    # panics and reboots (panic=1): -no-reboot ends QEMU, the user is logged off by itself
    conf = CONF_LINE.format("root=/dev/disk/by-path/ccw-0.0.01b0-part1 ro panic=1").encode()
    lay_boot_disk(sim, {CONF: conf, **files})
    ok(sim, "xautolog", "s10rwmnt")
    with open_session(sim) as s:
        assert guest.running(s, "S10RWMNT")
        rec = dict(s.users["S10RWMNT"]["guest"])
    deadline = time.monotonic() + 90
    while vmcp(sim, "q", "s10rwmnt").code == 0:
        assert time.monotonic() < deadline, console(sim, "S10RWMNT")[-3000:]
        time.sleep(0.5)
    text = console(sim, "S10RWMNT")
    assert "Linux version" in text
    assert re.search(r" (vd[a-z]+): \1\d", text), "the guest's kernel found no partition"
    assert re.search(r"EXT4-fs \(vd[a-z]+1\): mounted filesystem", text), text[-3000:]
    assert "LOGOFF (the guest stopped: QEMU exited" in text
    assert not guest.alive(rec)

    # SIGNAL SHUTDOWN reaches a running guest (QMP system_powerdown) and it stops
    conf = CONF_LINE.format("rdinit=/bin/sh").encode()
    lay_boot_disk(sim, {CONF: conf, **files})
    ok(sim, "xautolog", "s10rwmnt")
    deadline = time.monotonic() + 60
    while "Run /bin/sh as init process" not in console(sim, "S10RWMNT").split("IPL 01B0")[-1]:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    start = time.monotonic()
    assert ok(sim, "signal", "shutdown", "s10rwmnt", "within", "60") == ""
    while vmcp(sim, "q", "s10rwmnt").code == 0:
        assert time.monotonic() - start < 30, console(sim, "S10RWMNT")[-2000:]
        time.sleep(0.5)
    assert "system_powerdown sent" in console(sim, "S10RWMNT")
