"""Tests of zvmsim, the CP emulator (a test double for the zvm backend, not product code).

Every program runs the way the backend runs it: `scripts/zvmsim DIR -- PROGRAM ...` in a
subprocess, on real files and real loop devices.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
LAUNCHER = REPO / "scripts" / "zvmsim"
CYL = 737280

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="loop devices and mounts need root")


@dataclass
class Ran:
    code: int
    out: str
    err: str


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "zvm"
    yield root
    if (root / "state.json").exists():
        admin(root, "cleanup")
    attached = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    assert str(tmp_path) not in attached


def run(root: Path, *cmd: str, stdin: str | None = None) -> Ran:
    p = subprocess.run(
        [str(LAUNCHER), str(root), "--", *cmd],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=60,
    )
    return Ran(p.returncode, p.stdout, p.stderr)


def vmcp(root: Path, *words: str) -> Ran:
    return run(root, "vmcp", *words)


def ok(root: Path, *words: str) -> str:
    r = vmcp(root, *words)
    assert r.code == 0, (words, r)
    return r.out


def admin(root: Path, *args: str) -> Ran:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    p = subprocess.run(
        [sys.executable, "-m", "zvmsim.admin", str(root), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    return Ran(p.returncode, p.stdout, p.stderr)


def state(root: Path) -> dict[str, Any]:
    data = json.loads(admin(root, "state").out)
    assert isinstance(data, dict)
    return data


# --- vmcp ----------------------------------------------------------------------------------
def test_vmcp_contract(sim: Path) -> None:
    r = vmcp(sim, "q", "userid")
    assert (r.code, r.out, r.err) == (0, "LNXCLONE AT ZVMSIM1\n", "")
    r = vmcp(sim, "q", "lnx227")
    assert r.code == 1
    assert r.out == "HCPCQV003E Invalid option - LNX227\n"
    assert r.err == "Error: non-zero CP response for command 'q lnx227': #3\n"
    r = vmcp(sim, "-k", "q", "userid")
    assert (r.code, r.out) == (1, "HCPCMD001E Unknown CP command: q\n")
    for bad in ("100", "2m", "4097x", "k"):
        r = vmcp(sim, "-b", bad, "q", "userid")
        assert r.code == 4
        assert r.err == "Error: Invalid buffersize (needs to be between 4096 and 1048576)\n"
    assert vmcp(sim, "-b", "4k", "q", "userid").code == 0
    assert vmcp(sim, "--buffer", "1M", "q", "userid").code == 0
    r = vmcp(sim, "q", "x" * 239)
    assert r.code == 4
    assert r.err == "Error: Command too long (cannot be longer than 240 characters)\n"
    assert vmcp(sim, "q", "x" * 238).code == 1  # 240 characters reach CP
    assert vmcp(sim, "--help").code == 0
    assert vmcp(sim, "-v").code == 0
    assert vmcp(sim).code == 4
    assert vmcp(sim, "-x", "q").code == 4
    # words joined by single spaces
    assert vmcp(sim, "q", "  userid").out == "LNXCLONE AT ZVMSIM1\n"


def test_vmcp_truncation_and_cp_log(sim: Path) -> None:
    assert admin(sim, "populate", "600").code == 0
    r = vmcp(sim, "-b", "4096", "q", "names")
    assert r.code == 2
    assert len(r.out.encode()) == 4096
    assert re.fullmatch(
        r"Error: output \(\d+ bytes\) was truncated, try --buffer to increase size\n", r.err
    )
    full = ok(sim, "-b", "1M", "q", "n")
    entries = [e.strip() for line in full.splitlines() for e in line.split(" , ")]
    assert len(entries) == 301 and "LNXCLONE - 0009" in entries and "LNX0300  - DSC" in entries
    assert all(len(line.split(" , ")) <= 4 for line in full.splitlines())
    vmcp(sim, "-k", "q", "userid")
    log = (sim / "cp.log").read_text().splitlines()
    assert log[-3:] == ["LNXCLONE\tQ NAMES\t0", "LNXCLONE\tQ N\t0", "LNXCLONE\tq userid\t1"]


# --- QUERY ---------------------------------------------------------------------------------
def test_query_users_and_devices(sim: Path) -> None:
    r = vmcp(sim, "q", "s10gold")
    assert (r.code, r.out) == (1, "HCPCQU045E S10GOLD not logged on\n")
    assert "#45" in r.err
    assert vmcp(sim, "q", "user", "lnx999").out == "HCPCQV003E Invalid option - LNX999\n"
    assert ok(sim, "q", "lnxclone") == "LNXCLONE - 0009\n"
    out = ok(sim, "xautolog", "s10rwmnt", "synch")
    assert out == "Command accepted\nAUTO LOGON  ***       S10RWMNT USERS = 2\n"
    assert ok(sim, "query", "user", "s10rwmnt") == "S10RWMNT - DSC\n"
    lines = ok(sim, "q", "v", "dasd").splitlines()
    assert lines == sorted(lines)
    assert "DASD 01B0 3390 DM6364 R/W         20 CYL ON DASD  6364 SUBCHANNEL = 0005" in lines
    assert any(
        re.fullmatch(r"DASD 0191 3390 DM6364 R/O +20 CYL ON DASD  6364 SUBCHANNEL = \w{4}", ln)
        for ln in lines
    )
    # 1-4 hex digits are a device number
    assert ok(sim, "q", "1b1").startswith("DASD 01B1 3390 DM6364 R/W         40 CYL")
    r = vmcp(sim, "q", "v", "0999")
    assert (r.code, r.out) == (1, "HCPQVD040E Device 0999 does not exist\n")
    assert vmcp(sim, "q", "abc").out == "HCPQVD040E Device 0ABC does not exist\n"
    assert "Currently: BG" in ok(sim, "q", "privclas")
    names = ok(sim, "q", "names")
    assert names == "LNXCLONE - 0009 , S10RWMNT - DSC\n"
    assert vmcp(sim, "frobnicate").out == "HCPCMD001E Unknown CP command: FROBNICATE\n"


# --- LINK ----------------------------------------------------------------------------------
def test_link_modes(sim: Path) -> None:
    assert ok(sim, "link", "s10gold", "21b0", "11b0", "rr") == ""
    assert " R/O " in ok(sim, "q", "v", "11b0")
    assert ok(sim, "link", "to", "s10gold", "11b0", "as", "1100", "mr") == ""
    assert " R/W " in ok(sim, "q", "v", "1100")
    # MR with a writer: linked read-only, and the message says so
    r = vmcp(sim, "link", "s10gold", "11b0", "1101", "mr")
    assert (r.code, r.out) == (1, "HCPLNM102E DASD 1101 forced R/O; R/W by LNXCLONE\n")
    assert "#102" in r.err
    assert " R/O " in ok(sim, "q", "v", "1101")
    # M, W, R refused while someone writes: no device
    for vdev, mode in (("1102", "m"), ("1103", "w"), ("1104", "r")):
        r = vmcp(sim, "link", "s10gold", "11b0", vdev, mode)
        assert r.code == 1 and " not linked; R/W by LNXCLONE" in r.out, r
        assert r.out.startswith("HCPLNM106E S10GOLD 11B0")
        assert vmcp(sim, "q", "v", vdev).code == 1
    assert ok(sim, "link", "s10gold", "11b0", "1105", "mw") == ""
    assert " R/W " in ok(sim, "q", "v", "1105")
    # W refused when anybody holds it; WR forced R/O then
    ok(sim, "link", "s10gold", "21b1", "2101", "rr")
    r = vmcp(sim, "link", "s10gold", "21b1", "2102", "w")
    assert (r.code, r.out) == (1, "HCPLNM104E S10GOLD 21B1 not linked; R/O by LNXCLONE\n")
    r = vmcp(sim, "link", "s10gold", "21b1", "2103", "wr")
    assert r.out == "HCPLNM101E DASD 2103 forced R/O; R/O by 0001 users\n"
    assert r.code == 1 and " R/O " in ok(sim, "q", "v", "2103")
    # addressing errors
    r = vmcp(sim, "link", "nosuch", "0191", "3000", "rr")
    assert (r.code, r.out) == (1, "HCPLNM053E NOSUCH not in CP directory\n")
    assert "#53" in r.err
    r = vmcp(sim, "link", "s10gold", "0999", "3000", "rr")
    assert r.out == "HCPLNM107E S10GOLD 0999 not linked; not in CP directory\n"
    r = vmcp(sim, "link", "s10gold", "21b7", "1100", "rr")
    assert r.out == "HCPLNM110E S10GOLD 21B7 not linked; DASD 1100 already defined\n"
    # own disk through `*`; default mode R
    r = vmcp(sim, "link", "*", "01b7", "3b7")  # mode R: refused while the owner writes
    assert r.out == "HCPLNM105E LNXCLONE 01B7 not linked; R/W by LNXCLONE\n"
    ok(sim, "link", "*", "01b7", "3b7", "rr")
    assert " R/O " in ok(sim, "q", "v", "3b7")


def test_link_counts_logged_on_owner(sim: Path) -> None:
    # a logged-off owner's MR disk is free
    ok(sim, "link", "s10rwmnt", "01b1", "2b1", "mr")
    ok(sim, "det", "2b1")
    ok(sim, "xautolog", "s10rwmnt")  # now S10RWMNT holds its own MR disks R/W
    r = vmcp(sim, "link", "s10rwmnt", "01b1", "2b1", "m")
    assert r.out == "HCPLNM105E S10RWMNT 01B1 not linked; R/W by S10RWMNT\n"
    r = vmcp(sim, "link", "s10rwmnt", "01b1", "2b1", "mr")
    assert r.out == "HCPLNM102E DASD 02B1 forced R/O; R/W by S10RWMNT\n"
    ok(sim, "det", "2b1")
    ok(sim, "link", "s10rwmnt", "01b1", "2b1", "rr")
    out = ok(sim, "q", "links", "2b1")
    assert out == "LNXCLONE 02B1 R/O, S10RWMNT 01B1 R/W\n"
    ok(sim, "force", "s10rwmnt", "immed")
    assert ok(sim, "q", "links", "2b1") == "LNXCLONE 02B1 R/O\n"


# --- DETACH and devices --------------------------------------------------------------------
def test_detach_and_online_devices(sim: Path) -> None:
    ok(sim, "link", "s10gold", "11b0", "2b0", "mr")
    assert run(sim, "cio_ignore", "-r", "0.0.02b0").code == 0
    r = run(sim, "chccwdev", "-e", "2b0")
    assert (r.code, r.out) == (0, "Setting device 0.0.02b0 online\nDone\n")
    r = run(sim, "chccwdev", "--online", "0.0.02B0")
    assert r.code == 0 and r.err == "WARNING: Device[0.0.02b0] is already  online\n"
    assert r.out == "Done\n"
    r = run(sim, "chccwdev", "-e", "0.0.4444")
    assert (r.code, r.out) == (1, "Device 0.0.4444 not found\n")
    assert run(sim, "udevadm", "settle").code == 0
    assert run(sim, "udevadm", "trigger").code == 1
    link = sim / "by-path" / "ccw-0.0.02b0"
    loop = os.readlink(link)
    assert str(sim) in subprocess.run(["losetup", loop], capture_output=True, text=True).stdout
    # the launcher's namespace shows DIR/by-path as /dev/disk/by-path
    r = run(sim, "sh", "-c", "readlink /dev/disk/by-path/ccw-0.0.02b0")
    assert r.out.strip() == loop
    assert ok(sim, "det", "2b0") == "DASD 02B0 DETACHED\n"
    assert not link.exists()
    assert "02B0" not in state(sim)["online"]
    attached = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    assert str(sim) not in attached
    ok(sim, "link", "s10gold", "21b0", "2b1", "rr")
    r = vmcp(sim, "det", "2b0", "2b1", "2b2")
    assert r.code == 1 and "#40" in r.err
    assert r.out == (
        "HCPDTV040E Device 02B0 does not exist\nDASD 02B1 DETACHED\n"
        "HCPDTV040E Device 02B2 does not exist\n"
    )


def test_format_partition_and_copy(sim: Path) -> None:
    ok(sim, "link", "s10gold", "11b1", "2b1", "mr")
    ok(sim, "link", "s10gold", "21b1", "3b1", "mr")
    ok(sim, "link", "s10gold", "21b0", "4b0", "rr")
    for v in ("2b1", "3b1", "4b0"):
        assert run(sim, "chccwdev", "-e", v).code == 0
    dev = "/dev/disk/by-path/ccw-0.0.02b1"
    r = run(sim, "fdasd", "-a", dev)
    assert r.code != 0 and "not formatted" in r.err
    r = run(sim, "dasdfmt", "-b", "4096", "-y", "-f", dev)
    assert r.code != 0  # -f was removed in s390-tools 2.0
    r = run(sim, "dasdfmt", "-b", "4096", "-y", "/dev/disk/by-path/ccw-0.0.04b0")
    assert r.code != 0 and "read-only" in r.err
    r = run(sim, "dasdfmt", "-b", "4096", "-y", "-p", "-M", "quick", "-d", "cdl", dev)
    assert r.code == 0, r
    label = (sim / "disks" / "S10GOLD" / "11B1.img").read_bytes()[8192:8202]
    assert label == "VOL1VOL10X".encode("cp500")
    r = run(sim, "fdasd", "-a", dev)
    assert r.code == 0, r
    assert r.out.splitlines() == [
        "auto-creating one partition for the whole disk...",
        "writing volume label...",
        "writing VTOC...",
        "rereading partition table...",
    ]
    part = sim / "by-path" / "ccw-0.0.02b1-part1"
    assert part.is_symlink()
    r = run(
        sim, "sh", "-c", f"mkfs.ext4 -q -L gold {dev}-part1 && blkid -o value -s LABEL {dev}-part1"
    )
    assert r.out.strip() == "gold", r
    # the partition lives in the disk's bytes: a copy carries it
    assert run(sim, "chccwdev", "-d", "3b1").code == 0
    out = ok(sim, "flashcopy", "2b1", "0", "end", "3b1", "0", "end")
    assert out == "Command complete: FLASHCOPY 02B1 0 END TO 03B1 0 END\n"
    assert run(sim, "chccwdev", "-e", "3b1").code == 0
    r = run(sim, "blkid", "-o", "value", "-s", "LABEL", "/dev/disk/by-path/ccw-0.0.03b1-part1")
    assert r.out.strip() == "gold"
    # dasdfmt takes the partition away
    assert run(sim, "dasdfmt", "-b", "4096", "-y", dev).code == 0
    assert not part.exists()
    r = run(sim, "chccwdev", "-d", "2b1")
    assert r.out == "Setting device 0.0.02b1 offline\nDone\n"
    assert not (sim / "by-path" / "ccw-0.0.02b1").exists()


# --- FLASHCOPY -----------------------------------------------------------------------------
def test_flashcopy(sim: Path) -> None:
    run(sim, "true")
    src = sim / "disks" / "S10RWMNT" / "01B0.img"
    with open(src, "r+b") as f:
        f.seek(5 * CYL + 123)
        f.write(os.urandom(70000))
        f.seek(19 * CYL)
        f.write(b"end of disk")
    ok(sim, "link", "s10rwmnt", "01b0", "2b0", "rr")
    ok(sim, "link", "s10gold", "11b0", "3b0", "mr")
    tgt = sim / "disks" / "S10GOLD" / "11B0.img"
    tgt.write_bytes(b"\xff" * (20 * CYL))
    out = ok(sim, "flashcopy", "2b0", "0", "end", "to", "3b0", "0", "end", "synchronous")
    assert out == "Command complete: FLASHCOPY 02B0 0 END TO 03B0 0 END\n"
    assert tgt.read_bytes() == src.read_bytes()
    assert tgt.stat().st_size == 20 * CYL
    assert tgt.stat().st_blocks * 512 < 2 * CYL  # holes stay holes
    r = vmcp(sim, "flashcopy")
    assert (r.code, r.out) == (1, "HCPNFC026E Operand missing or invalid\n")
    assert "#26" in r.err
    r = vmcp(sim, "flashcopy", "2b0", "0", "end", "9b0", "0", "end")
    assert (r.code, r.out) == (1, "HCPQVD040E Device 09B0 does not exist\n")
    r = vmcp(sim, "flashcopy", "3b0", "0", "end", "2b0", "0", "end")
    assert r.code == 1 and "read-only" in r.out  # target linked R/O
    ok(sim, "link", "s10gold", "11b8", "3b8", "mr")  # 10 cylinders
    r = vmcp(sim, "flashcopy", "2b0", "0", "end", "3b8", "0", "end")
    assert r.code == 1 and r.out.startswith("HCPNFC")
    assert ok(sim, "flashcopy", "2b0", "0", "9", "3b8", "0", "end").startswith("Command complete")
    assert admin(sim, "set", "flashcopy", '"fail"').code == 0
    before = tgt.read_bytes()
    r = vmcp(sim, "flashcopy", "3b8", "0", "end", "3b0", "0", "9")
    assert r.code == 1 and r.out.startswith("HCPNFC") and "Command complete" not in r.out
    assert tgt.read_bytes() == before


# --- XAUTOLOG / SIGNAL / FORCE -------------------------------------------------------------
LNX227 = """USER LNX227 PASSWD 256M 1G G
  INCLUDE S10DFLT
  MDISK 01B4 3390 0001 0010 DM63CD MR PASSWD PASSWD PASSWD
  MDISK 01B5 3390 0011 0020 DM63CD MR PASSWD PASSWD PASSWD
  MDISK 01B6 3390 0031 0030 DM63CD MR PASSWD PASSWD PASSWD
