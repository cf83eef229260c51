"""state.db: the site's guests, disks, links, gold slots, generations and journal (SQLite, WAL)."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from sharedroot.errors import StoreError
from sharedroot.model.types import DiskKind, Mode, Role
from sharedroot.store.schema import JOURNAL_STATUSES, SCHEMA, SCHEMA_VERSION, TABLES, UPGRADE_1

STATE_FILE = "state.db"


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
    status: str  # running, ok, failed, interrupted (its process died)
    message: str | None
    plan: list[str]


@dataclass(frozen=True)
class GenerationRow:
    id: int
    slot: int
    source: str
    created: str
    hashes: dict[str, str]  # address -> content hash
    stamps: dict[str, list[int]]  # address -> [size, mtime_ns] when recorded


@dataclass(frozen=True)
class IncompleteRow:
    """A guest whose disks were being written as a set when its operation stopped."""

    guest: str
    operation: str
    op: int | None
    since: str


def process_start(pid: int) -> str | None:
    """When a process started (clock ticks since boot), to tell a reused pid apart."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat_line.rpartition(")")[2].split()[19]


def _alive(pid: int | None, started: str | None) -> bool:
    return pid is not None and process_start(pid) == started


def _regular_file(path: Path) -> None:
    """Refuse anything but a regular file before SQLite opens it (a FIFO would hang)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise StoreError(f"{path}: missing; the store is incomplete") from None
    except OSError as exc:
        raise StoreError(f"{path}: cannot read: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise StoreError(f"{path}: not a regular file; the store is damaged")


class State:
    """One connection to state.db; writes happen inside `transaction()`.

    An existing store is opened as it is: a file that is not a sharedroot database,
    or one missing tables, is reported, never rebuilt over.  `readonly` opens it
    without writing a byte (reading commands, a read-only store).
    """

    def __init__(self, path: Path, *, create: bool = False, readonly: bool = False) -> None:
        self.path = path
        self.readonly = readonly
        if not create:
            _regular_file(path)
        try:
            self.db = self._connect(path, create=create, readonly=readonly)
            self.db.execute("PRAGMA foreign_keys = ON")
            version = None if create else self._version()
            if create:
                self._create()
            elif version == 1 and not readonly:
                self._upgrade()
            elif version != SCHEMA_VERSION:
                raise StoreError(
                    f"{path}: schema version {version}, this sharedroot knows {SCHEMA_VERSION}"
                    + (" (open it once with a writing command to upgrade)" if version == 1 else "")
                )
            self._check_tables()
        except sqlite3.Error as exc:
            raise StoreError(f"{path}: damaged or not a sharedroot database ({exc})") from None

    @staticmethod
    def _connect(path: Path, *, create: bool, readonly: bool) -> sqlite3.Connection:
        # Rollouts wait for guests in threads; SQLite itself serialises the connection.
        if not readonly:
            mode = "rwc" if create else "rw"
            return sqlite3.connect(
                f"file:{path}?mode={mode}",
                uri=True,
                isolation_level=None,
                timeout=30,
                check_same_thread=False,
            )
        db = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
        )
        try:
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.OperationalError:
            # A WAL database in a directory we cannot write: read it as a snapshot.
            db.close()
            db = sqlite3.connect(
                f"file:{path}?mode=ro&immutable=1",
                uri=True,
                isolation_level=None,
                check_same_thread=False,
            )
        return db

    def _version(self) -> int | None:
        row = self.db.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name='meta'"
        ).fetchone()
        if row is None:
            raise StoreError(f"{self.path}: not a sharedroot database (no table meta)")
        got = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if got is None or not str(got[0]).isdigit():
            raise StoreError(f"{self.path}: no valid schema_version in table meta")
        return int(got[0])

    def _check_tables(self) -> None:
        have = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        missing = [t for t in TABLES if t not in have]
        if missing:
            raise StoreError(f"{self.path}: table {missing[0]} is missing; the store is damaged")

    def _create(self) -> None:
        self.db.execute("PRAGMA journal_mode = WAL")
        with self.transaction():
            self._script(SCHEMA)
            self.db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    def _upgrade(self) -> None:
        with self.transaction():
            self._script(UPGRADE_1)
            self.db.execute(
                "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),)
            )

    def _script(self, script: str) -> None:
        for statement in script.split(";"):
            if statement.strip():
                self.db.execute(statement)

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        if self.readonly:
            raise StoreError(f"{self.path}: opened read-only; this command cannot change it")
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
        return self._guest(row) if row else None

    def guests(self) -> list[GuestRow]:
        rows = self.db.execute("SELECT * FROM guests ORDER BY name").fetchall()
        return [self._guest(r) for r in rows]

    def _guest(self, row: Sequence[Any]) -> GuestRow:
        return GuestRow(row[0], _enum(self.path, Role, row[1], "guests", row[0]), row[2])

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
        return self._disk(row) if row else None

    def disks(self, owner: str | None = None) -> list[DiskRow]:
        if owner is None:
            rows = self.db.execute("SELECT * FROM disks ORDER BY owner, address").fetchall()
        else:
            rows = self.db.execute(
                "SELECT * FROM disks WHERE owner = ? ORDER BY address", (owner,)
            ).fetchall()
        return [self._disk(r) for r in rows]

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
        return self._link(row) if row else None

    def links(self, guest: str | None = None) -> list[LinkRow]:
        if guest is None:
            rows = self.db.execute("SELECT * FROM links ORDER BY guest, address").fetchall()
        else:
            rows = self.db.execute(
                "SELECT * FROM links WHERE guest = ? ORDER BY address", (guest,)
            ).fetchall()
        return [self._link(r) for r in rows]

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
        return [self._link(r) for r in rows]

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

    def add_generation(
        self, slot: int, source: str, hashes: dict[str, str], stamps: dict[str, list[int]]
    ) -> int:
        """Record a slot's new generation: each disk's content hash and (size, mtime) stamp."""
        cur = self.db.execute(
            "INSERT INTO generations (slot, source, created, hashes, stamps)"
            " VALUES (?, ?, ?, ?, ?)",
            (slot, source, now(), json.dumps(hashes, sort_keys=True), json.dumps(stamps)),
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

    def generation(self, gen: int) -> GenerationRow | None:
        row = self.db.execute(
            "SELECT id, slot, source, created, hashes, stamps FROM generations WHERE id = ?",
            (gen,),
        ).fetchone()
        if row is None:
            return None
        where = f"generations, row {row[0]}"
        return GenerationRow(
            int(row[0]),
            int(row[1]),
            str(row[2]),
            str(row[3]),
            _json(self.path, row[4], where, dict),
            _json(self.path, row[5], where, dict),
        )

    # sets being written ------------------------------------------------------
    def mark_incomplete(self, guest: str, operation: str, op: int | None) -> None:
        """`guest`'s disks are about to be written as a set by `operation`."""
        self.db.execute(
            "INSERT INTO incomplete VALUES (?, ?, ?, ?) ON CONFLICT(guest) DO UPDATE SET"
            " operation = excluded.operation, op = excluded.op, since = excluded.since",
            (guest, operation, op, now()),
        )

    def mark_complete(self, guest: str) -> None:
        self.db.execute("DELETE FROM incomplete WHERE guest = ?", (guest,))

    def incomplete(self) -> dict[str, IncompleteRow]:
        rows = self.db.execute("SELECT guest, operation, op, since FROM incomplete").fetchall()
        return {r[0]: IncompleteRow(r[0], r[1], r[2], r[3]) for r in rows}

    # journal ----------------------------------------------------------------
    def journal_start(self, operation: str, args: dict[str, Any], plan: list[str]) -> int:
        pid = os.getpid()
        cur = self.db.execute(
            "INSERT INTO journal (operation, args, started, status, pid, pid_start, plan)"
            " VALUES (?, ?, ?, 'running', ?, ?, ?)",
            (
                operation,
                json.dumps(args, sort_keys=True),
                now(),
                pid,
                process_start(pid),
                json.dumps(plan),
            ),
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

    def journal(self, limit: int = 50, *, status: str | None = None) -> list[JournalRow]:
        """The newest operations; one whose process is gone reads as interrupted."""
        where = "" if status is None else "WHERE status = ?"
        rows = self.db.execute(
            f"SELECT id, operation, args, started, ended, status, message, pid, pid_start, plan"
            f" FROM journal {where} ORDER BY id DESC LIMIT ?",
            (() if status is None else (status,)) + (limit,),
        ).fetchall()
        return [self._journal_row(r) for r in rows]

    def journal_entry(self, op: int) -> JournalRow | None:
        row = self.db.execute(
            "SELECT id, operation, args, started, ended, status, message, pid, pid_start, plan"
            " FROM journal WHERE id = ?",
            (op,),
        ).fetchone()
        return self._journal_row(row) if row else None

    def _journal_row(self, r: Sequence[Any]) -> JournalRow:
        where = f"journal, row {r[0]}"
        status = str(r[5])
        if status not in JOURNAL_STATUSES:
            raise StoreError(f"{self.path}: {where}: unknown status {status!r}")
        message = r[6]
        plan = _json(self.path, r[9], where, list)
        if status == "running" and not _alive(r[7], r[8]):
            status = "interrupted"
            message = self._interrupted_at(int(r[0]), plan)
        args = _json(self.path, r[2], where, dict)
        return JournalRow(r[0], r[1], args, r[3], r[4], status, message, [str(p) for p in plan])

    def _interrupted_at(self, op: int, plan: list[Any]) -> str:
        done = len([s for s in self.journal_steps(op) if s[2] == "done"])
        if done < len(plan):
            return f"interrupted at step {done + 1} of {len(plan)}: {plan[done]}"
        return f"interrupted after its {done} steps"

    def settle_interrupted(self) -> list[JournalRow]:
        """Record operations whose process died as interrupted; return them."""
        dead = [j for j in self.journal(1_000_000, status="running") if j.status == "interrupted"]
        for j in dead:
            self.db.execute(
                "UPDATE journal SET status = 'interrupted', message = ?, ended = ?"
                " WHERE id = ? AND status = 'running'",
                (j.message, now(), j.id),
            )
        return dead

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
        return [j for j in self.journal(1_000_000, status="running") if j.status == "interrupted"]

    # rows -------------------------------------------------------------------
    def _disk(self, row: Sequence[Any]) -> DiskRow:
        kind = _enum(self.path, DiskKind, row[2], "disks", f"{row[0]} {row[1]}")
        if not isinstance(row[4], int) or not isinstance(row[5], str):
            raise StoreError(f"{self.path}: table disks, row {row[0]} {row[1]}: malformed")
        return DiskRow(row[0], row[1], kind, row[3], row[4], row[5])

    def _link(self, row: Sequence[Any]) -> LinkRow:
        mode = _enum(self.path, Mode, row[4], "links", f"{row[0]} {row[1]}")
        return LinkRow(row[0], row[1], row[2], row[3], mode)


E = TypeVar("E", bound=StrEnum)


def _enum(path: Path, enum: type[E], value: Any, table: str, row: str) -> E:
    try:
        return enum(value)
    except ValueError:
        allowed = ", ".join(e.value for e in enum)
        raise StoreError(
            f"{path}: table {table}, row {row}: {value!r} is not one of {allowed}"
        ) from None


def _json(path: Path, text: Any, where: str, kind: type) -> Any:
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        raise StoreError(f"{path}: {where}: {str(text)[:40]!r} is not JSON") from None
    if not isinstance(value, kind):
        raise StoreError(f"{path}: {where}: expected a JSON {kind.__name__}")
    return value
