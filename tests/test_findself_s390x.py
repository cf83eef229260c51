"""findself on s390x (the ccw platform): z/VM user ID, the 0191 CMS disk, the OSA card.

No s390x here: the guest's programs (vmcp, chccwdev, cmsfs-fuse, fusermount3, chzdev) are
fakes on PATH that log their argv and act on a fake sysfs tree; the fake cmsfs-fuse reads
a real EDF volume made by sharedroot's CMS writer and bind-mounts its files.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import PAPER_SAMPLE
from sharedroot.errors import InputError
from sharedroot.guestos import findself as fs
from sharedroot.guestos import network, zvmguest
from sharedroot.hypervisor.zvm import cms
from sharedroot.model.parm import Identity, format_parm
from sharedroot.model.types import DeviceBus

SRC = Path(__file__).resolve().parents[1] / "src"
CCW = DeviceBus.CCW
LNX226 = Identity("lnx226.example.com", "10.0.2.26", 24, "10.0.2.2", "10.0.2.3")

# /proc/sysinfo of a z/VM guest (arch/s390/kernel/sysinfo.c stsi_3_2_2: `%-8.8s`).
ZVM_SYSINFO = """\
Manufacturer:         IBM
Type:                 3906
Sequence Code:        00000000000A1B2C

LPAR Number:          21
LPAR Name:            ZVMLP1

VM00 Name:            LNX227
VM00 Control Program: z/VM    7.3.0
VM00 Adjustment:      62
VM00 CPUs Total:      2
"""
# The same under QEMU (the CP emulator's `-name lnx227`).
QEMU_SYSINFO = """\
Manufacturer:         QEMU
Type:                 3906

VM00 Name:            lnx227  
VM00 Control Program: KVM/Linux       
VM00 CPUs Total:      1
"""  # noqa: W291


def sysinfo_with(name: str) -> str:
    return ZVM_SYSINFO.replace("VM00 Name:            LNX227", f"VM00 Name:            {name}")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A small Debian-like s390x root: networkd enabled, /proc/sysinfo naming LNX227."""
    root = tmp_path / "root"
    files = {
        "etc/hostname": "s10rwmnt\n",
        "etc/hosts": "127.0.0.1\tlocalhost\n",
        "etc/machine-id": "uninitialized\n",
        "etc/resolv.conf": "nameserver 192.0.2.53\n",
        "lib/systemd/system/systemd-networkd.service": "[Unit]\n",
        "proc/sysinfo": ZVM_SYSINFO,
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True)
    (wants / "systemd-networkd.service").symlink_to("/lib/systemd/system/systemd-networkd.service")
    (root / "sys").mkdir()
    return root


# --- fakes of the guest's programs -------------------------------------------------

FAKES = {
    "vmcp": """\
echo "vmcp $*" >> "$FAKE_LOG"
if [ -n "$FAKE_VMCP_FAIL" ]; then
  echo "Error: Could not open device /dev/vmcp: No such file or directory" >&2; exit 3
fi
printf '%s\\n' "${FAKE_VMCP_OUT-LNX227 AT ZVMSIM1}"
""",
    "chccwdev": """\
echo "chccwdev $*" >> "$FAKE_LOG"
[ -n "$FAKE_CHCCWDEV_FAIL" ] && { echo "Failed (Input/output error)" >&2; exit 1; }
[ -d "$FAKE_SYS/bus/ccw/devices/$2" ] || { echo "Device $2 not found"; exit 1; }
echo 1 > "$FAKE_SYS/bus/ccw/devices/$2/online"
echo "Setting device $2 online"; echo Done
""",
    "cio_ignore": """\
echo "cio_ignore $*" >> "$FAKE_LOG"
mkdir -p "$FAKE_SYS/bus/ccw/devices/$2"
echo 0 > "$FAKE_SYS/bus/ccw/devices/$2/online"
""",
    "chzdev": """\
echo "chzdev $*" >> "$FAKE_LOG"
[ -n "$FAKE_CHZDEV_FAIL" ] && { echo "Error: QETH device not found" >&2; exit 3; }
read=${4%%:*}
name=enc$(echo "${read##*.}" | sed 's/^0*//')
mkdir -p "$FAKE_SYS/bus/ccwgroup/devices/$read/net/$name"
echo 1 > "$FAKE_SYS/bus/ccwgroup/devices/$read/online"
""",
    "fusermount3": """\
echo "fusermount3 $*" >> "$FAKE_LOG"
umount "$2"
""",
    "modprobe": """\
echo "modprobe $*" >> "$FAKE_LOG"
""",
    "udevadm": """\
echo "udevadm $*" >> "$FAKE_LOG"
""",
}

