"""state.db as a cache of the z/VM directory.

A guest's rows (disks from its MDISKs, links from its LINK statements and from those of
the profile it INCLUDEs) are refreshed from its directory entry when the backend acts on
it, so a change made by another administrator is seen. An entry read is kept for a
moment (ENTRY_TTL) so that the guards of one operation do not each ask SMAPI again.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from sharedroot.hypervisor.zvm.directory import Directory, Entry, Link, Mdisk
from sharedroot.model.layout import Layout
from sharedroot.model.types import DiskKind, Mode
from sharedroot.store.rows import DiskRow, LinkRow
from sharedroot.store.state import State

ENTRY_TTL = 2.0
CYLINDER = 180 * 4096
WRITE_MODES = ("W", "WR", "M", "MR", "MW")


class Cache:
    def __init__(self, state: State, layout: Layout, directory: Directory) -> None:
        self.state = state
        self.layout = layout
        self.directory = directory
        self._entries: dict[str, tuple[float, Entry | None]] = {}
        self._profiles: dict[str, Entry | None] = {}

    @staticmethod
    def file(guest: str, address: str) -> str:
        """What DiskRow.file says for a minidisk (there is no file)."""
        return f"zvm:{guest}/{address}"

    @contextmanager
    def writing(self) -> Iterator[None]:
        """A transaction, or the caller's when one is open."""
        if self.state.db.in_transaction:
            yield
        else:
            with self.state.transaction():
                yield

    # reading the directory --------------------------------------------------------
    def entry(self, guest: str, *, fresh: bool = False) -> Entry | None:
        """The guest's directory entry (None: not there, or not readable); the guest's
        cached rows are brought in line with it."""
        if not self.directory.readable:
            return None
        hit = self._entries.get(guest)
        if hit is not None and not fresh and time.monotonic() - hit[0] < ENTRY_TTL:
            return hit[1]
        entry = self.directory.entry(guest)
        self._entries[guest] = (time.monotonic(), entry)
        if entry is not None and not self.state.readonly and self.state.guest(guest) is not None:
            self._sync(guest, entry)
        return entry

    def profile(self, name: str) -> Entry | None:
        if name not in self._profiles:
            found = self.directory.profile(name)
            self._profiles[name] = found if found is None or found.kind == "PROFILE" else None
        return self._profiles[name]

    def forget(self, guest: str) -> None:
        self._entries.pop(guest, None)

    def links_of(self, entry: Entry) -> dict[str, Link]:
        """Every LINK the entry gets, by its address: the profile's, then its own."""
        out: dict[str, Link] = {}
        for name in entry.includes:
            prof = self.profile(name)
            if prof is not None:
                out.update({lk.vdev: lk for lk in prof.links})
        out.update({lk.vdev: lk for lk in entry.links})
        return out

    def device(self, entry: Entry, address: str) -> Mdisk | Link | None:
        """What the entry has at an address: its own minidisk, or a LINK."""
        return entry.mdisk(address) or self.links_of(entry).get(address)

    def has_mdisk(self, owner: str, address: str) -> bool:
        entry = self.entry(owner)
        if entry is None:
            return self.state.disk(owner, address) is not None
        return entry.mdisk(address) is not None

    # writing the cache -----------------------------------------------------------
    def put_disk(self, row: DiskRow) -> None:
        with self.writing():
            if self.state.disk(row.owner, row.address) == row:
                return
            users = self.state.links_to(row.owner, row.address)  # kept across the rewrite
            for lk in users:
                self.state.delete_link(lk.guest, lk.address)
            self.state.delete_disk(row.owner, row.address)
            self.state.add_disk(row)
            for lk in users:
                self.state.add_link(lk)

    def put_link(self, row: LinkRow) -> None:
        with self.writing():
            if self.state.link(row.guest, row.address) == row:
                return
            self.state.delete_link(row.guest, row.address)
            self.state.add_link(row)

    def _guess(self, address: str) -> tuple[DiskKind, str | None]:
        """Kind and fs of an adopted minidisk: from the layout (gold 11Bx/21Bx too)."""
        if address[0] in "012":
            for d in self.layout:
                if d.address[1:] == address[1:] and d.address[0] == "0":
                    return d.kind, d.fs
        return DiskKind.FS, None

    def _sync(self, guest: str, entry: Entry) -> None:
        with self.writing():
            disks = {d.address: d for d in self.state.disks(guest)}
            mdisks = {m.vdev: m for m in entry.mdisks}
            for addr, d in disks.items():
                if addr not in mdisks and d.kind is not DiskKind.VDISK:
                    for lk in self.state.links_to(guest, addr):
                        self.state.delete_link(lk.guest, lk.address)
                    self.state.delete_disk(guest, addr)
            for addr, m in mdisks.items():
                size = m.size * (512 if m.blocks else CYLINDER)
                have = disks.get(addr)
                if have is None:
                    kind, fs = (DiskKind.VDISK, None) if m.vdisk else self._guess(addr)
                    self.state.add_disk(
                        DiskRow(guest, addr, kind, fs, size, self.file(guest, addr))
                    )
                elif size and have.size != size:
                    self.state.set_disk_size(guest, addr, size)
            wanted: dict[str, LinkRow] = {}
            for addr, stmt in self.links_of(entry).items():
                if addr in mdisks or self.state.disk(stmt.owner, stmt.owner_vdev) is None:
                    continue  # an own minidisk wins; MAINT 0190 and such are not ours
                mode = Mode.MR if stmt.mode in WRITE_MODES else Mode.RR
                wanted[addr] = LinkRow(guest, addr, stmt.owner, stmt.owner_vdev, mode)
            # A profile that cannot be read (an SMAPI without Profile_Query_DM) may bring
            # the links recorded before (set_profile): keep those the entry leaves open.
            blind = any(self.profile(name) is None for name in entry.includes)
            own = {lk.vdev for lk in entry.links} | set(mdisks)
            for row in self.state.links(guest):
                if wanted.get(row.address) == row:
                    continue
                if blind and row.address not in wanted and row.address not in own:
                    continue
                self.state.delete_link(guest, row.address)
            for addr, row in wanted.items():
                if self.state.link(guest, addr) is None:
                    self.state.add_link(row)
