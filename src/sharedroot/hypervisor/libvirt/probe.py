"""Whether KVM really runs guests on a libvirt host, probed there and cached.

libvirt offers domain type kvm wherever /dev/kvm exists, also where KVM cannot run a
stock kernel, so its capabilities only rule KVM out. Where they offer it, the local
probe's tiny kernel + /init boots once as a kvm domain on that host: its marker on the
console means KVM works there. The answer is cached per host, libvirt and QEMU version.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import libvirt  # type: ignore[import-untyped]  # the binding ships no types

from sharedroot.hypervisor.libvirt.domain import DomainSpec, DomainType, render
from sharedroot.hypervisor.qemu import accel

PROBE_NAME = "SRPROBE"
PROBE_SECONDS = 10.0
CACHE_FILE = "accel-hosts.json"


def offers_kvm(capabilities: str) -> bool:
    """Whether a host's capabilities XML offers x86-64 domains of type kvm."""
    root = ET.fromstring(capabilities)
    return any(
        guest.find("arch[@name='x86_64']/domain[@type='kvm']") is not None
        for guest in root.iterfind("guest")
    )


def _boots_under_kvm(conn: Any, kernel: Path, work: Path) -> bool:
    """Boot the probe as a kvm domain on `conn`'s host: does its /init print the mark?"""
    work.mkdir(parents=True, exist_ok=True)
    initrd = work / "probe.cpio"
    initrd.write_bytes(accel.probe_initrd())
    shutil.copyfile(kernel, work / "probe.kernel")  # the host reads the pool, not our /boot
    log = work / "console.log"
    log.unlink(missing_ok=True)
    spec = DomainSpec(
        name=PROBE_NAME,
        kernel=work / "probe.kernel",
        initrd=initrd,
        cmdline=accel.PROBE_CMDLINE,
        disks=(),
        console_log=log,
        type=DomainType.KVM,
        memory_mb=256,
        net=False,
    )
    try:
        domain = conn.createXML(render(spec), 0)
    except libvirt.libvirtError:
        return False  # the host's QEMU refused KVM outright
    deadline = time.monotonic() + PROBE_SECONDS
    try:
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if accel.PROBE_MARK in log.read_bytes():
                    return True
            try:
                if not domain.isActive():
                    break
            except libvirt.libvirtError:
                break  # a transient domain that ended is gone
            time.sleep(0.2)
        with contextlib.suppress(OSError):
            return accel.PROBE_MARK in log.read_bytes()
        return False
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            domain.destroy()


def host_accel(conn: Any, uri: str, work: Path, cache_dir: Path) -> str:
    """ "kvm" or "tcg" for amd64 guests on the host of `conn` (SHAREDROOT_ACCEL overrides)."""
    forced = os.environ.get("SHAREDROOT_ACCEL", "").strip().lower()
    if forced in ("kvm", "tcg"):
        return forced
    if not offers_kvm(conn.getCapabilities()):
        return "tcg"
    key = f"{conn.getHostname()} | libvirt {conn.getLibVersion()} | qemu {conn.getVersion()}"
    cache_file = cache_dir / CACHE_FILE
    cached: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        cached = json.loads(cache_file.read_text())
    entry = cached.get(uri) if isinstance(cached, dict) else None
    if isinstance(entry, dict) and entry.get("key") == key and entry.get("accel") in accel.ACCELS:
        return str(entry["accel"])
    kernel = accel.find_probe_kernel(cache_dir)
    if kernel is None:
        return "tcg"  # nothing to prove KVM with; TCG always works (not cached)
    found = "kvm" if _boots_under_kvm(conn, kernel, work) else "tcg"
    with contextlib.suppress(OSError):
        cached = cached if isinstance(cached, dict) else {}
        cached[uri] = {"key": key, "accel": found}
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}")
        tmp.write_text(json.dumps(cached, indent=1) + "\n")
        tmp.replace(cache_file)
    return found
