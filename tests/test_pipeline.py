"""The disk-level pipeline on real images: MNT2TST, TST2MNT, MNT2GOLD, CLONERW and their guards."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import Ran, fill_disk, image_hashes, sha256, tree_hashes
from sharedroot.hypervisor.copyengine import content_hash
from sharedroot.model.parm import identity_from_parm
from sharedroot.model.types import Mode
from sharedroot.workflows.context import Site


def allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


@pytest.fixture
def filled(site: Site) -> Site:
    for d in site.config.layout.copied:
        if d.fs:
            fill_disk(site, site.config.guests.maintenance, d.address, f"mnt-{d.address}")
    return site


def test_mnt2tst_copies_every_disk_byte_for_byte_and_keeps_holes(
    filled: Site, cli: Callable[..., Ran]
) -> None:
    g = filled.config.guests
    ran = cli("mnt2tst", "--yes", "--verify", "--json")
    assert ran.code == 0, ran.err
    results = ran.json()["results"]  # type: ignore[index]
    assert len(results) == len(filled.config.layout.copied)
    assert all(r["verified"] for r in results)
    for d in filled.config.layout.copied:
        src = filled.home / f"disks/{g.maintenance}/{d.address}.img"
        dst = filled.home / f"disks/{g.test}/{d.address}.img"
        assert sha256(src) == sha256(dst), d.address
        assert allocated(dst) <= allocated(src) + (1 << 20), d.address
    # VDISKs are made fresh at each start; the pipeline never copies them.
    assert not (filled.home / f"disks/{g.test}/01B2.img").exists()


def test_tst2mnt_copies_back(filled: Site, cli: Callable[..., Ran]) -> None:
    g = filled.config.guests
    fill_disk(filled, g.test, "01B1", "test-root")
    assert cli("tst2mnt", "--yes").code == 0
    assert sha256(filled.home / f"disks/{g.maintenance}/01B1.img") == sha256(
        filled.home / f"disks/{g.test}/01B1.img"
    )


def test_copy_onto_a_logged_on_guest_is_refused_and_changes_nothing(
    filled: Site, cli: Callable[..., Ran], logged_on: Callable[[str], None]
) -> None:
    logged_on(filled.config.guests.test)
    before = image_hashes(filled)
    ran = cli("mnt2tst", "--yes")
    assert ran.code == 1
    assert "S10RWTST user ID must be logged off" in ran.err
    assert image_hashes(filled) == before


def test_copy_from_a_logged_on_guest_is_refused(
    filled: Site, cli: Callable[..., Ran], logged_on: Callable[[str], None]
) -> None:
    logged_on(filled.config.guests.maintenance)
    before = image_hashes(filled)
    ran = cli("mnt2gold", "--yes")
    assert ran.code == 1 and "S10RWMNT user ID must be logged off" in ran.err
    assert image_hashes(filled) == before


def test_copy_onto_a_disk_another_guest_links_is_refused(
    filled: Site, cli: Callable[..., Ran]
) -> None:
    assert cli("define", "LNX227", "--ro").code == 0
    filled.hv.link("LNX227", "01B7", filled.config.guests.test, "01B7", Mode.RR)
    before = image_hashes(filled)
    ran = cli("mnt2tst", "--yes")
    assert ran.code == 1
    assert "LNX227 (01B7)" in ran.err
    assert image_hashes(filled) == before
    # The backend itself refuses too, whoever calls it.
    with pytest.raises(Exception, match="linked by LNX227"):
        filled.hv.copy_disk("S10RWMNT", "01B7", "S10RWTST", "01B7")
    assert image_hashes(filled) == before


def test_no_terminal_and_no_yes_refuses(filled: Site, home: Path) -> None:
    before = image_hashes(filled)
    proc = subprocess.run(
        ["sharedroot", "--home", str(home), "mnt2tst"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=os.environ | {"PATH": f"{Path(os.sys.executable).parent}:{os.environ['PATH']}"},
    )
    assert proc.returncode == 1
    assert "--yes" in proc.stderr
    assert image_hashes(filled) == before


def test_dry_run_changes_nothing(filled: Site, home: Path, cli: Callable[..., Ran]) -> None:
    before = tree_hashes(home)
    ran = cli("mnt2gold", "--dry-run", "--json")
    assert ran.code == 0
    steps = ran.json()["steps"]  # type: ignore[index]
    assert steps[0] == "copy S10RWMNT 01B0 to S10GOLD 11B0"
    assert tree_hashes(home) == before


def test_mnt2gold_then_clonerw(filled: Site, cli: Callable[..., Ran]) -> None:
    ran = cli(
        "define",
        "LNX226",
        "--rw",
        "--hostname",
        "lnx226",
        "--ip",
        "10.0.2.26",
        "--gateway",
        "10.0.2.2",
    )
    assert ran.code == 0, ran.err
    assert cli("clonerw", "LNX226", "--yes").code == 1  # no gold yet
    assert cli("mnt2gold", "--yes").code == 0
    assert cli("clonerw", "LNX226", "--yes").code == 0
    for d in filled.config.layout.copied:
        gold = content_hash(filled.home / f"disks/S10GOLD/1{d.address[1:]}.img")
        assert gold == content_hash(filled.home / f"disks/S10RWMNT/{d.address}.img")
        assert gold == content_hash(filled.home / f"disks/LNX226/{d.address}.img")
    parm = filled.hv.get_parm("LNX226")
    assert parm is not None and identity_from_parm(parm).ip == "10.0.2.26"
    # The admin disk image itself holds the parm file, as the guest will read it.
    admin = filled.home / "disks/CMSCLONE/0192.img"
    shown = subprocess.run(
        ["debugfs", "-R", "cat /LNX226.PARM-S10", str(admin)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "HostIP=10.0.2.26 Hostname=lnx226" in shown


def test_clonerw_guards(
    filled: Site, cli: Callable[..., Ran], logged_on: Callable[[str], None]
) -> None:
    assert cli("mnt2gold", "--yes").code == 0
    ran = cli("clonerw", "LNX999", "--yes")
    assert ran.code == 1 and "LNX999 user ID does not exist" in ran.err
    assert cli("define", "LNX227", "--ro").code == 0
    ran = cli("clonerw", "LNX227", "--yes")
    assert ran.code == 1 and "--rw" in ran.err
    assert cli("define", "LNX226", "--rw").code == 0
    logged_on("LNX226")
    before = image_hashes(filled)
    ran = cli("clonerw", "LNX226", "--yes")
    assert ran.code == 1 and "LNX226 user ID must be logged off" in ran.err
    assert image_hashes(filled) == before


def test_journal_records_each_step_and_failures(
    filled: Site, cli: Callable[..., Ran], home: Path
) -> None:
    assert cli("mnt2tst", "--yes").code == 0
    # The target's directory cannot take new files: the first copy fails, the journal
    # says where, and the old image stays.
    target = home / "disks/S10RWTST"
    before = image_hashes(filled)
    subprocess.run(["chattr", "+i", target], check=True)
    try:
        ran = cli("mnt2tst", "--yes")
    finally:
        subprocess.run(["chattr", "-i", target], check=True)
    assert ran.code == 1 and "S10RWTST" in ran.err
    assert image_hashes(filled) == before
    ops = cli("journal", "--json").json()
    assert isinstance(ops, list)
    last, first = ops[0], ops[1]
    assert first["status"] == "ok" and len(first["steps"]) == 7
    assert last["status"] == "failed"
    assert last["steps"] == [
        {
            "at": last["steps"][0]["at"],
            "step": "copy S10RWMNT 01B0 to S10RWTST 01B0",
            "status": "failed",
        }
    ]


def test_backend_link_rules(site: Site, cli: Callable[..., Ran]) -> None:
    assert cli("define", "LNX227", "--ro").code == 0
    assert cli("define", "LNX242", "--ro").code == 0
    hv = site.hv
    hv.link("LNX227", "0300", "S10RWTST", "01B8", Mode.MR)
    with pytest.raises(Exception, match="write access"):
        hv.link("LNX242", "0300", "S10RWTST", "01B8", Mode.MR)
    hv.link("LNX242", "0300", "S10RWTST", "01B8", Mode.RR)  # read access is always fine
    with pytest.raises(Exception, match="already has a device"):
        hv.link("LNX242", "0300", "S10RWTST", "01B7", Mode.RR)
    assert {lk.guest for lk in hv.links_to("S10RWTST", "01B8")} == {"LNX227", "LNX242"}
    hv.detach("LNX227", "0300")
    hv.link("LNX242", "0301", "S10RWTST", "01B8", Mode.MR)  # now nobody else writes
