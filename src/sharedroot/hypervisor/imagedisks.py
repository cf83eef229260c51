"""Disks as raw image files in one directory, links and the admin disk as the store
records them: what the local and libvirt backends share (CP's directory, with the LINK
rules enforced here). Whether a guest is logged on is the runtime's answer (`query`).
"""

from __future__ import annotations

import os
import shutil
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from sharedroot.errors import RefusedError
from sharedroot.hypervisor.copyengine import CopyResult, Progress, copy_image
from sharedroot.hypervisor.images import check_image, make_filesystem
from sharedroot.hypervisor.qemu import cmdline
from sharedroot.model.layout import ADMIN_OWN_ADDRESS
from sharedroot.model.types import DiskKind, GuestState, Mode, Role
from sharedroot.store.rows import DiskRow, LinkRow
from sharedroot.store.state import State


class ImageDisks(ABC):
    """The directory side of a backend whose disks are image files under `disk_root`."""

    def __init__(self, disk_root: Path, state: State, admin: str) -> None:
        self.disk_root = disk_root  # DiskRow.file is relative to it
        self.state = state
        self.admin = admin
        self.disk_dir = disk_root / "disks"

    @abstractmethod
    def query(self, guest: str) -> GuestState:
        """Whether the guest is logged on: the runtime's answer (a run lock, a domain)."""

    @abstractmethod
    def console_log(self, guest: str) -> Path:
        """The file the guest's serial console is written to (one writer at a time)."""

    def console(self, guest: str, *, follow: bool = False) -> Iterator[bytes]:
        log = self.console_log(guest)
        if not log.is_file():
            raise RefusedError(f"{guest} has no console log yet; it has never been started")
        with open(log, "rb") as f:
            yield f.read()
            while follow:
                chunk = f.read(65536)
                if chunk:
                    yield chunk
                elif self.query(guest) is GuestState.LOGGED_ON:
                    time.sleep(0.2)
                else:
                    return

    # paths ------------------------------------------------------------------
    def image_path(self, guest: str, address: str) -> Path:
        return self.disk_dir / guest / f"{address}.img"

    def disk_file(self, disk: DiskRow) -> Path:
        return self.disk_root / disk.file

    def _admin_files(self) -> Path:
        return self.disk_dir / self.admin / f"{ADMIN_OWN_ADDRESS}.files"

    # guests -----------------------------------------------------------------
    def define_guest(self, guest: str, role: Role, *, adopt: bool = False) -> None:
        # Nothing exists outside the store to adopt: `adopt` changes nothing here.
        if self.state.guest(guest) is not None:
            raise RefusedError(f"{guest} is already defined")
        self.state.add_guest(guest, role)
        (self.disk_dir / guest).mkdir(parents=True, exist_ok=True)

    def delete_guest(self, guest: str) -> None:
        self._require_logged_off(guest)
        users = [lk for lk in self.state.links_to(guest) if lk.guest != guest]
        if users:
            raise RefusedError(f"{guest}: its disks are linked by {_names(users)}")
        self.state.delete_guest(guest)
        shutil.rmtree(self.disk_dir / guest, ignore_errors=True)

    # disks ------------------------------------------------------------------
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
        self._require_guest(guest)
        self._require_free_address(guest, address)
        path = self.image_path(guest, address)
        path.parent.mkdir(parents=True, exist_ok=True)
        if blank:  # a hole of the disk's size: nothing allocated until a copy fills it
            with open(path, "wb") as f:
                f.truncate(size)
        else:
            make_filesystem(path, kind, size, fs)
        row = DiskRow(guest, address, kind, fs, size, str(path.relative_to(self.disk_root)))
        self.state.add_disk(row)
        return row

    def remove_disk(self, guest: str, address: str) -> None:
        disk = self._require_disk(guest, address)
        self._require_logged_off(guest)
        users = self.state.links_to(guest, address)
        if users:
            raise RefusedError(f"{guest} {address} is linked by {_names(users)}")
        self.state.delete_disk(guest, address)
        self.disk_file(disk).unlink(missing_ok=True)

    # links ------------------------------------------------------------------
    def link(self, guest: str, address: str, owner: str, owner_address: str, mode: Mode) -> None:
        self._require_guest(guest)
        self._require_disk(owner, owner_address)
        self._require_free_address(guest, address)
        if mode is Mode.MR:
            writers = [
                lk.guest
                for lk in self.state.links_to(owner, owner_address)
                if lk.mode is Mode.MR and lk.guest != guest
            ]
            if self.query(owner) is GuestState.LOGGED_ON and owner != guest:
                writers.append(owner)
            if writers:
                raise RefusedError(
                    f"LINK {owner} {owner_address} MR: {', '.join(sorted(set(writers)))}"
                    " has write access"
                )
        self.state.add_link(LinkRow(guest, address, owner, owner_address, mode))

    def detach(self, guest: str, address: str) -> None:
        if self.state.link(guest, address) is None:
            raise RefusedError(f"{guest} has no link at {address}")
        self.state.delete_link(guest, address)

    def set_profile(self, guest: str, profile: str, links: list[tuple[str, str, str]]) -> None:
        for addr, owner, owner_addr in links:
            if self.state.link(guest, addr) is not None:
                self.detach(guest, addr)
            self.link(guest, addr, owner, owner_addr, Mode.RR)

    def links_to(self, owner: str, address: str | None = None) -> list[LinkRow]:
        return [lk for lk in self.state.links_to(owner, address) if lk.guest != owner]

    def users(self, disks: list[tuple[str, str]]) -> list[LinkRow]:
        return [lk for owner, addr in disks for lk in self.links_to(owner, addr)]

    # copy -------------------------------------------------------------------
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
        src = self._require_disk(src_owner, src_address)
        dst = self._require_writable(dst_owner, dst_address)
        self._require_logged_off(src_owner)
        writers = [lk for lk in self.state.links_to(src_owner, src_address) if lk.mode is Mode.MR]
        if writers:
            raise RefusedError(
                f"{src_owner} {src_address} is linked MR by {_names(writers)}; it may be changing"
            )
        if dst.size < src.size:
            raise RefusedError(
                f"{dst_owner} {dst_address} ({dst.size} bytes) is smaller than"
                f" {src_owner} {src_address} ({src.size} bytes)"
            )
        result = copy_image(
            self.disk_file(src), self.disk_file(dst), progress=progress, verify=verify
        )
        self.state.set_disk_size(dst_owner, dst_address, src.size)
        return result

    def fill_disk(
        self,
        guest: str,
        address: str,
        kind: DiskKind,
        fs: str | None,
        tree: Path | None = None,
        label: str | None = None,
    ) -> None:
        disk = self._require_writable(guest, address)
        target = self.disk_file(disk)
        # Built beside the old image and renamed over it: an interrupted fill leaves
        # the old disk or the new one, never half of one.
        tmp = target.with_name(f".{target.name}.new")
        try:
            make_filesystem(tmp, kind, disk.size, fs, tree, label)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)

    def check_disk(self, guest: str, address: str) -> None:
        self._require_disk(guest, address)

    def stamp(self, guest: str, address: str) -> list[int] | None:
        st = self.disk_file(self._require_disk(guest, address)).stat()
        return [st.st_size, st.st_mtime_ns]

    @contextmanager
    def attach(self, guest: str, address: str, *, write: bool = False) -> Iterator[Path]:
        # An image file: mount(8) loop-mounts it itself (autoclear), nothing to undo.
        if write:  # checked right before the worker mounts it read-write
            yield self.disk_file(self._require_writable(guest, address))
        else:
            yield self.disk_file(self._require_disk(guest, address))

    # LOGON, IPL, LOGOFF ------------------------------------------------------
    def _device(self, guest: str, address: str) -> cmdline.Drive:
        """What a guest sees at an address: its own disk, or a linked one (RR: read-only)."""
        disk = self.state.disk(guest, address)
        if disk is not None:
            return cmdline.Drive(self.disk_file(disk), address)
        link = self.state.link(guest, address)
        if link is None:
            raise RefusedError(f"{guest} has no disk or link at {address}")
        target = self.state.disk(link.owner, link.owner_address)
        if target is None:
            raise RefusedError(
                f"{guest} {address}: links {link.owner} {link.owner_address}, which does not exist"
            )
        return cmdline.Drive(self.disk_file(target), address, readonly=link.mode is Mode.RR)

    def _attached(self, guest: str) -> list[cmdline.Drive]:
        addresses = [d.address for d in self.state.disks(guest)]
        addresses += [lk.address for lk in self.state.links(guest)]
        return [self._device(guest, a) for a in sorted(addresses)]

    def _bootable(self, guest: str, boot_address: str) -> tuple[list[cmdline.Drive], cmdline.Drive]:
        """What a start attaches, every image there and whole, and the boot disk among it."""
        missing = self.missing_devices(guest)
        if missing:
            raise RefusedError(f"{guest}: disk images are missing or damaged: {', '.join(missing)}")
        drives = self._attached(guest)
        boot = next((d for d in drives if d.address == boot_address), None)
        if boot is None:
            raise RefusedError(f"{guest} has no boot disk at {boot_address}")
        return drives, boot

    def missing_devices(self, guest: str, addresses: list[str] | None = None) -> list[str]:
        return [
            f"{d.address} ({d.path}{'' if not d.path.exists() else ': not a regular file'})"
            for d in self._attached(guest)
            if (addresses is None or d.address in addresses) and not d.path.is_file()
        ]

    # admin disk -------------------------------------------------------------
    def put_parm(self, guest: str, text: str) -> None:
        self.put_parms({guest: text})

    def put_parms(self, parms: Mapping[str, str | None]) -> None:
        files = self._admin_files()
        files.mkdir(parents=True, exist_ok=True)
        for guest, text in parms.items():
            path = files / f"{guest}.PARM-S10"
            if text is None:
                if path.is_file() or path.is_symlink():  # anything else is not ours to remove
                    path.unlink()
                continue
            tmp = files / f".{guest}.PARM-S10.tmp"
            tmp.write_text(text)
            os.replace(tmp, path)
        self._rebuild_admin_disk()  # once for all of them

    def remove_parm(self, guest: str) -> None:
        self.put_parms({guest: None})

    def get_parm(self, guest: str) -> str | None:
        path = self._admin_files() / f"{guest}.PARM-S10"
        if not path.is_file():  # nothing, or something sharedroot did not write
            return None
        return path.read_text(errors="replace")

    def _rebuild_admin_disk(self) -> None:
        # Running guests hold the admin disk RR: build a new image and rename it into
        # place, so each keeps the one it booted with (as a CMS disk changes under z/VM).
        disk = self._require_disk(self.admin, ADMIN_OWN_ADDRESS)
        path = self.disk_file(disk)
        tmp = path.with_name(f".{path.name}.new")
        try:
            make_filesystem(tmp, DiskKind.FS, disk.size, "ext2", self._admin_files(), "CMSCLONE")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    # guards -----------------------------------------------------------------
    def _require_guest(self, guest: str) -> None:
        if self.state.guest(guest) is None:
            raise RefusedError(f"{guest} user ID does not exist")

    def _require_logged_off(self, guest: str) -> None:
        if self.query(guest) is GuestState.LOGGED_ON:
            raise RefusedError(f"{guest} user ID must be logged off")

    def _require_writable(self, guest: str, address: str) -> DiskRow:
        """A disk about to be overwritten: its guest logged off, nobody else linking it.

        Its old image need not be whole: a copy replaces it (and mends it).
        """
        disk = self._require_disk(guest, address, whole=False)
        self._require_logged_off(guest)
        users = self.state.links_to(guest, address)
        if users:
            raise RefusedError(
                f"{guest} {address} is linked by {_names(users)}; it cannot be overwritten"
            )
        return disk

    def _require_disk(self, guest: str, address: str, *, whole: bool = True) -> DiskRow:
        """The disk's row; with `whole`, its image must be what the store records."""
        self._require_guest(guest)
        disk = self.state.disk(guest, address)
        if disk is None:
            raise RefusedError(f"{guest} has no disk at {address}")
        if whole:
            check_image(self.disk_file(disk), disk.size, f"{guest} {address}")
        return disk

    def _require_free_address(self, guest: str, address: str) -> None:
        if self.state.disk(guest, address) is not None or self.state.link(guest, address):
            raise RefusedError(f"{guest} already has a device at {address}")


def _names(links: list[LinkRow]) -> str:
    return ", ".join(sorted({lk.guest for lk in links}))
