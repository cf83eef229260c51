"""s390x guests on the local backend (as under KVM on IBM Z; TCG on this machine).

`install --arch s390x` on a local site builds the s390x golden tree, the read-only
pipeline runs as on x86_64, and a read-only clone boots with qemu-system-s390x: its
disks are virtio-ccw at the paper's device numbers, it learns its name from
/proc/sysinfo (no SMBIOS on s390x), reads its parm file from the ext admin disk and
passes `verify` through the guest agent. One boot, shared by the tests below.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator

import pytest

from conftest import S390X_DISTRO, BootSite
from sharedroot.hypervisor import ipl

pytestmark = [
    pytest.mark.boot,
    pytest.mark.skipif(os.geteuid() != 0, reason="guests need root (loop mounts, QEMU)"),
    pytest.mark.skipif(
        shutil.which("qemu-system-s390x") is None, reason="no qemu-system-s390x (scripts/setup)"
    ),
]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BootSite]:
    s = BootSite(tmp_path_factory.mktemp("s390x") / "site")
    s.run("init", "--layout", "paper", "--distro", S390X_DISTRO)
    wrong = s.run("install", "--arch", "ppc64el", "--yes", check=False)
    assert wrong.returncode == 2 and "--arch" in wrong.stderr, wrong.stderr
    s.run("install", "--arch", "s390x", "--yes")
    s.run("cloneprep", "--yes")
    s.run("mnt2rogld", "--yes")
    s.run("ro2gold", "--yes")
    s.run("define", "LNX227", "--ro", "--hostname", "lnx227", "--ip", "10.0.2.27",
          "--gateway", "10.0.2.2")  # fmt: skip
    s.run("clonero", "LNX227", "--yes")
    try:
        s.start("LNX227")
        yield s
    finally:
        s.run("stop", "LNX227", check=False)


def test_the_gold_boots_an_s390x_kernel(site: BootSite) -> None:
    for image in ("S10RWMNT/01B0.img", "S10GOLD/21B0.img"):
        conf = ipl.read_boot_config(site.home / "disks" / image)
        assert conf.arch == "s390x", image
        assert "root=/dev/disk/by-id/virtio-01B1" in conf.cmdline.split()
    argv = json.loads((site.home / "run" / "LNX227" / "qemu.argv").read_text())
    assert argv[0] == "qemu-system-s390x" and "s390-ccw-virtio" in argv
    assert argv[argv.index("-accel") + 1] == "tcg"  # another architecture: never KVM
    assert any(a.endswith("serial=01B1,devno=fe.0.01b1") for a in argv)


def test_the_clone_is_s390x_with_its_own_identity(site: BootSite) -> None:
    report = json.loads(site.run("verify", "LNX227", "--json", check=False).stdout)
    failed = [c for c in report["checks"] if not c["ok"]]
    assert report["ok"], failed
    out = site.sh(
        "LNX227",
        "uname -m; hostname; sed -n 's/^VM00 Name: *//p' /proc/sysinfo;"
        " readlink -f /dev/disk/by-path/ccw-0.0.01b1; findmnt -no OPTIONS /usr",
    ).split()
    assert out[:3] == ["s390x", "lnx227", "LNX227"]
    assert out[3].startswith("/dev/vd")  # the paper's address is the ccw device number
    assert out[4].split(",")[0] == "ro"
    assert "10.0.2.27/" in site.sh("LNX227", "ip -4 -o addr show")
