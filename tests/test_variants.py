"""The paper's variants with real guests: a middleware disk read-only under /opt at an
added address, and /var and /srv as logical volumes of rwVG (§1.8), in one fleet.

One site from a layout file (layouts/lvm.toml with layouts/middleware.toml's 01C0):
install -> mnt2rogld -> ro2gold; two read-only clones boot and pass verify; each has its
own volume group, sees the middleware read-only, and after an update of the middleware
in maintenance and ro2gold to the other slot, `migrate --reboot` brings one of them the
new content.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest

from conftest import BootSite
from sharedroot.run import run
from test_layouts import both_text

pytestmark = [
    pytest.mark.boot,
    pytest.mark.skipif(os.geteuid() != 0, reason="guests need root (loop mounts, QEMU)"),
]

CLONES = {"LNX227": "10.0.2.27", "LNX228": "10.0.2.28"}


def put_middleware(site: BootSite, version: str) -> None:
    """Middleware version 1 onto the maintenance system's 01C0 disk, as a vendor's
    installer would have left it (written on the worker: no boot needed for it)."""
    image = site.home / "disks/S10RWMNT/01C0.img"
    at = site.home / "mw-mnt"
    at.mkdir(exist_ok=True)
    run(["mount", "-o", "loop", image, at])
    try:
        (at / "bin").mkdir(exist_ok=True)
        (at / "VERSION").write_text(f"{version}\n")
    finally:
        run(["umount", at])


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BootSite]:
    base = tmp_path_factory.mktemp("variants")
    layout = base / "layout.toml"
    layout.write_text(both_text())
    s = BootSite(base / "site")
    s.run("init", "--layout", str(layout))
    s.run("install", "--yes")
    s.run("cloneprep", "--yes")
    put_middleware(s, "1")
    s.run("mnt2rogld", "--yes")
    s.run("ro2gold", "--slot", "1", "--yes")
    for name, ip in CLONES.items():
        s.run("define", name, "--ro", "--hostname", name.lower(), "--ip", ip,
              "--gateway", "10.0.2.2")  # fmt: skip
    s.run("clonero", *CLONES, "--yes")
    s.start(*CLONES)
    yield s
    for g in (*CLONES, "S10RWMNT"):
        s.run("stop", g, "--timeout", "30", check=False)


def test_lvm_and_middleware_clones(site: BootSite) -> None:
    for guest in CLONES:
        report = json.loads(site.run("verify", guest, "--json", check=False).stdout)
        assert report["ok"], report
        # /var and /srv are the clone's own logical volumes, activated at boot.
        sources = site.sh(guest, "findmnt -n -o SOURCE /var; findmnt -n -o SOURCE /srv")
        assert sources.split() == ["/dev/mapper/rwVG-varLV", "/dev/mapper/rwVG-srvLV"], sources
        lvs = site.sh(guest, "lvs --noheadings -o vg_name,lv_name,lv_active 2>/dev/null")
        assert sorted(line.split() for line in lvs.splitlines()) == [
            ["rwVG", "srvLV", "active"],
            ["rwVG", "varLV", "active"],
        ], lvs
        fstab = site.sh(guest, "grep -v '^#' /etc/fstab")
        assert "UUID" not in fstab and "/dev/mapper/rwVG-varLV\t/var\t" in fstab
        site.sh(guest, f"echo {guest} > /srv/owner && sync")
        # The middleware: read-only under its mount point, version 1.
        assert site.sh(guest, "findmnt -n -o OPTIONS /opt/mw").startswith("ro")
        assert site.sh(guest, "cat /opt/mw/VERSION") == "1\n"
        touch = site.run("exec", guest, "--", "touch", "/opt/mw/x", check=False)
        assert touch.returncode != 0
        assert site.sh(guest, "touch /opt/foo 2>/dev/null && echo wrote || echo ro") == "ro\n"
    for guest in CLONES:  # each clone's writes stay its own
        assert site.sh(guest, "cat /srv/owner") == f"{guest}\n"

    # Maintenance: the middleware is updated on the read-write system (its /var a
    # logical volume too), then carried to gold slot 2 while the clones run on slot 1.
    site.start("S10RWMNT")
    assert site.sh("S10RWMNT", "findmnt -n -o SOURCE,OPTIONS /var").startswith(
        "/dev/mapper/rwVG-varLV rw"
    )
    site.sh("S10RWMNT", "echo 2 > /opt/mw/VERSION && sync")
    site.run("stop", "S10RWMNT")
    site.run("cloneprep", "--yes")
    site.run("mnt2rogld", "--yes")
    site.run("ro2gold", "--slot", "2", "--yes")
    linked = site.run("linked").stdout
    assert "S10GOLD LINKS: GOLD 1 LNX227 LNX228" in linked, linked

    site.run("migrate", "LNX227", "--slot", "2", "--reboot", "--yes")
    assert site.sh("LNX227", "cat /opt/mw/VERSION") == "2\n"
    assert site.sh("LNX228", "cat /opt/mw/VERSION") == "1\n"  # still on slot 1
    assert site.sh("LNX227", "cat /srv/owner") == "LNX227\n"  # its own disk moved with it
    assert site.sh("LNX227", "findmnt -n -o OPTIONS /opt/mw").startswith("ro")
    report = json.loads(site.run("verify", "LNX227", "--json", check=False).stdout)
    assert report["ok"], report
    linked = site.run("linked").stdout
    assert "S10GOLD2 LINKS: [[GOLD 2]] LNX227" in linked, linked