FAKE_CMSFS = f"""\
#!{sys.executable}
import os, subprocess, sys
from pathlib import Path
sys.path.insert(0, {str(SRC)!r})
from sharedroot.hypervisor.zvm import cms

with open(os.environ["FAKE_LOG"], "a") as log:
    log.write("cmsfs-fuse " + " ".join(sys.argv[1:]) + "\\n")
if os.environ.get("FAKE_CMSFS_FAIL"):
    sys.exit("cmsfs-fuse: Unsupported disk")
args, words = sys.argv[1:], []
while args:
    a = args.pop(0)
    if a == "-o":
        args.pop(0)
    elif not a.startswith("-"):
        words.append(a)
device, mountpoint = (Path(w) for w in words)
# What `cmsfs-fuse -a` shows: FN.FT files, records as ASCII lines.
stage = Path(os.environ["FAKE_STAGE"])
stage.mkdir(exist_ok=True)
for f in cms.list_files(device):
    (stage / f"{{f.name}}.{{f.ftype}}").write_text(cms.read_text(device, f.name, f.ftype))
proc = subprocess.run(["mount", "--bind", str(stage), str(mountpoint)])
if proc.returncode:
    sys.exit("fake: mount not permitted")
"""


@pytest.fixture
def fakes(tmp_path: Path, tree: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The fake programs first on PATH; returns their log (one line per call)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in FAKES.items():
        (bin_dir / name).write_text("#!/bin/sh\n" + body)
        (bin_dir / name).chmod(0o755)
    (bin_dir / "cmsfs-fuse").write_text(FAKE_CMSFS)
    (bin_dir / "cmsfs-fuse").chmod(0o755)
    log = tmp_path / "commands.log"
    log.write_text("")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.setenv("FAKE_SYS", str(tree / "sys"))
    monkeypatch.setenv("FAKE_STAGE", str(tmp_path / "stage"))
    for var in (
        "FAKE_VMCP_OUT",
        "FAKE_VMCP_FAIL",
        "FAKE_CHZDEV_FAIL",
        "FAKE_CHCCWDEV_FAIL",
        "FAKE_CMSFS_FAIL",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(zvmguest, "FUSE_DEVICE", tmp_path)  # "exists": no modprobe
    return log


def commands(log: Path) -> list[str]:
    return log.read_text().splitlines()


def ccw_device(tree: Path, bus_id: str, cutype: str, online: str = "1") -> Path:
    dev = tree / "sys/bus/ccw/devices" / bus_id
    dev.mkdir(parents=True)
    (dev / "cutype").write_text(cutype + "\n")
    (dev / "online").write_text(online + "\n")
    return dev


def parm_dir(tmp_path: Path, parms: dict[str, str]) -> Path:
    d = tmp_path / "admin"
    d.mkdir(exist_ok=True)
    for name, text in parms.items():
        (d / f"{name}.PARM-S10").write_text(text)
    return d


def run_ccw(
    root: Path, admin: Path | None, sysinfo: Path | None = None
) -> tuple[fs.Result, list[str]]:
    lines: list[str] = []
    result = fs.findself(root, parm_dir=admin, platform=CCW, sysinfo=sysinfo, log=lines.append)
    return result, lines


def tree_state(root: Path) -> dict[str, str]:
    """Every file by content (the fake sysfs, which the fakes change, left out)."""
    return {
        rel: p.read_text() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
        if not p.is_symlink() and not (rel := str(p.relative_to(root))).startswith("sys")
    }


# --- the user ID -------------------------------------------------------------------


def test_sysinfo_name_zvm_and_qemu(tmp_path: Path) -> None:
    path = tmp_path / "sysinfo"
    path.write_text(ZVM_SYSINFO)
    assert zvmguest.read_sysinfo_name(path) == "LNX227"
    path.write_text(QEMU_SYSINFO)
    assert zvmguest.read_sysinfo_name(path) == "LNX227"
    path.write_text(sysinfo_with("S10RWMNT"))
    assert zvmguest.read_sysinfo_name(path) == "S10RWMNT"
    path.write_text(sysinfo_with("$ZVM#@1"))
    assert zvmguest.read_sysinfo_name(path) == "$ZVM#@1"


@pytest.mark.parametrize(
    "text",
    [
        sysinfo_with("LNX;227"),
        sysinfo_with("LNX 227"),
        sysinfo_with("LNX2270000"),
        sysinfo_with("../x"),
        sysinfo_with(""),
        ZVM_SYSINFO.replace("VM00 Name:            LNX227", "VM00 Name:\tLNX227"),
        ZVM_SYSINFO.replace("LNX227\n", "LNX227\r\n"),
        ZVM_SYSINFO + "VM00 Name:            LNX226\n",
        ZVM_SYSINFO.replace("VM00 Name:", "VM01 Name:"),
        "Manufacturer:         IBM\n",
        "",
    ],
)
def test_sysinfo_name_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "sysinfo"
    path.write_text(text)
    with pytest.raises(InputError, match="guest name"):
        zvmguest.read_sysinfo_name(path)


def test_no_sysinfo_keeps_identity(tree: Path, tmp_path: Path) -> None:
    (tree / "proc/sysinfo").unlink()
    before = tree_state(tree)
    result, lines = run_ccw(tree, parm_dir(tmp_path, {"LNX227": PAPER_SAMPLE}))
    assert result.problem == "no guest name: cannot read /proc/sysinfo (No such file or directory)"
    assert lines[-1].endswith("; keeping the current identity")
    assert tree_state(tree) == before


def test_sysinfo_parameter(tree: Path, tmp_path: Path) -> None:
    other = tmp_path / "sysinfo"
    other.write_text(QEMU_SYSINFO.replace("lnx227", "LNX226"))
    admin = parm_dir(tmp_path, {"LNX226": format_parm(LNX226)})
    result, _ = run_ccw(tree, admin, sysinfo=other)
    assert result.guest == "LNX226" and result.identity == LNX226


def test_vmcp_preferred_when_dev_vmcp_exists(tree: Path, fakes: Path) -> None:
    assert zvmguest.read_user_id(tree, print) == "LNX227"
    assert commands(fakes) == []  # no /dev/vmcp (QEMU): only /proc/sysinfo
    (tree / "dev").mkdir()
    (tree / "dev/vmcp").write_text("")
    (tree / "proc/sysinfo").write_text(sysinfo_with("LNX226"))
    assert zvmguest.read_user_id(tree, print) == "LNX227"
    assert commands(fakes) == ["vmcp q userid"]


@pytest.mark.parametrize(
    ("env", "value"),
    [
        ("FAKE_VMCP_FAIL", "1"),
        ("FAKE_VMCP_OUT", "LNX;227 AT ZVMSIM1"),
        ("FAKE_VMCP_OUT", " LNX227 AT ZVMSIM1"),
        ("FAKE_VMCP_OUT", ""),
    ],
)
def test_vmcp_failure_falls_back_to_sysinfo(
    tree: Path, fakes: Path, monkeypatch: pytest.MonkeyPatch, env: str, value: str
) -> None:
    (tree / "dev").mkdir()
    (tree / "dev/vmcp").write_text("")
    (tree / "proc/sysinfo").write_text(sysinfo_with("LNX226"))
    monkeypatch.setenv(env, value)
    lines: list[str] = []
    assert zvmguest.read_user_id(tree, lines.append) == "LNX226"
    assert commands(fakes) == ["vmcp q userid"]
    assert lines and lines[0].startswith("findself: vmcp q userid: ")
    assert lines[0].endswith("; trying /proc/sysinfo")


def test_machine_platform(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fs.os, "uname", lambda: SimpleNamespace(machine="s390x"))
    assert fs.machine_platform() is DeviceBus.CCW
    monkeypatch.setattr(fs.os, "uname", lambda: SimpleNamespace(machine="x86_64"))
    assert fs.machine_platform() is DeviceBus.VIRTIO


# --- the parm file's OSA words -----------------------------------------------------


def test_paper_sample_nic() -> None:
    nic = zvmguest.nic_from_parm(PAPER_SAMPLE)
    assert nic == zvmguest.Nic("0.0.0600", "0.0.0601", "0.0.0602", "0", "dontcare")
    assert zvmguest.chzdev_argv(nic) == [
        "chzdev", "-e", "-a", "qeth", "0.0.0600:0.0.0601:0.0.0602", "layer2=0",
        "portname=dontcare",
    ]  # fmt: skip


def test_nic_words_as_cms_writes_them() -> None:
    text = "HOSTIP=10.0.2.26 HOSTNAME=LNX226 READCHANNEL=0.1.F5A0 WRITECHANNEL=0.1.F5A1\n"
    text += "DATACHANNEL=0.1.F5A2 LAYER2=1\n"
    nic = zvmguest.nic_from_parm(text)
    assert nic == zvmguest.Nic("0.1.f5a0", "0.1.f5a1", "0.1.f5a2", "1", None)
    assert zvmguest.chzdev_argv(nic)[4:] == ["0.1.f5a0:0.1.f5a1:0.1.f5a2", "layer2=1"]
    assert zvmguest.nic_from_parm("HostIP=10.0.2.26 Hostname=lnx226") is None
    assert zvmguest.nic_from_parm("ReadChannel=0.0.0600") == zvmguest.Nic("0.0.0600")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"read": "0.0.0600\n"},
        {"read": "0.0.0600;reboot"},
        {"read": "0.0.060A"},
        {"read": "0.0.0600", "write": "0.0.0600", "data": "0.0.0602"},
        {"read": "0.0.0600", "layer2": "1\n"},
        {"read": "0.0.0600", "portname": "osa\nExecStart"},
        {"read": "0.0.0600", "portname": "a b"},
        {"read": "0.0.0600", "portname": ""},
    ],
)
def test_nic_values_checked_before_use(kwargs: dict[str, str]) -> None:
    with pytest.raises(InputError):
        zvmguest.Nic(**kwargs)


