"""server/server.db: what `sharedroot serve` keeps beside the site: API tokens, jobs, their events.

Apart from state.db on purpose: the fleet's guards never read it, a site that never
served has none of it, and the CLI's store checks and crash recovery stay as they are.
Jobs live here, not in the server's memory, so a restarted server finds them again.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sharedroot.errors import RefusedError, StoreError
from sharedroot.files import regular_file
from sharedroot.model.access import ApiRole, JobStatus, token_name
from sharedroot.store.database import immediate
from sharedroot.store.rows import now

SERVER_DIR = "server"
SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE tokens (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    digest TEXT NOT NULL UNIQUE,
    created TEXT NOT NULL
);
CREATE TABLE jobs (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    targets TEXT NOT NULL,
    argv TEXT NOT NULL,
    user TEXT NOT NULL,
    status TEXT NOT NULL,
    created TEXT NOT NULL,
    started TEXT,
    ended TEXT,
    runner INTEGER,
    runner_start TEXT,
    child INTEGER,
    cancel INTEGER NOT NULL DEFAULT 0,
    exit_code INTEGER,
    result TEXT,
    message TEXT
);
CREATE TABLE events (
    job INTEGER NOT NULL REFERENCES jobs(id),
    seq INTEGER NOT NULL,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    text TEXT NOT NULL,
    done INTEGER,
    total INTEGER,
    PRIMARY KEY (job, seq)
)
"""
# Rollouts (store/rollouts.py): made where missing, so a server.db of an earlier
# sharedroot gains them without a new schema version.
ROLLOUT_SCHEMA = """
CREATE TABLE IF NOT EXISTS rollouts (
    id INTEGER PRIMARY KEY,
    slot INTEGER NOT NULL,
    wave_size INTEGER NOT NULL,
    pause_each INTEGER NOT NULL,
    max_failures INTEGER NOT NULL,
    selection TEXT NOT NULL,
    user TEXT NOT NULL,
    state TEXT NOT NULL,
    created TEXT NOT NULL,
    started TEXT,
    ended TEXT,
    runner INTEGER,
    runner_start TEXT,
    wave INTEGER NOT NULL DEFAULT 0,
    pause INTEGER NOT NULL DEFAULT 0,
    abort INTEGER NOT NULL DEFAULT 0,
    message TEXT
);
CREATE TABLE IF NOT EXISTS rollout_clones (
    rollout INTEGER NOT NULL REFERENCES rollouts(id),
    clone TEXT NOT NULL,
    position INTEGER NOT NULL,
    wave INTEGER,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    started TEXT,
    ended TEXT,
    message TEXT,
    PRIMARY KEY (rollout, clone)
)
"""


def digest(secret: str) -> str:
    # A token is 256 random bits: a plain hash is enough, nothing to guess from it.
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class TokenRow:
    name: str
    role: ApiRole
    created: str


@dataclass(frozen=True)
class JobRow:
    id: int
    kind: str
    targets: list[str]
    argv: list[str]
    user: str
    status: JobStatus
    created: str
    started: str | None
    ended: str | None
    runner: int | None
    runner_start: str | None
    child: int | None
    cancel: bool
    exit_code: int | None
    result: Any
    message: str | None


@dataclass(frozen=True)
class EventRow:
    seq: int
    at: float
    kind: str
    text: str
    done: int | None
    total: int | None


