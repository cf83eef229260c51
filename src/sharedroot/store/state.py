"""state.db: the site's guests, disks, links, gold slots, generations and journal (SQLite, WAL)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
import stat
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from sharedroot.errors import StoreError
from sharedroot.model.types import DiskKind, Mode, Role
from sharedroot.store.schema import (
    JOURNAL_STATUSES,
    SCHEMA,
    SCHEMA_VERSION,
    TABLES,
    TABLES_1,
    UPGRADE_1,
    VIEWS_1,
)

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
    if st.st_size == 0:
        raise StoreError(
            f"{path}: empty (0 bytes), not a sharedroot database; the store is damaged"
        )


SQLITE_MAGIC = b"SQLite format 3\0"


def _wal_pending(path: Path) -> bool:
    """Committed changes wait in the write-ahead log (not yet in the file itself)."""
    try:
        return os.stat(f"{path}-wal").st_size > 0
    except OSError:
        return False


def _whole_file(path: Path) -> None:
    """Refuse a file that is not SQLite's, or shorter than its own header says.

    SQLite reads missing pages as zeros and may not notice until a query meets them;
    the header's page count tells at once.  Skipped while the write-ahead log holds
    changes: a checkpoint cut short leaves the file behind its header, legitimately.
    """
    with open(path, "rb") as f:
        head = f.read(100)
        size = os.fstat(f.fileno()).st_size
    if not head.startswith(SQLITE_MAGIC):
        raise StoreError(f"{path}: not a sharedroot database (not an SQLite file)")
    if len(head) < 100:
        raise StoreError(f"{path}: truncated to {size} bytes; the store is damaged")
    page_size = int.from_bytes(head[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(head[28:32], "big")
    valid = pages > 0 and head[24:28] == head[92:96]
    if valid and size < pages * page_size and not _wal_pending(path):
        raise StoreError(
            f"{path}: truncated to {size} bytes, its header says {pages * page_size};"
            " the store is damaged"
        )


def _writable(path: Path) -> None:
    """A writer needs the file and its directory (SQLite's WAL lives beside it)."""
    for where in (path, path.parent):
        if not os.access(where, os.W_OK):
            code = errno.EROFS if os.statvfs(where).f_flag & os.ST_RDONLY else errno.EACCES
            raise StoreError(
                f"{where}: cannot write ({os.strerror(code).lower()}); this command changes"
                " the store, commands that only read it still work"
            )


class State:
    """One connection to state.db; writes happen inside `transaction()`.

    An existing store is opened as it is: a file that is not a sharedroot database,
    one cut short or damaged, or one missing tables, is reported, never rebuilt over.
    `readonly` opens it without writing a byte (reading commands, a read-only store);
    otherwise every row is checked first, so nothing is written into a damaged store.
    """

    def __init__(self, path: Path, *, create: bool = False, readonly: bool = False) -> None:
        self.path = path
        self.readonly = readonly
        self._snapshot: tempfile.TemporaryDirectory[str] | None = None
        if not create:
            _regular_file(path)
            _whole_file(path)
            if not readonly:
                _writable(path)
                # Every check on a connection that cannot write: closing a read-write
                # one may checkpoint, so a refused writer would still move bytes.
                State(path, readonly=True).close_checked()
        try:
            self.db = self._connect(path, create=create, readonly=readonly)
        except sqlite3.Error as exc:
            raise StoreError(f"{path}: damaged or not a sharedroot database ({exc})") from None
        try:
            self.db.execute("PRAGMA foreign_keys = ON")
            if create:
                self._create()
            else:
                self._open()
        except BaseException as exc:
            self.close()  # now, not whenever the collector comes
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"{path}: damaged or not a sharedroot database ({exc})") from None
            raise

    def _open(self) -> None:
        """Check an existing store before anything reads it (or writes to it)."""
        if self.readonly:  # a writer's read-only look did this already
            found = self.db.execute("PRAGMA quick_check(1)").fetchone()
            if found is None or found[0] != "ok":
                lines = str(found[0] if found else "no answer").splitlines()
                detail = " ".join(x.strip() for x in lines if x.strip() and not x.startswith("***"))
                raise StoreError(f"{self.path}: damaged (SQLite's quick_check: {detail})")
        version = self._version()
        if version == 1:
            self._check_tables(TABLES_1)
            if self.readonly:
                self._script(VIEWS_1)  # read as it is: a reader writes nothing
            else:
                self._upgrade()
        elif version != SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: schema version {version}, this sharedroot knows {SCHEMA_VERSION}"
            )
        else:
            self._check_tables(TABLES)

    def close_checked(self) -> None:
        """Decode every row, then close (a writer's look before it opens to write)."""
        try:
            with self._reading():
                self.check_rows()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: damaged or not a sharedroot database ({exc})") from None
        finally:
            self.close()

    def _connect(self, path: Path, *, create: bool, readonly: bool) -> sqlite3.Connection:
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
        db = self._connect_ro(f"file:{path}?mode=ro")
        try:
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.OperationalError:
            # A WAL database in a directory we cannot write (no -shm to share).
            db.close()
            if _wal_pending(path):
                return self._connect_ro(f"file:{self._copy(path)}?mode=ro")
            return self._connect_ro(f"file:{path}?mode=ro&immutable=1")
        except BaseException:
            db.close()
            raise
        return db

    @staticmethod
    def _connect_ro(uri: str) -> sqlite3.Connection:
        db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA temp_store = MEMORY")  # the views of an older schema
        return db

    def _copy(self, path: Path) -> Path:
        """Copy the file and its WAL where SQLite may index the WAL, and read that.

        Opened as immutable, the file alone would show the store without the changes
        its WAL holds.  Copied again if either changed meanwhile (a writer with other
        rights than ours), so the two always belong together.
        """
        self._snapshot = tempfile.TemporaryDirectory(prefix="sharedroot-state-")
        copy = Path(self._snapshot.name) / path.name
        wal = Path(f"{path}-wal")
        for _ in range(10):
            before = [(s.st_size, s.st_mtime_ns) for s in (path.stat(), wal.stat())]
            shutil.copyfile(path, copy)
            shutil.copyfile(wal, f"{copy}-wal")
            if before == [(s.st_size, s.st_mtime_ns) for s in (path.stat(), wal.stat())]:
                return copy
        raise StoreError(f"{path}: changing while being read; try again")

    def _version(self) -> int | None:
        row = self.db.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name='meta'"
        ).fetchone()
        if row is None:
            raise StoreError(f"{self.path}: not a sharedroot database (no table meta)")
        got = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if got is None or not str(got[0]).isdecimal():
            raise StoreError(f"{self.path}: no valid schema_version in table meta")
        return int(got[0])

    def _check_tables(self, tables: Sequence[str]) -> None:
        have = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        missing = [t for t in tables if t not in have]
        if missing:
            raise StoreError(f"{self.path}: table {missing[0]} is missing; the store is damaged")

    def check_rows(self) -> None:
        """Every row is what sharedroot wrote: a writer builds on nothing it could not
        read back.  SQLite finds the first bad row of each table (fast, even with a long
        journal); the row's own decoder then says what is wrong with it."""
        for table, columns, bad, decode in self._row_checks():
            row = self.db.execute(
                f"SELECT {columns} FROM {table} WHERE {bad} ORDER BY 1 LIMIT 1"
            ).fetchone()
            if row is not None:
                decode(row)  # raises, naming the column
                raise StoreError(
                    f"{self.path}: table {table}, row {row[0]}: not what sharedroot writes"
                )
        self.current_slot()

    def _row_checks(self) -> list[tuple[str, str, str, Callable[[Sequence[Any]], object]]]:
        def journal_step(row: Sequence[Any]) -> None:
            r = _Row(self.path, "journal_steps", f"{row[0]} {row[1]}")
            for column, value in zip(("at", "step", "status"), row[2:], strict=True):
                r.text(column, value)

        return [
            (
                "guests",
                "name, role, created",
                _sql_any(_sql_text("name"), _sql_enum("role", Role), _sql_text("created")),
                self._guest,
            ),
            (
                "disks",
                "owner, address, kind, fs, size, file",
                _sql_any(
                    *(_sql_text(c) for c in ("owner", "address", "file")),
                    _sql_enum("kind", DiskKind),
                    _sql_text("fs", null=True),
                    _sql_whole("size"),
                ),
                self._disk,
            ),
            (
                "links",
                "guest, address, owner, owner_address, mode",
                _sql_any(
                    *(_sql_text(c) for c in ("guest", "address", "owner", "owner_address")),
                    _sql_enum("mode", Mode),
                ),
                self._link,
            ),
            (
                "slots",
                "slot, holder, generation",
                _sql_any(
                    _sql_whole("slot"), _sql_text("holder"), _sql_whole("generation", null=True)
                ),
                self._slot,
            ),
            (
                "generations",
                "id, slot, source, created, hashes, stamps",
                _sql_any(
                    _sql_whole("id"),
                    _sql_whole("slot"),
                    _sql_text("source"),
                    _sql_text("created"),
                    _sql_json("hashes", "object"),
                    _sql_json("stamps", "object"),
                ),
                self._generation,
            ),
            (
                "journal",
                "id, operation, args, started, ended, status, message, pid, pid_start, plan",
                _sql_any(
                    _sql_whole("id"),
                    *(_sql_text(c) for c in ("operation", "started")),
                    *(_sql_text(c, null=True) for c in ("ended", "message")),
                    "status IS NULL OR status NOT IN ({})".format(
                        ", ".join(f"'{s}'" for s in JOURNAL_STATUSES)
                    ),
                    _sql_json("args", "object"),
                    _sql_json("plan", "array"),
                ),
                self._journal_row,
            ),
            (
                "journal_steps",
                "op, seq, at, step, status",
                _sql_any(*(_sql_text(c) for c in ("at", "step", "status"))),
                journal_step,
            ),
            (
                "incomplete",
                "guest, operation, op, since",
                _sql_any(
                    *(_sql_text(c) for c in ("guest", "operation", "since")),
                    _sql_whole("op", null=True),
                ),
                self._incomplete,
            ),
        ]

    @contextmanager
    def _reading(self) -> Iterator[None]:
        """One snapshot for a series of reads."""
        self.db.execute("BEGIN")
        try:
            yield
        finally:
            self.db.execute("ROLLBACK")

    def _create(self) -> None:
        self.db.execute("PRAGMA journal_mode = WAL")
        with self.transaction():
            self._script(SCHEMA)
            self.db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    def _upgrade(self) -> None:
        # Rows checked again inside the upgrade, which another writer may have done
        # while this one waited for the transaction.
        with self.transaction():
            if self._version() == 1:
                self._script(UPGRADE_1)
                self.db.execute(
                    "UPDATE meta SET value = ? WHERE key = 'schema_version'",
                    (str(SCHEMA_VERSION),),
                )
            self._check_tables(TABLES)
            self.check_rows()

    def _script(self, script: str) -> None:
        for statement in script.split(";"):
            if statement.strip():
                self.db.execute(statement)

    def close(self) -> None:
        self.db.close()
        if self._snapshot is not None:
            self._snapshot.cleanup()

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
        r = _Row(self.path, "guests", row[0])
        return GuestRow(
            r.text("name", row[0]), r.enum("role", Role, row[1]), r.text("created", row[2])
        )

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
        rows = self.db.execute("SELECT slot, holder, generation FROM slots ORDER BY slot")
        return [self._slot(r) for r in rows.fetchall()]

    def _slot(self, row: Sequence[Any]) -> SlotRow:
        r = _Row(self.path, "slots", row[0])
        return SlotRow(
            r.whole("slot", row[0]),
            r.text("holder", row[1]),
            r.whole("generation", row[2], null=True),
        )

    def current_slot(self) -> int | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = 'current_slot'").fetchone()
        return _Row(self.path, "meta", "current_slot").whole("value", row[0]) if row else None

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
        return self._generation(row) if row else None

    def _generation(self, row: Sequence[Any]) -> GenerationRow:
        r = _Row(self.path, "generations", row[0])
        return GenerationRow(
            r.whole("id", row[0]),
            r.whole("slot", row[1]),
            r.text("source", row[2]),
            r.text("created", row[3]),
            r.json("hashes", row[4], dict),
            r.json("stamps", row[5], dict),
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
        return {row[0]: self._incomplete(row) for row in rows}

    def _incomplete(self, row: Sequence[Any]) -> IncompleteRow:
        r = _Row(self.path, "incomplete", row[0])
        return IncompleteRow(
            r.text("guest", row[0]),
            r.text("operation", row[1]),
            r.whole("op", row[2], null=True),
            r.text("since", row[3]),
        )

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

    def _journal_row(self, row: Sequence[Any]) -> JournalRow:
        r = _Row(self.path, "journal", row[0])
        op = r.whole("id", row[0])
        status = r.text("status", row[5])
        if status not in JOURNAL_STATUSES:
            raise StoreError(f"{self.path}: table journal, row {op}: unknown status {status!r}")
        message = r.text("message", row[6], null=True)
        plan = [str(p) for p in r.json("plan", row[9], list)]
        if status == "running" and not _alive(row[7], row[8]):
            status = "interrupted"
            message = self._interrupted_at(op, plan)
        return JournalRow(
            op,
            r.text("operation", row[1]),
            r.json("args", row[2], dict),
            r.text("started", row[3]),
            r.text("ended", row[4], null=True),
            status,
            message,
            plan,
        )

    def _interrupted_at(self, op: int, plan: list[str]) -> str:
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
            "SELECT seq, at, step, status FROM journal_steps WHERE op = ? ORDER BY seq", (op,)
        ).fetchall()
        out = []
        for row in rows:
            r = _Row(self.path, "journal_steps", f"{op} {row[0]}")
            out.append((r.text("at", row[1]), r.text("step", row[2]), r.text("status", row[3])))
        return out

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
        r = _Row(self.path, "disks", f"{row[0]} {row[1]}")
        return DiskRow(
            r.text("owner", row[0]),
            r.text("address", row[1]),
            r.enum("kind", DiskKind, row[2]),
            r.text("fs", row[3], null=True),
            r.whole("size", row[4]),
            r.text("file", row[5]),
        )

    def _link(self, row: Sequence[Any]) -> LinkRow:
        r = _Row(self.path, "links", f"{row[0]} {row[1]}")
        return LinkRow(
            r.text("guest", row[0]),
            r.text("address", row[1]),
            r.text("owner", row[2]),
            r.text("owner_address", row[3]),
            r.enum("mode", Mode, row[4]),
        )


