"""The paper's maintenance cycle (§1.7) with real guests: a new gold in slot 2 while a
read-only clone runs on slot 1, migrate with /etc merge, rollback, and a migrate killed
between relink and merge.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import BootSite, tree_hashes

pytestmark = [
    pytest.mark.boot,
    pytest.mark.skipif(os.geteuid() != 0, reason="guests need root (loop mounts, QEMU)"),
]

TOOL = "sharedroot-hello"


def tiny_package(tmp: Path) -> bytes:
    """A real .deb with one command, built here: a maintenance update needs no network."""
    root = tmp / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN/control").write_text(
        f"Package: {TOOL}\nVersion: 1.0\nArchitecture: all\nMaintainer: sharedroot tests"
        " <root@localhost>\nDescription: says hello from the new gold\n"
    )
    tool = root / "usr/bin" / TOOL
    tool.parent.mkdir(parents=True)
    tool.write_text("#!/bin/sh\necho hello from the new gold\n")
    tool.chmod(0o755)
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", root, tmp / "p.deb"],
                   check=True, capture_output=True)  # fmt: skip
    return (tmp / "p.deb").read_bytes()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BootSite]:
    s = BootSite.installed(tmp_path_factory, "cycle")
    s.run("mnt2gold", "--yes")
    s.run("mnt2rogld", "--yes")
    s.run("ro2gold", "--slot", "1", "--yes")
    s.run("define", "LNX227", "--ro", "--hostname", "lnx227", "--ip", "10.0.2.27",
          "--gateway", "10.0.2.2")  # fmt: skip
    s.run("clonero", "LNX227", "--yes")
    yield s
    for g in ("LNX227", "S10RWMNT"):
        s.run("stop", g, "--timeout", "30", check=False)


def test_the_whole_cycle(site: BootSite, tmp_path: Path) -> None:
    site.start("LNX227")
    site.sh("LNX227", "echo '# edited on lnx227' >> /etc/bash.bashrc")
    assert site.run("exec", "LNX227", "--", TOOL, check=False).returncode != 0

    # Maintenance: a package, a changed default, a new /etc file.
    deb = base64.b64encode(tiny_package(tmp_path)).decode()
    site.start("S10RWMNT")
    site.sh(
        "S10RWMNT",
        f"echo {deb} | base64 -d > /tmp/p.deb && dpkg -i /tmp/p.deb"
        " && echo '# changed in the new gold' >> /etc/bash.bashrc"
        " && echo 'new = yes' > /etc/sharedroot-new.conf",
    )
    site.run("stop", "S10RWMNT")
    site.run("cloneprep", "--yes")
    site.run("mnt2gold", "--yes")
    site.run("mnt2rogld", "--yes")
    # Promote to slot 2 while the clone still runs on slot 1: allowed, nobody links 2.
    site.run("ro2gold", "--slot", "2", "--yes")
    assert site.run("linked").stdout.splitlines()[1:3] == [
        "S10GOLD LINKS: GOLD 1 LNX227",
        "S10GOLD2 LINKS: [[GOLD 2]]",
    ]

    # Slot 1 is still linked: it cannot be refilled.
    before = {k: v for k, v in tree_hashes(site.home / "disks").items() if "21B" in k}
    refused = site.run("ro2gold", "--slot", "1", "--yes", check=False)
    assert refused.returncode == 1 and "LNX227" in refused.stderr
    assert {k: v for k, v in tree_hashes(site.home / "disks").items() if "21B" in k} == before

    # A running clone is moved only with --reboot.
    no = site.run("migrate", "LNX227", "--slot", "2", "--yes", check=False)
    assert no.returncode == 1 and "--reboot" in no.stderr
    moved = site.run("migrate", "LNX227", "--slot", "2", "--reboot", "--yes", "--json")
    conflicts = json.loads(moved.stdout)["results"][0]["conflicts"]
    assert conflicts == ["bash.bashrc"]
    assert site.run("exec", "LNX227", "--", TOOL).stdout == "hello from the new gold\n"
    bashrc = site.sh("LNX227", "cat /etc/bash.bashrc")
    assert "# edited on lnx227" in bashrc and "# changed in the new gold" not in bashrc
    assert "# changed in the new gold" in site.sh("LNX227", "cat /etc/bash.bashrc.sharedroot-new")
    assert site.sh("LNX227", "cat /etc/sharedroot-new.conf") == "new = yes\n"
    assert json.loads(site.run("verify", "LNX227", "--json", check=False).stdout)["ok"]
    assert site.run("linked").stdout.splitlines()[1:3] == [
        "S10GOLD LINKS: GOLD 1",
        "S10GOLD2 LINKS: [[GOLD 2]] LNX227",
    ]

    # Rollback: back to slot 1, /etc merged the other way.
    site.run("migrate", "LNX227", "--slot", "1", "--reboot", "--yes")
    assert site.run("exec", "LNX227", "--", "sh", "-c", TOOL, check=False).returncode == 127
    assert site.sh("LNX227", "cat /etc/sharedroot-new.conf 2>/dev/null || echo gone") == "gone\n"
    assert "# edited on lnx227" in site.sh("LNX227", "cat /etc/bash.bashrc")
    assert json.loads(site.run("verify", "LNX227", "--json", check=False).stdout)["ok"]


def test_a_migrate_killed_between_relink_and_merge_is_finished(site: BootSite) -> None:
    site.run("stop", "LNX227", check=False)
    # A real process does the relink step of a move to slot 2 and is SIGKILLed at once.
    script = (
        "import os, signal, sys\n"
        "from sharedroot.cli.ui import TerminalUI\n"
        "from sharedroot.workflows.context import Site\n"
        "from sharedroot.workflows.relink import move_steps\n"
        "site = Site.open(__import__('pathlib').Path(sys.argv[1]))\n"
        "relink = move_steps(site, TerminalUI(quiet=True), 'LNX227', 1, 2)[0]\n"
        "relink.action()\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    killed = subprocess.run([sys.executable, "-c", script, str(site.home)])
    assert killed.returncode == -9
    assert "S10GOLD2 LINKS: [[GOLD 2]] LNX227" in site.run("linked").stdout  # not merged yet
    # The next command on the clone finishes the move; it boots and passes verify.
    report = json.loads(site.run("verify", "LNX227", "--json", check=False).stdout)
    assert report["ok"], report
    assert site.sh("LNX227", "cat /etc/sharedroot-new.conf") == "new = yes\n"
    assert site.run("exec", "LNX227", "--", TOOL).stdout == "hello from the new gold\n"