class ServerStore:
    """One connection to server/server.db (made with the directory on first use).

    With create=False a site that never served stays untouched: its readers get an
    empty store in memory, so a list shows nothing and a lookup finds nothing.
    """

    def __init__(self, home: Path, *, create: bool = True) -> None:
        self.dir = home / SERVER_DIR
        self.path = self.dir / "server.db"
        fresh = not self.path.exists()
        where: Path | str = self.path
        if fresh and create:
            self.dir.mkdir(mode=0o700, exist_ok=True)
            (self.dir / "jobs").mkdir(mode=0o700, exist_ok=True)
        elif fresh:
            where = ":memory:"
        else:
            regular_file(self.path, StoreError)
        try:
            self.db = sqlite3.connect(
                where, isolation_level=None, timeout=30, check_same_thread=False
            )
            if fresh:
                self.db.execute("PRAGMA journal_mode = WAL")
                with self.transaction():
                    for statement in SCHEMA.split(";"):
                        self.db.execute(statement)
                    self.db.execute(
                        "INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
                    )
            if not self.db.execute(
                "SELECT 1 FROM sqlite_master WHERE name='rollout_clones'"
            ).fetchone():
                with self.transaction():
                    for statement in ROLLOUT_SCHEMA.split(";"):
                        self.db.execute(statement)
            got = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: damaged or not sharedroot's ({exc})") from None
        if got is None or got[0] != str(SCHEMA_VERSION):
            raise StoreError(f"{self.path}: schema {got and got[0]}, expected {SCHEMA_VERSION}")

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with immediate(self.db):
            yield

    def log_path(self, job: int) -> Path:
        return self.dir / "jobs" / f"{job}.log"

    def secret(self) -> bytes:
        """The key that signs browser sessions: made once, kept mode 0600."""
        path = self.dir / "session.key"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            key = path.read_bytes()
            if len(key) != 32:
                raise StoreError(f"{path}: not 32 bytes; remove it to make a new one") from None
            return key
        key = secrets.token_bytes(32)
        with os.fdopen(fd, "wb") as f:
            f.write(key)
        return key

    # -- tokens

    def add_token(self, name: str, role: ApiRole) -> str:
        """A new token's secret, shown once: only its digest is kept."""
        token_name(name)
        secret = "sr_" + secrets.token_urlsafe(32)
        with self.transaction():
            if self.db.execute("SELECT 1 FROM tokens WHERE name=?", (name,)).fetchone():
                raise RefusedError(f"token {name}: exists; revoke it first to replace it")
            self.db.execute(
                "INSERT INTO tokens VALUES (?, ?, ?, ?)",
                (name, role.value, digest(secret), now()),
            )
        return secret

    def revoke(self, name: str) -> None:
        token_name(name)
        with self.transaction():
            if self.db.execute("DELETE FROM tokens WHERE name=?", (name,)).rowcount == 0:
                raise RefusedError(f"token {name}: no such token")

    def tokens(self) -> list[TokenRow]:
        rows = self.db.execute("SELECT name, role, created FROM tokens ORDER BY name")
        return [TokenRow(r[0], ApiRole(r[1]), r[2]) for r in rows]

    def token(self, secret: str) -> TokenRow | None:
        """The token a secret belongs to (a revoked one is gone)."""
        row = self.db.execute(
            "SELECT name, role, created FROM tokens WHERE digest=?", (digest(secret),)
        ).fetchone()
        return None if row is None else TokenRow(row[0], ApiRole(row[1]), row[2])

    # -- jobs

    def add_job(self, kind: str, targets: list[str], argv: list[str], user: str) -> int:
        with self.transaction():
            cur = self.db.execute(
                "INSERT INTO jobs (kind, targets, argv, user, status, created)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (kind, json.dumps(targets), json.dumps(argv), user, JobStatus.QUEUED, now()),
            )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def set_runner(self, job: int, pid: int, started: str) -> None:
        with self.transaction():
            self.db.execute(
                "UPDATE jobs SET runner=?, runner_start=? WHERE id=?", (pid, started, job)
            )

    def set_running(self, job: int, child: int) -> None:
        with self.transaction():
            self.db.execute(
                "UPDATE jobs SET status=?, started=?, child=? WHERE id=? AND status=?",
                (JobStatus.RUNNING, now(), child, job, JobStatus.QUEUED),
            )

    def request_cancel(self, job: int) -> None:
        with self.transaction():
            self.db.execute("UPDATE jobs SET cancel=1 WHERE id=?", (job,))

    def end_job(
        self,
        job: int,
        status: JobStatus,
        message: str | None,
        exit_code: int | None = None,
        result: Any = None,
    ) -> None:
        """Record how a job ended, once: a second ending (a late runner) changes nothing."""
        with self.transaction():
            self.db.execute(
                "UPDATE jobs SET status=?, ended=?, exit_code=?, result=?, message=?"
                " WHERE id=? AND status IN (?, ?)",
                (
                    status,
                    now(),
                    exit_code,
                    json.dumps(result),
                    message,
                    job,
                    JobStatus.QUEUED,
                    JobStatus.RUNNING,
                ),
            )

    _JOB_COLUMNS = (
        "id, kind, targets, argv, user, status, created, started, ended, runner, runner_start,"
        " child, cancel, exit_code, result, message"
    )

    def job(self, job: int) -> JobRow | None:
        row = self.db.execute(f"SELECT {self._JOB_COLUMNS} FROM jobs WHERE id=?", (job,)).fetchone()
        return None if row is None else self._job(row)

    def jobs(self, limit: int = 100, status: JobStatus | None = None) -> list[JobRow]:
        where, args = ("WHERE status=?", [status.value]) if status else ("", [])
        rows = self.db.execute(
            f"SELECT {self._JOB_COLUMNS} FROM jobs {where} ORDER BY id DESC LIMIT ?",
            (*args, limit),
        )
        return [self._job(r) for r in rows]

    def count_jobs(self, status: JobStatus) -> int:
        got = self.db.execute("SELECT count(*) FROM jobs WHERE status=?", (status,)).fetchone()
        return int(got[0])

    @staticmethod
    def _job(r: tuple[Any, ...]) -> JobRow:
        return JobRow(
            id=r[0],
            kind=r[1],
            targets=json.loads(r[2]),
            argv=json.loads(r[3]),
            user=r[4],
            status=JobStatus(r[5]),
            created=r[6],
            started=r[7],
            ended=r[8],
            runner=r[9],
            runner_start=r[10],
            child=r[11],
            cancel=bool(r[12]),
            exit_code=r[13],
            result=None if r[14] is None else json.loads(r[14]),
            message=r[15],
        )

    # -- events

    def add_event(
        self, job: int, kind: str, text: str, done: int | None = None, total: int | None = None
    ) -> int:
        with self.transaction():
            got = self.db.execute(
                "SELECT coalesce(max(seq), 0) FROM events WHERE job=?", (job,)
            ).fetchone()
            seq = int(got[0]) + 1
            self.db.execute(
                "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?)",
                (job, seq, time.time(), kind, text, done, total),
            )
        return seq

    def events(self, job: int, after: int = 0) -> list[EventRow]:
        rows = self.db.execute(
            "SELECT seq, at, kind, text, done, total FROM events WHERE job=? AND seq>?"
            " ORDER BY seq",
            (job, after),
        )
        return [EventRow(*r) for r in rows]
