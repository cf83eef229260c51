"""ZvmBackend: the paper's CP EXECs, run from the Linux worker (LNXCLONE).

The z/VM directory is the truth about users, minidisks and links; state.db is a cache
the workflows read, refreshed from a guest's directory entry whenever the backend acts
on that guest (query() is called by every guard). Roles live only in state.db.
Every minidisk the worker LINKs is DETACHed again, on error too (`_linked`).
"""

from __future__ import annotations

import math
import secrets
import string
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from sharedroot.errors import InputError, RefusedError
from sharedroot.hypervisor.base import OneSystem, StartRequest
from sharedroot.hypervisor.copyengine import CopyResult, Progress
from sharedroot.hypervisor.zvm import devices, guestlink
from sharedroot.hypervisor.zvm.aliases import Aliases
from sharedroot.hypervisor.zvm.cp import Cp, userid, vdev
from sharedroot.hypervisor.zvm.directory import (
    Directory,
    Link,
    ManualDirectory,
    SmapiRefused,
    SmcliDirectory,
    admin_entry,
    user_entry,
)
from sharedroot.hypervisor.zvm.doctor import doctor_checks
from sharedroot.hypervisor.zvm.sync import Cache
from sharedroot.hypervisor.zvm.worker import Worker
from sharedroot.model.layout import ADMIN_OWN_ADDRESS
from sharedroot.model.types import DeviceBus, DiskKind, GuestState, Mode, Role
from sharedroot.store.config import SiteConfig
from sharedroot.store.rows import DiskRow, LinkRow
from sharedroot.store.state import State

