"""The CP-like primitives every backend provides; workflows use nothing else.

The seam fits both kinds of backend: image files on a host (local) and block devices
reached through a hypervisor (z/VM minidisks, LINKed to the worker and enabled). A
disk is never handed out as a file to rewrite: the worker attaches it for as long as
it needs it (`attach`), and a backend fills or copies it its own way.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sharedroot.errors import RefusedError
from sharedroot.hypervisor.copyengine import CopyResult, Progress
from sharedroot.model.types import DeviceBus, DiskKind, GuestState, Mode, Role
from sharedroot.store.rows import DiskRow, LinkRow


@dataclass(frozen=True)
class StartRequest:
    """How to LOGON and IPL a guest: its boot disk, its VDISKs (SWAPGEN), its memory."""

    boot_address: str
    vdisks: tuple[tuple[str, int], ...] = ()  # (address, size): fresh swap at each start
    memory_mb: int = 512
    dax: bool = False  # shared gold disks as persistent memory where the gold is ready
    ksm: bool = False  # the host's KSM may merge the guest's memory (site setting ksm)


@dataclass(frozen=True)
class GuestMemory:
    """What a running guest holds of its host's memory, in bytes."""

    rss: int  # resident in the host
    pss: int  # resident, pages shared with other processes divided among them
    ksm: int | None  # resident pages KSM merged (None: the host kernel does not say)
    balloon: int | None  # held back from the guest by its balloon (None: no balloon)


