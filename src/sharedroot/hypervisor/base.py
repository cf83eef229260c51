"""The CP-like primitives every backend provides; workflows use nothing else."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sharedroot.hypervisor.copyengine import CopyResult, Progress
from sharedroot.model.types import DiskKind, GuestState, Mode, Role
from sharedroot.store.rows import DiskRow, LinkRow


@dataclass(frozen=True)
class StartRequest:
    """How to LOGON and IPL a guest: its boot disk, its VDISKs (SWAPGEN), its memory."""

    boot_address: str
    vdisks: tuple[tuple[str, int], ...] = ()  # (address, size): fresh swap at each start
    memory_mb: int = 512


class Hypervisor(Protocol):
    name: str

    def query(self, guest: str) -> GuestState:
        """CP QUERY userid: no such guest (rc 3), logged off (rc 45), logged on (rc 0)."""
        ...

    def define_guest(self, guest: str, role: Role) -> None: ...

    def delete_guest(self, guest: str) -> None: ...

    def add_disk(
        self, guest: str, address: str, kind: DiskKind, size: int, fs: str | None
    ) -> DiskRow:
        """Define a disk and give it an empty filesystem (or swap signature)."""
        ...

    def remove_disk(self, guest: str, address: str) -> None: ...

    def link(self, guest: str, address: str, owner: str, owner_address: str, mode: Mode) -> None:
        """LINK owner owner_address address mode, with CP's rules for write access."""
        ...

    def detach(self, guest: str, address: str) -> None: ...

    def links_to(self, owner: str, address: str | None = None) -> list[LinkRow]:
        """Who links a disk (QUERY LINKS)."""
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

    def put_parm(self, guest: str, text: str) -> None:
        """Write a guest's parm file onto the admin disk (CMSCLONE 0192)."""
        ...

    def get_parm(self, guest: str) -> str | None: ...

    def remove_parm(self, guest: str) -> None: ...

    def missing_devices(self, guest: str, addresses: list[str] | None = None) -> list[str]:
        """Which of a guest's devices (all, or those at `addresses`) have lost their disk."""
        ...

    def worker_path(self, guest: str, address: str, *, write: bool = False) -> Path:
        """A guest's disk as the worker can mount it (LINK + enable on z/VM).

        With `write`, the guest must be logged off and nobody else may link the disk:
        checked here, right before the worker writes it.
        """
        ...

    def replace_disk(self, guest: str, address: str, image: Path) -> None:
        """Put a freshly built filesystem image onto a guest's disk (same guards as a copy)."""
        ...

    def start(self, guest: str, request: StartRequest) -> int:
        """LOGON + IPL: boot the guest from its boot disk; returns its process id."""
        ...

    def wait_ready(self, guest: str, timeout: float) -> None:
        """Until the guest's agent answers."""
        ...

    def stop(self, guest: str, timeout: float) -> str:
        """Clean shutdown, forced after `timeout`: "clean" or "forced"."""
        ...

    def execute(self, guest: str, argv: list[str], timeout: float) -> tuple[int, bytes, bytes]:
        """Run a command in the running guest: exit code, stdout, stderr."""
        ...

    def console_log(self, guest: str) -> Path:
        """Where the guest's console output is kept."""
        ...
