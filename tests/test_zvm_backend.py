"""The z/VM backend against the CP emulator (scripts/zvmsim), with real loop devices.

Each test runs the backend in a fresh emulated z/VM (the paper's directory) and judges
by what CP saw (DIR/cp.log), what the emulated minidisks hold, and what is left on the
worker afterwards.
"""

from __future__ import annotations

import hashlib
import os
import socket
import stat
import time
from pathlib import Path

import pytest

from sharedroot.errors import OperationError
from sharedroot.hypervisor.zvm import guestlink
from sharedroot.hypervisor.zvm.cp import Cp
from sharedroot.hypervisor.zvm.directory import parse_entry, with_include, without_link
from sharedroot.model.types import GuestState
from zvmkit import Zvm

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="loop devices need root")


@pytest.fixture
def zvm(tmp_path: Path) -> Zvm:
    return Zvm(tmp_path)


def _commands(log: list[list[str]], start: int = 0) -> list[str]:
    return [row[1] for row in log[start:]]


def _sha(path: Path, size: int) -> str:
    with open(path, "rb") as f:
        data = f.read(size)
    return hashlib.sha256(data.ljust(size, b"\0")).hexdigest()


# --------------------------------------------------------------------------- no emulator


def _fake_vmcp(tmp_path: Path, stdout: str, exit_code: int, stderr: str = "") -> Cp:
    script = tmp_path / "vmcp"
    (tmp_path / "out").write_text(stdout)
    (tmp_path / "err").write_text(stderr)
    script.write_text(
        f"#!/bin/sh\ncat {tmp_path / 'out'}\ncat {tmp_path / 'err'} >&2\nexit {exit_code}\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return Cp(str(script))


def test_query_links_over_several_lines(tmp_path: Path) -> None:
    text = "LNXCLONE F000 R/O, LNX227   01B1 R/O,\nLNX242   01B1 R/O, S10RWMNT 01B1 R/W\n"
    cp = _fake_vmcp(tmp_path, text, 0)
    found = [(lk.user, lk.vdev, lk.access) for lk in cp.links("F000")]
    assert found == [
        ("LNXCLONE", "F000", "R/O"),
        ("LNX227", "01B1", "R/O"),
        ("LNX242", "01B1", "R/O"),
        ("S10RWMNT", "01B1", "R/W"),
    ]


def test_rc_from_exit_code_not_from_echo(tmp_path: Path) -> None:
    # The echo is the command as typed (any case); the rc is the `#45` at the end.
    err = "Error: non-zero CP response for command 'q #3 lnx227': #45\n"
    cp = _fake_vmcp(tmp_path, "HCPCQU045E LNX227 not logged on\n", 1, err)
    assert cp.user_state("LNX227") is GuestState.LOGGED_OFF
    cp = _fake_vmcp(tmp_path, "HCPCQV003E Invalid option - LNX999\n", 1, "")
    assert cp.user_state("LNX999") is GuestState.NO_SUCH  # rc from the message id
    cp = _fake_vmcp(tmp_path, "", 3, "Error: Could not open device /dev/vmcp: No such file\n")
    with pytest.raises(OperationError, match="modprobe vmcp"):
        cp.user_state("LNX227")


def test_names_and_dasd_parsing(tmp_path: Path) -> None:
    cp = _fake_vmcp(tmp_path, "LNX227   - DSC , LNXCLONE - L0003\nVSM     - TCPIP\n", 0)
    assert cp.names() == {"LNX227", "LNXCLONE"}
    line = "DASD 0100 3390 IAS106 R/W      29128 CYL ON DASD  1356 SUBCHANNEL = 0003\n"
    cp = _fake_vmcp(tmp_path, line, 0)
    dasd = cp.dasd()["0100"]
    assert (dasd.access, dasd.size, dasd.unit) == ("R/W", 29128, "CYL")


def test_values_reaching_cp_are_checked(tmp_path: Path) -> None:
    from sharedroot.errors import InputError

    cp = _fake_vmcp(tmp_path, "", 0)
    for bad in ("LNX 1", "lnx227", "TOOLONGID", "A;B"):
        with pytest.raises(InputError):
            cp.user_state(bad)
    with pytest.raises(InputError):
        cp.link("S10GOLD", "21B1", "F00", "RR")


def test_directory_entry_parsing_and_edits() -> None:
    entry = parse_entry(
        "USER LNX242 PW 512M 1G G\n  INCLUDE S10DFLT\n"
        "  MDISK 01B4 3390 0061 0010 DM63C9 MR PASSWD PASSWD PASSWD\n"
        "  MDISK 01B2 FB-512 V-DISK 200000 MWV\n  LINK CMSCLONE 192 191 RR\n"
    )
    assert entry.includes == ("S10DFLT",)
    assert [(m.vdev, m.size, m.vdisk) for m in entry.mdisks] == [
        ("01B4", 10, False),
        ("01B2", 200000, True),
    ]
    assert entry.link("0191") is not None
    assert entry.link("0191").owner_vdev == "0192"  # type: ignore[union-attr]
    assert "LINK" not in without_link(entry, "0191")
    swapped = parse_entry(with_include(entry, "S10DFLT2"))
    assert swapped.includes == ("S10DFLT2",)


# --------------------------------------------------------------------------- emulator


def test_adopt_query_and_define(zvm: Zvm) -> None:
    out = zvm.run(
        """
        out["before"] = hv.query("S10RWMNT")
        out["nosuch"] = hv.query("LNX999")
        hv.define_guest("CMSCLONE", Role.ADMIN, adopt=True)
        hv.define_guest("S10RWMNT", Role.MAINTENANCE, adopt=True)
        out["disks"] = [(d.address, d.size, d.file) for d in state.disks("S10RWMNT")]
        out["again"] = refused(lambda: hv.define_guest("S10RWMNT", Role.MAINTENANCE))
        hv.define_guest("LNX242", Role.RO_CLONE)
        out["entry"] = hv.directory.entry("LNX242").text
        out["gold"] = refused(lambda: hv.define_guest("S10GOLD", Role.GOLD))
        hv.define_guest("S10GOLD3", Role.GOLD)
        out["gold_entry"] = hv.directory.entry("S10GOLD3").lines[0]
        out["logged_on"] = sorted(hv.logged_on())
        """
    )
    assert out["before"] == "logged_off"
    assert out["nosuch"] == "no_such"
    assert ["01B1", 40 * 737280, "zvm:S10RWMNT/01B1"] in out["disks"]
    assert len(out["disks"]) == 7
    assert "already in the z/VM directory" in out["again"]
    lines = out["entry"].splitlines()
    assert lines[0].startswith("USER LNX242 ") and lines[0].endswith(" 512M 1G G")
    assert lines[1] == "INCLUDE RORDFLT"
    assert "already in the z/VM directory" in out["gold"]
    assert out["gold_entry"].startswith("USER S10GOLD3 NOLOG ")
    assert out["logged_on"] == ["LNXCLONE"]


def test_forced_read_only_link_is_undone(zvm: Zvm) -> None:
    zvm.run("pass")
    zvm.admin("cp", "LNXCLONE", "XAUTOLOG S10RWMNT")  # S10RWMNT holds its 01B1 R/W
    out = zvm.run(
        """
        out["refused"] = refused(lambda: cp.link("S10RWMNT", "01B1", "F010", "MR"))
        out["after"] = cp("QUERY", "VIRTUAL", "F010").rc
        """
    )
    assert "write access by another user" in out["refused"]
    assert out["after"] == 40  # nothing left at F010
    commands = _commands(zvm.cp_log())
    assert commands[-2:] == ["DETACH F010", "QUERY VIRTUAL F010"]


def test_attach_leaves_nothing_behind(zvm: Zvm) -> None:
    out = zvm.run(
        """
        hv.define_guest("S10RWMNT", Role.MAINTENANCE, adopt=True)
        with hv.attach("S10RWMNT", "01B5", write=True) as dev:
            out["dev"] = str(dev)
            out["during"] = sorted(v for v in cp.dasd() if v.startswith("F"))
            out["record"] = sorted(os.listdir(HOME / "run" / "zvm-links"))
        try:
            with hv.attach("S10RWMNT", "01B6") as dev:
                raise KeyboardInterrupt
        except KeyboardInterrupt:
            out["interrupted"] = True
        out["after"] = sorted(v for v in cp.dasd() if v.startswith("F"))
        out["nodes"] = sorted(p.name for p in Path("/dev/disk/by-path").glob("ccw-0.0.f*"))
        out["records"] = os.listdir(HOME / "run" / "zvm-links")
        """
    )
    assert out["dev"] == "/dev/disk/by-path/ccw-0.0.f000"
    assert out["during"] == ["F000"] and out["record"] == ["F000"]
    assert out["interrupted"]
    assert out["after"] == [] and out["nodes"] == [] and out["records"] == []


def test_copy_flashcopy_then_dd_fallback(zvm: Zvm) -> None:
    setup = """
        for g, r in (("S10RWMNT", Role.MAINTENANCE), ("S10GOLD", Role.GOLD)):
            hv.define_guest(g, r, adopt=True)
        hv.fill_disk("S10RWMNT", "01B1", DiskKind.FS, "ext4", label="root")
        with hv.attach("S10RWMNT", "01B1", write=True) as dev:
            out["dev"] = str(dev)
            with open(dev, "r+b") as f:
                f.seek(4096 * 100)
                f.write(os.urandom(1 << 20))
        start = mark()
        r = hv.copy_disk("S10RWMNT", "01B1", "S10GOLD", "11B1", verify=True)
        out["flash"] = [r.method, r.size, r.verified]
        out["cmds"] = [row[1] for row in cplog()[start:]]
    """
    out = zvm.run(setup)
    assert out["dev"].endswith("-part1")
    assert out["flash"] == ["flashcopy", 40 * 737280, True]
    assert out["cmds"] == [
        "QUERY S10RWMNT",
        "QUERY S10GOLD",
        "QUERY VIRTUAL DASD",
        "LINK S10GOLD 11B1 AS F000 MR",
        "QUERY LINKS F000",
        "LINK S10RWMNT 01B1 AS F001 RR",
        "QUERY LINKS F001",
        "FLASHCOPY F001 0 END F000 0 END",
        "DETACH F001",
        "DETACH F000",
    ]
    size = 40 * 737280
    src = _sha(zvm.image("S10RWMNT", "01B1"), size)
    assert _sha(zvm.image("S10GOLD", "11B1"), size) == src

    zvm.admin("set", "flashcopy", '"fail"')
    out = zvm.run(
        """
        start = mark()
        r = hv.copy_disk("S10RWMNT", "01B1", "S10GOLD", "21B1", verify=True)
        out["dd"] = [r.method, r.bytes_copied, r.verified]
        out["cmds"] = [row[1] for row in cplog()[start:]]
        out["left"] = sorted(v for v in cp.dasd() if v.startswith("F"))
        """
    )
    assert out["dd"] == ["dd", size, True]
    assert "FLASHCOPY F001 0 END F000 0 END" in out["cmds"]
    assert out["cmds"][-2:] == ["DETACH F001", "DETACH F000"]
    assert out["left"] == []
    assert _sha(zvm.image("S10GOLD", "21B1"), size) == src


def test_copy_refused_onto_a_logged_on_or_linked_target(zvm: Zvm) -> None:
    zvm.run(
        """
        for g, r in (("S10RWMNT", Role.MAINTENANCE), ("S10RWTST", Role.TEST)):
            hv.define_guest(g, r, adopt=True)
        hv.define_guest("LNX227", Role.RW_CLONE)
        hv.link("LNX227", "01B1", "S10RWTST", "01B1", Mode.RR)
        """
    )
    zvm.admin("cp", "LNXCLONE", "XAUTOLOG S10RWTST")
    out = zvm.run(
        """
        out["on"] = refused(lambda: hv.copy_disk("S10RWMNT", "01B1", "S10RWTST", "01B1"))
        """
    )
    assert "S10RWTST user ID must be logged off" in out["on"]
    assert not any(c.startswith("FLASHCOPY") for c in _commands(zvm.cp_log()))

    zvm.admin("cp", "LNXCLONE", "FORCE S10RWTST IMMED")
    zvm.admin("cp", "LNXCLONE", "XAUTOLOG LNX227")  # its directory LINK holds S10RWTST 01B1
    out = zvm.run(
        """
        out["linked"] = refused(lambda: hv.copy_disk("S10RWMNT", "01B1", "S10RWTST", "01B1"))
        out["left"] = sorted(v for v in cp.dasd() if v.startswith("F"))
        out["users"] = [(r.guest, r.address, r.mode) for r in hv.links_to("S10RWTST", "01B1")]
        """
    )
    assert out["linked"] == "S10RWTST 01B1 is linked by LNX227; it cannot be overwritten"
    assert out["left"] == []
    assert out["users"] == [["LNX227", "01B1", "RR"]]
    assert not any(c.startswith("FLASHCOPY") for c in _commands(zvm.cp_log()))


def test_recover_detaches_stale_worker_links(zvm: Zvm) -> None:
    out = zvm.run(
        """
        hv.define_guest("S10RWMNT", Role.MAINTENANCE, adopt=True)
        cp.link("S10RWMNT", "01B0", "F005", "RR")     # a killed command's link, no record
        devices.enable("F005")
        cp.link("S10RWMNT", "01B4", "F006", "RR")     # a record of a process that is gone
        (HOME / "run" / "zvm-links").mkdir(parents=True, exist_ok=True)
        (HOME / "run" / "zvm-links" / "F006").write_text("999999 1\\n")
        cp.link("S10RWMNT", "01B5", "F007", "RR")     # a live one: ours
        from sharedroot.store.state import process_start
        me = os.getpid()
        (HOME / "run" / "zvm-links" / "F007").write_text(f"{me} {process_start(me)}\\n")
        cp.link("S10RWMNT", "01B6", "0300", "RR")     # outside the link range
        hv.recover()
        out["left"] = sorted(cp.dasd())
        out["records"] = sorted(os.listdir(HOME / "run" / "zvm-links"))
        out["nodes"] = sorted(p.name for p in Path("/dev/disk/by-path").glob("ccw-0.0.f*"))
        """
    )
    assert "F005" not in out["left"] and "F006" not in out["left"]
    assert "F007" in out["left"] and "0300" in out["left"]
    assert out["records"] == ["F007"]
    assert out["nodes"] == []


def test_parm_files_on_the_admin_disk(zvm: Zvm) -> None:
    out = zvm.run(
        """
        hv.define_guest("CMSCLONE", Role.ADMIN, adopt=True)
        out["fresh"] = hv.get_parm("LNX227")
        hv.put_parm("LNX227", "HostIP=10.0.0.27 Hostname=lnx227\\n")
        hv.put_parm("LNX242", "HostIP=10.0.0.42 Hostname=lnx242\\n")
        out["read"] = hv.get_parm("LNX227")
        hv.remove_parm("LNX227")
        out["gone"] = hv.get_parm("LNX227")
        out["other"] = hv.get_parm("LNX242")
        hv.put_parms({"LNX243": "HostIP=10.0.0.43 Hostname=lnx243\\n", "LNX242": None})
        out["batch"] = [hv.get_parm("LNX243"), hv.get_parm("LNX242")]
        out["left"] = sorted(v for v in cp.dasd() if v.startswith("F"))
        """
    )
    assert out["fresh"] is None
    assert out["read"] == "HostIP=10.0.0.27 Hostname=lnx227\n"
    assert out["gone"] is None
    assert out["other"] == "HostIP=10.0.0.42 Hostname=lnx242\n"
    assert out["batch"] == ["HostIP=10.0.0.43 Hostname=lnx243\n", None]
    assert out["left"] == []


def test_disks_links_and_profiles_through_smcli(zvm: Zvm) -> None:
    out = zvm.run(
        """
        hv.define_guest("CMSCLONE", Role.ADMIN, adopt=True)
        hv.define_guest("S10GOLD", Role.GOLD, adopt=True)
        hv.define_guest("LNX227", Role.RO_CLONE)
        row = hv.add_disk("LNX227", "01B5", DiskKind.FS, 10 << 20, "ext4")
        out["row"] = [row.size, row.file]
        with hv.attach("LNX227", "01B5") as dev:
            out["blkid"] = os.popen(f"blkid -o value -s TYPE {dev}").read().strip()
        hv.add_disk("LNX227", "01B2", DiskKind.VDISK, 64 << 20, None)
        links = [(f"01B{n}", "S10GOLD", f"21B{n}") for n in (0, 1, 7, 8)]
        hv.set_profile("LNX227", "S10DFLT", links)
        out["include"] = hv.directory.entry("LNX227").includes
        out["links"] = sorted(
            (lk.address, lk.owner, lk.owner_address) for lk in state.links("LNX227")
        )
        out["bad"] = refused(lambda: hv.set_profile("LNX227", "NOSUCH", []))
        out["already"] = refused(lambda: hv.add_disk("LNX227", "01B0", DiskKind.FS, 4096, "ext2"))
        hv.link("LNX227", "0191", "CMSCLONE", "0192", Mode.RR)
        out["missing"] = hv.missing_devices("LNX227", ["01B5", "01B6"])
        out["nodisk"] = refused(lambda: hv.check_disk("LNX227", "01B6"))
        hv.remove_disk("LNX227", "01B5")
        out["mdisks"] = [m.vdev for m in hv.directory.entry("LNX227").mdisks]
        out["vdisk"] = state.disk("LNX227", "01B2").kind
        hv.delete_guest("LNX227")
        out["deleted"] = [hv.query("LNX227"), state.guest("LNX227")]
        """
    )
    assert out["row"] == [15 * 737280, "zvm:LNX227/01B5"]
    assert out["blkid"] == "ext4"
    assert out["include"] == ["S10DFLT"]
    assert out["links"] == [  # the profile's links, LINK CMSCLONE 192 191 RR too
        ["0191", "CMSCLONE", "0192"],
        ["01B0", "S10GOLD", "21B0"],
        ["01B1", "S10GOLD", "21B1"],
        ["01B7", "S10GOLD", "21B7"],
        ["01B8", "S10GOLD", "21B8"],
    ]
    assert "profile NOSUCH is not in the z/VM directory" in out["bad"]
    assert "already has a device at 01B0" in out["already"]
    assert out["missing"] == ["01B6 (not in LNX227's directory entry)"]
    assert out["nodisk"] == "LNX227 has no disk at 01B6"
    assert out["mdisks"] == []
    assert out["vdisk"] == "vdisk"
    assert out["deleted"] == ["no_such", None]


def test_links_to_the_gold_and_start_stop(zvm: Zvm) -> None:
    out = zvm.run(
        """
        hv.define_guest("S10GOLD", Role.GOLD, adopt=True)
        for g in ("LNX227", "LNX242"):
            hv.define_guest(g, Role.RO_CLONE)
            hv.set_profile(g, "S10DFLT", [])
        hv.start("LNX227", None)
        out["again"] = refused(lambda: hv.start("LNX227", None))
        start = mark()
        users = hv.links_to("S10GOLD")
        out["users"] = [(r.guest, r.address, r.owner_address, r.mode) for r in users]
        out["cmds"] = [row[1] for row in cplog()[start:]]
        out["stop"] = hv.stop("LNX227", 10)
        out["after"] = hv.query("LNX227")
        out["console"] = refused(lambda: next(hv.console("LNX227")))
        """
    )
    assert "already logged on" in out["again"]
    assert out["users"] == [
        ["LNX227", "01B0", "21B0", "RR"],
        ["LNX227", "01B1", "21B1", "RR"],
        ["LNX227", "01B7", "21B7", "RR"],
        ["LNX227", "01B8", "21B8", "RR"],
    ]
    # One LINK and QUERY LINKS per gold disk, whatever the number of guests.
    assert sum(c.startswith("QUERY LINKS") for c in out["cmds"]) == 14
    assert sum(c.startswith("LINK") for c in out["cmds"]) == 14
    assert sum(c.startswith("DETACH") for c in out["cmds"]) == 2
    assert out["stop"] == "clean"
    assert out["after"] == "logged_off"
    assert "3270" in out["console"]


def test_refusals_name_what_to_do(zvm: Zvm) -> None:
    out = zvm.run(
        """
        hv.define_guest("S10RWMNT", Role.MAINTENANCE, adopt=True)
        out["copy"] = refused(lambda: hv.copy_disk("S10RWMNT", "01B1", "S10RWMNT", "01B4"))
        out["nodisk"] = refused(lambda: hv.attach("S10RWMNT", "0999").__enter__())
        """
    )
    assert "is smaller than" in out["copy"]
    assert out["nodisk"] == "S10RWMNT has no disk at 0999"


def test_manual_directory_prints_the_entry_and_waits_for_cp(zvm: Zvm) -> None:
    manual = {"zvm_directory": "manual", "zvm_manual_wait": 30}
    out = zvm.run(
        """
        import subprocess, threading
        from sharedroot.hypervisor.zvm.backend import ZvmBackend
        said = []
        hv = ZvmBackend(config, HOME, state, say=said.append)

        def administrator(text):  # puts the printed statements into USER DIRECT
            f = HOME / "entry.direct"
            f.write_text(text)
            subprocess.run([sys.executable, "-m", "zvmsim.admin", str(SIM), "apply-direct",
                            str(f)], check=True, capture_output=True)

        hv.define_guest("S10RWMNT", Role.MAINTENANCE, adopt=True)
        start = mark()
        adopted = hv.add_disk("S10RWMNT", "01B1", DiskKind.FS, 4096, "ext2")
        out["adopted"] = [adopted.size, [row[1] for row in cplog()[start:]]]
        entry = "USER LNX300 PW 512M 1G G\\nINCLUDE RORDFLT\\n"
        threading.Timer(1.0, administrator, [entry]).start()
        hv.define_guest("LNX300", Role.RO_CLONE)
        out["said"] = said[-1]
        out["state"] = hv.query("LNX300")
        full = entry + "MDISK 01B5 3390 0500 0015 DM63C9 MR\\n"
        threading.Timer(1.0, administrator, [full]).start()
        row = hv.add_disk("LNX300", "01B5", DiskKind.FS, 10 << 20, "ext4")
        out["mdisk"] = said[-1]
        out["size"] = row.size
        with hv.attach("LNX300", "01B5") as dev:
            out["blkid"] = os.popen(f"blkid -o value -s TYPE {dev}").read().strip()
        hv.link("LNX300", "01B1", "S10RWMNT", "01B1", Mode.RR)
        out["link"] = said[-1]
        """,
        settings=manual,
    )
    assert out["adopted"] == [  # an existing minidisk: measured by CP, never formatted
        40 * 737280,
        [
            "QUERY VIRTUAL DASD",
            "LINK S10RWMNT 01B1 AS F000 RR",
            "QUERY VIRTUAL DASD",
            "DETACH F000",
        ],
    ]
    assert "USER LNX300 " in out["said"] and "\nINCLUDE RORDFLT" in out["said"]
    assert out["state"] == "logged_off"
    assert "MDISK 01B5 3390 AUTOG 15 POOL1 MR" in out["mdisk"]
    assert out["size"] == 15 * 737280
    assert out["blkid"] == "ext4"
    assert out["link"].endswith("LINK S10RWMNT 01B1 01B1 RR")

    out = zvm.run(
        """
        out["late"] = ""
        try:
            hv.define_guest("LNX301", Role.RO_CLONE)
        except OperationError as exc:
            out["late"] = str(exc)
        """,
        settings={**manual, "zvm_manual_wait": 1},
    )
    assert "did not come online within 1s" in out["late"]


def test_doctor_checks_on_the_emulator(zvm: Zvm) -> None:
    out = zvm.run(
        """
        from sharedroot.hypervisor.zvm.backend import doctor_checks
        out["rows"] = {c.name: [c.found, c.required] for c in doctor_checks(config.zvm)}
        """
    )
    rows = out["rows"]
    assert rows["vmcp"] == [True, True]
    assert rows["privilege class B"] == [True, True]
    assert rows["FLASHCOPY"][0] is True
    assert rows["smcli"] == [True, True]
    assert all(rows[t][0] for t in ("chccwdev", "cio_ignore", "dasdfmt", "fdasd", "udevadm"))


def test_ssh_tries_again_while_it_cannot_connect(tmp_path: Path) -> None:
    with socket.socket() as s:  # nothing listens on loopback's SSH port here
        if s.connect_ex(("127.0.0.1", 22)) == 0:
            pytest.skip("an SSH server listens on this machine's loopback")
    home = tmp_path / "home"
    guestlink.site_key(home)
    t = time.monotonic()
    code, _, err = guestlink.ssh(home, "127.0.0.1", ["true"], timeout=4)
    took = time.monotonic() - t
    assert code == 255 and err.startswith(b"ssh: connect to host"), err
    assert 2.5 < took < 8, took  # tried again within the timeout, then gave up
