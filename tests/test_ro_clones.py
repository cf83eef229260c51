"""Many servers on one shared root: mnt2rogld, ro2gold, clonero, verify (real boots).

Three read-only clones of one gold slot run at once; each has its own /etc, hostname
and machine-id; the gold's disks do not change by a byte.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator

import pytest

from conftest import BootSite, tree_hashes

pytestmark = [
    pytest.mark.boot,
    pytest.mark.skipif(os.geteuid() != 0, reason="guests need root (loop mounts, QEMU)"),
]

CLONES = {"LNX227": "10.0.2.27", "LNX242": "10.0.2.42", "LNX243": "10.0.2.43"}


def gold_hashes(site: BootSite) -> dict[str, str]:
    disks = site.home / "disks"
    return {k: v for k, v in tree_hashes(disks).items() if k.startswith("S10GOLD/21")}


def incomplete(site: BootSite, guest: str) -> str | None:
    """The operation that left a guest's disk set half written, or None."""
    rows = json.loads(site.run("guests", "--json").stdout)
    row = next(g for g in rows if g["name"] == guest)["incomplete"]
    return None if row is None else str(row["operation"])


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BootSite]:
    s = BootSite.installed(tmp_path_factory, "ro")
    # Before any gold exists, clonero has nothing to clone from.
    s.run("define", "LNX227", "--ro", "--hostname", "lnx227", "--ip", CLONES["LNX227"],
          "--gateway", "10.0.2.2")  # fmt: skip
    early = s.run("clonero", "LNX227", "--yes", check=False)
    assert early.returncode == 1 and "no current gold slot" in early.stderr
    s.run("mnt2rogld", "--yes")
    # A second mnt2rogld killed mid-way leaves the staging set incomplete: not promoted.
    assert s.killed(2, "mnt2rogld", "--yes") == "interrupted"
    assert incomplete(s, "S10ROGLD") == "mnt2rogld"
    refused = s.run("ro2gold", "--yes", check=False)
    assert refused.returncode == 1 and "incomplete" in refused.stderr, refused.stderr
    s.run("mnt2rogld", "--yes")
    s.run("ro2gold", "--yes")
    # LNX242's define and LNX243's clonero are killed half-way, then run again: these
    # recovered clones boot and pass verify like the others.
    for name, ip in CLONES.items():
        define = ["define", name, "--ro", "--hostname", name.lower(), "--ip", ip,
                  "--gateway", "10.0.2.2"]  # fmt: skip
        if name == "LNX242":
            assert s.killed(1, *define) == "interrupted"
            assert incomplete(s, name) == "define"
        if name != "LNX227":
            s.run(*define)
        if name == "LNX243":
            assert s.killed(1, "clonero", name, "--yes") == "interrupted"
            assert incomplete(s, name) == "clonero"
            early_start = s.run("start", name, check=False)
            assert early_start.returncode == 1 and "incomplete" in early_start.stderr
        s.run("clonero", name, "--yes")
        assert incomplete(s, name) is None
    yield s
    for g in CLONES:
        s.run("stop", g, "--timeout", "30", check=False)


def test_three_clones_share_one_root_and_pass_verify(site: BootSite) -> None:
    gold_before = gold_hashes(site)
    assert len(gold_before) == 7
    linked = site.run("linked").stdout.splitlines()
    assert linked[1] == "S10GOLD LINKS: [[GOLD 1]] LNX227 LNX242 LNX243"

    site.start(*CLONES)
    for guest in CLONES:
        report = json.loads(site.run("verify", guest, "--json", check=False).stdout)
        failed = [c for c in report["checks"] if not c["ok"]]
        assert report["ok"], f"{guest}: {failed}"
        # the shared disks are the gold mapped as memory, with DAX
        dax = [c["check"] for c in report["checks"] if "mapped as memory" in c["check"]]
        assert [d.split()[1] for d in dax] == ["/", "/usr", "/opt"], dax  # never /boot
    # the guest's page cache stays flat while it reads the gold's files: they are the
    # host's pages, mapped (DAX), not copied into each guest
    cached = site.sh(
        "LNX227",
        "sync; echo 3 > /proc/sys/vm/drop_caches; sed -n 's/^Cached: *//p' /proc/meminfo;"
        " find /usr/lib -type f -size +100k | head -200 | xargs cat | wc -c;"
        " sed -n 's/^Cached: *//p' /proc/meminfo",
    ).split()
    before, read, after = int(cached[0]), int(cached[2]), int(cached[3])
    assert read > 50 << 20 and after - before < 8 << 10, cached  # kB: < 8 MiB for > 50 MiB read

    # A running clone is not deleted (the directory's PURGE wants it logged off); it
    # keeps running (it answers below).
    busy = site.run("delete", "LNX243", "--yes", check=False)
    assert busy.returncode == 1 and "LNX243 user ID must be logged off" in busy.stderr
    assert site.state("LNX243") == "logged_on"

    # /etc is each clone's own: a file written on one is absent on the others ...
    site.sh("LNX227", "echo mine > /etc/sharedroot-test")
    for other in ("LNX242", "LNX243"):
        assert site.sh(other, "cat /etc/sharedroot-test 2>/dev/null || echo absent") == "absent\n"
    ids = {g: site.sh(g, "hostname; cat /etc/machine-id").split() for g in CLONES}
    assert [ids[g][0] for g in CLONES] == ["lnx227", "lnx242", "lnx243"]
    assert len({ids[g][1] for g in CLONES}) == 3

    # ... and survives its reboot, with the same hostname and machine-id.
    site.run("stop", "LNX227")
    site.start("LNX227")
    assert site.sh("LNX227", "cat /etc/sharedroot-test") == "mine\n"
    assert site.sh("LNX227", "hostname; cat /etc/machine-id").split() == ids["LNX227"]
    again = json.loads(site.run("verify", "LNX227", "--json", check=False).stdout)
    assert again["ok"], again

    # Package tools in a clone fail cleanly: the package database is read-only.
    proc = site.run("exec", "LNX242", "--", "dpkg", "-r", "iputils-ping", check=False)
    assert proc.returncode != 0 and "Read-only file system" in proc.stderr

    # Nothing of all that changed the gold by a byte.
    assert gold_hashes(site) == gold_before


def test_ro2gold_onto_a_linked_slot_is_refused(site: BootSite) -> None:
    before = tree_hashes(site.home / "disks")
    proc = site.run("ro2gold", "--slot", "1", "--yes", check=False)
    assert proc.returncode == 1
    assert "LNX227" in proc.stderr and "LNX242" in proc.stderr
    after = tree_hashes(site.home / "disks")
    running = tuple(f"{g}/" for g in CLONES)  # running clones write their own disks
    assert {k: v for k, v in after.items() if not k.startswith(running)} == {
        k: v for k, v in before.items() if not k.startswith(running)
    }


def test_clonero_of_a_logged_on_guest_is_refused(
    site: BootSite, logged_on_site: Callable[[BootSite, str], None]
) -> None:
    site.run("define", "LNX244", "--ro")
    logged_on_site(site, "LNX244")
    proc = site.run("clonero", "LNX244", "--yes", check=False)
    assert proc.returncode == 1 and "LNX244 user ID must be logged off" in proc.stderr
