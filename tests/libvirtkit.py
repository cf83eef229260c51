"""Boot one domain on a host of the two-host lab and look at it through its guest agent.

Runs as scripts/hostlab's COMMAND (`python tests/libvirtkit.py HOST XML GOLD`): defines
the domain XML on lab host HOST (1 or 2), starts it, waits for the QEMU guest agent,
runs a few checks in the guest, tries to open the gold image GOLD read-write while the
guest reads it (QEMU's image locks must refuse), shuts the guest down, undefines it and
prints what it found as JSON.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import libvirt
import libvirt_qemu

BOOT_TIMEOUT = 600.0  # TCG on a loaded 2-core machine


def agent(dom: Any, command: str, timeout: int = 10, **arguments: Any) -> Any:
    request = {"execute": command, **({"arguments": arguments} if arguments else {})}
    return json.loads(libvirt_qemu.qemuAgentCommand(dom, json.dumps(request), timeout, 0))["return"]


def guest_exec(dom: Any, *argv: str, timeout: float = 60) -> tuple[int, str, str]:
    pid = agent(dom, "guest-exec", path=argv[0], arg=list(argv[1:]), **{"capture-output": True})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = agent(dom, "guest-exec-status", pid=pid["pid"])
        if status["exited"]:
            out, err = (
                base64.b64decode(status.get(k, "")).decode(errors="replace")
                for k in ("out-data", "err-data")
            )
            return int(status.get("exitcode", -1)), out, err
        time.sleep(0.2)
    raise TimeoutError(f"{argv}: still running after {timeout} s")


def wait_agent(dom: Any, console: Path) -> float:
    began = time.monotonic()
    while True:
        if not dom.isActive():
            raise RuntimeError(f"the domain ended while booting; console:\n{_tail(console)}")
        try:
            agent(dom, "guest-ping", timeout=3)
            return time.monotonic() - began
        except libvirt.libvirtError:
            pass
        if time.monotonic() - began > BOOT_TIMEOUT:
            raise RuntimeError(
                f"no guest agent in {BOOT_TIMEOUT:.0f} s; console:\n{_tail(console)}"
            )
        time.sleep(1)


def _tail(path: Path) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-30:])
    except OSError as e:
        return str(e)


def rw_domain(xml: str, gold: str) -> str:
    """Another domain with the gold disk alone, read-write (no readonly)."""
    root = ET.fromstring(xml)
    root.find("name").text = "RWGOLD"  # type: ignore[union-attr]
    devices = root.find("devices")
    assert devices is not None
    for log in devices.iterfind("*/log"):  # virtlogd keeps one writer per log file
        log.set("file", log.get("file", "") + ".rw")
    for disk in devices.findall("disk"):
        source = disk.find("source")
        if source is None or source.get("file") != gold:
            devices.remove(disk)
        elif (readonly := disk.find("readonly")) is not None:
            disk.remove(readonly)
    return ET.tostring(root, encoding="unicode")


def main(argv: list[str]) -> int:
    number, xml_path, gold = int(argv[0]), Path(argv[1]), argv[2]
    uri = os.environ["SHAREDROOT_LAB_HOSTS"].split()[number - 1]
    conn = libvirt.open(uri)
    xml = xml_path.read_text()
    console = Path(ET.fromstring(xml).find("devices/serial/log").get("file"))  # type: ignore[union-attr,arg-type]
    found: dict[str, Any] = {"uri": uri}
    began = time.monotonic()
    dom = conn.defineXMLFlags(xml, libvirt.VIR_DOMAIN_DEFINE_VALIDATE)
    try:
        dom.create()
        found["started_s"] = round(time.monotonic() - began, 1)
        found["agent_s"] = round(wait_agent(dom, console), 1)
        found["serial"] = guest_exec(dom, "cat", "/sys/class/dmi/id/product_serial")[1].strip()
        found["gold_ro"] = guest_exec(dom, "blockdev", "--getro", "/dev/disk/by-id/virtio-01B1")
        found["root"] = guest_exec(dom, "findmnt", "-no", "SOURCE,OPTIONS", "/")[1].strip()
        found["hostname"] = guest_exec(dom, "hostname")[1].strip()
        # A read-write open of the gold while the guest reads it: QEMU's locks refuse.
        io = subprocess.run(
            ["qemu-io", "-f", "raw", "-c", "read 0 512", gold], capture_output=True, text=True
        )
        found["qemu_io"] = [io.returncode, io.stderr.strip()]
        try:
            conn.createXML(rw_domain(xml, gold), 0).destroy()
            found["rw_domain"] = "started"
        except libvirt.libvirtError as e:
            found["rw_domain"] = str(e)
        dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_GUEST_AGENT)
        deadline = time.monotonic() + 120
        while dom.isActive() and time.monotonic() < deadline:
            time.sleep(0.5)
        found["clean_stop"] = not dom.isActive()
    finally:
        if dom.isActive():
            dom.destroy()
        dom.undefine()
    found["console"] = _tail(console)
    print(json.dumps(found))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
