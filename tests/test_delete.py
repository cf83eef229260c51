"""DELETE (the directory's PURGE), GENERATIONS and PRUNE, without Linux and without boots.

On the local backend with real images: the gold slot's templates are filesystem images
recorded as a generation the way ro2gold records one, clones are defined and cloned by
the real commands. On the z/VM emulator: what delete leaves in the directory and on the
admin disk. A running clone is refused here with a guest logged on as QEMU holds it (a
live lock holder); test_ro_clones.py asks the same of a clone that really runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import SHAREDROOT, Ran, sha256, sparse_hash, tree_hashes
from sharedroot.cli.main import main
from sharedroot.cli.ui import TerminalUI
from sharedroot.errors import RefusedError
from sharedroot.model.fleetfile import Definition
from sharedroot.model.layout import gold_ro_address
from sharedroot.model.parm import Identity
from sharedroot.model.types import Mode, Role
from sharedroot.workflows import define, report
from sharedroot.workflows import delete as delete_workflow
from sharedroot.workflows import guest as guest_ops
from sharedroot.workflows.attach import disk_hash
from sharedroot.workflows.context import Options, Site
from zvmkit import Zvm

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="clonero's guards attach images")

CLONE = ["--hostname", "lnx227", "--ip", "10.0.2.27", "--gateway", "10.0.2.2"]


def promote(site: Site, slot: int) -> int:
    """Record slot's current disks as a generation and make it current (as ro2gold does)."""
    holder = site.config.slot_holder(slot)
    addrs = [gold_ro_address(d.address) for d in site.config.layout.copied]
    hashes = {a: disk_hash(site, holder, a) for a in addrs}
    stamps = {a: s for a in addrs if (s := site.hv.stamp(holder, a))}
    with site.state.transaction():
        gen = site.state.add_generation(slot, site.config.guests.staging, hashes, stamps)
        site.state.set_current_slot(slot)
    return gen


