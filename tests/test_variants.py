"""The paper's variants with real guests, in one fleet: a middleware disk read-only under
/opt at an added address, /var and /srv as logical volumes of rwVG (§1.8), and a picky
program that insists on writing inside its install tree, tricked by site.toml's
[writable] table.

One site from a layout file (layouts/lvm.toml with layouts/middleware.toml's 01C0):
install -> picky onto the maintenance system -> mnt2rogld -> ro2gold; two read-only
clones boot and pass verify; each has its own volume group, sees the middleware
read-only and runs picky with its own state. LNX228 reboots (kept copies kept, copies in
memory new). After an update of the middleware in maintenance, a changed table and
ro2gold to the other slot, `migrate --reboot` brings LNX227 the new content and table.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest

from conftest import BootSite, tree_hashes
from sharedroot.run import run
from sharedroot.store.config import SITE_FILE
from test_layouts import both_text
from test_writable import CONF_SEED, LOCK, TABLE, TABLE2, entry, picky, put_picky

pytestmark = [
    pytest.mark.boot,
    pytest.mark.skipif(os.geteuid() != 0, reason="guests need root (loop mounts, QEMU)"),
]

CLONES = {"LNX227": "10.0.2.27", "LNX228": "10.0.2.28"}
WRITABLE_CHECK = "writable paths bound and writable"


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
    put_picky(s.home)
    site_file = s.home / SITE_FILE
    text = site_file.read_text()
    # a copy of something the maintenance system lacks: refused before any write
    site_file.write_text(text + TABLE + entry("/opt/nothing"))
    before = tree_hashes(s.home)
    refused = s.run("mnt2rogld", "--yes", check=False)
    assert refused.returncode == 1 and "/opt/nothing is not in the" in refused.stderr
    assert tree_hashes(s.home) == before
    site_file.write_text(text + TABLE)
    before = tree_hashes(s.home)
    assert s.run("mnt2rogld", "--dry-run").returncode == 0
    assert tree_hashes(s.home) == before
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


def picky_saw(guest: str, boots: int) -> list[str]:
    """picky's report (test_writable.picky) after the clone's `boots`-th boot: the
    counter and hosts kept on /local, the log and the conf's boots new at this boot
    (in memory, or on /local where a changed table moved the log)."""
    host = guest.lower()
    return ["active", str(boots), f"{host}," * boots, f"start {boots},", host,
            "from the gold", f"{boots},", CONF_SEED]  # fmt: skip


def bound(report: dict[str, list[dict[str, object]]]) -> object:
    return next(c["detail"] for c in report["checks"] if c["check"] == WRITABLE_CHECK)


def test_lvm_middleware_and_writable_clones(site: BootSite) -> None:
    for guest in CLONES:
        report = json.loads(site.run("verify", guest, "--json", check=False).stdout)
        assert report["ok"], report
        assert bound(report) == "5 of the gold's [writable] table"
        # picky wrote in its install tree on the read-only /opt and /usr, each clone its own
        assert picky(site, guest) == picky_saw(guest, 1)
        ro = site.run("exec", guest, "--", "touch", "/opt/picky/foo", check=False)
        assert ro.returncode != 0 and "Read-only file system" in ro.stderr
        mounted = "ls -A /opt/picky/cache; mountpoint -q /opt/picky/cache && echo m"
        assert site.sh(guest, mounted) == "m\n"  # an empty tmpfs
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
    # Meanwhile LNX228 reboots: its copies on /local and /var are kept, those in memory new.
    site.run("stop", "LNX228")
    site.start("S10RWMNT", "LNX228")
    assert picky(site, "LNX228") == picky_saw("LNX228", 2)
    assert site.sh("S10RWMNT", "findmnt -n -o SOURCE,OPTIONS /var").startswith(
        "/dev/mapper/rwVG-varLV rw"
    )
    site.sh("S10RWMNT", "echo 2 > /opt/mw/VERSION && sync")
    # picky ran here too, writing in the real install tree: cleared, or the gold gets it
    clear = "cd /opt/picky && rm -f state/counter state/hosts log/picky.log conf/boots"
    site.sh("S10RWMNT", f"systemctl stop picky; {clear}; echo unlocked > {LOCK.path}")
    site.run("stop", "S10RWMNT")
    # the table changes: the cache goes, the log is kept on /local
    site_file = site.home / SITE_FILE
    site_file.write_text(site_file.read_text().replace(TABLE, TABLE2))
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
    assert bound(report) == "4 of the gold's [writable] table"
    assert picky(site, "LNX227") == picky_saw("LNX227", 2)  # the log new on /local
    gone = "mountpoint -q /opt/picky/cache || echo unbound; ls /local/writable/opt/picky"
    assert site.sh("LNX227", gone).split() == ["unbound", "log", "state"]
    assert site.sh("LNX228", "mountpoint -q /opt/picky/cache && echo bound") == "bound\n"
    linked = site.run("linked").stdout
    assert "S10GOLD2 LINKS: [[GOLD 2]] LNX227" in linked, linked
