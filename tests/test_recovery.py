"""Guards before the first write, and recovery from what dead commands left (no boots).

What is checked here: mnt2rogld refuses a system it cannot convert before it writes;
a define that fails is undone; stale temporary files go with the next writer; a gold
slot whose disks differ from its generation is refused; migrate --dry-run writes not a
byte; migrate --reboot stops at a guest that does not log off.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import BootSite, Ran, fill_disk, tree_hashes
from sharedroot.workflows.context import Site

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts need root")


def test_mnt2rogld_refuses_a_system_without_an_initramfs_tool_before_writing(
    site: Site, home: Path, cli: Callable[..., Ran]
) -> None:
    g = site.config.guests
    for d in site.config.layout.copied:
        if d.fs:
            fill_disk(site, g.maintenance, d.address, f"mnt-{d.address}")
    before = tree_hashes(home / "disks")
    ran = cli("mnt2rogld", "--yes")
    assert ran.code == 1
    assert "neither initramfs-tools' update-initramfs nor dracut" in ran.err
    assert "Traceback" not in ran.err
    assert tree_hashes(home / "disks") == before
    rows = json.loads(cli("guests", "--json").out)
    assert all(r["incomplete"] is None for r in rows)


def test_define_that_fails_is_undone(site: Site, home: Path, cli: Callable[..., Ran]) -> None:
    files = home / "disks" / site.config.guests.admin / "0192.files"
    files.mkdir(parents=True, exist_ok=True)
    (files / "LNX300.PARM-S10").mkdir()  # the parm file cannot be written
    ran = cli("define", "LNX300", "--ro", "--hostname", "lnx300", "--ip", "10.0.0.3")
    assert ran.code == 1, ran.err
    names = [r["name"] for r in json.loads(cli("guests", "--json").out)]
    assert "LNX300" not in names
    assert not (home / "disks" / "LNX300").exists()
    (files / "LNX300.PARM-S10").rmdir()
    ran = cli("define", "LNX300", "--ro", "--hostname", "lnx300", "--ip", "10.0.0.3")
    assert ran.code == 0, ran.err


def test_next_writer_removes_what_dead_writers_left(
    site: Site, home: Path, cli: Callable[..., Ran]
) -> None:
    test_guest = site.config.guests.test
    stale = [
        home / "disks" / test_guest / ".01B1.img.copy-k1ll3d",
        home / "disks" / site.config.guests.admin / ".0192.img.new",
        home / "tmp" / "install-S10RWMNT" / "01B7.img",
        home / "work" / "LNX9" / "ours",
    ]
    for p in stale:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x" * 4096) if p.suffix else p.mkdir()
    assert cli("guests").code == 0  # a reader leaves them
    assert all(p.exists() for p in stale)
    assert cli("mnt2tst", "--yes", "--dry-run").code == 0  # so does a dry run
    assert all(p.exists() for p in stale)
    assert cli("mnt2tst", "--yes").code == 0
    assert not any(p.exists() for p in stale)


# A site with both gold slots built and one read-only clone on slot 1 -------------


@pytest.fixture(scope="module")
def slots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BootSite]:
    s = BootSite.installed(tmp_path_factory, "slots")
    s.run("mnt2rogld", "--yes")
    s.run("ro2gold", "--slot", "1", "--yes")
    s.run("ro2gold", "--slot", "2", "--yes")
    s.run("ro2gold", "--slot", "1", "--yes")  # slot 1 current again
    s.run("define", "LNX1", "--ro", "--hostname", "lnx1", "--ip", "10.0.2.51")
    s.run("clonero", "LNX1", "--yes")
    yield s


def test_migrate_dry_run_writes_nothing(slots: BootSite) -> None:
    work = slots.home / "work" / "LNX1"
    before = tree_hashes(slots.home)
    ran = slots.run("migrate", "LNX1", "--slot", "2", "--dry-run", "--json")
    plan = json.loads(ran.stdout)
    assert plan["dry_run"] and plan["results"][0]["guest"] == "LNX1"
    assert tree_hashes(slots.home) == before  # ext4 /local mounted rw would change bytes
    assert not work.exists()


def test_migrate_reboot_stops_when_a_guest_does_not_log_off(
    slots: BootSite, logged_on_site: Callable[[BootSite, str], None]
) -> None:
    # Logged on without a QEMU to shut down: the stop fails, the guest may still run.
    logged_on_site(slots, "LNX1")
    before = tree_hashes(slots.home / "disks")
    links = slots.placement()
    ran = slots.run("migrate", "LNX1", "--slot", "2", "--reboot", "--yes", check=False)
    assert ran.returncode == 1
    assert "LNX1 did not log off" in ran.stderr and "Not moved: LNX1" in ran.stderr
    assert tree_hashes(slots.home / "disks") == before
    assert slots.placement() == links


def test_a_gold_slot_that_differs_from_its_generation_is_refused(slots: BootSite) -> None:
    gold = slots.home / "disks" / "S10GOLD" / "21B8.img"
    os.utime(gold)  # a new stamp, same content: the hash decides, and agrees
    slots.run("define", "LNX2", "--ro")
    slots.run("clonero", "LNX2", "--yes")
    saved = gold.read_bytes()[:4096]
    with open(gold, "r+b") as f:
        f.write(b"\xff" * 4096)  # the superblock area of /opt: not generation 1's disk
    try:
        ran = slots.run("clonero", "LNX2", "--yes", check=False)
        assert ran.returncode == 1 and "21B8 is not the disk generation" in ran.stderr
        ran = slots.run("migrate", "LNX1", "--slot", "1", "--yes", check=False)
        assert ran.returncode == 1 and "21B8 is not the disk generation" in ran.stderr
        ran = slots.run("migrate", "LNX2", "--slot", "2", "--yes", check=False)
        assert ran.returncode == 0, ran.stderr  # slot 2 is whole
    finally:
        with open(gold, "r+b") as f:
            f.write(saved)
    slots.run("clonero", "LNX2", "--yes")  # the same bytes again: accepted
