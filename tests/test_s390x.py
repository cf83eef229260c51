"""The paper's walk-through on its own architecture: s390x guests under the CP emulator.

One emulated z/VM (scripts/zvmsim, with a directory whose minidisks hold a real system)
and one site on it, driven by the real command line as the worker LNXCLONE: install
(the s390x golden tree, cached), the pipeline, two read-only clones and one read-write
clone booted with qemu-system-s390x at their XAUTOLOG, `verify`, a second gold slot
while they run, `migrate --reboot`, and a hostile parm file on the CMS disk. The boots
are shared: every test reads the one fleet, in file order.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import PAPER_SAMPLE, S390X_DISTRO, Ran
from zvmkit import Zvm

REPO = Path(__file__).resolve().parent.parent
SHAREDROOT = Path(sys.executable).parent / "sharedroot"
ZVMSIM = REPO / "scripts" / "zvmsim"
DIRECT = REPO / "zvmsim" / "paper-s390x.direct"
PART1 = 98304  # partition 1 of an emulated ECKD disk after fdasd -a
CYL = 737280  # bytes of a 3390 cylinder formatted with 4 KiB blocks
GATEWAY = "129.40.179.254"  # the paper's sample parm file; the emulator's VSW1 has it
CLONES = {"LNX242": ("lnx242", "129.40.179.242"), "LNX226": ("lnx226", "129.40.179.226")}

pytestmark = [
    pytest.mark.boot,
    pytest.mark.skipif(os.geteuid() != 0, reason="guests need root (loop devices, QEMU)"),
    pytest.mark.skipif(
        shutil.which("qemu-system-s390x") is None, reason="no qemu-system-s390x (scripts/setup)"
    ),
]


class Site:
    """The site on the emulated z/VM, driven through the command line as the worker."""

    def __init__(self, base: Path) -> None:
        self.kit = Zvm(base)  # base/sim: the emulator, base/home: the site
        self.sim, self.home = self.kit.sim, self.kit.home

    def env(self) -> dict[str, str]:
        return dict(os.environ, ZVMSIM_DIRECT=str(DIRECT), ZVMSIM_UPLINK="1")

    def run(self, *args: str, ok: bool = True, timeout: float = 1800) -> Ran:
        argv = [str(ZVMSIM), str(self.sim), "--", str(SHAREDROOT), "--home", str(self.home)]
        res = subprocess.run(
            [*argv, *args], capture_output=True, text=True, timeout=timeout, env=self.env()
        )
        ran = Ran(res.returncode, res.stdout, res.stderr)
        if ok and ran.code != 0:
            raise AssertionError(f"sharedroot {' '.join(args)}: exit {ran.code}\n{ran.err}")
        return ran

    def sh(self, guest: str, script: str) -> str:
        ran = self.run("exec", guest, "--", "sh", "-c", script, ok=False, timeout=300)
        assert ran.code == 0, f"{guest}: {script}: exit {ran.code}\n{ran.out}\n{ran.err}"
        return ran.out.strip()

    def verify(self, guest: str) -> dict[str, Any]:
        report: dict[str, Any] = self.run("verify", guest, "--json", ok=False).json()  # type: ignore[assignment]
        return report

    def console(self, guest: str) -> str:
        path = self.sim / "guests" / guest / "console.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def put_parm(self, guest: str, text: str) -> None:
        """Write a parm file onto CMSCLONE 0192 as it is (no validation: a hostile one)."""
        self.kit.run(f"hv.put_parm({guest!r}, {text!r})", timeout=300)

    def boot_file(self, guest: str, address: str, name: str) -> str:
        """A file of a disk's partition 1, read from the emulator's image with debugfs."""
        image = self.sim / "disks" / guest / f"{address}.img"
        loop = subprocess.run(
            ["losetup", "--find", "--show", "--read-only", "--offset", str(PART1), str(image)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        try:
            out = subprocess.run(
                ["debugfs", "-R", f"cat {name}", loop], capture_output=True, text=True, check=True
            )
            return out.stdout
        finally:
            subprocess.run(["losetup", "-d", loop], check=False)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    s = Site(tmp_path_factory.mktemp("s390x"))
    # The layout's sizes are those of the directory's minidisks (clones get the same).
    mdisks = re.findall(r"MDISK (01B[0-9]) 3390 \d+ (\d+) ", DIRECT.read_text())
    sizes = {addr: int(cyls) * CYL for addr, cyls in mdisks}
    s.run("init", "--layout", "paper", "--backend", "zvm", "--distro", S390X_DISTRO,
          *(f"--size={a}={n}" for a, n in sizes.items()))  # fmt: skip
    try:
        s.run("install", "--yes")  # the s390x golden tree: built once, then cached
        yield s
    finally:
        for guest in ("LNX227", *CLONES):
            print(f"--- console of {guest}\n{s.console(guest)[-3000:]}")
        s.kit.admin("cleanup")


def test_the_maintenance_system_is_s390x_with_the_papers_boot(site: Site) -> None:
    conf = site.boot_file("S10RWMNT", "01B0", "/sharedroot.conf")
    assert "kernel=vmlinuz-" in conf and "-s390x" in conf
    assert "root=/dev/disk/by-path/ccw-0.0.01b1-part1" in conf and "dasd=1b0-1bf" in conf
    assert "vmpoff=LOGOFF" in conf
    zipl_conf = site.boot_file("S10RWMNT", "01B1", "/etc/zipl.conf")
    assert 'parameters = "root=/dev/disk/by-path/ccw-0.0.01b1-part1' in zipl_conf
    fstab = site.boot_file("S10RWMNT", "01B1", "/etc/fstab")
    assert "/dev/disk/by-path/ccw-0.0.01b1-part1\t/\t" in fstab
    assert "UUID=" not in fstab


def test_pipeline_to_a_read_only_gold(site: Site) -> None:
    for step in ("cloneprep", "mnt2tst", "mnt2gold", "mnt2rogld", "ro2gold"):
        site.run(step, "--yes")
    conf = site.boot_file("S10GOLD", "21B0", "/sharedroot.conf")
    assert "ro" in conf.split() or " ro " in conf
    assert "dasd=1b0(ro),1b1(ro),1b2-1b6,1b7(ro),1b8(ro),1b9-1bf" in conf
    zipl_conf = site.boot_file("S10GOLD", "21B1", "/etc/zipl.conf")
    assert "dasd=1b0(ro),1b1(ro)" in zipl_conf and "vmpoff=LOGOFF" in zipl_conf
    fstab = site.boot_file("S10GOLD", "21B1", "/etc/fstab")
    assert "/dev/disk/by-path/ccw-0.0.01b5-part1\t/local\t" in fstab


def test_clones_boot_on_s390x_and_pass_verify(site: Site) -> None:
    # LNX227 gets the paper's own sample parm file, read as it is.
    site.run("define", "LNX227", "--ro", "--hostname", "ntc227", "--ip", "129.40.179.227")
    site.put_parm("LNX227", PAPER_SAMPLE)
    for guest, (host, ip) in CLONES.items():
        kind = "--rw" if guest == "LNX226" else "--ro"
        site.run("define", guest, kind, "--hostname", host, "--ip", ip, "--gateway", GATEWAY)
    site.run("clonero", "LNX227", "--yes")
    site.run("clonero", "LNX242", "--yes")
    site.run("clonerw", "LNX226", "--yes")
    for guest in ("LNX227", "LNX242", "LNX226"):
        site.run("start", guest)
    for guest in ("LNX227", "LNX242"):
        report = site.verify(guest)
        assert report["ok"], json.dumps(report, indent=2)
    assert site.sh("LNX227", "hostname") == "ntc227"
    assert site.sh("LNX227", "hostname -f || cat /etc/hosts") != ""
    # The user ID came from z/VM itself: QEMU's -name shows in /proc/sysinfo.
    assert "LNX227" in site.sh("LNX227", "grep '^VM00 Name:' /proc/sysinfo")
    assert site.sh("LNX227", "uname -m") == "s390x"
    # The read-write clone has its own identity and a writable root.
    assert site.sh("LNX226", "hostname") == "lnx226"
    assert site.sh("LNX226", "touch /usr/foo && rm /usr/foo && echo rw") == "rw"
    ids = {g: site.sh(g, "cat /etc/machine-id") for g in ("LNX227", "LNX242", "LNX226")}
    assert len(set(ids.values())) == 3


def test_a_second_slot_while_they_run_then_migrate_with_reboot(site: Site) -> None:
    site.run("ro2gold", "--slot", "2", "--yes")
    site.run("migrate", "LNX227", "--slot", "2", "--reboot", "--yes")
    report = site.verify("LNX227")
    assert report["ok"], json.dumps(report, indent=2)
    lines = [ln for ln in site.run("linked").out.splitlines() if " LINKS: " in ln]
    assert any(ln.startswith("S10GOLD LINKS:") and "LNX242" in ln for ln in lines), lines
    assert any(ln.startswith("S10GOLD2 LINKS: [[GOLD 2]]") and "LNX227" in ln for ln in lines)


def test_a_hostile_parm_file_is_refused_inside_the_guest(site: Site) -> None:
    before = site.sh("LNX242", "hostname")
    site.put_parm(
        "LNX242",
        "HostIP=129.40.179.242 Hostname=evil;reboot Gateway=129.40.179.254\n"
        "Nameserver=129.40.106.1$(touch/tmp/pwned)\n",
    )
    site.run("stop", "LNX242")
    site.run("start", "LNX242")
    site.run("verify", "LNX242", ok=False)  # waits until it answers
    assert site.sh("LNX242", "hostname") == before
    log = site.sh("LNX242", "journalctl -b -u sharedroot-findself --no-pager -o cat")
    assert "keeping the current identity" in log, log
    assert site.sh("LNX242", "test -e /tmp/pwned && echo yes || echo no") == "no"


def test_shutdown_logs_the_guest_off(site: Site) -> None:
    """vmpoff=LOGOFF: a poweroff inside the guest ends its z/VM session."""
    site.run("exec", "LNX226", "--", "systemctl", "poweroff", ok=False)
    for _ in range(120):
        rows = site.run("--json", "guests").json()
        assert isinstance(rows, list)
        if next(g for g in rows if g["name"] == "LNX226")["state"] == "logged_off":
            break
        subprocess.run(["sleep", "1"], check=True)
    else:
        raise AssertionError("LNX226 is still logged on after poweroff")
