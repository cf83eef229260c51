"""A read-only clone booted as a libvirt domain on host 2 of the two-host lab (real boot).

The domain XML is rendered from the store's own state (its disks and RR links); the
clone finds its identity (SMBIOS serial, parm file), sees its gold disk read-only, and
while it runs QEMU's image locks refuse a read-write open of that gold, by qemu-io and by
a second domain: what a future `<shareable/>` would silently switch off.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import BootSite, sha256
from sharedroot.hypervisor import cache_dir
from sharedroot.hypervisor.ipl import extract_boot_files
from sharedroot.hypervisor.libvirt.domain import Disk, DomainSpec, domain_type, render
from sharedroot.hypervisor.qemu.accel import probe_accel
from sharedroot.model.types import DiskKind, Mode
from sharedroot.workflows.context import Site

REPO = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.boot,
    pytest.mark.skipif(os.geteuid() != 0, reason="libvirt's system daemons and guests need root"),
    pytest.mark.skipif(shutil.which("libvirtd") is None, reason="libvirt is not installed"),
]


def clone_spec(home: Path, guest: str, work: Path) -> tuple[DomainSpec, Path]:
    """The guest as a domain, from the store: its disks, its links (RR: read-only), fresh
    swap VDISKs; the kernel and initramfs its 01B0 names. Also the gold file at 01B1."""
    site = Site.open(home, readonly=True)
    try:
        state = site.state
        disks = [Disk(home / d.file, d.address) for d in state.disks(guest)]
        for link in state.links(guest):
            target = state.disk(link.owner, link.owner_address)
            assert target is not None
            disks.append(Disk(home / target.file, link.address, readonly=link.mode is Mode.RR))
        for d in site.config.layout:
            if d.kind is DiskKind.VDISK:
                swap = work / f"{d.address}.swap"
                with open(swap, "wb") as f:
                    f.truncate(d.size)
                subprocess.run(["mkswap", "-q", str(swap)], check=True)
                disks.append(Disk(swap, d.address, transient=True))
        memory = site.config.memory_mb
    finally:
        site.state.close()
    boot = next(d for d in disks if d.address == "01B0")
    kernel, initrd, conf = extract_boot_files(boot.path, work / "boot")
    spec = DomainSpec(
        name=guest,
        kernel=kernel,
        initrd=initrd,
        cmdline=conf.cmdline,
        disks=tuple(disks),
        console_log=work / f"{guest}.console",
        type=domain_type(probe_accel(cache_dir())),
        memory_mb=memory,
    )
    gold = next(d.path for d in disks if d.address == "01B1")
    return spec, gold


def test_clone_boots_on_lab_host_2(tmp_path_factory: pytest.TempPathFactory) -> None:
    site = BootSite.installed(tmp_path_factory, "lvlab")
    site.run("mnt2rogld", "--yes")
    site.run("ro2gold", "--yes")
    site.run("define", "LNX242", "--ro", "--hostname", "lnx242", "--ip", "10.0.2.42",
             "--gateway", "10.0.2.2")  # fmt: skip
    site.run("clonero", "LNX242", "--yes")
    work = tmp_path_factory.mktemp("lvdom")
    spec, gold = clone_spec(site.home, "LNX242", work)
    assert any(d.readonly for d in spec.disks) and gold.is_file()
    xml = work / "LNX242.xml"
    xml.write_text(render(spec))
    gold_before = sha256(gold)
    kit = [sys.executable, str(REPO / "tests" / "libvirtkit.py"), "2", str(xml), str(gold)]
    p = subprocess.run(
        [str(REPO / "scripts" / "hostlab"), str(work / "lab"), "--", *kit],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    found = json.loads(p.stdout)
    print(json.dumps({k: v for k, v in found.items() if k != "console"}))
    assert found["uri"] == "qemu+tcp://127.0.0.1:16510/system"
    assert found["serial"] == "LNX242"  # SMBIOS serial = the guest name
    assert found["hostname"] == "lnx242"  # its identity, from its parm file
    assert found["gold_ro"][0] == 0 and found["gold_ro"][1].strip() == "1"
    assert found["qemu_io"][0] != 0 and 'Failed to get "write" lock' in found["qemu_io"][1]
    assert 'Failed to get "write" lock' in found["rw_domain"], found["rw_domain"]
    assert found["root"].split()[0] == "/dev/disk/by-id/virtio-01B1"
    assert found["clean_stop"], found["console"]
    assert sha256(gold) == gold_before
