"""The libvirt backend's pure parts: host URIs and the domain XML (no guest boots here).

The XML is rendered to real files, read back, checked against libvirt's own schema and
defined on a host of the two-host lab, which must keep what the guards rely on.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import pytest

from sharedroot.errors import InputError
from sharedroot.hypervisor.libvirt.domain import (
    Disk,
    DomainSpec,
    DomainType,
    domain_type,
    read_disks,
    render,
)
from sharedroot.model.hosturi import Transport, host_uri

REPO = Path(__file__).resolve().parent.parent
CMDLINE = 'root=/dev/disk/by-id/virtio-01B1 ro console=ttyS0 x="<a&b>"'


def spec(tmp_path: Path, **changes: object) -> DomainSpec:
    """LNX227: its own 01B0 and 0191, the gold's 01B1 and 01B7 RR, a VDISK at 0300."""
    pool = tmp_path / "pool"
    files = {
        "kernel": pool / "LNX227" / "vmlinuz",
        "initrd": pool / "LNX227" / "initrd.img",
        "01B0": pool / "LNX227" / "01B0.img",
        "0191": pool / "LNX227" / "0191.img",
        "01B1": pool / "S10GOLD" / "01B1.img",
        "01B7": pool / "S10GOLD" / "01B7.img",
        "0300": pool / "LNX227" / "0300.swap",
    }
    for path in files.values():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\0" * 4096)
    base = DomainSpec(
        name="LNX227",
        kernel=files["kernel"],
        initrd=files["initrd"],
        cmdline=CMDLINE,
        disks=(
            Disk(files["01B7"], "01B7", readonly=True),  # out of order on purpose
            Disk(files["01B0"], "01B0"),
            Disk(files["0191"], "0191"),
            Disk(files["01B1"], "01B1", readonly=True),
            Disk(files["0300"], "0300", transient=True),
        ),
        console_log=tmp_path / "log" / "LNX227.console",
        type=DomainType.QEMU,
        memory_mb=384,
    )
    return replace(base, **changes)


def rendered(tmp_path: Path, s: DomainSpec) -> ET.Element:
    path = tmp_path / f"{s.name}.xml"
    path.write_text(render(s))
    return ET.parse(path).getroot()


def test_domain_xml_round_trip(tmp_path: Path) -> None:
    s = spec(tmp_path)
    root = rendered(tmp_path, s)
    assert root.tag == "domain" and root.get("type") == "qemu"
    assert root.findtext("name") == "LNX227"
    assert root.findtext("memory") == "384" and root.find("memory").get("unit") == "MiB"  # type: ignore[union-attr]
    assert root.findtext("vcpu") == "1"
    assert root.findtext("os/kernel") == str(s.kernel)
    assert root.findtext("os/initrd") == str(s.initrd)
    assert root.findtext("os/cmdline") == CMDLINE  # markup characters stay text
    assert root.find("os/type").attrib == {"arch": "x86_64", "machine": "pc"}  # type: ignore[union-attr]
    assert root.findtext("sysinfo/system/entry[@name='serial']") == "LNX227"
    assert root.find("os/smbios").get("mode") == "sysinfo"  # type: ignore[union-attr]
    assert root.find("cpu") is None  # TCG: QEMU's default CPU model
    assert root.find("memoryBacking/nosharepages") is not None  # ksm off
    assert [root.findtext(e) for e in ("on_poweroff", "on_reboot", "on_crash")] == ["destroy"] * 3
    disks = root.findall("devices/disk")
    assert [d.findtext("serial") for d in disks] == ["0191", "01B0", "01B1", "01B7", "0300"]
    assert [d.find("target").attrib for d in disks] == [  # type: ignore[union-attr]
        {"dev": f"vd{c}", "bus": "virtio"} for c in "abcde"
    ]
    sources = {d.address: str(d.path) for d in s.disks}
    for d in disks:
        assert d.find("source").get("file") == sources[d.findtext("serial")]  # type: ignore[union-attr]
        assert d.find("driver").get("type") == "raw"  # type: ignore[union-attr]
        assert d.find("shareable") is None  # never: it would switch QEMU's image locks off
    assert [d.findtext("serial") for d in disks if d.find("readonly") is not None] == [
        "01B1",
        "01B7",
    ]
    assert [d.findtext("serial") for d in disks if d.find("transient") is not None] == ["0300"]
    serial = root.find("devices/serial")
    assert serial is not None and serial.get("type") == "pty"
    assert serial.find("log").attrib == {"file": str(s.console_log), "append": "on"}  # type: ignore[union-attr]
    channel = root.find("devices/channel")
    assert channel is not None and channel.find("source") is None  # the host picks the path
    assert channel.find("target").attrib == {"type": "virtio", "name": "org.qemu.guest_agent.0"}  # type: ignore[union-attr]
    assert root.find("devices/interface").get("type") == "user"  # type: ignore[union-attr]
    back = read_disks(render(s))
    assert [(d.serial, d.readonly, d.shareable) for d in back] == [
        ("0191", False, False),
        ("01B0", False, False),
        ("01B1", True, False),
        ("01B7", True, False),
        ("0300", False, False),
    ]


