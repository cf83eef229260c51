"""The QEMU command line of a guest (the local backend's LOGON)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from sharedroot.errors import OperationError

QMP_SOCK = "qmp.sock"
QGA_SOCK = "qga.sock"
CONSOLE_SOCK = "console.sock"
CONSOLE_LOG = "console.log"
PID_FILE = "qemu.pid"
STDERR_FILE = "qemu.err"
STDOUT_FILE = "qemu.out"
AGENT_PORT = "org.qemu.guest_agent.0"


@dataclass(frozen=True)
class Machine:
    """What differs between the guest architectures QEMU runs for the local backend."""

    binary: str
    machine: str
    host: str  # os.uname().machine where this architecture runs natively (KVM)
    bus: str  # the virtio transport: devices are virtio-blk-pci or virtio-blk-ccw
    smbios: bool  # the guest name as SMBIOS serial; s390x has none, -name shows in sysinfo


# By Debian architecture, as sharedroot.conf names the kernel's.
MACHINES = {
    "amd64": Machine("qemu-system-x86_64", "pc", "x86_64", "pci", smbios=True),
    "s390x": Machine("qemu-system-s390x", "s390-ccw-virtio", "s390x", "ccw", smbios=False),
}


def machine(arch: str) -> Machine:
    found = MACHINES.get(arch)
    if found is None:
        raise OperationError(f"no QEMU machine for architecture {arch!r}")
    return found


@dataclass(frozen=True)
class Drive:
    """One disk as the guest sees it at `address`; RR links are `readonly`.

    An `ephemeral` drive (a VDISK under /dev/shm) is unlinked once QEMU has it open,
    so its memory is freed when the guest logs off.
    """

    path: Path
    address: str
    readonly: bool = False
    ephemeral: bool = False


@dataclass(frozen=True)
class Pmem:
    """A read-only gold disk mapped into the guest as persistent memory (virtio-pmem).

    QEMU maps the image file shared and read-only, so every guest of the host uses the
    same page-cache pages; the guest's udev rule names it by `address` from `slot`.
    """

    path: Path
    address: str
    slot: int  # PCI slot on the root bus
    size: int  # bytes, a multiple of the guest's 128 MiB memory sections


@dataclass(frozen=True, kw_only=True)
class GuestSpec:
    name: str  # the guest name, also the SMBIOS serial (what CP QUERY USERID gives)
    kernel: Path
    initrd: Path
    cmdline: str
    drives: tuple[Drive, ...]
    run_dir: Path
    accel: str  # "kvm" or "tcg", from probe_accel()
    memory_mb: int = 512
    cpus: int = 1  # one vCPU per guest measured best under TCG
    net: str = "user"  # "user" (slirp NAT, virtio-net) or "none"
    arch: str = "amd64"  # the kernel's Debian architecture (MACHINES)
    pmem: tuple[Pmem, ...] = ()
    mem_merge: bool = False  # KSM may merge the guest's memory (the site's ksm setting)


def _opt(value: str | Path) -> str:
    """Escape a value for QEMU's comma-separated option syntax."""
    return str(value).replace(",", ",,")


def guest_mac(name: str) -> str:
    """A stable locally administered MAC per guest, so DHCP leases and logs stay put."""
    h = hashlib.sha256(name.encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in h[:3])


def _memory(spec: GuestSpec) -> str:
    """-m: the guest's RAM; with persistent memory, room for it as device memory."""
    if not spec.pmem:
        return str(spec.memory_mb)
    device_mb = sum(p.size for p in spec.pmem) >> 20
    return f"{spec.memory_mb},slots=1,maxmem={spec.memory_mb + device_mb}M"


def qemu_argv(spec: GuestSpec) -> list[str]:
    """The QEMU command line for `spec` (not daemonized: launch() detaches it).

    On s390x the disks are virtio-blk-ccw at their own device numbers (fe.0.01b1 shows
    as ccw-0.0.01b1, as on z/VM) and carry the address as serial too, so the same
    /dev/disk/by-id/virtio-<address> names hold on both architectures.
    """
    run_dir = spec.run_dir
    accel = spec.accel
    m = machine(spec.arch)
    argv = [
        m.binary,
        "-name",
        f"guest={_opt(spec.name)},process=sharedroot-{_opt(spec.name)}",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-machine",
        m.machine,
        "-machine",  # QEMU merges -machine options; KSM merges pages only with mem-merge=on
        f"mem-merge={'on' if spec.mem_merge else 'off'}",
        "-accel",
        accel,
        # TCG: the default CPU model; "max" measured no faster and emulates more.
        *(["-cpu", "host"] if accel == "kvm" else []),
        "-m",
        _memory(spec),
        "-smp",
        str(spec.cpus),
        # The guest's shutdown AND reboot log it off, as vmpoff=LOGOFF does: a reboot
        # must re-read the boot config from its 01B0 disk, which only a new start does.
        "-no-reboot",
        "-kernel",
        str(spec.kernel),
        "-initrd",
        str(spec.initrd),
        "-append",
        spec.cmdline,
        *(["-smbios", f"type=1,serial={_opt(spec.name)}"] if m.smbios else []),
        "-chardev",
        f"socket,id=qmp,path={_opt(run_dir / QMP_SOCK)},server=on,wait=off",
        "-mon",
        "chardev=qmp,mode=control",
        # The console is a socket (for `console`) that also logs everything to a file;
        # on s390x -serial is the SCLP console.
        "-chardev",
        f"socket,id=con,path={_opt(run_dir / CONSOLE_SOCK)},server=on,wait=off,"
        f"logfile={_opt(run_dir / CONSOLE_LOG)},logappend=on",
        "-serial",
        "chardev:con",
        "-chardev",
        f"socket,id=qga,path={_opt(run_dir / QGA_SOCK)},server=on,wait=off",
        "-device",
        f"virtio-serial-{m.bus},id=vser",
        "-device",
        f"virtserialport,bus=vser.0,chardev=qga,name={AGENT_PORT}",
        "-device",
        f"virtio-rng-{m.bus}",  # entropy for sshd and the kernel's crng at boot
        "-device",  # the guest reports pages it frees; QEMU drops them (CMM's analog)
        f"virtio-balloon-{m.bus},id=balloon,free-page-reporting=on",
    ]
    for d in spec.drives:
        drive_id = f"d{d.address}"
        devno = f",devno=fe.0.{d.address.lower()}" if m.bus == "ccw" else ""
        argv += [
            "-drive",
            f"if=none,id={drive_id},file={_opt(d.path)},format=raw,"
            f"readonly={'on' if d.readonly else 'off'},cache=writeback,discard=unmap",
            "-device",
            f"virtio-blk-{m.bus},drive={drive_id},serial={d.address}{devno}",
        ]
    for p in spec.pmem:
        if m.bus != "pci":
            raise OperationError(f"guest {spec.name}: persistent memory needs a PCI machine")
        argv += [
            "-object",
            f"memory-backend-file,id=m{p.address},mem-path={_opt(p.path)},size={p.size},"
            "share=on,readonly=on",
            "-device",
            f"virtio-pmem-pci,memdev=m{p.address},id=pmem{p.address},addr=0x{p.slot:02x}",
        ]
    if spec.net == "user":
        argv += [
            "-netdev",
            "user,id=net0",
            "-device",
            f"virtio-net-{m.bus},netdev=net0,mac={guest_mac(spec.name)}",
        ]
    elif spec.net != "none":
        raise OperationError(f"guest {spec.name}: unknown network kind {spec.net!r}")
    return argv