def test_chzdev_needs_three_channels() -> None:
    with pytest.raises(InputError, match="WriteChannel and DataChannel"):
        zvmguest.chzdev_argv(zvmguest.Nic("0.0.0600", "0.0.0601"))


BASE = "HostIP=10.0.2.26 Hostname=lnx226 Netmask=255.255.255.0\n"
HOSTILE_NIC = [
    BASE + "ReadChannel=0.0.06000 WriteChannel=0.0.0601 DataChannel=0.0.0602",
    BASE + "ReadChannel=600 WriteChannel=601 DataChannel=602",
    BASE + "ReadChannel=0.4.0600",
    BASE + "ReadChannel=1.0.0600",
    BASE + "ReadChannel=0x0600",
    BASE + "ReadChannel=0.0.0600 WriteChannel=0.0.06g1",
    BASE + "ReadChannel=0.0.0600 WriteChannel=0.0.0600 DataChannel=0.0.0602",
    BASE + "WriteChannel=0.0.0601 DataChannel=0.0.0602",
    BASE + "ReadChannel=0.0.0600 Layer2=2",
    BASE + "ReadChannel=0.0.0600 Layer2=01",
    BASE + "ReadChannel=0.0.0600 Layer2=yes",
    BASE + "ReadChannel=0.0.0600 Portname=dont;care",
    BASE + "ReadChannel=0.0.0600 Portname=$(reboot)",
    BASE + "ReadChannel=0.0.0600 Portname=toolongname",
    BASE + "ReadChannel=0.0.0600 Portname=dont-care",
    BASE + "ReadChannel=0.0.0600 Portname=osa\\nExecStart=/bin/sh",
    BASE + "ReadChannel=0.0.0600 Portname=osa,layer2=1",
    BASE + "ReadChannel=0.0.0600,0.0.0700",
    BASE + "ReadChannel=0.0.0600:0.0.0601:0.0.0602",
    BASE + "Layer2=0 Portname=dont:care",
]


