"""The embedded backend: disks are raw image files under the store, guests run as QEMU.

"Logged on" means a live process holds the guest's run lock (an flock on
run/<GUEST>.lock); QEMU inherits that lock, so it is released exactly when the
guest's process ends, however it ends.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from sharedroot.errors import RefusedError, StoreError
from sharedroot.files import run_directory
from sharedroot.hypervisor import cache_dir, ksm
from sharedroot.hypervisor.base import GuestMemory, OneSystem, StartRequest
from sharedroot.hypervisor.imagedisks import ImageDisks
from sharedroot.hypervisor.ipl import BootConfig, extract_boot_files
from sharedroot.hypervisor.qemu import accel, cmdline, control, memory, process
from sharedroot.model.layout import PMEM_ALIGN
from sharedroot.model.types import EXACT_ADDRESS, DeviceBus, GuestState
from sharedroot.store.config import SiteConfig
from sharedroot.store.state import State

PMEM_FILE = "pmem.json"  # in a guest's run directory: its gold disks as memory, or why not


def _memory_map(
    drives: list[cmdline.Drive], conf: BootConfig, request: StartRequest
) -> dict[str, cmdline.Pmem | str]:
    """Per read-only gold disk the system can use as persistent memory (its boot
    configuration's map): the device to map, or why it stays virtio-blk."""
    slots = conf.pmem_slots if conf.arch == "amd64" else {}
    out: dict[str, cmdline.Pmem | str] = {}
    for d in drives:
        if not d.readonly or d.address not in slots:
            continue
        size = d.path.stat().st_size
        if not request.dax:
            out[d.address] = "virtio-blk: the site's dax setting is off"
        elif not accel.has_device("virtio-pmem-pci"):
            out[d.address] = "virtio-blk: this host's QEMU has no virtio-pmem-pci"
        elif size % PMEM_ALIGN:
            out[d.address] = f"virtio-blk: {size >> 20} MiB is not a multiple of 128 MiB"
        else:
            out[d.address] = cmdline.Pmem(d.path, d.address, slots[d.address], size)
    return out


def create(config: SiteConfig, home: Path, state: State) -> LocalBackend:
    return LocalBackend(home, state, config.guests.admin, cache_dir())


class LocalBackend(OneSystem, ImageDisks):
    name = "local"
    bus = DeviceBus.VIRTIO

    def __init__(self, home: Path, state: State, admin: str, cache_dir: Path) -> None:
        super().__init__(home, state, admin)
        self.home = home
        self.cache_dir = cache_dir  # where the acceleration probe's answer is kept
        self.run_dir = home / "run"

    # paths ------------------------------------------------------------------
    def lock_path(self, guest: str) -> Path:
        return self.run_dir / f"{guest}.lock"

    def guest_run_dir(self, guest: str) -> Path:
        return self.run_dir / guest

    def recover(self) -> None:
        """Nothing to undo: a killed command's mounts and loop devices died with it."""

    # guests -----------------------------------------------------------------
    def logged_on(self) -> set[str]:
        # Whoever holds a run lock, as QUERY NAMES lists who is on: no guest rows read.
        if not self.run_dir.is_dir():
            if self.run_dir.exists() or self.run_dir.is_symlink():
                raise StoreError(f"{self.run_dir}: not a directory; the store is damaged")
            return set()
        return {p.stem for p in self.run_dir.glob("*.lock") if self.is_locked(p.stem)}

    def query(self, guest: str) -> GuestState:
        if self.state.guest(guest) is None:
            return GuestState.NO_SUCH
        return GuestState.LOGGED_ON if self.is_locked(guest) else GuestState.LOGGED_OFF

    def is_locked(self, guest: str) -> bool:
        try:
            fd = os.open(self.lock_path(guest), os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # also drops the shared lock we may have taken
        return False

    def take_lock(self, guest: str) -> int:
        """Take the guest's run lock (LOGON); the returned fd must be passed to its process."""
        run_directory(self.run_dir)
        fd = os.open(self.lock_path(guest), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RefusedError(f"{guest} is already logged on") from None
        return fd

    def access_files(self) -> dict[str, str]:
        return {}  # commands reach a local guest through its QEMU guest agent

    def start(self, guest: str, request: StartRequest) -> None:
        self._require_guest(guest)
        self._require_logged_off(guest)
        drives, boot = self._bootable(guest, request.boot_address)
        run_dir = self.guest_run_dir(guest)
        if request.ksm:
            ksm.ensure_running()
        lock = self.take_lock(guest)
        try:
            kernel, initrd, conf = extract_boot_files(boot.path, run_dir / "boot")
            memory = _memory_map(drives, conf, request)
            pmem = tuple(p for p in memory.values() if isinstance(p, cmdline.Pmem))
            drives = [d for d in drives if d.address not in {p.address for p in pmem}]
            notes = {a: "dax" if isinstance(p, cmdline.Pmem) else p for a, p in memory.items()}
            (run_dir / PMEM_FILE).write_text(json.dumps(notes) + "\n")
            shm = Path("/dev/shm") / f"sharedroot-{os.getpid()}-{guest}"
            for addr, size in request.vdisks:  # SWAPGEN: new RAM-backed swap each LOGON
                path = process.make_vdisk(shm.with_name(f"{shm.name}-{addr}.swap"), size)
                drives.append(cmdline.Drive(path, addr, ephemeral=True))
            spec = cmdline.GuestSpec(
                name=guest,
                kernel=kernel,
                initrd=initrd,
                cmdline=conf.cmdline,
                drives=tuple(drives),
                run_dir=run_dir,
                accel=accel.probe_accel(self.cache_dir, arch=conf.arch),
                arch=conf.arch,
                pmem=pmem,
                memory_mb=request.memory_mb,
                mem_merge=request.ksm,
            )
            try:
                process.launch(spec, lock_fd=lock)
            finally:
                for d in drives:
                    if d.ephemeral:
                        d.path.unlink(missing_ok=True)
        finally:
            os.close(lock)  # QEMU holds its own copy of the lock while it runs

    def memory_map(self, guest: str) -> dict[str, str]:
        try:
            notes = json.loads((self._running_dir(guest)[0] / PMEM_FILE).read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(notes, dict):
            return {}
        return {str(a): str(n) for a, n in notes.items() if EXACT_ADDRESS.fullmatch(str(a))}

    def _running_dir(self, guest: str) -> tuple[Path, int]:
        self._require_guest(guest)
        run_dir = self.guest_run_dir(guest)
        pid = process.read_pid(run_dir)
        if self.query(guest) is not GuestState.LOGGED_ON or pid is None:
            raise RefusedError(f"{guest} is not logged on")
        return run_dir, pid

    def wait_ready(self, guest: str, timeout: float) -> None:
        process.wait_ready(self._running_dir(guest)[0], timeout)

    def stop(self, guest: str, timeout: float) -> str:
        run_dir, pid = self._running_dir(guest)
        return process.shutdown(run_dir, pid, timeout)

    def execute(self, guest: str, argv: list[str], timeout: float) -> tuple[int, bytes, bytes]:
        return control.agent_exec(self._running_dir(guest)[0], argv, timeout)

    def memory(self, guests: set[str]) -> dict[str, GuestMemory]:
        found = {}
        for guest in guests:
            run_dir = self.guest_run_dir(guest)
            pid = process.read_pid(run_dir)
            held = None if pid is None else memory.guest_memory(pid, run_dir / cmdline.QMP_SOCK)
            if held is not None:
                found[guest] = held
        return found

    def cached(self, disks: list[tuple[str, str]]) -> dict[tuple[str, str], int]:
        files = {}
        for owner, address in disks:
            disk = self.state.disk(owner, address)
            # Regular files only: fincore would wait forever on a FIFO in a damaged store.
            if disk is not None and self.disk_file(disk).is_file():
                files[self.disk_file(disk)] = (owner, address)
        return {files[p]: n for p, n in memory.page_cache(list(files)).items()}

    def console_log(self, guest: str) -> Path:
        """Where QEMU writes the guest's serial console."""
        self._require_guest(guest)
        return self.guest_run_dir(guest) / cmdline.CONSOLE_LOG
