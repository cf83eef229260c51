"""state.db: the site's guests, disks, links, gold slots, generations and journal (SQLite, WAL)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sharedroot.errors import OperationError
from sharedroot.model.types import DiskKind, Mode, Role

STATE_FILE = "state.db"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE guests (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    created TEXT NOT NULL
);
CREATE TABLE disks (
    owner TEXT NOT NULL REFERENCES guests(name) ON DELETE CASCADE,
    address TEXT NOT NULL,
    kind TEXT NOT NULL,
    fs TEXT,
    size INTEGER NOT NULL,
    file TEXT NOT NULL,
    PRIMARY KEY (owner, address)
);
CREATE TABLE links (
    guest TEXT NOT NULL REFERENCES guests(name) ON DELETE CASCADE,
    address TEXT NOT NULL,
    owner TEXT NOT NULL,
    owner_address TEXT NOT NULL,
    mode TEXT NOT NULL,
    PRIMARY KEY (guest, address),
    FOREIGN KEY (owner, owner_address) REFERENCES disks(owner, address)
);
CREATE INDEX links_target ON links(owner, owner_address);
CREATE TABLE slots (
    slot INTEGER PRIMARY KEY,
    holder TEXT NOT NULL,
    generation INTEGER REFERENCES generations(id)
);
CREATE TABLE generations (
    id INTEGER PRIMARY KEY,
    slot INTEGER NOT NULL,
    source TEXT NOT NULL,
    created TEXT NOT NULL,
    hashes TEXT NOT NULL
);
CREATE TABLE journal (
    id INTEGER PRIMARY KEY,
    operation TEXT NOT NULL,
    args TEXT NOT NULL,
    started TEXT NOT NULL,
    ended TEXT,
    status TEXT NOT NULL,
    message TEXT
);
CREATE TABLE journal_steps (
    op INTEGER NOT NULL REFERENCES journal(id),
    seq INTEGER NOT NULL,
    at TEXT NOT NULL,
    step TEXT NOT NULL,
    status TEXT NOT NULL,
    PRIMARY KEY (op, seq)
);
"""


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class GuestRow:
    name: str
    role: Role
    created: str


@dataclass(frozen=True)
class DiskRow:
    owner: str
    address: str
    kind: DiskKind
    fs: str | None
    size: int
    file: str  # relative to the store's home


@dataclass(frozen=True)
class LinkRow:
    guest: str
    address: str
    owner: str
    owner_address: str
    mode: Mode


@dataclass(frozen=True)
class SlotRow:
    slot: int
    holder: str
    generation: int | None


@dataclass(frozen=True)
class JournalRow:
    id: int
    operation: str
    args: dict[str, Any]
    started: str
    ended: str | None
    status: str
    message: str | None