@pytest.fixture(scope="module")
def gold_template(site_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A paper site with gold slot 1 current and two read-only clones of it, LNX227 (with a
    parm file) and LNX242 (without), and a read-write guest LNX226 defined."""
    home = tmp_path_factory.mktemp("delete") / "site"
    subprocess.run(["cp", "-a", "--sparse=always", site_template, home], check=True)
    promote(Site.open(home), 1)
    for args in (
        ["define", "LNX227", "--ro", *CLONE],
        ["define", "LNX242", "--ro"],
        ["define", "LNX226", "--rw", "--hostname", "lnx226", "--ip", "10.0.2.26"],
        ["clonero", "LNX227", "LNX242", "--yes"],
    ):
        subprocess.run([SHAREDROOT, "--home", str(home), *args], check=True, capture_output=True)
    return home


@pytest.fixture
def dsite(gold_template: Path, home: Path) -> Site:
    subprocess.run(["cp", "-a", "--sparse=always", gold_template, home], check=True)
    return Site.open(home)


def guest_rows(cli: Callable[..., Ran]) -> dict[str, dict[str, object]]:
    return {g["name"]: g for g in cli("guests", "--json").json()}  # type: ignore[attr-defined]


def test_delete_a_read_only_clone_removes_all_it_owned(
    dsite: Site, cli: Callable[..., Ran]
) -> None:
    home = dsite.home
    other = {k: v for k, v in tree_hashes(home / "disks").items() if not k.startswith("LNX227/")}
    other.pop("CMSCLONE/0192.img")
    assert other.pop("CMSCLONE/0192.files/LNX227.PARM-S10")
    assert dsite.hv.get_parm("LNX227") is not None
    assert "LNX227" in cli("linked").out

    ran = cli("delete", "LNX227", "--yes", "--json")
    assert ran.code == 0, ran.err
    result = ran.json()
    assert result["operation"] == "delete"  # type: ignore[index]
    assert "gold slot 1 (S10GOLD) is linked by nobody" not in ran.err  # LNX242 still links it

    rows = guest_rows(cli)
    assert "LNX227" not in rows and "LNX242" in rows
    assert "LNX227" not in cli("linked").out
    site = Site.open(home)
    assert site.state.disks("LNX227") == [] and site.state.links("LNX227") == []
    assert not (home / "disks" / "LNX227").exists()
    assert site.hv.get_parm("LNX227") is None
    assert site.state.incomplete() == {}
    assert [k for k in site.state.facts("") if k.endswith(":LNX227")] == []  # its facts too
    assert "identity:LNX226" in site.state.facts("")  # another guest's stay
    # Nothing else changed: the gold, the other clones, the pipeline's disks.
    after = tree_hashes(home / "disks")
    after.pop("CMSCLONE/0192.img")
    assert after == other
    journal = cli("journal", "--json", "--limit", "1").json()
    assert journal[0]["operation"] == "delete" and journal[0]["status"] == "ok"  # type: ignore[index]
    # Gone is gone: a second delete does not know it (as every command on an unknown guest).
    again = cli("delete", "LNX227", "--yes")
    assert again.code == 1 and "LNX227 user ID does not exist" in again.err


def test_delete_a_read_write_clone_and_reuse_its_name(dsite: Site, cli: Callable[..., Ran]) -> None:
    assert len(dsite.state.disks("LNX226")) == 7
    assert cli("delete", "LNX226", "--yes").code == 0
    assert "LNX226" not in guest_rows(cli)
    assert not (dsite.home / "disks" / "LNX226").exists()
    # The name is free again: define makes it anew.
    assert cli("define", "LNX226", "--ro").code == 0
    assert guest_rows(cli)["LNX226"]["role"] == "ro"


def test_refusals_change_nothing(
    dsite: Site, cli: Callable[..., Ran], logged_on: Callable[[str], None]
) -> None:
    home = dsite.home
    before = tree_hashes(home)
    for guest in (
        "S10GOLD",
        "S10GOLD2",
        "S10RWMNT",
        "S10RWTST",
        "S10ROGLD",
        "CMSCLONE",
        "LNXCLONE",
    ):
        ran = cli("delete", guest, "--yes")
        assert ran.code == 1, guest
        assert f"{guest} is one of the pipeline's own guests" in ran.err
    unknown = cli("delete", "LNX999", "--yes")
    assert unknown.code == 1 and "LNX999 user ID does not exist" in unknown.err
    for bad in ("lnx-227", "TOOLONGNAME", "", "LNX 1"):
        ran = cli("delete", bad, "--yes")
        assert ran.code == 2, bad
    # No terminal and no --yes: asked, and refused.
    asked = cli("delete", "LNX227")
    assert asked.code == 1 and "--yes" in asked.err
    # Another guest links one of its disks (the paper's LINK LNX226 01B5 ...).
    site = Site.open(home)
    with site.state.transaction():
        site.hv.link("LNX242", "0200", "LNX226", "01B5", Mode.RR)
    linked = cli("delete", "LNX226", "--yes")
    assert linked.code == 1 and "LNX242 (01B5)" in linked.err
    with site.state.transaction():
        site.hv.detach("LNX242", "0200")
    # Logged on: refused, and it stays logged on.
    logged_on("LNX227")
    running = cli("delete", "LNX227", "--yes")
    assert running.code == 1 and "LNX227 user ID must be logged off" in running.err
    assert guest_rows(cli)["LNX227"]["state"] == "logged_on"
    after = tree_hashes(home)
    for key in ("state.db", "state.db-wal", "state.db-shm"):
        before.pop(key, None)
        after.pop(key, None)
    assert after == before
    assert [j["operation"] for j in cli("journal", "--json").json()][:1] != ["delete"]  # type: ignore[index]


def test_dry_run_writes_nothing(dsite: Site, cli: Callable[..., Ran]) -> None:
    home = dsite.home
    subprocess.run(["sqlite3", str(home / "state.db"), "PRAGMA wal_checkpoint(TRUNCATE)"])
    db = sha256(home / "state.db")
    images = tree_hashes(home / "disks")
    for extra in ([], ["--keep-disks"]):
        ran = cli("delete", "LNX227", "--dry-run", "--json", *extra)
        assert ran.code == 0, ran.err
        plan = ran.json()
        assert plan["dry_run"] is True  # type: ignore[index]
        assert any(s.startswith("PURGE LNX227") for s in plan["steps"])  # type: ignore[index]
    assert sha256(home / "state.db") == db
    assert not (home / "state.db-wal").exists() or (home / "state.db-wal").stat().st_size == 0
    assert tree_hashes(home / "disks") == images
    assert not (home / "kept").exists()
    assert cli("prune", "--dry-run").code == 0
    assert sha256(home / "state.db") == db


def test_keep_disks_keeps_the_images_and_forgets_the_guest(
    dsite: Site, cli: Callable[..., Ran]
) -> None:
    home = dsite.home
    want = {d.address: sparse_hash(home / d.file) for d in dsite.state.disks("LNX227")}
    ran = cli("delete", "LNX227", "--yes", "--keep-disks", "--json")
    assert ran.code == 0, ran.err
    kept = Path(next(r["kept"] for r in ran.json()["results"] if "kept" in r))  # type: ignore[index]
    assert kept.parent == home / "kept" and kept.name.startswith("LNX227-")
    assert {p.name: sparse_hash(p) for p in kept.iterdir()} == {
        f"{a}.img": h for a, h in want.items()
    }
    assert "LNX227" not in guest_rows(cli)
    assert not (home / "disks" / "LNX227").exists()
    # The text form says where they are.
    again = cli("delete", "LNX242", "--yes", "--keep-disks")
    assert again.code == 0 and f"{home}/kept/LNX242-" in again.out


def test_deleting_the_last_clone_of_a_slot_lets_ro2gold_refill_it(
    dsite: Site, cli: Callable[..., Ran]
) -> None:
    site = dsite
    with site.state.transaction():  # the staging guest holds a read-only system
        op = site.state.journal_start("mnt2rogld", {}, [])
        site.state.journal_end(op, "ok")
    gens = cli("generations", "--json").json()
    [first] = gens["generations"]  # type: ignore[index]
    assert first["held"] and first["current"] and not first["removable"]
    assert first["linked_by"] == ["LNX227", "LNX242"]

    refused = cli("ro2gold", "--slot", "1", "--yes")
    assert refused.code == 1 and "LNX227, LNX242" in refused.err
    assert cli("delete", "LNX227", "--yes").code == 0
    still = cli("ro2gold", "--slot", "1", "--yes")
    assert still.code == 1 and "LNX242" in still.err and "LNX227" not in still.err
    last = cli("delete", "LNX242", "--yes")
    assert last.code == 0 and "gold slot 1 (S10GOLD) is linked by nobody now" in last.err
    assert cli("ro2gold", "--slot", "1", "--yes").code == 0, "the slot is free again"

    gens = cli("generations", "--json").json()["generations"]  # type: ignore[index]
    assert [(g["id"], g["slot"], g["held"], g["removable"]) for g in gens] == [
        (1, 1, False, True),
        (2, 1, True, False),
    ]
    assert "superseded" in cli("generations").out
    plan = cli("prune", "--dry-run", "--json").json()
    assert len(plan["steps"]) == 1 and "forget generations 1 " in plan["steps"][0]  # type: ignore[index]
    assert cli("prune").code == 1  # no terminal, no --yes
    done = cli("prune", "--yes", "--json").json()
    assert done["results"] == [{"pruned": [1]}]  # type: ignore[index]
    left = cli("generations", "--json").json()["generations"]  # type: ignore[index]
    assert [g["id"] for g in left] == [2]
    nothing = cli("prune", "--yes", "--json")
    assert nothing.code == 0 and nothing.json()["steps"] == []  # type: ignore[index]
    # clonero checks a slot against the generation it holds: that one stayed.
    assert cli("define", "LNX243", "--ro").code == 0
    assert cli("clonero", "LNX243", "--yes").code == 0


def shape(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What each guest is, without the host's memory figures (the page cache moves)."""
    return [{k: v for k, v in g.items() if k not in ("memory", "cached")} for g in rows]


class KillAt(TerminalUI):
    """Dies by SIGKILL when the workflow announces its n-th step (before it runs it)."""

    def __init__(self, n: int) -> None:
        super().__init__(quiet=True)
        self.left = n

    def step(self, text: str) -> None:
        if not text.startswith("note"):
            self.left -= 1
            if self.left == 0:
                os.kill(os.getpid(), signal.SIGKILL)


def _killed(home: Path, work: Callable[[Site], object]) -> None:
    """Run `work` on the site in a child process, which must die by SIGKILL in it."""
    pid = os.fork()
    if pid == 0:
        try:
            work(Site.open(home))
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def _killed_delete(home: Path, n: int, keep: bool) -> None:
    """A delete SIGKILLed before its step n runs; n past the last step: after every step,
    before the journal records the end (the guest's row gone, its mark not yet)."""

    def work(site: Site) -> None:
        if n > (8 if keep else 5):

            def die(*args: object) -> None:
                os.kill(os.getpid(), signal.SIGKILL)

            site.state.journal_end = die  # type: ignore[method-assign]
        delete_workflow.delete(site, KillAt(n), Options(yes=True), "LNX227", keep_disks=keep)

    _killed(home, work)


def admin_files(home: Path) -> str:
    """The files on the admin disk's image itself (what guests read at 0191)."""
    image = home / "disks" / "CMSCLONE" / "0192.img"
    listing = subprocess.run(["debugfs", "-R", "ls /", str(image)], capture_output=True)
    return listing.stdout.decode(errors="replace")


def test_a_delete_killed_while_rewriting_the_admin_disk_is_finished(dsite: Site) -> None:
    home = dsite.home
    assert "LNX227.PARM-S10" in admin_files(home)

    def work(site: Site) -> None:
        def die() -> None:  # the parm file removed, the admin disk not rebuilt yet
            os.kill(os.getpid(), signal.SIGKILL)

        site.hv._rebuild_admin_disk = die  # type: ignore[attr-defined]
        delete_workflow.delete(site, TerminalUI(quiet=True), Options(yes=True), "LNX227")

    _killed(home, work)
    assert Site.open(home).hv.get_parm("LNX227") is None  # gone from the files ...
    assert "LNX227.PARM-S10" in admin_files(home)  # ... not yet from the disk
    assert main(["--home", str(home), "delete", "LNX227", "--yes"]) == 0
    assert "LNX227.PARM-S10" not in admin_files(home)
    assert "LNX226.PARM-S10" in admin_files(home)  # the others' stay


@pytest.mark.parametrize("n", [1, 2])
def test_delete_removes_what_an_interrupted_define_left(
    dsite: Site, cli: Callable[..., Ran], n: int
) -> None:
    identity = Identity("lnx230", "10.0.2.30", 24, None, None)
    batch = [Definition("LNX230", Role.RO_CLONE, identity)]
    _killed(dsite.home, lambda site: define.define_many(site, KillAt(n), Options(), batch))
    rows = guest_rows(cli)
    assert ("LNX230" in rows) == (n == 2)
    ran = cli("delete", "LNX230", "--yes")
    assert ran.code == 0, ran.err
    site = Site.open(dsite.home)
    assert site.state.incomplete() == {} and site.state.guest("LNX230") is None
    assert site.hv.get_parm("LNX230") is None
    assert cli("define", "LNX230", "--ro").code == 0  # as new


@pytest.mark.parametrize("keep", [False, True], ids=["plain", "keep-disks"])
def test_a_delete_killed_at_any_step_is_finished_by_a_rerun(
    gold_template: Path, tmp_path: Path, keep: bool
) -> None:
    ref = tmp_path / "ref"  # the uninterrupted delete, for comparison
    subprocess.run(["cp", "-a", "--sparse=always", gold_template, ref], check=True)
    whole = ["delete", "LNX227", "--yes", *(["--keep-disks"] if keep else [])]
    assert main(["--home", str(ref), *whole]) == 0
    kept = {p.relative_to(ref): sparse_hash(p) for p in (ref / "kept").glob("*/*")}
    assert len(kept) == (3 if keep else 0)
    steps = 8 if keep else 5
    for n in range(1, steps + 2):
        home = tmp_path / f"kill{n}"
        subprocess.run(["cp", "-a", "--sparse=always", gold_template, home], check=True)
        _killed_delete(home, n, keep)
        site = Site.open(home)
        mark = site.state.incomplete().get("LNX227")
        assert mark is not None and mark.operation == "delete", n
        if n <= steps:  # half deleted: it says so, and is not started
            assert site.state.guest("LNX227") is not None
            rows = {g["name"]: g for g in report.guests(site)}
            assert rows["LNX227"]["incomplete"]["rerun"] == "sharedroot delete LNX227"
            with pytest.raises(RefusedError, match="incomplete"):
                guest_ops.start(site, TerminalUI(quiet=True), Options(), "LNX227")
        else:
            assert site.state.guest("LNX227") is None
        # The rerun (without --keep-disks: the first run's choice holds) finishes it.
        assert main(["--home", str(home), "delete", "LNX227", "--yes"]) == 0, n
        site = Site.open(home)
        assert site.state.guest("LNX227") is None and site.state.incomplete() == {}
        assert site.state.links("LNX227") == [] and site.state.disks("LNX227") == []
        assert not list((home / "disks" / "LNX227").glob("*"))
        assert site.hv.get_parm("LNX227") is None
        assert {p.relative_to(home): sparse_hash(p) for p in (home / "kept").glob("*/*")} == kept
        assert not list((home / "tmp").glob("*"))
        assert shape(report.guests(site)) == shape(report.guests(Site.open(ref))), n
        last = site.state.journal(1)[0]
        assert (last.operation, last.status) == ("delete", "ok"), n


def test_zvm_delete_purges_the_directory_entry(tmp_path: Path) -> None:
    zvm = Zvm(tmp_path)
    out = zvm.run(
        """
        from sharedroot.workflows.context import Options, Site
        from sharedroot.workflows.delete import delete

        class Quiet:
            def step(self, text): pass
            def progress(self, label, total): raise AssertionError("no copies")
            def confirm(self, question): return False

        for g, r in (("CMSCLONE", Role.ADMIN), ("S10GOLD", Role.GOLD), ("LNXCLONE", Role.WORKER)):
            hv.define_guest(g, r, adopt=True)
        for g in ("LNX227", "LNX242"):
            hv.define_guest(g, Role.RO_CLONE)
            for addr in ("01B4", "01B5", "01B6"):
                hv.add_disk(g, addr, DiskKind.FS, 10 << 20, "ext4")
            hv.link(g, "0191", "CMSCLONE", "0192", Mode.RR)
            hv.set_profile(g, "S10DFLT", [(f"01B{n}", "S10GOLD", f"21B{n}") for n in (0, 1, 7, 8)])
            hv.put_parm(g, f"HostIP=10.0.0.{g[-2:]} Hostname={g.lower()}\\n")
        site = Site(HOME, config, state)
        yes = Options(yes=True)

        def attempt(guest, **kw):
            try:
                delete(site, Quiet(), yes, guest, **kw)
            except RefusedError as exc:
                return str(exc)
            return None

        out["gold"] = attempt("S10GOLD")
        hv.link("LNX242", "0300", "LNX227", "01B5", Mode.RR)
        out["linked"] = attempt("LNX227")
        # LNX242 logged on (its LINK of LNX227 01B5 now active): refused, still on.
        hv.start("LNX242", None)
        out["running"] = attempt("LNX242")
        out["still_on"] = hv.query("LNX242")
        hv.stop("LNX242", 10)
        site.hv.detach("LNX242", "0300")
        out["dry"] = delete(site, Quiet(), Options(dry_run=True), "LNX227").steps
        out["exists_after_dry_run"] = hv.directory.exists("LNX227")
        start = mark()
        out["done"] = attempt("LNX227")
        out["cmds"] = [row[1] for row in cplog()[start:]]
        out["exists"] = hv.directory.exists("LNX227")
        out["query"] = hv.query("LNX227")
        out["rows"] = [state.guest("LNX227"), state.disks("LNX227"), state.links("LNX227")]
        out["parm"] = hv.get_parm("LNX227")
        out["other_parm"] = hv.get_parm("LNX242")
        out["other"] = hv.directory.entry("LNX242").text
        out["left"] = sorted(v for v in cp.dasd() if v.startswith("F"))
        delete(site, Quiet(), yes, "LNX242", keep_disks=True)
        kept = sorted((HOME / "kept").glob("LNX242-*/*"))
        out["kept"] = [p.name for p in kept]
        out["kept_fs"] = os.popen(f"blkid -o value -s TYPE {kept[1]}").read().strip()
        out["after_keep"] = [hv.directory.exists("LNX242"), sorted(cp.dasd())]
        """
    )
    assert "S10GOLD is one of the pipeline's own guests" in out["gold"]
    assert "LNX242 (01B5)" in out["linked"]
    assert "LNX242 user ID must be logged off" in out["running"]
    assert out["still_on"] == "logged_on"
    assert out["dry"][-1].startswith("PURGE LNX227")
    assert out["exists_after_dry_run"] is True
    assert out["done"] is None
    assert out["exists"] is False and out["query"] == "no_such"
    assert out["rows"] == [None, [], []]
    assert out["parm"] is None and out["other_parm"] == "HostIP=10.0.0.42 Hostname=lnx242\n"
    assert "LINK LNX227" not in out["other"]
    assert out["left"] == []  # every LINK the worker made is detached again
    assert not any("LNX227" in c and c.startswith("XAUTOLOG") for c in out["cmds"])
    # --keep-disks: each minidisk's filesystem copied out to an image, then purged.
    assert out["kept"] == ["01B4.img", "01B5.img", "01B6.img"]
    assert out["kept_fs"] == "ext4"
    assert out["after_keep"][0] is False
    assert not [v for v in out["after_keep"][1] if v.startswith("F")]
    direct = (zvm.sim / "USER.DIRECT").read_text()
    assert "USER LNX227 " not in direct and "USER LNX242 " not in direct
    assert "LINK LNX227" not in direct  # no LINK to its minidisks left anywhere
