"""A guest as a libvirt domain: the XML rendered from sharedroot's own state, and read back.

The domain mirrors the local backend's QEMU guest: direct kernel boot of what the guest's
01B0 disk names, every disk virtio with its device address as serial (so the guest's
/dev/disk/by-id/virtio-01B1 names hold on any host), the guest name as SMBIOS serial
(what QUERY USERID gives), a reboot that ends the domain (a new start re-reads /boot, as
a re-IPL does), the console logged to a file and the QEMU guest agent's channel.

An RR link is a `<readonly/>` disk and never `<shareable/>`: shareable makes libvirt
open the image with share-rw, which switches off QEMU's image locks, the guard that makes
a read-write open of a gold disk fail while clones read it (CP's LINK rules, per host).

The XML is built with xml.etree from values checked here: a value never becomes markup.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from sharedroot.errors import InputError
from sharedroot.hypervisor.qemu.cmdline import AGENT_PORT, MACHINES, guest_mac, machine
from sharedroot.model.layout import check_plain_path
from sharedroot.model.types import exact_address, guest_name, shown

# What the kernel command line of a sharedroot.conf may hold: printable ASCII, one line.
CMDLINE_RULE = re.compile(r"[\x20-\x7e]{0,4096}")
MAX_MEMORY_MB = 1 << 20
MAX_VCPUS = 64


class DomainType(StrEnum):
    """libvirt's domain type: hardware virtualization, or QEMU's emulator (TCG)."""

    KVM = "kvm"
    QEMU = "qemu"


def domain_type(accel: str) -> DomainType:
    """From sharedroot's own acceleration probe (qemu.accel.probe_accel: "kvm" or "tcg").

    libvirt itself offers kvm wherever /dev/kvm exists, also where KVM cannot run a guest.
    """
    if accel == "kvm":
        return DomainType.KVM
    if accel == "tcg":
        return DomainType.QEMU
    raise InputError(f"acceleration {shown(accel)}: must be kvm or tcg")


@dataclass(frozen=True)
class Disk:
    """A disk as the guest sees it at `address`; RR links are `readonly`.

    A `transient` disk starts each boot from its image and forgets what the guest wrote
    (a VDISK: swap, fresh at each LOGON).
    """

    path: Path  # the volume's file on the host (the shared pool)
    address: str
    readonly: bool = False
    transient: bool = False


@dataclass(frozen=True, kw_only=True)
class DomainSpec:
    name: str  # the guest name: the domain's name and its SMBIOS serial
    kernel: Path
    initrd: Path
    cmdline: str
    disks: tuple[Disk, ...]
    console_log: Path  # on the host that runs the domain
    type: DomainType
    arch: str = "amd64"  # the kernel's Debian architecture (qemu.cmdline.MACHINES)
    memory_mb: int = 512
    vcpus: int = 1  # one vCPU per guest measured best under TCG
    ksm: bool = False  # the host's KSM may merge the guest's memory (site setting ksm)
    net: bool = True  # user-mode networking (NAT), as the local backend's guests have


def _check_path(value: Path, what: str) -> None:
    check_plain_path(str(value), what)


def check_spec(spec: DomainSpec) -> None:
    """Every value by its rule, before any of it reaches the XML (InputError, one line)."""
    if guest_name(spec.name) != spec.name:
        raise InputError(f"guest name {shown(spec.name)}: must be upper case")
    what = f"domain {spec.name}"
    if spec.arch not in MACHINES:
        raise InputError(f"{what}: architecture {shown(spec.arch)}: must be amd64 or s390x")
    if not isinstance(spec.type, DomainType):
        raise InputError(f"{what}: type {shown(spec.type)}: must be kvm or qemu")
    for n, low, high, unit in (
        (spec.memory_mb, 64, MAX_MEMORY_MB, "memory (MiB)"),
        (spec.vcpus, 1, MAX_VCPUS, "vCPUs"),
    ):
        if isinstance(n, bool) or not isinstance(n, int) or not low <= n <= high:
            raise InputError(f"{what}: {unit} {shown(n)}: must be a whole number {low}-{high}")
    if not CMDLINE_RULE.fullmatch(spec.cmdline):
        raise InputError(f"{what}: kernel command line {shown(spec.cmdline)}: not printable ASCII")
    _check_path(spec.kernel, f"{what}: kernel")
    _check_path(spec.initrd, f"{what}: initramfs")
    _check_path(spec.console_log, f"{what}: console log")
    seen: set[str] = set()
    for d in spec.disks:
        exact_address(d.address, f"{what}: address")
        if d.address in seen:
            raise InputError(f"{what}: two disks at {d.address}")
        seen.add(d.address)
        _check_path(d.path, f"{what}: disk {d.address}")
        if d.readonly and d.transient:
            raise InputError(f"{what}: disk {d.address}: read-only disks are never transient")


def _dev(index: int) -> str:
    """vda ... vdz, vdaa ...: the target names libvirt wants, in address order."""
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(ord("a") + rest) + letters
    return f"vd{letters}"


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    if text is not None:
        element.text = text
    return element


def render(spec: DomainSpec) -> str:
    """The domain XML for `spec` (checked first)."""
    check_spec(spec)
    m = machine(spec.arch)
    root = ET.Element("domain", type=str(spec.type))
    _sub(root, "name", spec.name)
    _sub(root, "memory", str(spec.memory_mb), unit="MiB")
    _sub(root, "vcpu", str(spec.vcpus))
    if not spec.ksm:
        _sub(_sub(root, "memoryBacking"), "nosharepages")
    if m.smbios:
        system = _sub(_sub(root, "sysinfo", type="smbios"), "system")
        _sub(system, "entry", spec.name, name="serial")
    os_ = _sub(root, "os")
    _sub(os_, "type", "hvm", arch=m.host, machine=m.machine)
    _sub(os_, "kernel", str(spec.kernel))
    _sub(os_, "initrd", str(spec.initrd))
    _sub(os_, "cmdline", spec.cmdline)
    if m.smbios:
        _sub(os_, "smbios", mode="sysinfo")
        _sub(_sub(root, "features"), "acpi")  # a clean shutdown is an ACPI power button
    if spec.type is DomainType.KVM:
        _sub(root, "cpu", mode="host-passthrough")
    # The guest's shutdown and reboot both end the domain, as vmpoff=LOGOFF does.
    for event in ("on_poweroff", "on_reboot", "on_crash"):
        _sub(root, event, "destroy")
    devices = _sub(root, "devices")
    for i, d in enumerate(sorted(spec.disks, key=lambda d: d.address)):
        disk = _sub(devices, "disk", type="file", device="disk")
        _sub(disk, "driver", name="qemu", type="raw", cache="writeback", discard="unmap")
        _sub(disk, "source", file=str(d.path))
        _sub(disk, "target", dev=_dev(i), bus="virtio")
        _sub(disk, "serial", d.address)
        if d.readonly:
            _sub(disk, "readonly")
        if d.transient:
            _sub(disk, "transient")
        if m.bus == "ccw":  # the device number is the address, as on z/VM
            _sub(disk, "address", type="ccw", cssid="0xfe", ssid="0x0", devno=f"0x{d.address}")
    # The console: a pty (`virsh console`) whose output virtlogd also keeps in a file.
    serial = _sub(devices, "serial", type="pty")
    _sub(serial, "log", file=str(spec.console_log), append="on")
    _sub(serial, "target", port="0")
    channel = _sub(devices, "channel", type="unix")
    _sub(channel, "target", type="virtio", name=AGENT_PORT)  # libvirt picks the socket
    if spec.net:
        nic = _sub(devices, "interface", type="user")
        _sub(nic, "mac", address=guest_mac(spec.name))
        _sub(nic, "model", type="virtio")
    _sub(_sub(devices, "rng", model="virtio"), "backend", "/dev/urandom", model="random")
    _sub(devices, "memballoon", model="virtio", freePageReporting="on")
    if m.bus == "pci":
        _sub(devices, "controller", type="usb", model="none")
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


@dataclass(frozen=True)
class DomainDisk:
    """A disk of a domain as its XML says: what the guards across hosts look at."""

    serial: str | None
    path: str | None
    readonly: bool
    shareable: bool


def read_disks(xml: str) -> list[DomainDisk]:
    """The disks of a domain's XML (as libvirt returns it), in document order."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise InputError(f"domain XML: not well-formed: {e}") from None
    found = []
    for disk in root.iterfind("./devices/disk"):
        source = disk.find("source")
        path = None if source is None else source.get("file", source.get("dev"))
        found.append(
            DomainDisk(
                serial=disk.findtext("serial"),
                path=path,
                readonly=disk.find("readonly") is not None,
                shareable=disk.find("shareable") is not None,
            )
        )
    return found