class State:
    """One connection to state.db; writes happen inside `transaction()`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # Rollouts wait for guests in threads; SQLite itself serialises the connection.
        self.db = sqlite3.connect(path, isolation_level=None, timeout=30, check_same_thread=False)
        self.db.execute("PRAGMA foreign_keys = ON")
        version = self._version()
        if version is None:
            self._create()
        elif version != SCHEMA_VERSION:
            raise OperationError(
                f"{path}: schema version {version}, this sharedroot knows {SCHEMA_VERSION}"
            )

    def _version(self) -> int | None:
        row = self.db.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name='meta'"
        ).fetchone()
        if row is None:
            return None
        got = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        return int(got[0]) if got else None

    def _create(self) -> None:
        self.db.execute("PRAGMA journal_mode = WAL")
        with self.transaction():
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self.db.execute(statement)
            self.db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # guests -----------------------------------------------------------------
    def add_guest(self, name: str, role: Role) -> None:
        self.db.execute("INSERT INTO guests VALUES (?, ?, ?)", (name, role.value, now()))

    def delete_guest(self, name: str) -> None:
        self.db.execute("DELETE FROM guests WHERE name = ?", (name,))

    def guest(self, name: str) -> GuestRow | None:
        row = self.db.execute("SELECT * FROM guests WHERE name = ?", (name,)).fetchone()
        return GuestRow(row[0], Role(row[1]), row[2]) if row else None

    def guests(self) -> list[GuestRow]:
        rows = self.db.execute("SELECT * FROM guests ORDER BY name").fetchall()
        return [GuestRow(r[0], Role(r[1]), r[2]) for r in rows]

    # disks ------------------------------------------------------------------
    def add_disk(self, disk: DiskRow) -> None:
        self.db.execute(
            "INSERT INTO disks VALUES (?, ?, ?, ?, ?, ?)",
            (disk.owner, disk.address, disk.kind.value, disk.fs, disk.size, disk.file),
        )

    def delete_disk(self, owner: str, address: str) -> None:
        self.db.execute("DELETE FROM disks WHERE owner = ? AND address = ?", (owner, address))

    def set_disk_size(self, owner: str, address: str, size: int) -> None:
        self.db.execute(
            "UPDATE disks SET size = ? WHERE owner = ? AND address = ?", (size, owner, address)
        )

    def disk(self, owner: str, address: str) -> DiskRow | None:
        row = self.db.execute(
            "SELECT * FROM disks WHERE owner = ? AND address = ?", (owner, address)
        ).fetchone()
        return _disk(row) if row else None

    def disks(self, owner: str | None = None) -> list[DiskRow]:
        if owner is None:
            rows = self.db.execute("SELECT * FROM disks ORDER BY owner, address").fetchall()
        else:
            rows = self.db.execute(
                "SELECT * FROM disks WHERE owner = ? ORDER BY address", (owner,)
            ).fetchall()
        return [_disk(r) for r in rows]

    # links ------------------------------------------------------------------
    def add_link(self, link: LinkRow) -> None:
        self.db.execute(
            "INSERT INTO links VALUES (?, ?, ?, ?, ?)",
            (link.guest, link.address, link.owner, link.owner_address, link.mode.value),
        )

    def delete_link(self, guest: str, address: str) -> None:
        self.db.execute("DELETE FROM links WHERE guest = ? AND address = ?", (guest, address))

    def link(self, guest: str, address: str) -> LinkRow | None:
        row = self.db.execute(
            "SELECT * FROM links WHERE guest = ? AND address = ?", (guest, address)
        ).fetchone()
        return _link(row) if row else None

    def links(self, guest: str | None = None) -> list[LinkRow]:
        if guest is None:
            rows = self.db.execute("SELECT * FROM links ORDER BY guest, address").fetchall()
        else:
            rows = self.db.execute(
                "SELECT * FROM links WHERE guest = ? ORDER BY address", (guest,)
            ).fetchall()
        return [_link(r) for r in rows]

    def links_to(self, owner: str, address: str | None = None) -> list[LinkRow]:
        """Links that point at a guest's disks (one disk, or all of them)."""
        if address is None:
            rows = self.db.execute(
                "SELECT * FROM links WHERE owner = ? ORDER BY guest, address", (owner,)
            ).fetchall()
        else:
            rows = self.db.execute(
                "SELECT * FROM links WHERE owner = ? AND owner_address = ? ORDER BY guest",
                (owner, address),
            ).fetchall()
        return [_link(r) for r in rows]

    # gold slots and generations ---------------------------------------------
    def set_slot(self, slot: int, holder: str) -> None:
        self.db.execute(
            "INSERT INTO slots (slot, holder) VALUES (?, ?)"
            " ON CONFLICT(slot) DO UPDATE SET holder = excluded.holder",
            (slot, holder),
        )

    def slots(self) -> list[SlotRow]:
        rows = self.db.execute("SELECT * FROM slots ORDER BY slot").fetchall()
        return [SlotRow(r[0], r[1], r[2]) for r in rows]

    def current_slot(self) -> int | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = 'current_slot'").fetchone()
        return int(row[0]) if row else None

    def set_current_slot(self, slot: int) -> None:
        self.db.execute(
            "INSERT INTO meta VALUES ('current_slot', ?)"
            " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (str(slot),),
        )

    def add_generation(self, slot: int, source: str, hashes: dict[str, str]) -> int:
        cur = self.db.execute(
            "INSERT INTO generations (slot, source, created, hashes) VALUES (?, ?, ?, ?)",
            (slot, source, now(), json.dumps(hashes, sort_keys=True)),
        )
        gen = int(cur.lastrowid or 0)
        self.db.execute("UPDATE slots SET generation = ? WHERE slot = ?", (gen, slot))
        return gen

    # facts learnt about guests (e.g. the machine-id verify saw) --------------
    def fact(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (f"fact:{key}",)).fetchone()
        return str(row[0]) if row else None

    def facts(self, prefix: str) -> dict[str, str]:
        rows = self.db.execute(
            "SELECT key, value FROM meta WHERE key LIKE ?", (f"fact:{prefix}%",)
        ).fetchall()
        return {str(k).removeprefix("fact:"): str(v) for k, v in rows}

    def set_fact(self, key: str, value: str) -> None:
        self.db.execute(
            "INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (f"fact:{key}", value),
        )

    def forget_fact(self, key: str) -> None:
        self.db.execute("DELETE FROM meta WHERE key = ?", (f"fact:{key}",))

    def forget_facts(self, suffix: str) -> None:
        """Drop what was learnt about a guest (e.g. after it was cloned anew)."""
        self.db.execute("DELETE FROM meta WHERE key LIKE ?", (f"fact:%:{suffix}",))

    def generation(self, gen: int) -> tuple[int, str, str, dict[str, str]] | None:
        """(slot, source, created, hashes) of a generation."""
        row = self.db.execute(
            "SELECT slot, source, created, hashes FROM generations WHERE id = ?", (gen,)
        ).fetchone()
        return (int(row[0]), str(row[1]), str(row[2]), json.loads(row[3])) if row else None

    # journal ----------------------------------------------------------------
    def journal_start(self, operation: str, args: dict[str, Any]) -> int:
        cur = self.db.execute(
            "INSERT INTO journal (operation, args, started, status) VALUES (?, ?, ?, 'running')",
            (operation, json.dumps(args, sort_keys=True), now()),
        )
        return int(cur.lastrowid or 0)

    def journal_step(self, op: int, step: str, status: str = "done") -> None:
        self.db.execute(
            "INSERT INTO journal_steps VALUES"
            " (?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM journal_steps WHERE op = ?), ?, ?, ?)",
            (op, op, now(), step, status),
        )

    def journal_end(self, op: int, status: str, message: str | None = None) -> None:
        self.db.execute(
            "UPDATE journal SET ended = ?, status = ?, message = ? WHERE id = ?",
            (now(), status, message, op),
        )

    def journal(self, limit: int = 50) -> list[JournalRow]:
        rows = self.db.execute(
            "SELECT * FROM journal ORDER BY id DESC LIMIT ?", (limit,)
        ).fetchall()
        return [JournalRow(r[0], r[1], json.loads(r[2]), r[3], r[4], r[5], r[6]) for r in rows]

    def journal_steps(self, op: int) -> list[tuple[str, str, str]]:
        rows = self.db.execute(
            "SELECT at, step, status FROM journal_steps WHERE op = ? ORDER BY seq", (op,)
        ).fetchall()
        return [(r[0], r[1], r[2]) for r in rows]

    def last_success(self, operation: str) -> str | None:
        """When `operation` last ended well, or None."""
        row = self.db.execute(
            "SELECT ended FROM journal WHERE operation = ? AND status = 'ok'"
            " ORDER BY id DESC LIMIT 1",
            (operation,),
        ).fetchone()
        return str(row[0]) if row else None

    def interrupted(self) -> list[JournalRow]:
        """Operations that never ended: the process died (SIGKILL, power) mid-way."""
        return [j for j in self.journal(limit=1_000_000) if j.status == "running"]


def _disk(row: Sequence[Any]) -> DiskRow:
    return DiskRow(row[0], row[1], DiskKind(row[2]), row[3], row[4], row[5])


def _link(row: Sequence[Any]) -> LinkRow:
    return LinkRow(row[0], row[1], row[2], row[3], Mode(row[4]))