@pytest.mark.parametrize("text", HOSTILE_NIC)
def test_hostile_nic_words_keep_identity(
    tree: Path, tmp_path: Path, fakes: Path, text: str
) -> None:
    ccw_device(tree, "0.0.0600", "1731/01", online="0")
    admin = parm_dir(tmp_path, {"LNX227": text})
    before = tree_state(tree)
    result, lines = run_ccw(tree, admin)
    assert result.problem and result.problem.startswith("LNX227: ")
    assert lines[-1].endswith("; keeping the current identity")
    assert tree_state(tree) == before
    assert commands(fakes) == []  # no chzdev with a refused value


def test_nic_words_ignored_on_virtio(tree: Path, tmp_path: Path) -> None:
    """Today's behaviour elsewhere: the OSA words are not looked at."""
    text = BASE + "ReadChannel=0.4.0600 Portname=toolongname"
    admin = parm_dir(tmp_path, {"LNX226": text})
    result = fs.findself(tree, guest_name="LNX226", parm_dir=admin, log=lambda _: None)
    assert result.problem is None and result.identity is not None
    assert "nic" not in (tree / fs.RECORD_FILE).read_text()


# --- the network card --------------------------------------------------------------

CHZDEV_SAMPLE = "chzdev -e -a qeth 0.0.0600:0.0.0601:0.0.0602 layer2=0 portname=dontcare"
SETTLE = "udevadm settle --timeout=10"  # before the name of a card udev may still rename