def test_kvm_and_s390x(tmp_path: Path) -> None:
    kvm = rendered(tmp_path, spec(tmp_path, type=domain_type("kvm"), vcpus=2, ksm=True))
    assert kvm.get("type") == "kvm"
    assert kvm.find("cpu").get("mode") == "host-passthrough"  # type: ignore[union-attr]
    assert kvm.findtext("vcpu") == "2"
    assert kvm.find("memoryBacking") is None
    assert domain_type("tcg") is DomainType.QEMU
    z = rendered(tmp_path, spec(tmp_path, arch="s390x", net=False))
    assert z.find("os/type").attrib == {"arch": "s390x", "machine": "s390-ccw-virtio"}  # type: ignore[union-attr]
    assert z.find("sysinfo") is None and z.find("features") is None  # no SMBIOS on s390x
    assert z.find("devices/interface") is None
    assert [d.find("address").attrib for d in z.findall("devices/disk")][1] == {  # type: ignore[union-attr]
        "type": "ccw",
        "cssid": "0xfe",
        "ssid": "0x0",
        "devno": "0x01B0",
    }


@pytest.mark.skipif(shutil.which("xmllint") is None, reason="xmllint is not installed")
@pytest.mark.skipif(shutil.which("virt-xml-validate") is None, reason="libvirt is not installed")
def test_libvirt_schema_takes_it(tmp_path: Path) -> None:
    for n, s in enumerate(
        [spec(tmp_path), spec(tmp_path, type=DomainType.KVM), spec(tmp_path, arch="s390x")]
    ):
        path = tmp_path / f"d{n}.xml"
        path.write_text(render(s))
        p = subprocess.run(["virt-xml-validate", str(path), "domain"], capture_output=True)
        assert p.returncode == 0, p.stderr


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": "lnx227"}, "must be upper case"),
        ({"name": "LNX2270XY"}, "must be 1-8 characters"),
        ({"name": "LNX</name>"}, "must be 1-8 characters"),
        ({"kernel": Path("vmlinuz")}, "kernel 'vmlinuz': must be a normalized absolute path"),
        ({"initrd": Path("/pool/../etc/shadow")}, "initramfs"),
        ({"console_log": Path("/var/log/a b")}, "console log"),
        ({"console_log": Path("/var/log/x\n")}, "console log"),
        ({"cmdline": "ro\nsingle"}, "kernel command line"),
        ({"memory_mb": 32}, "memory (MiB) 32: must be a whole number 64-1048576"),
        ({"memory_mb": True}, "memory (MiB)"),
        ({"vcpus": 0}, "vCPUs 0"),
        ({"arch": "arm64"}, "architecture 'arm64'"),
        ({"type": "kvm"}, "type 'kvm': must be kvm or qemu"),  # a string, not the enum
        ({"disks": (Disk(Path("/p/a"), "1b0"),)}, "address '1b0'"),
        ({"disks": (Disk(Path("/p/a"), "01B0"), Disk(Path("/p/b"), "01B0"))}, "two disks at 01B0"),
        (
            {"disks": (Disk(Path("/p/a"), "01B1", readonly=True, transient=True),)},
            "never transient",
        ),
        ({"disks": (Disk(Path("/p/a'/b"), "01B1"),)}, "disk 01B1"),
    ],
)
def test_bad_values_refused(tmp_path: Path, change: dict[str, object], message: str) -> None:
    with pytest.raises(InputError) as e:
        render(spec(tmp_path, **change))
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_bad_accel_refused() -> None:
    with pytest.raises(InputError, match="acceleration 'hvf': must be kvm or tcg"):
        domain_type("hvf")