CYLINDER = devices.CYLINDER
BASE_PROFILE = "RORDFLT"  # the paper's base profile: IPL CMS, NICDEF, LINK CMSCLONE 192 191 RR
CMS_LABEL = "CMS192"
PARM_TYPE = "PARM-S10"
AUTHORIZED_KEYS = "/root/.ssh/authorized_keys"  # how exec reaches a guest (SSH)


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class ZvmBackend(OneSystem):
    name = "zvm"
    bus = DeviceBus.CCW

    def __init__(
        self,
        config: SiteConfig,
        home: Path,
        state: State,
        *,
        cp: Cp | None = None,
        directory: Directory | None = None,
        say: guestlink.Say = _stderr,
    ) -> None:
        self.config = config
        self.settings = config.zvm
        self.home = home
        self.state = state
        self.cp = cp or Cp()
        self.say = say
        aliases = Aliases(home / "run" / "zvm-links", config.zvm.link_addresses())
        self.worker = Worker(self.cp, aliases)
        self.directory = directory or self._make_directory()
        self.cache = Cache(state, config.layout, self.directory)

    def _make_directory(self) -> Directory:
        s = self.settings
        if s.directory == "manual":
            return ManualDirectory(
                self.cp,
                self.say,
                s.manual_wait,
                s.allocation_group,
                s.device_type,
                self.worker.linkable,
            )
        return SmcliDirectory(guestlink.smcli_program(s.smcli), s.allocation_group, s.device_type)

    # guests -------------------------------------------------------------------
    def query(self, guest: str) -> GuestState:
        found = self.cp.user_state(userid(guest))
        if found is GuestState.NO_SUCH:
            return found
        if self.directory.readable and self.cache.entry(guest) is None:
            return GuestState.NO_SUCH
        return found

    def logged_on(self) -> set[str]:
        return self.cp.names()

    def define_guest(self, guest: str, role: Role, *, adopt: bool = False) -> None:
        if self.directory.exists(userid(guest)):
            if not adopt:
                raise RefusedError(
                    f"{guest} is already in the z/VM directory; choose another name, or"
                    " remove its entry first"
                )
            with self.cache.writing():
                if self.state.guest(guest) is None:
                    self.state.add_guest(guest, role)
            self.cache.entry(guest, fresh=True)
            return
        self.directory.create(guest, self._new_entry(guest, role))
        with self.cache.writing():
            if self.state.guest(guest) is not None:  # left from an entry removed by hand
                self.state.delete_guest(guest)
            self.state.add_guest(guest, role)
        self.cache.entry(guest, fresh=True)

    def _new_entry(self, guest: str, role: Role) -> str:
        if role is Role.GOLD:
            password = "NOLOG"  # the paper's S10GOLD: a disk holder, never logged on
        else:  # logged on by XAUTOLOG from the worker, never at a terminal
            alphabet = string.ascii_uppercase + string.digits
            password = "".join(secrets.choice(alphabet) for _ in range(8))
        if role is Role.ADMIN:
            return admin_entry(guest, password)
        memory = self.config.memory_mb
        maximum = "1G" if memory <= 1024 else f"{memory}M"
        return user_entry(guest, password, f"{memory}M", maximum, BASE_PROFILE)

    def delete_guest(self, guest: str) -> None:
        self._require_guest(guest)
        self._require_logged_off(guest)
        users = self._users(guest)
        if users:
            raise RefusedError(f"{guest}: its disks are linked by {_names(users)}")
        if self.directory.exists(guest):
            self.directory.delete(guest)
        self.cache.forget(guest)
        with self.cache.writing():
            self.state.delete_guest(guest)

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
        entry = self.cache.entry(guest)
        cached = self.state.disk(guest, address)
        if kind is DiskKind.VDISK:  # made by SWAPGEN at each logon: nothing in the directory
            if cached is not None or self.state.link(guest, address) is not None:
                raise RefusedError(f"{guest} already has a device at {address}")
            row = DiskRow(guest, address, kind, None, size, f"zvm:{guest}/{address} (VDISK)")
            with self.cache.writing():
                self.state.add_disk(row)
            return row
        mdisk = entry.mdisk(address) if entry is not None else None
        if entry is None and cached is None:  # no directory to read: ask CP
            found = self.worker.probe(guest, address)
            if found is not None and found.unit == "CYL":
                cached = DiskRow(guest, address, kind, fs, found.size * CYLINDER, "")
        if mdisk is not None or (entry is None and cached is not None):
            # Already a minidisk (a site set up by hand): adopt it, contents untouched.
            have = self.state.disk(guest, address) or cached
            real = have.size if have is not None else size
            row = DiskRow(guest, address, kind, fs, real, Cache.file(guest, address))
            self.cache.put_disk(row)
            return row
        if self.state.link(guest, address) is not None or (entry and entry.link(address)):
            raise RefusedError(f"{guest} already has a device at {address}")
        cylinders = max(1, math.ceil(size / CYLINDER))
        self.directory.add_mdisk(guest, address, cylinders)
        self.cache.forget(guest)
        row = DiskRow(guest, address, kind, fs, cylinders * CYLINDER, Cache.file(guest, address))
        self.cache.put_disk(row)
        if kind in (DiskKind.SWAP, DiskKind.LVM) or fs is not None:
            with self.worker.linked(guest, address, write=True) as alias:
                self.worker.enable(alias)
                # Low-level formatted even when `blank`: Linux writes (the dd fallback of
                # a copy) only to a formatted ECKD disk. An LVM disk's physical volume is
                # written by install onto the partition (the paper's pvcreate "$dev"1).
                part = devices.format_eckd(alias)
                if not blank and kind is not DiskKind.LVM:
                    devices.make_filesystem(part, kind, fs)
        return row

    def remove_disk(self, guest: str, address: str) -> None:
        disk = self._require_disk(guest, address)
        self._require_logged_off(guest)
        users = self._users(guest, address)
        if users:
            raise RefusedError(f"{guest} {address} is linked by {_names(users)}")
        if disk.kind is not DiskKind.VDISK:
            self.directory.delete_mdisk(guest, address)
        self.cache.forget(guest)
        with self.cache.writing():
            self.state.delete_disk(guest, address)

    def check_disk(self, guest: str, address: str) -> None:
        self._require_disk(guest, address)

    def missing_devices(self, guest: str, addresses: list[str] | None = None) -> list[str]:
        # What the cache knew before this look: a disk gone since then is reported.
        known = [d.address for d in self.state.disks(guest) if d.kind is not DiskKind.VDISK]
        known += [lk.address for lk in self.state.links(guest)]
        entry = self.cache.entry(guest, fresh=True)
        if entry is None:
            return []  # no directory to compare with (manual), or no guest at all
        lost = []
        for addr in sorted(set(known if addresses is None else addresses)):
            here = self.cache.device(entry, addr)
            if here is None:
                lost.append(f"{addr} (not in {guest}'s directory entry)")
            elif isinstance(here, Link) and not self.cache.has_mdisk(here.owner, here.owner_vdev):
                lost.append(f"{addr} (LINK {here.owner} {here.owner_vdev}: no such minidisk)")
        return lost

    def stamp(self, guest: str, address: str) -> list[int] | None:
        return None  # no cheap change stamp on a minidisk: callers hash the content

    # links ------------------------------------------------------------------
    def link(self, guest: str, address: str, owner: str, owner_address: str, mode: Mode) -> None:
        self._require_guest(guest)
        self._require_disk(owner, owner_address)
        entry = self.cache.entry(guest)
        if entry is not None:
            here = self.cache.device(entry, address)
            if isinstance(here, Link) and (here.owner, here.owner_vdev) == (owner, owner_address):
                self.cache.put_link(LinkRow(guest, address, owner, owner_address, mode))
                return  # already in the entry or its profile: just record it
            if here is not None:
                raise RefusedError(f"{guest} already has a device at {address}")
        elif self.state.disk(guest, address) or self.state.link(guest, address):
            raise RefusedError(f"{guest} already has a device at {address}")
        if mode is Mode.MR:
            writers = [
                lk.guest
                for lk in self.state.links_to(owner, owner_address)
                if lk.mode is Mode.MR and lk.guest != guest
            ]
            if owner != guest and self.query(owner) is GuestState.LOGGED_ON:
                writers.append(owner)
            if writers:
                raise RefusedError(
                    f"LINK {owner} {owner_address} MR: {', '.join(sorted(set(writers)))}"
                    " has write access"
                )
        self.directory.add_statement(
            guest, Link(owner, owner_address, address, mode.value).statement()
        )
        self.cache.forget(guest)
        self.cache.put_link(LinkRow(guest, address, owner, owner_address, mode))

    def detach(self, guest: str, address: str) -> None:
        self._require_guest(guest)
        entry = self.cache.entry(guest)
        if entry is not None and entry.link(address) is None:
            for name in entry.includes:
                prof = self.cache.profile(name)
                if prof is not None and prof.link(address) is not None:
                    raise RefusedError(
                        f"{guest} {address}: the LINK comes from its profile {name}"
                        f" (INCLUDE {name}); give {guest} another profile, or delete {guest}"
                    )
            if self.state.link(guest, address) is None:
                raise RefusedError(f"{guest} has no link at {address}")
        elif entry is None and self.state.link(guest, address) is None:
            raise RefusedError(f"{guest} has no link at {address}")
        if entry is None or entry.link(address) is not None:
            self.directory.remove_link(guest, address)
        self.cache.forget(guest)
        with self.cache.writing():
            self.state.delete_link(guest, address)

    def set_profile(self, guest: str, profile: str, links: list[tuple[str, str, str]]) -> None:
        self._require_guest(guest)
        try:  # SMAPI refuses an INCLUDE of a profile it does not have (rc 436 rs 4)
            self.directory.set_include(guest, userid(profile), tuple(a for a, _, _ in links))
        except SmapiRefused as exc:
            if (exc.rc, exc.rs) != (436, 4):
                raise
            raise RefusedError(
                f"profile {profile} is not in the z/VM directory; add PROFILE {profile} (the"
                " base statements and a LINK ... RR of each shared gold disk) first"
            ) from None
        self.cache.forget(guest)
        with self.cache.writing():
            for addr, owner, owner_addr in links:
                self.state.delete_link(guest, addr)
                if self.state.disk(owner, owner_addr) is not None:
                    self.state.add_link(LinkRow(guest, addr, owner, owner_addr, Mode.RR))
        self.cache.entry(guest, fresh=True)

    def links_to(self, owner: str, address: str | None = None) -> list[LinkRow]:
        """Who uses the disk now, per CP: LINK it, QUERY LINKS, DETACH (RO2GOLD2's way)."""
        if address is not None:  # CP alone answers: no directory read
            wanted = [vdev(address)]
        elif (entry := self.cache.entry(userid(owner))) is not None:
            wanted = [m.vdev for m in entry.mdisks if not m.vdisk]
        else:
            wanted = [d.address for d in self.state.disks(owner) if d.kind is not DiskKind.VDISK]
        return self._holding([(owner, a) for a in wanted], strict=address is not None)

    def users(self, disks: list[tuple[str, str]]) -> list[LinkRow]:
        return self._holding([(userid(o), vdev(a)) for o, a in disks], strict=False)

    def _holding(self, disks: list[tuple[str, str]], *, strict: bool) -> list[LinkRow]:
        rows: list[LinkRow] = []
        if not disks:
            return rows
        for (owner, addr), lk in self.worker.holders(disks, strict=strict):
            if lk.user not in (self.worker.name, owner):
                mode = Mode.RR if lk.access == "R/O" else Mode.MR
                rows.append(LinkRow(lk.user, lk.vdev, owner, addr, mode))
        return sorted(rows, key=lambda r: (r.owner, r.guest, r.address))

    # the worker's links ------------------------------------------------------
    def recover(self) -> None:
        self.worker.recover()

    def attach(
        self, guest: str, address: str, *, write: bool = False
    ) -> AbstractContextManager[Path]:
        return self._attach(guest, address, write)

    @contextmanager
    def _attach(self, guest: str, address: str, write: bool) -> Iterator[Path]:
        self._require_disk(guest, address)
        admin = (guest, address) == (self.config.guests.admin, ADMIN_OWN_ADDRESS)
        if write and not admin:
            self._require_logged_off(guest)
        # The admin disk is written while guests hold it R/O, as CMS disks are.
        with self.worker.linked(guest, address, write=write, guard=not admin) as alias:
            whole = self.worker.enable(alias)
            yield whole if admin else devices.mount_node(alias)

    def fill_disk(
        self,
        guest: str,
        address: str,
        kind: DiskKind,
        fs: str | None,
        tree: Path | None = None,
        label: str | None = None,
    ) -> None:
        if kind is DiskKind.FS and fs not in ("ext2", "ext3", "ext4"):
            raise InputError(f"{guest} {address}: cannot make a filesystem of type {fs!r}")
        disk = self._require_disk(guest, address)
        if disk.kind is DiskKind.VDISK or kind is DiskKind.VDISK:
            raise RefusedError(f"{guest} {address} is a VDISK: made fresh at each logon")
        self._require_logged_off(guest)
        with self.worker.linked(guest, address, write=True) as alias:
            self.worker.enable(alias)
            part = devices.format_eckd(alias)
            devices.make_filesystem(part, kind, fs, tree, label)

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
        """The paper's COPYMDSK: LINK target MR, source RR, FLASHCOPY, else dd; DETACH."""
        src = self._require_disk(src_owner, src_address)
        dst = self._require_disk(dst_owner, dst_address)
        self._require_logged_off(src_owner)
        self._require_logged_off(dst_owner)
        if dst.size < src.size:
            raise RefusedError(
                f"{dst_owner} {dst_address} ({dst.size} bytes) is smaller than"
                f" {src_owner} {src_address} ({src.size} bytes)"
            )
        started = time.monotonic()
        method, moved, verified = self.worker.copymdsk(
            (src_owner, src_address), (dst_owner, dst_address), src.size, self.say, progress, verify
        )
        self.cache.entry(dst_owner, fresh=True)  # the target's size as the directory has it
        return CopyResult(method, src.size, moved, time.monotonic() - started, verified)

    # the admin disk ---------------------------------------------------------------
    def put_parm(self, guest: str, text: str) -> None:
        self.put_parms({guest: text})

    def put_parms(self, parms: Mapping[str, str | None]) -> None:
        cms = guestlink.cms()
        # One LINK of the admin disk for the whole batch, whatever its size.
        with self.attach(self.config.guests.admin, ADMIN_OWN_ADDRESS, write=True) as dev:
            if not cms.is_formatted(dev):  # a fresh admin disk: no CMS label on it yet
                if all(text is None for text in parms.values()):
                    return  # nothing on it to remove
                cms.format_disk(dev, label=CMS_LABEL)
            for guest, text in parms.items():
                if text is None:
                    cms.delete_file(dev, userid(guest), PARM_TYPE)
                else:
                    cms.write_text(dev, userid(guest), PARM_TYPE, text)

    def get_parm(self, guest: str) -> str | None:
        cms = guestlink.cms()
        with self.attach(self.config.guests.admin, ADMIN_OWN_ADDRESS) as dev:
            if not cms.is_formatted(dev):
                return None
            return cms.read_text(dev, userid(guest), PARM_TYPE)

    def remove_parm(self, guest: str) -> None:
        self.put_parms({guest: None})

    # LOGON, IPL, LOGOFF -------------------------------------------------------------
    def access_files(self) -> dict[str, str]:
        return {AUTHORIZED_KEYS: guestlink.site_key(self.home)}

    def memory_map(self, guest: str) -> dict[str, str]:
        return {}  # the paper's DCSS variant is not built: every disk is a minidisk

    def start(self, guest: str, request: StartRequest) -> None:
        found = self.query(guest)
        if found is GuestState.NO_SUCH:
            raise RefusedError(f"{guest} user ID does not exist")
        if found is GuestState.LOGGED_ON:
            raise RefusedError(f"{guest} is already logged on")
        self.cp.xautolog(guest)  # its PROFILE EXEC makes the VDISKs and IPLs (paper §1.5)

    def stop(self, guest: str, timeout: float) -> str:
        if self.query(guest) is not GuestState.LOGGED_ON:
            raise RefusedError(f"{guest} is not logged on")
        return guestlink.shutdown(self.cp, guest, timeout, self.settings.signal_within)

    def wait_ready(self, guest: str, timeout: float) -> None:
        guestlink.wait_ssh(self._guest_ip(guest), guest, timeout)

    def execute(self, guest: str, argv: list[str], timeout: float) -> tuple[int, bytes, bytes]:
        return guestlink.ssh(self.home, self._guest_ip(guest), argv, timeout)

    def memory(self, guests: set[str]) -> None:
        return None  # guests' pages are CP's: the worker cannot see them

    def cached(self, disks: list[tuple[str, str]]) -> None:
        return None

    def _guest_ip(self, guest: str) -> str:
        if self.query(guest) is not GuestState.LOGGED_ON:
            raise RefusedError(f"{guest} is not logged on")
        return guestlink.parm_ip(guest, self.get_parm(guest))

    def console(self, guest: str, *, follow: bool = False) -> Iterator[bytes]:
        raise RefusedError(
            f"on z/VM the console of {guest} is its 3270 / CP console, which sharedroot does"
            f" not keep: log on to it, or SET SECUSER / spool CONSOLE from CP, or use"
            f" `sharedroot exec {guest}` once it answers SSH"
        )

    # guards -----------------------------------------------------------------
    def _require_guest(self, guest: str) -> None:
        if self.state.guest(guest) is None:
            raise RefusedError(f"{guest} user ID does not exist (not defined in this site)")
        if self.directory.readable and self.cache.entry(guest) is None:
            raise RefusedError(f"{guest} user ID does not exist in the z/VM directory")

    def _require_logged_off(self, guest: str) -> None:
        if self.cp.user_state(userid(guest)) is GuestState.LOGGED_ON:
            raise RefusedError(f"{guest} user ID must be logged off")

    def _require_disk(self, guest: str, address: str) -> DiskRow:
        self._require_guest(guest)
        disk = self.state.disk(guest, address)
        if disk is None:
            raise RefusedError(f"{guest} has no disk at {address}")
        return disk

    def _users(self, guest: str, address: str | None = None) -> list[LinkRow]:
        """Who links the disk(s): in the directory (cache) or in CP now, the owner left out."""
        rows = [lk for lk in self.state.links_to(guest, address) if lk.guest != guest]
        return rows + self.links_to(guest, address)


def _names(links: list[LinkRow]) -> str:
    return ", ".join(sorted({lk.guest for lk in links}))


def create(config: SiteConfig, home: Path, state: State) -> ZvmBackend:
    return ZvmBackend(config, home, state)


__all__ = ["ZvmBackend", "create", "doctor_checks"]