def test_paper_sample_groups_the_osa_card(tree: Path, tmp_path: Path, fakes: Path) -> None:
    ccw_device(tree, "0.0.0600", "1731/01", online="0")
    admin = parm_dir(tmp_path, {"LNX227": PAPER_SAMPLE})
    result, _ = run_ccw(tree, admin)
    assert result.problem is None and result.guest == "LNX227"
    assert commands(fakes) == [CHZDEV_SAMPLE]
    assert result.interface == "enc600"
    assert (tree / "etc/hostname").read_text() == "ntc227\n"
    net = (tree / network.NETWORKD_FILE).read_text()
    assert "Address=129.40.179.227/24\nGateway=129.40.179.254\nDNS=129.40.106.1\n" in net
    names = re.search(r"^Name=(.*)$", net, re.M)
    assert names and any(fnmatch.fnmatch("enc600", g) for g in names.group(1).split())
    assert any(fnmatch.fnmatch("encf500", g) for g in names.group(1).split())
    record = (tree / fs.RECORD_FILE).read_text()
    assert '"read": "0.0.0600"' in record and '"portname": "dontcare"' in record

    # Next boot: the group device is gone again (set up for one boot only); no file changes.
    shutil.rmtree(tree / "sys/bus/ccwgroup")
    state = tree_state(tree)
    again, _ = run_ccw(tree, admin)
    assert again.changes == [] and again.interface == "enc600"
    assert commands(fakes) == [CHZDEV_SAMPLE, CHZDEV_SAMPLE]
    assert tree_state(tree) == state


def test_osa_already_online_is_left_alone(tree: Path, tmp_path: Path, fakes: Path) -> None:
    ccw_device(tree, "0.0.0600", "1731/01")
    group = tree / "sys/bus/ccwgroup/devices/0.0.0600"
    (group / "net/enc600").mkdir(parents=True)
    (group / "online").write_text("1\n")
    (group / "layer2").write_text("1\n")
    result, lines = run_ccw(tree, parm_dir(tmp_path, {"LNX227": PAPER_SAMPLE}))
    assert commands(fakes) == [SETTLE] and result.interface == "enc600"
    assert "findself: OSA 0.0.0600 is online with layer2=1, not 0" in lines