"""


def test_logon_signal_force(sim: Path, tmp_path: Path) -> None:
    entry = tmp_path / "lnx227.direct"
    entry.write_text(LNX227)
    assert (
        run(sim, "smcli", "Image_Create_DM", "--addRCheader", "-T", "LNX227", "-f", str(entry)).code
        == 0
    )
    out = ok(sim, "xautolog", "lnx227")
    assert out == "Command accepted\nAUTO LOGON  ***       LNX227   USERS = 2\n"
    r = vmcp(sim, "xautolog", "lnx227")
    assert r.code == 1 and r.out.startswith("HCP")
    assert vmcp(sim, "xautolog", "s10gold").code == 1  # NOLOG
    assert "not in CP directory" in vmcp(sim, "xautolog", "lnx999").out
    devs = state(sim)["devices"]["LNX227"]
    assert sorted(devs) == sorted(
        [
            "0190",
            "019D",
            "019E",
            "0191",
            "0592",
            "01B0",
            "01B1",
            "01B7",
            "01B8",
            "01B4",
            "01B5",
            "01B6",
        ]
    )
    assert devs["01B1"]["owner"] == "S10GOLD" and devs["01B1"]["mdisk"] == "21B1"
    assert devs["01B1"]["access"] == "R/O" and devs["01B4"]["access"] == "R/W"
    ok(sim, "link", "s10gold", "21b1", "21b1", "rr")
    assert ok(sim, "q", "links", "21b1") == "LNX227   01B1 R/O, LNXCLONE 21B1 R/O\n"
    # SIGNAL ignored by the guest: still logged on, answered at once
    admin(sim, "set", "ignore_signal", '["LNX227"]')
    start = time.monotonic()
    r = vmcp(sim, "signal", "shutdown", "lnx227", "within", "30")
    assert r.code == 0 and time.monotonic() - start < 10
    assert ok(sim, "q", "lnx227") == "LNX227   - DSC\n"
    r = vmcp(sim, "force", "lnx227")
    assert r.out == "USER DSC   LOGOFF AS  LNX227   USERS = 1    FORCED BY LNXCLONE\n"
    assert vmcp(sim, "q", "lnx227").code == 1
    assert vmcp(sim, "force", "lnx227", "immed").out == "HCPCQU045E LNX227 not logged on\n"
    assert ok(sim, "q", "links", "21b1") == "LNXCLONE 21B1 R/O\n"
    admin(sim, "set", "ignore_signal", "[]")
    ok(sim, "xautolog", "lnx227")
    out = ok(sim, "sig", "shut", "lnx227", "within", "60")
    assert "LNX227" in out and vmcp(sim, "q", "lnx227").code == 1
    r = vmcp(sim, "sig", "shut", "lnx227", "within", "60")
    assert (r.code, r.out) == (1, "HCPCQU045E LNX227 not logged on\n")


# --- smcli ---------------------------------------------------------------------------------
def smcli(root: Path, *args: str) -> Ran:
    return run(root, "smcli", *args)


def test_smcli_directory(sim: Path, tmp_path: Path) -> None:
    entry = tmp_path / "lnx227.direct"
    entry.write_text(LNX227)
    r = smcli(sim, "Image_Create_DM", "-T", "LNX227", "--addRCheader", "-f", str(entry))
    assert (r.code, r.out) == (0, "0 0 0 (details) None\nDone\n")
    r = smcli(sim, "Image_Create_DM", "--addRCheader", "-T", "LNX227", "-f", str(entry))
    assert r.code == 1
    assert r.out.splitlines()[:2] == [
        "8 400 8 (details) ULGSMC5400E Image or profile name already defined",
        "  API issued : Image_Create_DM",
    ]
    r = smcli(sim, "Image_Query_DM", "--addRCheader", "-T", "LNX227")
    assert r.out.splitlines() == [
        "0 0 0 (details) None",
        *[" ".join(x.split()) for x in LNX227.splitlines()],
    ]
    r = smcli(sim, "Image_Query_DM", "--addRCheader", "-T", "LNX999")
    assert r.code == 1 and r.out.startswith(
        "8 400 4 (details) ULGSMC5400E Image or profile definition not found"
    )
    names = smcli(sim, "Image_Name_Query_DM", "--addRCheader", "-T", "*").out.splitlines()
    assert names[0] == "0 0 0 (details) None" and "LNX227" in names and "S10GOLD2" in names
    # disks
    args = [
        "-t",
        "3390",
        "-a",
        "AUTOG",
        "-r",
        "POOL1",
        "-u",
        "1",
        "-z",
        "40",
        "-m",
        "MR",
        "-f",
        "1",
    ]
    r = smcli(sim, "Image_Disk_Create_DM", "--addRCheader", "-T", "LNX227", "-v", "01B9", *args)
    assert r.code == 0, r
    r = smcli(sim, "Image_Disk_Create_DM", "--addRCheader", "-T", "LNX227", "-v", "01B9", *args)
    assert r.out.startswith("8 408 4 (details) ULGSMC5408E Image disk already defined")
    assert "MDISK 01B9 3390 0061 0040 DM63CD MR" in smcli(sim, "Image_Query_DM", "-T", "LNX227").out
    ok(sim, "xautolog", "lnx227")
    r = smcli(sim, "Image_Disk_Delete_DM", "--addRCheader", "-T", "LNX227", "-v", "01B9", "-e", "0")
    assert r.code == 0
    r = smcli(sim, "Image_Disk_Delete_DM", "--addRCheader", "-T", "LNX227", "-v", "01B9", "-e", "0")
    assert r.out.startswith("8 408 8 (details) ULGSMC5408E Image disk not defined")
    # replace: the running user keeps its devices until the next logon
    entry.write_text(LNX227.replace("S10DFLT", "S10DFLT2"))
    r = smcli(sim, "Image_Replace_DM", "--addRCheader", "-T", "LNX227", "-f", str(entry))
    assert r.out.startswith("8 400 24 ")  # replace needs the lock
    assert smcli(sim, "Image_Lock_DM", "--addRCheader", "-T", "LNX227").code == 0
    assert smcli(sim, "Image_Lock_DM", "--addRCheader", "-T", "LNX227").out.startswith("8 400 12 ")
    r = smcli(sim, "Image_Replace_DM", "--addRCheader", "-T", "LNX227", "-f", str(entry))
    assert r.code == 0
    r = smcli(sim, "Image_Unlock_DM", "--addRCheader", "-T", "LNX227")  # the replace unlocked
    assert r.out.startswith("8 400 24 ")
    assert "INCLUDE S10DFLT2" in (sim / "USER.DIRECT").read_text()
    assert state(sim)["devices"]["LNX227"]["01B1"]["owner"] == "S10GOLD"
    assert "01B9" in state(sim)["devices"]["LNX227"]
    ok(sim, "force", "lnx227")
    ok(sim, "xautolog", "lnx227")
    devs = state(sim)["devices"]["LNX227"]
    assert devs["01B1"]["owner"] == "S10GOLD2" and "01B9" not in devs
    r = smcli(sim, "Profile_Query_DM", "--addRCheader", "-T", "S10DFLT2")
    assert r.out.splitlines()[1:3] == ["PROFILE S10DFLT2", "IPL CMS"]
    assert "LINK S10GOLD2 21B1 01B1 RR" in r.out.splitlines()
    r = smcli(sim, "Profile_Query_DM", "--addRCheader", "-T", "LNX227")
    assert r.out.startswith("8 400 4 ")
    r = smcli(sim, "Image_Replace_DM", "--addRCheader", "-T", "LNX999", "-f", str(entry))
    assert r.out.startswith("8 400 4 ")
    r = smcli(sim, "Image_Delete_DM", "--addRCheader", "-T", "LNX227", "-e", "0")
    assert r.code == 0 and "USER LNX227" not in (sim / "USER.DIRECT").read_text()
    assert vmcp(sim, "q", "user", "lnx226").code == 1
    r = smcli(sim, "Image_Create_DM", "--addRCheader", "-T", "LNX227")
    assert r.code == 1 and r.out.startswith("24 0 0 (details)")
    r = smcli(sim, "Image_Frobnicate", "--addRCheader", "-T", "LNX227")
    assert r.code == 1 and r.out.startswith("8 900 12 ")
    # the rest of the directory kept its text and order
    text = (sim / "USER.DIRECT").read_text()
    assert text == (REPO / "zvmsim" / "paper.direct").read_text()


def test_admin_apply_direct_and_state(sim: Path, tmp_path: Path) -> None:
    entry = tmp_path / "lnx226.direct"
    entry.write_text(LNX227.replace("LNX227", "LNX226"))
    assert admin(sim, "apply-direct", str(entry)).out.strip() == "LNX226"
    assert vmcp(sim, "q", "lnx226").out == "HCPCQU045E LNX226 not logged on\n"
    st = state(sim)
    assert st["logged_on"] == ["LNXCLONE"]
    assert admin(sim, "cp", "maint", "q", "userid").out.strip() == "MAINT AT ZVMSIM1"


def test_many_guests_and_parallel_programs(sim: Path) -> None:
    start = time.monotonic()
    assert admin(sim, "populate", "1000").code == 0
    assert time.monotonic() - start < 30
    start = time.monotonic()
    names = smcli(sim, "Image_Name_Query_DM", "-T", "x").out.split()
    assert len(names) > 1000
    assert vmcp(sim, "q", "lnx0999").code == 1 and ok(sim, "q", "lnx0001") == "LNX0001  - DSC\n"
    assert time.monotonic() - start < 10

    # eight programs at once: every change lands
    def link(i: int) -> int:
        return vmcp(sim, "link", "s10gold", "21b7", f"3{i:03X}", "rr").code

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(link, range(8))) == [0] * 8
    out = ok(sim, "q", "links", "3000")
    assert out.count("LNXCLONE") == 8 and out.count("LNX0") == 500
    assert all(len(line.split(", ")) <= 3 for line in out.splitlines())
    assert all(line.endswith(",") for line in out.splitlines()[:-1])
