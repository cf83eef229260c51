"""state.db: the site's guests, disks, links, gold slots, generations and journal (SQLite, WAL)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sharedroot.errors import StoreError
from sharedroot.model.types import DiskKind, Mode, Role
from sharedroot.store.database import Database
from sharedroot.store.rows import (
    DiskRow,
    GenerationRow,
    GuestRow,
    IncompleteRow,
    JournalRow,
    LinkRow,
    RowReader,
    SlotRow,
    now,
    sql_any,
    sql_enum,
    sql_json,
    sql_text,
    sql_whole,
)
from sharedroot.store.schema import JOURNAL_STATUSES

STATE_FILE = "state.db"


def process_start(pid: int) -> str | None:
    """When a process started (clock ticks since boot), to tell a reused pid apart."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat_line.rpartition(")")[2].split()[19]


def _alive(pid: int | None, started: str | None) -> bool:
    return pid is not None and process_start(pid) == started


class State(Database):
    """The tables of state.db; writes happen inside `transaction()`."""

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
            r = RowReader(self.path, "journal_steps", f"{row[0]} {row[1]}")
            for column, value in zip(("at", "step", "status"), row[2:], strict=True):
                r.text(column, value)

        return [
            (
                "guests",
                "name, role, created",
                sql_any(sql_text("name"), sql_enum("role", Role), sql_text("created")),
                self._guest,
            ),
            (
                "disks",
                "owner, address, kind, fs, size, file",
                sql_any(
                    *(sql_text(c) for c in ("owner", "address", "file")),
                    sql_enum("kind", DiskKind),
                    sql_text("fs", null=True),
                    sql_whole("size"),
                ),
                self._disk,
            ),
            (
                "links",
                "guest, address, owner, owner_address, mode",
                sql_any(
                    *(sql_text(c) for c in ("guest", "address", "owner", "owner_address")),
                    sql_enum("mode", Mode),
                ),
                self._link,
            ),
            (
                "slots",
                "slot, holder, generation",
                sql_any(sql_whole("slot"), sql_text("holder"), sql_whole("generation", null=True)),
                self._slot,
            ),
            (
                "generations",
                "id, slot, source, created, hashes, stamps",
                sql_any(
                    sql_whole("id"),
                    sql_whole("slot"),
                    sql_text("source"),
                    sql_text("created"),
                    sql_json("hashes", "object"),
                    sql_json("stamps", "object"),
                ),
                self._generation,
            ),
            (
                "journal",
                "id, operation, args, started, ended, status, message, pid, pid_start, plan",
                sql_any(
                    sql_whole("id"),
                    *(sql_text(c) for c in ("operation", "started")),
                    *(sql_text(c, null=True) for c in ("ended", "message")),
                    "status IS NULL OR status NOT IN ({})".format(
                        ", ".join(f"'{s}'" for s in JOURNAL_STATUSES)
                    ),
                    sql_json("args", "object"),
                    sql_json("plan", "array"),
                ),
                self._journal_row,
            ),
            (
                "journal_steps",
                "op, seq, at, step, status",
                sql_any(*(sql_text(c) for c in ("at", "step", "status"))),
                journal_step,
            ),
            (
                "incomplete",
                "guest, operation, op, since",
                sql_any(
                    *(sql_text(c) for c in ("guest", "operation", "since")),
                    sql_whole("op", null=True),
                ),
                self._incomplete,
            ),
        ]

    # guests -----------------------------------------------------------------
    def add_guest(self, name: str, role: Role) -> None:
        self.db.execute("INSERT INTO guests VALUES (?, ?, ?)", (name, role.value, now()))

    def delete_guest(self, name: str) -> None:
        self.db.execute("DELETE FROM guests WHERE name = ?", (name,))
        self.db.execute("DELETE FROM meta WHERE key = ?", (f"host:{name}",))

    def guest(self, name: str) -> GuestRow | None:
        row = self.db.execute("SELECT * FROM guests WHERE name = ?", (name,)).fetchone()
        return self._guest(row) if row else None

    def guests(self) -> list[GuestRow]:
        rows = self.db.execute("SELECT * FROM guests ORDER BY name").fetchall()
        return [self._guest(r) for r in rows]

    def _guest(self, row: Sequence[Any]) -> GuestRow:
        r = RowReader(self.path, "guests", row[0])
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
        r = RowReader(self.path, "slots", row[0])
        return SlotRow(
            r.whole("slot", row[0]),
            r.text("holder", row[1]),
            r.whole("generation", row[2], null=True),
        )

    def current_slot(self) -> int | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = 'current_slot'").fetchone()
        return RowReader(self.path, "meta", "current_slot").whole("value", row[0]) if row else None

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

    # where guests run (a backend with several hosts) ----------------------------
    def placement(self) -> dict[str, str]:
        """Guest -> the URI of its host, for every placed guest (one query)."""
        rows = self.db.execute("SELECT key, value FROM meta WHERE key LIKE 'host:%'").fetchall()
        return {str(k).removeprefix("host:"): str(v) for k, v in rows}

    def set_host(self, guest: str, uri: str) -> None:
        self.db.execute(
            "INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (f"host:{guest}", uri),
        )

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

    def generations(self) -> list[GenerationRow]:
        """ro2gold's history, oldest first."""
        rows = self.db.execute(
            "SELECT id, slot, source, created, hashes, stamps FROM generations ORDER BY id"
        ).fetchall()
        return [self._generation(r) for r in rows]

    def delete_generations(self, ids: Sequence[int]) -> None:
        """Forget generations no slot holds (one a slot holds stays: its foreign key)."""
        self.db.executemany("DELETE FROM generations WHERE id = ?", [(i,) for i in ids])

    def _generation(self, row: Sequence[Any]) -> GenerationRow:
        r = RowReader(self.path, "generations", row[0])
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
        r = RowReader(self.path, "incomplete", row[0])
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
        r = RowReader(self.path, "journal", row[0])
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
            r.whole("pid", row[7], null=True),
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
            r = RowReader(self.path, "journal_steps", f"{op} {row[0]}")
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
        r = RowReader(self.path, "disks", f"{row[0]} {row[1]}")
        return DiskRow(
            r.text("owner", row[0]),
            r.text("address", row[1]),
            r.enum("kind", DiskKind, row[2]),
            r.text("fs", row[3], null=True),
            r.whole("size", row[4]),
            r.text("file", row[5]),
        )

    def _link(self, row: Sequence[Any]) -> LinkRow:
        r = RowReader(self.path, "links", f"{row[0]} {row[1]}")
        return LinkRow(
            r.text("guest", row[0]),
            r.text("address", row[1]),
            r.text("owner", row[2]),
            r.text("owner_address", row[3]),
            r.enum("mode", Mode, row[4]),
        )