def test_virtio_net_ccw_nic_needs_no_grouping(tree: Path, tmp_path: Path, fakes: Path) -> None:
    """The CP emulator's NIC: virtio-net-ccw at 0.0.0600, the read channel of the sample."""
    dev = ccw_device(tree, "0.0.0600", "3832/01")
    (dev / "virtio1/net/enc600").mkdir(parents=True)
    drivers = tree / "sys/bus/ccw/drivers/virtio_ccw"
    drivers.mkdir(parents=True)
    (dev / "driver").symlink_to(drivers)
    result, _ = run_ccw(tree, parm_dir(tmp_path, {"LNX227": PAPER_SAMPLE}))
    assert result.problem is None and result.interface == "enc600"
    assert commands(fakes) == [SETTLE]  # no chzdev
    assert "Address=129.40.179.227/24" in (tree / network.NETWORKD_FILE).read_text()


def test_unknown_or_missing_card_still_gets_addresses(
    tree: Path, tmp_path: Path, fakes: Path
) -> None:
    admin = parm_dir(tmp_path, {"LNX227": PAPER_SAMPLE})
    result, lines = run_ccw(tree, admin)  # no 0.0.0600 at all, and not an ignored one
    assert "findself: ReadChannel 0.0.0600: no such device; network card left alone" in lines
    assert result.interface is None
    assert "Address=129.40.179.227/24" in (tree / network.NETWORKD_FILE).read_text()
    assert commands(fakes) == []


def test_ctc_is_not_grouped_as_qeth(tree: Path, tmp_path: Path, fakes: Path) -> None:
    ccw_device(tree, "0.0.0600", "3088/08", online="0")
    result, lines = run_ccw(tree, parm_dir(tmp_path, {"LNX227": PAPER_SAMPLE}))
    assert "findself: ReadChannel 0.0.0600: not an OSA card; left alone" in lines
    assert commands(fakes) == [SETTLE] and result.identity is not None


