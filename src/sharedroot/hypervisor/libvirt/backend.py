"""The libvirt backend: one controller, guests as libvirt domains on several hosts.

The directory side is the local backend's (image files, links and the admin disk as the
store records them), with the images in the pool every host sees. A guest is a domain
only while it is logged on: each start renders it from the store (its disks, its RR
links as read-only disks, the kernel its 01B0 names) and creates it on the guest's host,
so no host keeps a definition that could drift from sharedroot's own. Every "is it
logged on?" asks every host (one call each); a host that cannot be reached makes the
question, and so the guard, refuse (hosts.py).
"""

from __future__ import annotations

import os
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import libvirt  # type: ignore[import-untyped]  # the binding ships no types

from sharedroot.errors import InputError, OperationError, RefusedError
from sharedroot.hypervisor import cache_dir
from sharedroot.hypervisor.base import GuestMemory, StartRequest
from sharedroot.hypervisor.imagedisks import ImageDisks
from sharedroot.hypervisor.ipl import extract_boot_files
from sharedroot.hypervisor.libvirt import agent
from sharedroot.hypervisor.libvirt.domain import Disk, DomainSpec, domain_type, render
from sharedroot.hypervisor.libvirt.hosts import Hosts, error_text
from sharedroot.hypervisor.libvirt.probe import host_accel
from sharedroot.hypervisor.qemu import process
from sharedroot.model.hosturi import host_uri
from sharedroot.model.types import DeviceBus, GuestState, Role
from sharedroot.store.config import SiteConfig
from sharedroot.store.state import State

CONSOLE_LOG = "console.log"
OWNER_FILE = ".sharedroot-store"  # in the pool: the store whose images it holds
# Guests that only hold disks never run, so they have no host (NOLOG, as in the paper).
HOSTLESS = (Role.GOLD, Role.ADMIN, Role.WORKER)


def create(config: SiteConfig, home: Path, state: State) -> LibvirtBackend:
    return LibvirtBackend(config, home, state)


def claim(pool: Path, home: Path) -> None:
    """The pool holds one site's images: the first store to use it owns it; another
    site's store is refused before it could write over them."""
    owner = pool / OWNER_FILE
    store = str(home.resolve())
    try:
        claimed = owner.read_text().strip()
    except FileNotFoundError:
        tmp = pool / f".{OWNER_FILE}.{os.getpid()}"
        tmp.write_text(store + "\n")
        try:
            os.link(tmp, owner)  # never over a claim made meanwhile
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
        claimed = owner.read_text().strip()
    if claimed != store:
        raise RefusedError(
            f"[libvirt] pool {pool} holds the images of the site whose store is {claimed}"
            f" ({owner}); give this site a pool of its own"
        )


