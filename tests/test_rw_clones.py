"""Read-write clones are real servers: install, cloneprep, mnt2gold, clonerw, start (real boots).

One site for the module: the golden tree comes from the cache (built once per machine),
and the guests boot under QEMU with whatever acceleration the probe finds.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest

from conftest import BootSite, tree_hashes
from sharedroot.workflows.context import Site

pytestmark = [
    pytest.mark.boot,
    pytest.mark.skipif(os.geteuid() != 0, reason="guests need root (loop mounts, QEMU)"),
]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BootSite]:
    s = BootSite.installed(tmp_path_factory, "rw")
    s.run("mnt2gold", "--yes")
    for name, ip in (("LNX226", "10.0.2.26"), ("LNX228", "10.0.2.28"), ("LNX229", "10.0.2.29")):
        s.run(
            "define", name, "--rw", "--hostname", name.lower(), "--ip", ip, "--gateway", "10.0.2.2"
        )
        s.run("clonerw", name, "--yes")
    yield s
    for g in ("LNX226", "LNX228", "LNX229"):
        s.run("stop", g, "--timeout", "30", check=False)


def identity(site: BootSite, guest: str) -> dict[str, str]:
    out = site.sh(
        guest,
        "hostname; cat /etc/machine-id; cat /etc/ssh/ssh_host_ed25519_key.pub;"
        " stat -c %Y /etc/sharedroot/identity; cat /sys/class/dmi/id/product_serial",
    ).splitlines()
    return dict(
        zip(("hostname", "machine_id", "host_key", "record_mtime", "serial"), out, strict=True)
    )


def test_rw_clones_boot_with_their_own_identity(site: BootSite) -> None:
    site.start("LNX226", "LNX228")
    a, b = identity(site, "LNX226"), identity(site, "LNX228")
    assert a["hostname"] == "lnx226" and b["hostname"] == "lnx228"
    assert a["serial"] == "LNX226"
    assert "inet 10.0.2.26/24" in site.run("exec", "LNX226", "--", "ip", "-4", "addr").stdout
    assert a["machine_id"] != b["machine_id"]
    assert a["host_key"] != b["host_key"]
    assert site.sh("LNX226", "systemctl --failed --no-legend").strip() == ""
    assert site.run("exec", "LNX226", "--", "false", check=False).returncode == 1

    # A second start of a running guest is refused and changes nothing.
    def at_rest() -> dict[str, str]:  # the running guests write their own disks
        disks = tree_hashes(site.home / "disks")
        return {k: v for k, v in disks.items() if not k.startswith(("LNX226/", "LNX228/"))}

    before = at_rest()
    refused = site.run("start", "LNX226", check=False)
    assert refused.returncode == 1 and "already logged on" in refused.stderr
    assert at_rest() == before

    # stop leaves it logged off; after a new start its identity is the same and
    # findself changed nothing.
    assert json.loads(site.run("stop", "LNX226", "--json").stdout)["results"][0]["shutdown"]
    assert site.state("LNX226") == "logged_off"
    site.start("LNX226")
    again = identity(site, "LNX226")
    assert again == a
    log = site.sh("LNX226", "journalctl -b -u sharedroot-findself --no-pager -o cat")
    assert "nothing to do" in log and "->" not in log
    site.run("stop", "LNX228")


def test_hostile_parm_file_keeps_a_safe_identity(site: BootSite) -> None:
    store = Site.open(site.home)
    store.hv.put_parm("LNX229", "HostIP=10.0.2.29 Hostname=x;reboot\nGateway=10.0.2.2\n")
    store.state.close()
    site.start("LNX229")
    assert site.sh("LNX229", "hostname").strip() == "s10rwmnt"  # the gold's, unchanged
    log = site.sh("LNX229", "journalctl -b -u sharedroot-findself --no-pager -o cat")
    assert "findself:" in log and "x;reboot" in log and "keeping" in log
    assert site.sh("LNX229", "systemctl --failed --no-legend").strip() == ""
    site.run("stop", "LNX229")


def test_start_with_a_missing_disk_is_refused(site: BootSite) -> None:
    site.run("define", "LNX230", "--rw")
    (site.home / "disks/LNX230/01B6.img").unlink()

    def snapshot() -> tuple[dict[str, str], list[dict[str, object]], str]:
        # state.db's bytes move with SQLite checkpoints; compare what it says instead. The
        # clones still running write their consoles whenever their kernel has a word.
        files = {
            k: v
            for k, v in tree_hashes(site.home).items()
            if "state.db" not in k and not k.endswith("/console.log")
        }
        return files, site.placement(), site.run("journal", "--json").stdout

    before = snapshot()
    proc = site.run("start", "LNX230", check=False)
    assert proc.returncode == 1 and "missing" in proc.stderr and "01B6" in proc.stderr
    assert site.state("LNX230") == "logged_off"
    assert snapshot() == before
    gold = site.run("start", "S10GOLD", check=False)
    assert gold.returncode == 1 and "NOLOG" in gold.stderr