E = TypeVar("E", bound=StrEnum)


# SQL conditions for a cell that is not what sharedroot writes (see State.check_rows).
def _sql_any(*conditions: str) -> str:
    return " OR ".join(f"({c})" for c in conditions)


def _sql_text(column: str, *, null: bool = False) -> str:
    wrong = f"typeof({column}) != 'text'"
    return f"{column} IS NOT NULL AND {wrong}" if null else wrong


def _sql_whole(column: str, *, null: bool = False) -> str:
    wrong = f"typeof({column}) != 'integer'"
    return f"{column} IS NOT NULL AND {wrong}" if null else wrong


def _sql_enum(column: str, enum: type[StrEnum]) -> str:
    values = ", ".join(f"'{e.value}'" for e in enum)
    return f"{column} IS NULL OR {column} NOT IN ({values})"


def _sql_json(column: str, kind: str) -> str:
    # CASE, not OR: json_type() raises on malformed JSON, and OR need not short-circuit.
    return (
        f"CASE WHEN typeof({column}) = 'text' AND json_valid({column})"
        f" THEN json_type({column}) != '{kind}' ELSE 1 END"
    )


@dataclass(frozen=True)
class _Row:
    """Decodes one row's cells; a cell that is not what sharedroot wrote is reported
    with the file, table, row and column, never passed on."""

    path: Path
    table: str
    row: object

    def _bad(self, what: str) -> StoreError:
        return StoreError(f"{self.path}: table {self.table}, row {self.row}: {what}")

    def _present(self, column: str, value: Any) -> None:
        if value is None:
            raise self._bad(f"{column} is NULL")

    def text(self, column: str, value: Any, *, null: bool = False) -> Any:
        if value is None and null:
            return None
        self._present(column, value)
        if not isinstance(value, str):
            raise self._bad(f"{column} {value!r} is not text")
        return value

    def whole(self, column: str, value: Any, *, null: bool = False) -> Any:
        if value is None and null:
            return None
        self._present(column, value)
        if isinstance(value, str) and value.isdecimal():
            return int(value)  # meta keeps numbers as text
        if not isinstance(value, int):
            raise self._bad(f"{column} {value!r} is not a whole number")
        return value

    def enum(self, column: str, enum: type[E], value: Any) -> E:
        self._present(column, value)
        try:
            return enum(value)
        except ValueError:
            allowed = ", ".join(e.value for e in enum)
            raise self._bad(f"{column} {value!r} is not one of {allowed}") from None

    def json(self, column: str, value: Any, kind: type) -> Any:
        self._present(column, value)
        try:
            decoded = json.loads(value)
        except (TypeError, ValueError):
            raise self._bad(f"{column} {str(value)[:40]!r} is not JSON") from None
        if not isinstance(decoded, kind):
            raise self._bad(f"{column}: expected a JSON {'object' if kind is dict else 'array'}")
        return decoded