@pytest.mark.parametrize(
    ("uri", "normal", "transport"),
    [
        ("qemu:///system", "qemu:///system", Transport.LOCAL),
        ("qemu+ssh://root@hostA/system", "qemu+ssh://root@hosta/system", Transport.SSH),
        ("qemu+ssh://kvm-2.example.com:2222/system", None, Transport.SSH),
        ("qemu+tcp://127.0.0.1:16510/system", None, Transport.TCP),
        ("qemu+tcp://hostb/system", None, Transport.TCP),
    ],
)
def test_host_uris(uri: str, normal: str | None, transport: Transport) -> None:
    parsed = host_uri(uri)
    assert parsed.uri == (normal or uri)
    assert parsed.transport is transport
    assert str(parsed) == parsed.uri
    assert host_uri(parsed.uri) == parsed  # normal form is a fixed point


@pytest.mark.parametrize(
    "uri",
    [
        "qemu:///session",
        "qemu:///system?socket=/tmp/x",
        "qemu+ssh://root@hostA/system?keyfile=/root/.ssh/id",
        "qemu+ssh://root@hostA/system?command=/bin/sh",
        "qemu+ext://hostA/system",
        "qemu+tls://hostA/system",
        "qemu+unix:///system",
        "xen:///system",
        "qemu+tcp://hostA:0/system",
        "qemu+tcp://hostA:65536/system",
        "qemu+tcp://hostA:016510/system",
        "qemu+tcp://300.1.1.1/system",
        "qemu+tcp://-host/system",
        "qemu+tcp://[::1]/system",
        "qemu+ssh://Root@hostA/system",
        "qemu+ssh://a b@hostA/system",
        "qemu+tcp://hostA/system\n",
        "qemu+tcp://hostA/system/",
        "QEMU:///system",
        "",
        "qemu+tcp://" + "a" * 400 + "/system",
    ],
)
def test_bad_host_uris_refused(uri: str) -> None:
    with pytest.raises(InputError) as e:
        host_uri(uri, "--host")
    assert str(e.value).startswith("--host ")
    assert "\n" not in str(e.value)


def test_host_uri_not_a_string() -> None:
    with pytest.raises(InputError, match="must be a string"):
        host_uri(16510)


# Runs as the lab's COMMAND: define the rendered XML on host 2 (validated by libvirt),
# read it back as libvirt keeps it, then undefine it (no guest starts).
DEFINE = """
import json, sys, libvirt
from sharedroot.hypervisor.libvirt.domain import read_disks
conn = libvirt.open(sys.argv[2])
dom = conn.defineXMLFlags(open(sys.argv[1]).read(), libvirt.VIR_DOMAIN_DEFINE_VALIDATE)
try:
    xml = dom.XMLDesc(0)
    other = libvirt.open(sys.argv[3]).listDefinedDomains()
finally:
    dom.undefine()
print(json.dumps({
    "disks": [[d.serial, d.readonly, d.shareable] for d in read_disks(xml)],
    "xml": xml,
    "other_host": other,
}))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="libvirt's system daemons need root")
@pytest.mark.skipif(shutil.which("libvirtd") is None, reason="libvirt is not installed")
def test_defined_on_a_lab_host(tmp_path: Path) -> None:
    xml = tmp_path / "LNX242.xml"
    xml.write_text(render(spec(tmp_path, name="LNX242")))
    p = subprocess.run(
        [
            str(REPO / "scripts" / "hostlab"),
            str(tmp_path / "lab"),
            "--",
            "sh",
            "-c",
            'exec "$0" -c "$1" "$2" ${SHAREDROOT_LAB_HOSTS#* } ${SHAREDROOT_LAB_HOSTS%% *}',
            sys.executable,
            DEFINE,
            str(xml),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    kept = json.loads(p.stdout)
    assert kept["disks"] == [
        ["0191", False, False],
        ["01B0", False, False],
        ["01B1", True, False],
        ["01B7", True, False],
        ["0300", False, False],
    ]
    root = ET.fromstring(kept["xml"])
    assert root.get("type") == "qemu"
    assert root.findtext("sysinfo/system/entry[@name='serial']") == "LNX242"
    assert kept["other_host"] == []  # defined on host 2 only
