"""Run-time state in DIR: state.json, control.json, cp.log, minidisk images, the lock.

Every program opens a `Session`, which holds an exclusive flock on DIR/lock for as long as
it reads and changes anything, and writes state.json atomically (temporary file + rename).
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from zvmsim import CYL_BYTES
from zvmsim import directory as dirmod

Device = dict[str, Any]


def sim_dir() -> Path:
    """DIR of the emulated system the calling program belongs to (from ZVMSIM_DIR)."""
    value = os.environ.get("ZVMSIM_DIR")
    if not value:
        sys.stderr.write("zvmsim: ZVMSIM_DIR is not set (run under scripts/zvmsim)\n")
        raise SystemExit(3)
    return Path(value)


class Session:
    """DIR's state while the lock is held. Use `open_session(dir)`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.state: dict[str, Any] = json.loads((root / "state.json").read_text())
        self._directory: dirmod.Directory | None = None
        self._holders: dict[tuple[str, str], list[tuple[str, str]]] | None = None
        self.dirty = False
        self.directory_dirty = False

    # --- files -----------------------------------------------------------------------
    @property
    def directory(self) -> dirmod.Directory:
        if self._directory is None:
            self._directory = dirmod.load(self.root / "USER.DIRECT")
        return self._directory

    def directory_changed(self) -> None:
        self.directory_dirty = True

    def control(self) -> dict[str, Any]:
        path = self.root / "control.json"
        if not path.exists():
            return {}
        data = json.loads(path.read_text() or "{}")
        return data if isinstance(data, dict) else {}

    def log_cp(self, userid: str, command: str, rc: int) -> None:
        with open(self.root / "cp.log", "a") as f:
            f.write(f"{userid}\t{command}\t{rc}\n")

    def image(self, owner: str, vdev: str, cyls: int, create: bool = True) -> Path:
        """The minidisk's image; created sparse on first use (so `populate` stays cheap)."""
        path = self.root / "disks" / owner / f"{vdev}.img"
        if create and not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as f:
                f.truncate(cyls * CYL_BYTES)
        return path

    def device_image(self, dev: Device) -> Path:
        """The image behind a device; a V-DISK gets a private one (FB-512 blocks)."""
        if dev.get("vdisk"):
            path: Path = self.root / "disks" / str(dev["owner"]) / f"{dev['mdisk']}.vdisk"
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "wb") as f:
                    f.truncate(int(dev["size"]) * 512)
            return path
        return self.image(dev["owner"], dev["mdisk"], int(dev["size"]))

    def save(self) -> None:
        if self.dirty:
            path = self.root / "state.json"
            tmp = path.with_name("state.json.tmp")
            tmp.write_text(json.dumps(self.state, separators=(",", ":"), sort_keys=True))
            os.replace(tmp, path)
        if self.directory_dirty and self._directory is not None:
            dirmod.save(self.root / "USER.DIRECT", self._directory)

    # --- logged-on users and their devices ---------------------------------------------
    @property
    def users(self) -> dict[str, dict[str, Any]]:
        users: dict[str, dict[str, Any]] = self.state["users"]
        return users

    @property
    def online(self) -> dict[str, dict[str, Any]]:
        online: dict[str, dict[str, Any]] = self.state["online"]
        return online

    def logged_on(self, userid: str) -> bool:
        return userid in self.users

    def devices(self, userid: str) -> dict[str, Device]:
        devs: dict[str, Device] = self.users[userid]["devices"]
        return devs

    def holders(self, owner: str, mdisk: str) -> list[tuple[str, str]]:
        """(userid, vdev) of every logged-on user's device on this minidisk."""
        if self._holders is None:
            index: dict[tuple[str, str], list[tuple[str, str]]] = {}
            for uid, u in self.users.items():
                for vdev, dev in u["devices"].items():
                    index.setdefault((dev["owner"], dev["mdisk"]), []).append((uid, vdev))
            self._holders = index
        return self._holders.get((owner, mdisk), [])

    def add_device(self, userid: str, vdev: str, dev: Device) -> None:
        u = self.users[userid]
        u["next_sch"] = u.get("next_sch", 0) + 1
        dev["sch"] = u["next_sch"]
        u["devices"][vdev] = dev
        if self._holders is not None:
            self._holders.setdefault((dev["owner"], dev["mdisk"]), []).append((userid, vdev))
        self.dirty = True

    def remove_device(self, userid: str, vdev: str) -> None:
        dev = self.users[userid]["devices"].pop(vdev)
        if self._holders is not None:
            self._holders[(dev["owner"], dev["mdisk"])].remove((userid, vdev))
        self.dirty = True

    def drop_user(self, userid: str) -> None:
        for vdev in list(self.devices(userid)):
            self.remove_device(userid, vdev)
        del self.users[userid]
        self.dirty = True


def empty_state() -> dict[str, Any]:
    return {"version": 1, "users": {}, "online": {}}


@contextmanager
def open_session(root: Path) -> Iterator[Session]:
    """Hold DIR/lock, load the state, and save what changed when the block ends normally.
    First the reaper logs off users whose guest has ended (guest.reap): no daemon does."""
    from zvmsim import guest

    with open(root / "lock", "a+") as lockf:
        fcntl.flock(lockf.fileno(), fcntl.LOCK_EX)
        try:
            s = Session(root)
            guest.reap(s)
            yield s
            s.save()
        finally:
            fcntl.flock(lockf.fileno(), fcntl.LOCK_UN)