class LibvirtBackend(ImageDisks):
    name = "libvirt"
    bus = DeviceBus.VIRTIO

    def __init__(self, config: SiteConfig, home: Path, state: State) -> None:
        # The pool is where every host sees the images, at the same path as here.
        pool = Path(config.libvirt.pool)
        if not pool.is_dir():
            raise RefusedError(
                f"[libvirt] pool {pool}: not a directory on this controller; mount the shared"
                " storage every host sees there first"
            )
        claim(pool, home)
        super().__init__(pool, state, config.guests.admin)
        self.fleet = Hosts(config.libvirt.hosts)
        self.run_dir = pool / "run"

    def guest_run_dir(self, guest: str) -> Path:
        return self.run_dir / guest

    def recover(self) -> None:
        """Nothing to undo (a domain a killed command created runs as a logged-on guest
        would), but every host must answer before anything is written: a write checked
        against the hosts that happen to be up could overwrite what a guest on the
        missing one uses."""
        self.fleet.running()

    # hosts ----------------------------------------------------------------------
    def hosts(self) -> tuple[str, ...]:
        return self.fleet.uris

    def placement(self) -> dict[str, str]:
        return self.state.placement()

    def _host(self, value: str) -> str:
        uri = host_uri(value, "--host").uri
        if uri not in self.fleet.uris:
            raise InputError(
                f"--host {uri}: not a host of this site ({', '.join(self.fleet.uris)})"
            )
        return uri

    def place(self, guest: str, host: str) -> None:
        uri = self._host(host)
        self._require_guest(guest)
        self._require_logged_off(guest)
        self.state.set_host(guest, uri)

    def host_of(self, guest: str) -> str:
        """The host the guest starts on (placed when defined; the first host otherwise)."""
        return self.state.placement().get(guest) or self.fleet.uris[0]

    def _least_loaded(self) -> str:
        placed = Counter(self.state.placement().values())
        return min(self.fleet.uris, key=lambda uri: (placed[uri], self.fleet.uris.index(uri)))

    # guests -----------------------------------------------------------------------
    def logged_on(self) -> set[str]:
        return set(self.fleet.running())

    def query(self, guest: str) -> GuestState:
        if self.state.guest(guest) is None:
            return GuestState.NO_SUCH
        return GuestState.LOGGED_ON if guest in self.fleet.running() else GuestState.LOGGED_OFF

    def define_guest(self, guest: str, role: Role, *, adopt: bool = False) -> None:
        super().define_guest(guest, role, adopt=adopt)
        if role not in HOSTLESS:
            self.state.set_host(guest, self._least_loaded())

    # LOGON, IPL, LOGOFF -------------------------------------------------------------
    def console_log(self, guest: str) -> Path:
        self._require_guest(guest)
        return self.guest_run_dir(guest) / CONSOLE_LOG

    def access_files(self) -> dict[str, str]:
        return {}  # commands reach a guest through its QEMU guest agent, via libvirt

    def memory_map(self, guest: str) -> dict[str, str]:
        return {}  # gold disks are never mapped as memory here (the local backend does)

    def memory(self, guests: set[str]) -> dict[str, GuestMemory] | None:
        return None  # each host keeps its own books

    def cached(self, disks: list[tuple[str, str]]) -> dict[tuple[str, str], int] | None:
        return None

    def _domain(self, guest: str) -> Any:
        """The running guest's domain on its host."""
        self._require_guest(guest)
        uri = self.fleet.running().get(guest)
        if uri is None:
            raise RefusedError(f"{guest} is not logged on")
        try:
            return self.fleet.connection(uri).lookupByName(guest)
        except libvirt.libvirtError:
            raise RefusedError(f"{guest} is not logged on") from None

    def start(self, guest: str, request: StartRequest) -> None:
        self._require_guest(guest)
        running = self.fleet.running()  # every host answers first, or nothing starts
        if guest in running:
            raise RefusedError(f"{guest} user ID must be logged off (it runs on {running[guest]})")
        uri = self.host_of(guest)
        stray = self.fleet.defined().get(guest)
        if stray is not None and stray != uri:
            raise RefusedError(
                f"{guest}: a domain of that name is defined on {stray}; sharedroot starts its"
                f" guests from its own state, on {uri}: undefine it there (virsh -c URI undefine)"
            )
        drives, boot = self._bootable(guest, request.boot_address)
        run_dir = self.guest_run_dir(guest)
        kernel, initrd, conf = extract_boot_files(boot.path, run_dir / "boot")
        disks = [Disk(d.path, d.address, readonly=d.readonly) for d in drives]
        for address, size in request.vdisks:  # SWAPGEN: transient, fresh at each LOGON
            swap = run_dir / f"{address}.swap"
            if not swap.is_file() or swap.stat().st_size != size:
                process.make_vdisk(swap, size)
            disks.append(Disk(swap, address, transient=True))
        conn = self.fleet.connection(uri)
        spec = DomainSpec(
            name=guest,
            kernel=kernel,
            initrd=initrd,
            cmdline=conf.cmdline,
            disks=tuple(disks),
            console_log=run_dir / CONSOLE_LOG,
            type=domain_type(host_accel(conn, uri, self.run_dir / "probe", cache_dir())),
            arch=conf.arch,
            memory_mb=request.memory_mb,
            ksm=request.ksm,
        )
        try:
            conn.createXML(render(spec), 0)
        except libvirt.libvirtError as exc:
            raise OperationError(f"{guest}: {uri} did not start it: {error_text(exc)}") from None

    def wait_ready(self, guest: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                domain = self._domain(guest)
            except RefusedError:
                raise OperationError(
                    f"{guest} logged off while booting; console:\n{self._tail(guest)}"
                ) from None
            try:
                agent.ping(domain, timeout=3)
                return
            except OperationError:
                pass
            if time.monotonic() > deadline:
                raise OperationError(
                    f"guest agent did not answer within {timeout:.0f}s; console:\n"
                    + self._tail(guest)
                )
            time.sleep(1)

    def _tail(self, guest: str, lines: int = 20) -> str:
        try:
            text = self.console_log(guest).read_bytes()[-16384:].decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.replace("\r", "").splitlines()[-lines:])

    def stop(self, guest: str, timeout: float) -> str:
        domain = self._domain(guest)
        deadline = time.monotonic() + timeout
        for flag in (
            libvirt.VIR_DOMAIN_SHUTDOWN_GUEST_AGENT,
            libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN,
        ):
            try:
                domain.shutdownFlags(flag)
                break
            except libvirt.libvirtError:
                continue  # no agent yet: the power button
        while time.monotonic() < deadline:
            if not _active(domain):
                return "clean"
            time.sleep(0.5)
        try:
            domain.destroy()
        except libvirt.libvirtError as exc:
            if _active(domain):
                raise OperationError(
                    f"{guest}: could not be forced off: {error_text(exc)}"
                ) from None
        return "forced"

    def execute(self, guest: str, argv: list[str], timeout: float) -> tuple[int, bytes, bytes]:
        return agent.execute(self._domain(guest), argv, timeout)

    def delete_guest(self, guest: str) -> None:
        super().delete_guest(guest)
        shutil.rmtree(self.guest_run_dir(guest), ignore_errors=True)


def _active(domain: Any) -> bool:
    try:
        return bool(domain.isActive())
    except libvirt.libvirtError:
        return False  # a transient domain that ended is gone