class Hypervisor(Protocol):
    name: str
    bus: DeviceBus  # how guests see their disks (the guest-OS platform follows from it)

    def recover(self) -> None:
        """Undo what a killed command left on the worker (on z/VM: its links).

        Called with the site's write lock held, before a command writes anything.
        """
        ...

    # guests -------------------------------------------------------------------
    def query(self, guest: str) -> GuestState:
        """CP QUERY userid: no such guest (rc 3), logged off (rc 45), logged on (rc 0)."""
        ...

    def logged_on(self) -> set[str]:
        """Every logged-on guest, in one call (CP QUERY NAMES), for reports on many."""
        ...

    def define_guest(self, guest: str, role: Role, *, adopt: bool = False) -> None:
        """Create the guest; with `adopt`, an existing definition is taken over instead.

        (`init` on z/VM adopts what a site that followed the paper by hand already has.)
        """
        ...

    def delete_guest(self, guest: str) -> None: ...

    # hosts ----------------------------------------------------------------------
    def hosts(self) -> tuple[str, ...]:
        """The hosts guests may run on (their URIs); empty: every guest runs on one system."""
        ...

    def placement(self) -> dict[str, str]:
        """Guest -> the host it starts on, for every placed guest (no call per guest)."""
        ...

    def place(self, guest: str, host: str) -> None:
        """From its next start, the logged-off guest runs on `host` (one of `hosts()`)."""
        ...

    # disks and links ------------------------------------------------------------
    def add_disk(
        self,
        guest: str,
        address: str,
        kind: DiskKind,
        size: int,
        fs: str | None,
        *,
        blank: bool = False,
    ) -> DiskRow:
        """Define a disk and give it an empty filesystem (or swap signature).

        With `blank`, no filesystem: for a disk a copy fills next (on z/VM still
        low-level formatted, so Linux can write it).
        """
        ...

    def remove_disk(self, guest: str, address: str) -> None: ...

    def link(self, guest: str, address: str, owner: str, owner_address: str, mode: Mode) -> None:
        """The guest gets owner's disk at `address` (a directory LINK), CP's write rules."""
        ...

    def detach(self, guest: str, address: str) -> None: ...

    def set_profile(self, guest: str, profile: str, links: list[tuple[str, str, str]]) -> None:
        """Give a read-only clone a gold slot's shared disks: `links` (address, owner,
        owner address), all RR. On z/VM the clone INCLUDEs the slot's directory profile
        (`profile`: S10DFLT, S10DFLT2), as in the paper; locally it gets the RR links.
        """
        ...

    def links_to(self, owner: str, address: str | None = None) -> list[LinkRow]:
        """Who uses a disk (QUERY LINKS), the owner itself left out."""
        ...

    def users(self, disks: list[tuple[str, str]]) -> list[LinkRow]:
        """links_to for several (owner, address) disks at once: one round of CP calls."""
        ...

    def check_disk(self, guest: str, address: str) -> None:
        """The disk exists and is what the store records (a whole image, a minidisk)."""
        ...

    def missing_devices(self, guest: str, addresses: list[str] | None = None) -> list[str]:
        """Which of a guest's devices (all, or those at `addresses`) have lost their disk."""
        ...

    def attach(
        self, guest: str, address: str, *, write: bool = False
    ) -> AbstractContextManager[Path]:
        """A guest's disk on the worker, as something `mount` takes, for the `with` body.

        On z/VM: LINK to a free worker address, enable, yield the device node; on exit
        (also on error) disable and DETACH. With `write`, the guest must be logged off
        and nobody else may use the disk: checked here, right before the worker writes.
        """
        ...

    def fill_disk(
        self,
        guest: str,
        address: str,
        kind: DiskKind,
        fs: str | None,
        tree: Path | None = None,
        label: str | None = None,
    ) -> None:
        """Format the disk with `fs` (or swap) and fill it from `tree` (same guards as a copy)."""
        ...

    def copy_disk(
        self,
        src_owner: str,
        src_address: str,
        dst_owner: str,
        dst_address: str,
        *,
        progress: Progress | None = None,
        verify: bool = False,
    ) -> CopyResult:
        """FLASHCOPY, else DDR: refused onto a logged-on guest or a disk others link."""
        ...

    def stamp(self, guest: str, address: str) -> list[int] | None:
        """A cheap change stamp of a disk's content (size, mtime), or None: hash it."""
        ...

    # the admin disk ---------------------------------------------------------------
    def put_parm(self, guest: str, text: str) -> None:
        """Write a guest's parm file onto the admin disk (CMSCLONE 0192)."""
        ...

    def put_parms(self, parms: Mapping[str, str | None]) -> None:
        """Write (text) or remove (None) several guests' parm files: the admin disk is
        written once for all of them (a batch of `define`s)."""
        ...

    def get_parm(self, guest: str) -> str | None: ...

    def remove_parm(self, guest: str) -> None: ...

    # LOGON, IPL, LOGOFF -------------------------------------------------------------
    def access_files(self) -> dict[str, str]:
        """Files (path in the guest -> text) a system needs so `execute` reaches it
        (on z/VM: the site's SSH key in root's authorized_keys), made on first use."""
        ...

    def memory_map(self, guest: str) -> dict[str, str]:
        """Per gold disk of the running guest that could be persistent memory: "dax" if
        it is mapped so, else why it is attached as a disk."""
        ...

    def start(self, guest: str, request: StartRequest) -> None:
        """LOGON + IPL: boot the guest from its boot disk."""
        ...

    def wait_ready(self, guest: str, timeout: float) -> None:
        """Until the guest answers (its agent; on z/VM, SSH to its parm-file address)."""
        ...

    def stop(self, guest: str, timeout: float) -> str:
        """Clean shutdown, forced after `timeout`: "clean" or "forced"."""
        ...

    def execute(self, guest: str, argv: list[str], timeout: float) -> tuple[int, bytes, bytes]:
        """Run a command in the running guest: exit code, stdout, stderr."""
        ...

    # memory ---------------------------------------------------------------------
    def memory(self, guests: set[str]) -> dict[str, GuestMemory] | None:
        """Host memory of each running guest of `guests` (one that cannot be read is left
        out); None: the backend has no view of it (z/VM keeps its own books)."""
        ...

    def cached(self, disks: list[tuple[str, str]]) -> dict[tuple[str, str], int] | None:
        """Bytes of each (owner, address) disk in the host's page cache, shared by every
        guest that reads it; None: the backend has no view of it."""
        ...

    def console(self, guest: str, *, follow: bool = False) -> Iterator[bytes]:
        """The guest's console output: first all of it so far (one chunk, perhaps empty),
        then, with `follow`, what it writes until it logs off."""
        ...


class OneSystem:
    """The host side of a backend whose guests all run on one system (this machine, one
    z/VM): no hosts to choose from."""

    def hosts(self) -> tuple[str, ...]:
        return ()

    def placement(self) -> dict[str, str]:
        return {}

    def place(self, guest: str, host: str) -> None:
        raise RefusedError(f"{guest}: this site's guests all run on one system, not on {host}")
