"""The guards' view of several hosts (hypervisor/libvirt/hosts.py), on the two-host lab.

No guest boots: a domain defined on host 2 is found there; the same name on both hosts
and a host whose daemon is gone are refused, naming the host, never skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="libvirt's system daemons need root"),
    pytest.mark.skipif(shutil.which("libvirtd") is None, reason="libvirt is not installed"),
]

# Runs as the lab's COMMAND; prints what it saw as JSON.
CHECK = """
import json, os, signal, sys, time
from pathlib import Path
import libvirt
from sharedroot.errors import RefusedError
from sharedroot.hypervisor.libvirt.hosts import Hosts

uris = os.environ["SHAREDROOT_LAB_HOSTS"].split()
lab = Path(sys.argv[1])
xml = ("<domain type='qemu'><name>{}</name><memory unit='MiB'>64</memory>"
       "<os><type>hvm</type></os></domain>")
hosts = Hosts(uris)
seen = {"running": hosts.running()}
libvirt.open(uris[1]).defineXML(xml.format("LNX242"))
seen["defined"] = hosts.defined()
def refused(ask):
    try:
        ask()
    except RefusedError as e:
        return str(e)
    return "answered"
libvirt.open(uris[0]).defineXML(xml.format("LNX242"))
seen["twice"] = refused(hosts.defined)
libvirt.open(uris[0]).lookupByName("LNX242").undefine()
pid = int((lab / "host2" / "libvirtd.pid").read_text())
os.kill(pid, signal.SIGTERM)  # host 2's daemon, started by this lab
while Path(f"/proc/{pid}").exists():
    time.sleep(0.1)
seen["gone"] = refused(hosts.running)
hosts.close()
print(json.dumps(seen))
"""


def test_every_host_answers_or_the_question_is_refused(tmp_path: Path) -> None:
    lab = tmp_path / "lab"
    ran = subprocess.run(
        ["bash", REPO / "scripts/hostlab", lab, "--", sys.executable, "-c", CHECK, lab],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert ran.returncode == 0, ran.stderr
    seen = json.loads(ran.stdout.splitlines()[-1])
    host1, host2 = "qemu:///system", "qemu+tcp://127.0.0.1:16510/system"
    assert seen["running"] == {}
    assert seen["defined"] == {"LNX242": host2}
    assert seen["twice"] == (
        f"LNX242 is defined on two hosts, {host1} and {host2}; undefine one of them"
        " (virsh -c URI undefine)"
    )
    assert seen["gone"].startswith(f"host {host2} cannot be reached ("), seen["gone"]
    assert seen["gone"].endswith("sharedroot refuses rather than answer for the hosts it can see")
