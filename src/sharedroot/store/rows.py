"""The rows of state.db as typed values, and the checks that decode them.

A cell that is not what sharedroot wrote is reported with the file, table, row and
column, never passed on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from sharedroot.errors import StoreError
from sharedroot.model.types import DiskKind, Mode, Role


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
    pid: int | None = None  # the process that ran it (a job's command, for the API)


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


E = TypeVar("E", bound=StrEnum)


# SQL conditions for a cell that is not what sharedroot writes (see State.check_rows).
def sql_any(*conditions: str) -> str:
    return " OR ".join(f"({c})" for c in conditions)


def sql_text(column: str, *, null: bool = False) -> str:
    wrong = f"typeof({column}) != 'text'"
    return f"{column} IS NOT NULL AND {wrong}" if null else wrong


def sql_whole(column: str, *, null: bool = False) -> str:
    wrong = f"typeof({column}) != 'integer'"
    return f"{column} IS NOT NULL AND {wrong}" if null else wrong


def sql_enum(column: str, enum: type[StrEnum]) -> str:
    values = ", ".join(f"'{e.value}'" for e in enum)
    return f"{column} IS NULL OR {column} NOT IN ({values})"


def sql_json(column: str, kind: str) -> str:
    # CASE, not OR: json_type() raises on malformed JSON, and OR need not short-circuit.
    return (
        f"CASE WHEN typeof({column}) = 'text' AND json_valid({column})"
        f" THEN json_type({column}) != '{kind}' ELSE 1 END"
    )


@dataclass(frozen=True)
class RowReader:
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
