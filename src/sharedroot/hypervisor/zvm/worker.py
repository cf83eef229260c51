"""The worker's own links: LINK a guest's minidisk, bring it online, always DETACH it.

What the paper's EXECs do from CMSCLONE, done from the Linux worker: every LINK goes to a
free worker address of config.zvm.link_range (recorded, see `aliases`), and is taken
offline and DETACHed again however the work ends (the EXECs' CleanUp).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from sharedroot.errors import OperationError, RefusedError
from sharedroot.hypervisor.copyengine import Method, Progress
from sharedroot.hypervisor.zvm import devices
from sharedroot.hypervisor.zvm.aliases import Aliases
from sharedroot.hypervisor.zvm.cp import Cp, Dasd, Linker, userid, vdev

LINKS_AT_ONCE = 8  # worker addresses `holders` uses at a time


class Worker:
    def __init__(self, cp: Cp, aliases: Aliases) -> None:
        self.cp = cp
        self.aliases = aliases
        self._online: set[str] = set()
        self._name: str | None = None

    @property
    def name(self) -> str:
        """The worker's user ID, as CP knows it (LNXCLONE)."""
        if self._name is None:
            self._name = self.cp.whoami()
        return self._name

    def claim(self, count: int = 1) -> list[str]:
        """Free worker addresses (one QUERY VIRTUAL DASD), recorded as this process's."""
        return self.aliases.claim(set(self.cp.dasd()), count)

    @contextmanager
    def linked(
        self, owner: str, address: str, *, write: bool, guard: bool = True, alias: str = ""
    ) -> Iterator[str]:
        """LINK the disk at a free worker address (MR for write, else RR); on exit,
        always: offline, DETACH, record removed. With write and guard, nobody but the
        worker may hold the disk (QUERY LINKS)."""
        if not alias:
            [alias] = self.claim()
        done = False
        try:
            self.cp.link(owner, address, alias, "MR" if write else "RR")
            if write and guard:
                others = sorted({lk.user for lk in self.cp.links(alias) if lk.user != self.name})
                if others:
                    raise RefusedError(
                        f"{owner} {address} is linked by {', '.join(others)};"
                        " it cannot be overwritten"
                    )
            yield alias
            done = True
        finally:
            self._unlink(alias, quiet=not done)

    def enable(self, alias: str) -> Path:
        """The linked device online on the worker; its whole-disk node."""
        if alias in self._online:
            return devices.node(alias)
        self._online.add(alias)
        return devices.enable(alias)

    def _unlink(self, alias: str, *, quiet: bool) -> None:
        problems = []
        if alias in self._online:
            problems.append(devices.quietly(lambda: devices.disable(alias)))
            self._online.discard(alias)
        problems.append(devices.quietly(lambda: self.cp.detach(alias, missing_ok=True)))
        self.aliases.release(alias)
        failed = [p for p in problems if p]
        if failed and not quiet:  # while an error propagates, it is the one to report
            raise OperationError(
                f"cleaning up worker device {alias}: {'; '.join(failed)};"
                " the next writing sharedroot command detaches it"
            )

    def recover(self) -> None:
        """Offline and DETACH every worker device in the range that no live process holds."""
        present = self.cp.dasd()
        for alias in sorted(set(present) | set(self.aliases.recorded())):
            if not self.aliases.in_range(alias) or self.aliases.live(alias):
                continue
            if alias in present:
                devices.quietly(_disabler(alias))
                self.cp.detach(alias, missing_ok=True)
            self.aliases.release(alias)

    def probe(self, owner: str, address: str) -> Dasd | None:
        """The minidisk as CP has it (LINK RR, QUERY VIRTUAL DASD, DETACH), or None."""
        [alias] = self.claim()
        try:
            r = self.cp("LINK", userid(owner), vdev(address), "AS", alias, "RR")
            if not r.ok:
                return None
            try:
                return self.cp.dasd().get(alias)
            finally:
                self.cp.detach(alias, missing_ok=True)
        finally:
            self.aliases.release(alias)

    def linkable(self, owner: str, address: str) -> bool:
        """Whether the worker can LINK the minidisk (a new one is online)."""
        return self.probe(owner, address) is not None

    def holders(
        self, disks: list[tuple[str, str]], *, strict: bool
    ) -> list[tuple[tuple[str, str], Linker]]:
        """((owner, address), linker) for every user holding each disk now: LINK it RR,
        QUERY LINKS, DETACH (the paper's RO2GOLD2). A few disks per round, one DETACH
        each round; CP calls grow with the disks, never with the guests. With `strict`,
        a disk that cannot be linked is refused, else skipped (gone meanwhile)."""
        found: list[tuple[tuple[str, str], Linker]] = []
        aliases = self.claim(min(len(disks), LINKS_AT_ONCE))
        try:
            for first in range(0, len(disks), len(aliases)):
                linked: list[tuple[tuple[str, str], str]] = []
                try:
                    for disk, alias in zip(disks[first:], aliases, strict=False):
                        try:
                            self.cp.link(disk[0], disk[1], alias, "RR")
                        except RefusedError:
                            if strict:
                                raise
                            continue
                        linked.append((disk, alias))
                    for disk, alias in linked:
                        found += [(disk, lk) for lk in self.cp.links(alias)]
                finally:
                    if linked:
                        self.cp.detach_all([alias for _, alias in linked])
        finally:
            for alias in aliases:
                self.aliases.release(alias)
        return found

    def copymdsk(
        self,
        source: tuple[str, str],
        target: tuple[str, str],
        size: int,
        say: Callable[[str], None],
        progress: Progress | None,
        verify: bool,
    ) -> tuple[Method, int, bool]:
        """LINK target MR (nobody else on it), source RR (nobody writing it), FLASHCOPY,
        else dd between the online devices; DETACH both. (method, bytes moved, verified)"""
        tgt_alias, src_alias = self.claim(2)
        with ExitStack() as stack:
            try:
                stack.enter_context(self.linked(*target, write=True, alias=tgt_alias))
            except BaseException:
                self.aliases.release(src_alias)
                raise
            stack.enter_context(self.linked(*source, write=False, alias=src_alias))
            writers = {lk.user for lk in self.cp.links(src_alias) if lk.access == "R/W"}
            if writers - {self.name}:
                raise RefusedError(
                    f"{' '.join(source)} is linked R/W by {', '.join(sorted(writers))};"
                    " it may be changing"
                )
            if progress is not None:
                progress(0, size)
            flash = self.cp.flashcopy(src_alias, tgt_alias)
            if flash.ok:
                method, moved = Method.FLASHCOPY, 0
            else:  # COPYMDSK falls back to DDR; from Linux that is dd between the devices
                say(
                    f"FLASHCOPY returned {flash.rc} ({flash.message() or 'no response'});"
                    " falling back to dd"
                )
                moved = devices.copy_device(self.enable(src_alias), self.enable(tgt_alias))
                method = Method.DD
            if progress is not None:
                progress(size, size)
            if verify:
                src_node, tgt_node = self.enable(src_alias), self.enable(tgt_alias)
                whole = devices.device_size(src_node)
                if devices.device_hash(src_node) != devices.device_hash(tgt_node, whole):
                    raise OperationError(
                        f"{' '.join(target)} differs from {' '.join(source)} after the copy;"
                        " run it again"
                    )
        return method, moved, verify


def _disabler(alias: str) -> Callable[[], None]:
    return lambda: devices.disable(alias)
