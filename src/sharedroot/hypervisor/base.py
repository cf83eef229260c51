"""The CP-like primitives every backend provides; workflows use nothing else."""

from __future__ import annotations

from typing import Protocol

from sharedroot.hypervisor.copyengine import CopyResult, Progress
from sharedroot.model.types import DiskKind, GuestState, Mode, Role
from sharedroot.store.state import DiskRow, LinkRow


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
