"""state.db as a file: opened as it is, checked before use, never rebuilt over.

The tables' own API is in state.py; this is what every connection does first.
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from sharedroot.errors import StoreError
from sharedroot.files import regular_file
from sharedroot.store.schema import (
    SCHEMA,
    SCHEMA_VERSION,
    TABLES,
    TABLES_1,
    UPGRADE_1,
    VIEWS_1,
)


def _regular_file(path: Path) -> None:
    """Refuse anything but a regular file before SQLite opens it (a FIFO would hang)."""
    st = regular_file(path, StoreError, missing="missing; the store is incomplete")
    if st.st_size == 0:
        raise StoreError(
            f"{path}: empty (0 bytes), not a sharedroot database; the store is damaged"
        )


SQLITE_MAGIC = b"SQLite format 3\0"


@contextmanager
def immediate(db: sqlite3.Connection) -> Iterator[None]:
    """One write transaction, the write lock taken at its start (autocommit connections)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


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


class Database:
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
                type(self)(path, readonly=True).close_checked()
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
            with self.reading():
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
        """Every row is what sharedroot wrote (State knows the tables)."""
        raise NotImplementedError

    @contextmanager
    def reading(self) -> Iterator[None]:
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
        with immediate(self.db):
            yield
