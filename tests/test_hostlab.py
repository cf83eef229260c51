"""The two-host libvirt lab (scripts/hostlab), run as its users run it, on real daemons.

No guest boots here: the hosts' storage and state are checked through the libvirt binding.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LAUNCHER = REPO / "scripts" / "hostlab"

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="libvirt's system daemons need root"),
    pytest.mark.skipif(shutil.which("libvirtd") is None, reason="libvirt is not installed"),
]

# Runs as COMMAND: a pool volume made through host 1 is seen through host 2; a pool
# defined on one host only is the other's business, not its own (separate state).
CHECK = """
import json, os, libvirt
uris = os.environ["SHAREDROOT_LAB_HOSTS"].split()
pool = os.environ["SHAREDROOT_LAB_POOL"]
conns = [libvirt.open(u) for u in uris]
xml = f"<pool type='dir'><name>lab</name><target><path>{pool}</path></target></pool>"
pools = []
for c in conns:
    p = c.storagePoolCreateXML(xml, 0)  # transient: gone when the daemon stops
    pools.append(p)
pools[0].createXML(
    "<volume><name>gold.img</name><capacity unit='MiB'>1</capacity>"
    "<target><format type='raw'/></target></volume>", 0)
pools[1].refresh(0)
os.mkdir(f"{pool}/one")
conns[0].storagePoolCreateXML(xml.replace("lab<", "only1<").replace("</path>", "/one</path>"), 0)
print(json.dumps({
    "hostnames": [c.getHostname() for c in conns],
    "uris": [c.getURI() for c in conns],
    "seen_by_2": pools[1].listVolumes(),
    "pools_2": sorted(p.name() for p in conns[1].listAllStoragePools()),
    "cwd": os.getcwd(),
    "pythonpath": os.environ.get("PYTHONPATH"),
}))
raise SystemExit(3)
"""


@pytest.fixture(scope="module")
def lab_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hostlab") / "lab"


def daemons(lab: Path) -> dict[str, int | None]:
    """Each of the lab's daemons: its PID while it runs, else None."""
    found: dict[str, int | None] = {}
    for host in ("host1", "host2"):
        for daemon in ("libvirtd", "virtlogd"):
            pid_file = lab / host / f"{daemon}.pid"
            try:
                pid: int | None = int(pid_file.read_text())
            except (FileNotFoundError, ValueError):  # not yet written, or being written
                pid = None
            found[f"{host}/{daemon}"] = pid if alive(pid) else None
    return found


def alive(pid: int | None) -> bool:
    """A running process (a zombie waiting for the machine's init to reap it is not)."""
    try:
        return pid is not None and ") Z" not in Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False


def test_two_hosts_one_pool(lab_dir: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": "/elsewhere"}
    p = subprocess.run(
        [str(LAUNCHER), str(lab_dir), "--", sys.executable, "-c", CHECK],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=env,
    )
    assert p.returncode == 3, p.stderr  # COMMAND's own exit code
    seen = json.loads(p.stdout)
    assert seen["uris"] == ["qemu:///system", "qemu+tcp://127.0.0.1:16510/system"]
    assert seen["seen_by_2"] == ["gold.img"]
    assert (lab_dir / "pool" / "gold.img").stat().st_size == 1 << 20
    assert seen["pools_2"] == ["lab"]  # host 1's other pool is not host 2's
    assert seen["cwd"] == str(tmp_path)
    assert seen["pythonpath"] == "/elsewhere"  # the launcher's own path entry is gone
    assert "host 1 (qemu:///system) up in" in p.stderr
    ids = {(lab_dir / h / "host-uuid").read_text() for h in ("host1", "host2")}
    assert len(ids) == 2
    assert all(pid is None for pid in daemons(lab_dir).values())
    # the transient pools died with their daemons: nothing of this run is left defined
    assert not list((lab_dir / "host1" / "etc").glob("storage/*.xml"))


def test_sigterm_stops_both_hosts(lab_dir: Path) -> None:
    proc = subprocess.Popen(
        [str(LAUNCHER), str(lab_dir), "--", "sleep", "300"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not all(daemons(lab_dir).values()):
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline
            time.sleep(0.2)
        running = daemons(lab_dir)
        second = subprocess.run(
            [str(LAUNCHER), str(lab_dir), "--", "true"], capture_output=True, text=True
        )
        assert second.returncode == 125
        assert "in use by another hostlab" in second.stderr
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:  # a failed check: let the lab stop its daemons (SIGKILL would not)
            proc.terminate()
            proc.wait(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped in" in err
    assert all(pid is None for pid in daemons(lab_dir).values())
    assert not any(alive(pid) for pid in running.values())


def test_usage(tmp_path: Path) -> None:
    p = subprocess.run([str(LAUNCHER), "/nonexistent"], capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stderr.startswith("usage: scripts/hostlab DIR -- COMMAND")
    odd = tmp_path / "a?socket=x"
    p = subprocess.run([str(LAUNCHER), str(odd), "--", "true"], capture_output=True, text=True)
    assert p.returncode == 2 and "DIR must be a path of" in p.stderr
    assert not odd.exists()