def test_chzdev_failure_is_logged_identity_applied(
    tree: Path, tmp_path: Path, fakes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ccw_device(tree, "0.0.0600", "1731/01", online="0")
    monkeypatch.setenv("FAKE_CHZDEV_FAIL", "1")
    result, lines = run_ccw(tree, parm_dir(tmp_path, {"LNX227": PAPER_SAMPLE}))
    assert any(
        line.startswith("findself: OSA 0.0.0600 not enabled: command failed (exit 3)")
        for line in lines
    )
    assert result.problem is None and (tree / "etc/hostname").read_text() == "ntc227\n"


def test_ifupdown_uses_the_cards_interface(tree: Path, tmp_path: Path, fakes: Path) -> None:
    shutil.rmtree(tree / "etc/systemd/system")
    (tree / "lib/systemd/system/systemd-networkd.service").unlink()
    (tree / "etc/network/interfaces.d").mkdir(parents=True)
    (tree / "etc/network/interfaces").write_text("auto lo\niface lo inet loopback\n")
    other = tree / "sys/class/net/enc700"  # another NIC, first in name order
    (other / "device").mkdir(parents=True)
    (other / "type").write_text("1\n")
    ccw_device(tree, "0.0.f500", "1731/01", online="0")
    text = BASE + "ReadChannel=0.0.F500 WriteChannel=0.0.F501 DataChannel=0.0.F502 Layer2=1"
    result, _ = run_ccw(tree, parm_dir(tmp_path, {"LNX227": text}))
    assert commands(fakes) == ["chzdev -e -a qeth 0.0.f500:0.0.f501:0.0.f502 layer2=1"]
    assert result.interface == "encf500"
    assert "auto encf500\niface encf500 inet static\n" in (tree / network.IFUPDOWN_FILE).read_text()


# --- the 0191 CMS disk, through main -----------------------------------------------


@pytest.fixture
def edf(tmp_path: Path) -> Path:
    """CMSCLONE's 192 as the guests link it (191): an EDF volume with the paper's sample."""
    image = tmp_path / "cmsclone-192.img"
    with open(image, "wb") as f:
        f.truncate(2 * 1024 * 1024)
    cms.format_disk(image, label="CMS192")
    cms.write_text(image, "LNX227", "PARM-S10", PAPER_SAMPLE)
    cms.write_text(image, "LNX226", "PARM-S10", format_parm(LNX226))
    return image


def main_ccw(tree: Path, *args: str) -> int:
    return fs.main(["--root", str(tree), "--platform", "ccw", "--wait", "0", *args])


def skip_if_no_mount(out: str) -> None:
    if "fake: mount not permitted" in out:
        pytest.skip("mount --bind not permitted here")


def test_main_reads_the_parm_file_from_the_cms_disk(
    tree: Path, fakes: Path, edf: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ccw_device(tree, "0.0.0191", "3990/e9", online="0")
    ccw_device(tree, "0.0.0600", "1731/01", online="0")
    mounts = Path("/proc/self/mounts").read_text()
    assert main_ccw(tree, "--device", str(edf)) == 0
    out = capsys.readouterr().out
    skip_if_no_mount(out)
    ran = commands(fakes)
    mnt = ran[1].split()[-1]
    assert re.fullmatch(r"/run/sharedroot-findself-\w+", mnt)
    assert ran == [
        "chccwdev -e 0.0.0191",
        f"cmsfs-fuse -a -o ro {edf} {mnt}",
        CHZDEV_SAMPLE,
        f"fusermount3 -u {mnt}",
    ]
    assert "findself: LNX227 from LNX227.PARM-S10: ntc227.pbm.ihost.com 129.40.179.227/24" in out
    assert (tree / "etc/hostname").read_text() == "ntc227\n"
    assert Path("/proc/self/mounts").read_text() == mounts
    assert not Path(mnt).exists()


def test_main_online_disk_is_not_set_online_again(
    tree: Path, fakes: Path, edf: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ccw_device(tree, "0.0.0191", "3832/02")
    (tree / "proc/sysinfo").write_text(QEMU_SYSINFO.replace("lnx227", "LNX226"))
    assert main_ccw(tree, "--device", str(edf)) == 0
    skip_if_no_mount(capsys.readouterr().out)
    assert [c.split()[0] for c in commands(fakes)] == ["cmsfs-fuse", "fusermount3"]
    assert (tree / "etc/hostname").read_text() == "lnx226\n"


def test_main_no_parm_file_on_the_disk(
    tree: Path, fakes: Path, edf: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ccw_device(tree, "0.0.0191", "3990/e9")
    (tree / "proc/sysinfo").write_text(sysinfo_with("LNX228"))
    before = tree_state(tree)
    assert main_ccw(tree, "--device", str(edf)) == 0
    out = capsys.readouterr().out
    skip_if_no_mount(out)
    assert "findself: LNX228: no parm file LNX228.PARM-S10 on the admin disk" in out
    assert [c.split()[0] for c in commands(fakes)] == ["cmsfs-fuse", "fusermount3"]
    assert tree_state(tree) == before


def test_main_cmsfs_failure_keeps_identity(
    tree: Path,
    fakes: Path,
    edf: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ccw_device(tree, "0.0.0191", "3990/e9")
    monkeypatch.setenv("FAKE_CMSFS_FAIL", "1")
    before = tree_state(tree)
    assert main_ccw(tree, "--device", str(edf)) == 0
    out = capsys.readouterr().out
    assert "findself: cannot mount the CMS admin disk: command failed (exit 1)" in out
    assert "findself: no admin disk (0191) for LNX227; keeping the current identity" in out
    assert [c.split()[0] for c in commands(fakes)] == ["cmsfs-fuse"]  # nothing to unmount
    assert tree_state(tree) == before
    assert not list(Path("/run").glob("sharedroot-findself-*"))


def test_main_no_disk(tree: Path, fakes: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = tree_state(tree)
    assert main_ccw(tree) == 0
    out = capsys.readouterr().out
    assert "findself: no device 0.0.0191" in out
    assert "findself: no admin disk (0191) for LNX227; keeping the current identity" in out
    assert commands(fakes) == []
    assert tree_state(tree) == before


def test_main_ignored_disk_is_made_visible(
    tree: Path,
    fakes: Path,
    edf: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """cio_ignore=all,!condev on the kernel command line hides 0191 until cio_ignore -r."""
    (tree / "proc/cio_ignore").write_text("0.0.0000-0.0.01ff\n0.0.0700\n0.1.0000-0.1.ffff\n")
    assert main_ccw(tree, "--device", str(edf)) == 0
    out = capsys.readouterr().out
    skip_if_no_mount(out)
    ran = [c.split()[0] for c in commands(fakes)]
    assert ran == ["cio_ignore", "chccwdev", "cmsfs-fuse", "fusermount3"]
    assert commands(fakes)[:2] == ["cio_ignore -r 0.0.0191", "chccwdev -e 0.0.0191"]
    # 0.0.0600 is not ignored, just not there: no card, no command, no wait.
    assert "findself: ReadChannel 0.0.0600: no such device; network card left alone" in out
    assert (tree / "etc/hostname").read_text() == "ntc227\n"


def test_is_ignored(tmp_path: Path) -> None:
    assert not zvmguest.is_ignored(tmp_path, "0.0.0191")  # no /proc/cio_ignore
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cio_ignore").write_text(
        "0.0.0000-0.0.0190\n0.0.0192\nbogus\n0.0.05ff-0.0.0601\n0.1.0191\n0.0.zzzz-0.0.ffff\n"
    )
    ignored = {"0.0.0000", "0.0.0190", "0.0.0192", "0.0.0600", "0.1.0191"}
    for bus_id in [*ignored, "0.0.0191", "0.0.0193", "0.0.0602", "0.2.0191", "0.0.ffff"]:
        assert zvmguest.is_ignored(tmp_path, bus_id) is (bus_id in ignored), bus_id


def test_main_chccwdev_failure(
    tree: Path, fakes: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ccw_device(tree, "0.0.0191", "3990/e9", online="0")
    monkeypatch.setenv("FAKE_CHCCWDEV_FAIL", "1")
    before = tree_state(tree)
    assert main_ccw(tree) == 0
    out = capsys.readouterr().out
    assert "findself: cannot set 0.0.0191 online: command failed (exit 1)" in out
    assert "findself: no admin disk (0191) for LNX227; keeping the current identity" in out
    assert commands(fakes) == ["chccwdev -e 0.0.0191"]
    assert tree_state(tree) == before


def test_main_loads_fuse_when_missing(
    tree: Path,
    fakes: Path,
    edf: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ccw_device(tree, "0.0.0191", "3990/e9")
    monkeypatch.setattr(zvmguest, "FUSE_DEVICE", tmp_path / "no-fuse")
    assert main_ccw(tree, "--device", str(edf)) == 0
    skip_if_no_mount(capsys.readouterr().out)
    assert [c.split()[0] for c in commands(fakes)][:2] == ["modprobe", "cmsfs-fuse"]
    assert commands(fakes)[0] == "modprobe fuse"


def test_cmsfs_and_unmount_argv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    node, mnt = Path("/dev/disk/by-path/ccw-0.0.0191"), Path("/run/sharedroot-findself-x")
    assert zvmguest.cmsfs_argv(node, mnt) == [
        "cmsfs-fuse", "-a", "-o", "ro", "/dev/disk/by-path/ccw-0.0.0191", str(mnt),
    ]  # fmt: skip
    monkeypatch.setenv("PATH", str(tmp_path))
    assert zvmguest.unmount_argv(mnt) == ["umount", str(mnt)]
    (tmp_path / "fusermount").write_text("#!/bin/sh\n")
    (tmp_path / "fusermount").chmod(0o755)
    assert zvmguest.unmount_argv(mnt) == ["fusermount", "-u", str(mnt)]
    (tmp_path / "fusermount3").write_text("#!/bin/sh\n")
    (tmp_path / "fusermount3").chmod(0o755)
    assert zvmguest.unmount_argv(mnt) == ["fusermount3", "-u", str(mnt)]


def test_unit_waits_for_udev_and_fuse() -> None:
    text = fs.unit_text("/usr/local/lib/sharedroot-py", DeviceBus.CCW)
    assert re.search(r"^After=.*\bsystemd-udevd\.service\b", text, re.M)
    assert re.search(r"^After=.*\bmodprobe@fuse\.service\b", text, re.M)
    assert re.search(r"^Wants=.*\bmodprobe@fuse\.service\b", text, re.M)
    assert "ExecStart=/usr/bin/python3 -m sharedroot.guestos.findself --platform ccw\n" in text


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
