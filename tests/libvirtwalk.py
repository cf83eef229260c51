"""The read-only walk-through on the two-host lab, as an administrator runs it.

Runs as scripts/hostlab's COMMAND (`python tests/libvirtwalk.py HOME LAB`): a libvirt
site whose pool is the lab's shared directory; LNX227 on host 1 and LNX242 on host 2
link one gold slot, boot and pass verify; the guards across hosts refuse (a clone's
link, host 2's daemon gone); both migrate to slot 2 in one wave; LNX242 moves to host 1
while stopped, LNX227 to host 2 while running.
Prints what each step gave as one JSON object; the test judges it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import libvirt  # noqa: E402
from hostlab.launch import hosts as lab_hosts  # noqa: E402

SHAREDROOT = str(Path(sys.executable).with_name("sharedroot"))
BOOT = "600"  # TCG on a loaded 2-core machine
MARK = "/local/kept-across-the-move"
SERIAL = "/sys/class/dmi/id/product_serial"  # the SMBIOS serial: the guest name


class Walk:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.seen: dict[str, Any] = {}

    def run(self, key: str | None, *args: str) -> subprocess.CompletedProcess[str]:
        began = time.monotonic()
        done = subprocess.run(
            [SHAREDROOT, "--home", str(self.home), *args],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        if key is not None:
            self.seen[key] = {
                "code": done.returncode,
                "err": done.stderr[-3000:],
                "out": done.stdout[-3000:],
                "seconds": round(time.monotonic() - began, 1),
            }
        return done

    def must(self, *args: str) -> str:
        done = self.run(None, *args)
        if done.returncode != 0:
            raise SystemExit(f"sharedroot {' '.join(args)}: exit {done.returncode}\n{done.stderr}")
        return done.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.must("--json", *args))


def domains(uri: str) -> list[str]:
    conn = libvirt.open(uri)
    try:
        return sorted(
            d.name() for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
        )
    finally:
        conn.close()


def rw_gold_domain(uri: str, gold: Path, log: Path) -> str:
    """A domain that opens the gold image read-write: QEMU's locks must refuse it."""
    root = ET.fromstring(
        "<domain type='qemu'><name>RWGOLD</name><memory unit='MiB'>64</memory>"
        "<os><type arch='x86_64' machine='pc'>hvm</type></os><features><acpi/></features>"
        "<devices>"
        f"<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
        f"<source file='{gold}'/><target dev='vda' bus='virtio'/></disk>"
        f"<serial type='file'><source path='{log}'/></serial></devices></domain>"
    )
    conn = libvirt.open(uri)
    try:
        conn.createXML(ET.tostring(root, encoding="unicode"), 0).destroy()
        return "started"
    except libvirt.libvirtError as e:
        return str(e)
    finally:
        conn.close()


def main(home: Path, lab: Path) -> None:
    host1, host2 = os.environ["SHAREDROOT_LAB_HOSTS"].split()
    pool = Path(os.environ["SHAREDROOT_LAB_POOL"])
    w = Walk(home)
    w.must("init", "--layout", "paper", "--backend", "libvirt", "--host", host1,
           "--host", host2, "--pool", str(pool))  # fmt: skip
    for step in (("install", "--yes"), ("cloneprep", "--yes"), ("mnt2rogld", "--yes"),
                 ("ro2gold", "--yes")):  # fmt: skip
        w.must(*step)
    w.must("define", "LNX227", "--ro", "--host", host1, "--hostname", "lnx227",
           "--ip", "10.0.2.27", "--gateway", "10.0.2.2")  # fmt: skip
    w.must(
        "define",
        "LNX242",
        "--ro",
        "--hostname",
        "lnx242",
        "--ip",
        "10.0.2.42",
        "--gateway",
        "10.0.2.2",
    )  # fmt: skip  (the least-loaded host: host 2)
    w.must("clonero", "LNX227", "--yes")
    w.must("clonero", "LNX242", "--yes")

    # Both start side by side, each on its own host.
    began = time.monotonic()
    starts = [
        subprocess.Popen([SHAREDROOT, "--home", str(home), "start", "--wait", "--timeout",
                          BOOT, g], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for g in ("LNX227", "LNX242")
    ]  # fmt: skip
    w.seen["start"] = [(p.wait(), p.stderr.read()[-2000:] if p.stderr else "") for p in starts]
    w.seen["start_seconds"] = round(time.monotonic() - began, 1)
    w.seen["domains"] = {"1": domains(host1), "2": domains(host2)}
    w.seen["guests"] = w.json("guests")
    for g in ("LNX227", "LNX242"):
        w.run(f"verify {g}", "verify", g, "--timeout", BOOT)
        w.seen[f"id {g}"] = w.must("exec", g, "--", "sh", "-c", f"hostname; cat {SERIAL}").split()
    w.must("exec", "LNX242", "--", "sh", "-c", f"echo LNX242 > {MARK}")

    # QEMU's image locks: no read-write open of the gold while clones read it.
    gold = pool / "disks" / "S10GOLD" / "21B1.img"  # slot 1's root, RR as 01B1
    io = subprocess.run(["qemu-io", "-f", "raw", "-c", "read 0 512", str(gold)],
                        capture_output=True, text=True)  # fmt: skip
    w.seen["qemu_io"] = [io.returncode, io.stderr.strip()]
    w.seen["rw_domain"] = rw_gold_domain(host1, gold, lab / "rwgold.log")

    # The guards across hosts.
    w.run("ro2gold 1 linked", "ro2gold", "--slot", "1", "--yes")
    host = next(h for h in lab_hosts(lab) if h.uri == host2)
    host.stop_libvirtd()
    try:
        w.run("ro2gold 1 host down", "ro2gold", "--slot", "1", "--yes")
        w.run("delete host down", "delete", "LNX227", "--yes")
        w.run("guests host down", "guests")
    finally:
        w.seen["restart_seconds"] = round(host.restart_libvirtd(), 1)
    w.seen["domains after restart"] = {"1": domains(host1), "2": domains(host2)}

    # A new gold in slot 2, and both clones rolled onto it in one wave.
    w.run("ro2gold 2", "ro2gold", "--slot", "2", "--yes")
    w.run("migrate", "migrate", "LNX227", "LNX242", "--slot", "2", "--reboot", "--parallel",
          "2", "--yes", "--timeout", BOOT)  # fmt: skip
    for g in ("LNX227", "LNX242"):
        w.run(f"verify {g} slot 2", "verify", g, "--timeout", BOOT)
    w.seen["linked"] = w.json("linked")
    w.seen["linked text"] = w.must("linked")

    # LNX242 moves to host 1 while stopped, then starts there.
    w.must("stop", "LNX242")
    w.run("move", "move", "LNX242", "--to-host", host1)
    w.run("start moved", "start", "--wait", "--timeout", BOOT, "LNX242")
    w.seen["domains after move"] = {"1": domains(host1), "2": domains(host2)}
    w.run("verify moved", "verify", "LNX242", "--timeout", BOOT)
    moved = w.must("exec", "LNX242", "--", "sh", "-c", f"hostname; cat {SERIAL} {MARK}")
    w.seen["id moved"] = moved.split()
    w.seen["guests after move"] = w.json("guests")
    # A running guest moves too: shut down here, started and waited for there.
    w.run("move running", "move", "LNX227", "--to-host", host2, "--timeout", BOOT)
    w.seen["domains after running move"] = {"1": domains(host1), "2": domains(host2)}
    for g in ("LNX227", "LNX242"):
        w.must("stop", g)
    w.seen["console"] = w.must("console", "LNX242", "--lines", "5")
    print(json.dumps(w.seen))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
