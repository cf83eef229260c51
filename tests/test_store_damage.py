"""A damaged store is reported, never rebuilt.

Each case below damages a copy of a paper site, then runs the reading commands (guests,
linked, journal) and the writing ones (mnt2tst --yes, define --ro).  A command that
meets the damage exits 1 (2 for a malformed site.toml, which is user input) with exactly
one line on stderr naming the damaged file and what is wrong; no traceback, no hang;
and the store is byte for byte what it was: never an empty new store over the user's.
A command that never meets the damage (a reader that does not look at images) works.

Writers check the whole database before they write; readers fail on what they read.

Families (table DAMAGES):
  DB        state.db not a database, a directory, a FIFO, a symlink to /dev/zero, missing
  TABLES    each table dropped
  VERSION   schema_version removed, garbled, negative, from the future
  ROWS      unknown enum values, non-JSON columns, NULLs, text where a number belongs
  SITE      site.toml a directory, a FIFO, binary, not TOML, invalid UTF-8, empty, missing
  IMAGES    a disk image (source of a copy; the admin disk) a directory, a FIFO,
            truncated, missing; disks/ missing; run/ a file
Then: an image overwritten with garbage of the same size (copied as it is; --verify
checks the copy), a read-only store (bind-mounted read-only in a private mount
namespace), and a version-1 store (read as it is, upgraded by a writer).
"""

from __future__ import annotations

import gc
import hashlib
import os
import re
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import SHAREDROOT, Ran, sparse_hash
from sharedroot.workflows.context import Site

READERS = {"guests": ["guests"], "linked": ["linked"], "journal": ["journal"]}
WRITERS = {"mnt2tst": ["mnt2tst", "--yes"], "define": ["define", "LNXD", "--ro"]}
COMMANDS = READERS | WRITERS
ALL = frozenset(COMMANDS)
W = frozenset(WRITERS)
HANG_TIMEOUT = 20  # seconds: a FIFO read would block forever

Damager = Callable[[Path], None]


@dataclass(frozen=True)
class Damage:
    id: str
    damage: Damager
    path: str  # the damaged file, relative to the home; the error line names it
    says: str  # what the error line says is wrong (a regular expression, any case)
    fails: frozenset[str] = ALL  # the commands that meet the damage
    code: int = 1
    child: bool = False  # run the commands in a child process with a timeout (FIFOs)


# --- ways to damage ----------------------------------------------------------------------


def garbage(n: int, seed: str = "damage") -> bytes:
    out = b""
    while len(out) < n:
        out += hashlib.sha256(f"{seed}{len(out)}".encode()).digest()
    return out[:n]


def _clear(path: Path) -> None:
    """Remove whatever is at `path` (and SQLite's side files when it is state.db)."""
    if path.is_dir() and not path.is_symlink():
        subprocess.run(["rm", "-rf", str(path)], check=True)
    else:
        path.unlink(missing_ok=True)
    if path.name == "state.db":
        for side in ("state.db-wal", "state.db-shm"):
            (path.parent / side).unlink(missing_ok=True)


def write(rel: str, data: bytes) -> Damager:
    def do(home: Path) -> None:
        _clear(home / rel)
        (home / rel).write_bytes(data)

    return do


def directory(rel: str) -> Damager:
    def do(home: Path) -> None:
        _clear(home / rel)
        (home / rel).mkdir()
        (home / rel / "something").write_text("not what sharedroot wrote\n")

    return do


def fifo(rel: str) -> Damager:
    def do(home: Path) -> None:
        _clear(home / rel)
        os.mkfifo(home / rel)

    return do


def symlink(rel: str, target: str) -> Damager:
    def do(home: Path) -> None:
        _clear(home / rel)
        (home / rel).symlink_to(target)

    return do


def missing(rel: str) -> Damager:
    return lambda home: _clear(home / rel)


def truncate(rel: str, *, size: int | None = None, half: bool = False) -> Damager:
    def do(home: Path) -> None:
        path = home / rel
        os.truncate(path, path.stat().st_size // 2 if half else (size or 0))

    return do


def bitrot(table: str) -> Damager:
    """Garbage over the page that holds a table's rows, as a failing disk leaves it."""

    def do(home: Path) -> None:
        db = sqlite3.connect(home / DB)
        try:
            (page_size,) = db.execute("PRAGMA page_size").fetchone()
            (root,) = db.execute(
                "SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)
            ).fetchone()
        finally:
            db.close()
        with open(home / DB, "r+b") as f:
            f.seek((root - 1) * page_size)
            f.write(garbage(page_size, "bitrot"))

    return do


def sql(*statements: str, not_null: tuple[str, str] | None = None) -> Damager:
    """Change state.db's rows by hand; `not_null` (table, column) lifts that constraint
    first, as a careless repair with another tool might."""

    def do(home: Path) -> None:
        db = sqlite3.connect(home / "state.db", isolation_level=None)
        try:
            if not_null is not None:
                table, column = not_null
                (version,) = db.execute("PRAGMA schema_version").fetchone()
                db.execute("PRAGMA writable_schema = ON")
                db.execute(
                    "UPDATE sqlite_master SET sql = replace(sql, ?, ?) WHERE name = ?",
                    (f"{column} TEXT NOT NULL", f"{column} TEXT", table)
                    if column != "size"
                    else ("size INTEGER NOT NULL", "size INTEGER", table),
                )
                db.execute(f"PRAGMA schema_version = {version + 1}")
                db.execute("PRAGMA writable_schema = OFF")
                db.close()
                db = sqlite3.connect(home / "state.db", isolation_level=None)
            for s in statements:
                db.execute(s)
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        finally:
            db.close()

    return do


def null(table: str, column: str, where: str) -> Damager:
    return sql(f"UPDATE {table} SET {column} = NULL WHERE {where}", not_null=(table, column))


def sqlite_not_ours(home: Path) -> None:
    _clear(home / "state.db")
    db = sqlite3.connect(home / "state.db")
    db.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY, name TEXT)")
    db.commit()
    db.close()


GENERATION = (
    "INSERT INTO generations (id, slot, source, created, hashes, stamps)"
    " VALUES (7, 1, 'S10ROGLD', '2024-01-01T00:00:00+00:00', {hashes}, {stamps})",
    "UPDATE slots SET generation = 7 WHERE slot = 1",
)


def generation(hashes: str = "'{}'", stamps: str = "'{}'") -> Damager:
    return sql(*(s.format(hashes=hashes, stamps=stamps) for s in GENERATION))


DB = "state.db"
TOML = "site.toml"
SOURCE = "disks/S10RWMNT/01B1.img"  # mnt2tst copies it
ADMIN = "disks/CMSCLONE/0192.img"  # define writes the new guest's parm file on it
NOT_DB = r"not a sharedroot database|damaged"
R = frozenset

DAMAGES: list[Damage] = [
    # DB
    Damage("db-garbage", write(DB, garbage(65536)), DB, NOT_DB),
    Damage("db-text", write(DB, b"guests: S10RWMNT S10RWTST\n" * 400), DB, NOT_DB),
    Damage("db-zero-bytes", write(DB, b""), DB, r"empty|not a sharedroot database"),
    Damage("db-truncated-half", truncate(DB, half=True), DB, r"truncated"),
    Damage("db-truncated-100", truncate(DB, size=100), DB, r"truncated"),
    Damage("db-bitrot-guests", bitrot("guests"), DB, r"damaged|malformed"),
    Damage("db-bitrot-journal", bitrot("journal"), DB, r"damaged|malformed"),
    Damage("db-other-sqlite", sqlite_not_ours, DB, r"not a sharedroot database"),
    Damage("db-directory", directory(DB), DB, r"not a regular file"),
    Damage("db-fifo", fifo(DB), DB, r"not a regular file", child=True),
    Damage("db-dev-zero", symlink(DB, "/dev/zero"), DB, r"not a regular file", child=True),
    Damage("db-missing", missing(DB), DB, r"missing"),
    # TABLES
    Damage("drop-meta", sql("DROP TABLE meta"), DB, r"not a sharedroot database \(no table meta"),
    *(
        Damage(f"drop-{t}", sql(f"DROP TABLE {t}"), DB, rf"table {t} is missing")
        for t in (
            *("guests", "disks", "links", "slots", "generations"),
            *("journal", "journal_steps", "incomplete"),
        )
    ),
    # VERSION
    Damage(
        "version-removed",
        sql("DELETE FROM meta WHERE key = 'schema_version'"),
        DB,
        r"no valid schema_version",
    ),
    Damage(
        "version-garbled",
        sql("UPDATE meta SET value = 'two' WHERE key = 'schema_version'"),
        DB,
        r"no valid schema_version",
    ),
    Damage(
        "version-negative",
        sql("UPDATE meta SET value = '-2' WHERE key = 'schema_version'"),
        DB,
        r"no valid schema_version",
    ),
    Damage(
        "version-future",
        sql("UPDATE meta SET value = '3' WHERE key = 'schema_version'"),
        DB,
        r"schema version 3, this sharedroot knows 2",
    ),
    # ROWS: unknown enum values
    Damage(
        "guests-role-unknown",
        sql("UPDATE guests SET role = 'boss' WHERE name = 'S10RWTST'"),
        DB,
        r"table guests, row S10RWTST: role 'boss' is not one of",
        R({"guests"}) | W,
    ),
    Damage(
        "disks-kind-unknown",
        sql("UPDATE disks SET kind = 'tape' WHERE owner = 'S10RWMNT' AND address = '01B1'"),
        DB,
        r"table disks, row S10RWMNT 01B1: kind 'tape' is not one of",
        R({"guests"}) | W,
    ),
    Damage(
        "links-mode-unknown",
        sql("UPDATE links SET mode = 'WR' WHERE guest = 'S10RWTST'"),
        DB,
        r"table links, row S10RWTST 0191: mode 'WR' is not one of",
        R({"guests"}) | W,
    ),
    Damage(
        "journal-status-unknown",
        sql("UPDATE journal SET status = 'maybe' WHERE id = 1"),
        DB,
        r"table journal, row 1: unknown status 'maybe'",
        R({"journal"}) | W,
    ),
    # ROWS: JSON columns
    Damage(
        "journal-args-not-json",
        sql("UPDATE journal SET args = '{layout: paper' WHERE id = 1"),
        DB,
        r"table journal, row 1: args '{layout: paper' is not JSON",
        R({"journal"}) | W,
    ),
    Damage(
        "journal-args-not-object",
        sql("UPDATE journal SET args = '[1, 2]' WHERE id = 1"),
        DB,
        r"table journal, row 1: args: expected a JSON object",
        R({"journal"}) | W,
    ),
    Damage(
        "journal-plan-not-json",
        sql("UPDATE journal SET plan = 'copy, then copy' WHERE id = 1"),
        DB,
        r"table journal, row 1: plan 'copy, then copy' is not JSON",
        R({"journal"}) | W,
    ),
    Damage(
        "generations-hashes-not-json",
        generation(hashes="'0192=abc'"),
        DB,
        r"table generations, row 7: hashes '0192=abc' is not JSON",
        R({"linked"}) | W,
    ),
    Damage(
        "generations-stamps-not-json",
        generation(stamps="'{'"),
        DB,
        r"table generations, row 7: stamps '{' is not JSON",
        R({"linked"}) | W,
    ),
    # ROWS: NULLs where a value is expected
    Damage(
        "guests-role-null",
        null("guests", "role", "name = 'S10RWTST'"),
        DB,
        r"table guests, row S10RWTST: role is NULL",
        R({"guests"}) | W,
    ),
    Damage(
        "guests-created-null",
        null("guests", "created", "name = 'S10RWTST'"),
        DB,
        r"table guests, row S10RWTST: created is NULL",
        R({"guests"}) | W,
    ),
    Damage(
        "disks-size-null",
        null("disks", "size", "owner = 'S10RWMNT' AND address = '01B1'"),
        DB,
        r"table disks, row S10RWMNT 01B1: size is NULL",
        R({"guests"}) | W,
    ),
    Damage(
        "disks-file-null",
        null("disks", "file", "owner = 'S10RWMNT' AND address = '01B1'"),
        DB,
        r"table disks, row S10RWMNT 01B1: file is NULL",
        R({"guests"}) | W,
    ),
    Damage(
        "links-owner-null",
        null("links", "owner", "guest = 'S10RWTST'"),
        DB,
        r"table links, row S10RWTST 0191: owner is NULL",
        R({"guests"}) | W,
    ),
    Damage(
        "journal-operation-null",
        null("journal", "operation", "id = 1"),
        DB,
        r"table journal, row 1: operation is NULL",
        R({"journal"}) | W,
    ),
    Damage(
        "journal-args-null",
        null("journal", "args", "id = 1"),
        DB,
        r"table journal, row 1: args is NULL",
        R({"journal"}) | W,
    ),
    Damage(
        "journal-status-null",
        null("journal", "status", "id = 1"),
        DB,
        r"table journal, row 1: status is NULL",
        R({"journal"}) | W,
    ),
    # ROWS: text where a number belongs
    Damage(
        "disks-size-text",
        sql("UPDATE disks SET size = 'big' WHERE owner = 'S10RWMNT' AND address = '01B1'"),
        DB,
        r"table disks, row S10RWMNT 01B1: size 'big' is not a whole number",
        R({"guests"}) | W,
    ),
    Damage(
        "slots-generation-text",
        sql("UPDATE slots SET generation = 'latest' WHERE slot = 1"),
        DB,
        r"table slots, row 1: generation 'latest' is not a whole number",
        R({"linked"}) | W,
    ),
    Damage(
        "current-slot-text",
        sql("INSERT INTO meta VALUES ('current_slot', 'one')"),
        DB,
        r"table meta, row current_slot: value 'one' is not a whole number",
        R({"linked"}) | W,
    ),
    Damage(
        "incomplete-op-text",
        sql(
            "INSERT INTO incomplete VALUES"
            " ('S10RWTST', 'mnt2tst', 'last', '2024-01-01T00:00:00+00:00')"
        ),
        DB,
        r"table incomplete, row S10RWTST: op 'last' is not a whole number",
        R({"guests", "linked"}) | W,
    ),
    # SITE
    Damage("toml-directory", directory(TOML), TOML, r"not a regular file"),
    Damage("toml-fifo", fifo(TOML), TOML, r"not a regular file", child=True),
    Damage("toml-missing", missing(TOML), TOML, r"missing"),
    Damage("toml-binary", write(TOML, garbage(4096)), TOML, r"cannot read|utf-8", code=2),
    Damage("toml-not-toml", write(TOML, b"[site\nprefix = S10\n"), TOML, r"TOML", code=2),
    Damage(
        "toml-invalid-utf8",
        write(TOML, b'[site]\nprefix = "S\xff10"\n'),
        TOML,
        r"utf-8",
        code=2,
    ),
    Damage("toml-empty", write(TOML, b""), TOML, r"no disks|empty", code=2),
    # IMAGES
    Damage("source-directory", directory(SOURCE), SOURCE, r"not a regular file", R({"mnt2tst"})),
    Damage("source-fifo", fifo(SOURCE), SOURCE, r"not a regular file", R({"mnt2tst"}), child=True),
    Damage(
        "source-truncated",
        truncate(SOURCE, half=True),
        SOURCE,
        r"the store records .* truncated",
        R({"mnt2tst"}),
    ),
    Damage("source-missing", missing(SOURCE), SOURCE, r"missing", R({"mnt2tst"})),
    Damage("admin-directory", directory(ADMIN), ADMIN, r"not a regular file", R({"define"})),
    Damage("admin-fifo", fifo(ADMIN), ADMIN, r"not a regular file", R({"define"}), child=True),
    Damage(
        "admin-truncated",
        truncate(ADMIN, size=4096),
        ADMIN,
        r"the store records .* truncated",
        R({"define"}),
    ),
    Damage("admin-missing", missing(ADMIN), ADMIN, r"missing", R({"define"})),
    Damage("disks-dir-missing", missing("disks"), "disks", r"missing", W),
    Damage(
        "guest-dir-a-file",
        write("disks/S10RWMNT", b"not a directory\n"),
        "disks/S10RWMNT",
        r"not a directory|missing",
        R({"mnt2tst"}),
    ),
    Damage(
        "run-a-file",
        write("run", b"not a directory\n"),
        "run",
        r"not a directory",
        R({"guests"}) | W,
    ),
]


def _case_ids() -> list[tuple[Damage, str]]:
    return [(d, c) for d in DAMAGES for c in COMMANDS]


# --- running and comparing -------------------------------------------------------------


def snapshot(home: Path) -> dict[str, str]:
    """The store by content: each regular file's hash, each other entry's kind.

    SQLite's shared-memory index (state.db-shm) and an empty write-ahead log are no data
    (readers make them); lock files and the run/ directory belong to running commands.
    """
    out: dict[str, str] = {}
    for p in sorted(home.rglob("*")):
        rel = str(p.relative_to(home))
        if p.name == "state.db-shm" or p.name.endswith(".lock"):
            continue
        st = p.lstat()
        if stat.S_ISLNK(st.st_mode):
            out[rel] = f"symlink to {os.readlink(p)}"
        elif stat.S_ISDIR(st.st_mode):
            if rel != "run":
                out[rel] = "directory"
        elif stat.S_ISREG(st.st_mode):
            if not (p.name == "state.db-wal" and st.st_size == 0):
                out[rel] = sparse_hash(p)
        else:
            out[rel] = stat.filemode(st.st_mode)
    db = home / DB
    if db.is_file() and not db.is_symlink():
        out["state.db (raw bytes)"] = hashlib.sha256(db.read_bytes()).hexdigest()
    return out


def run_child(home: Path, args: list[str]) -> Ran:
    try:
        proc = subprocess.run(
            [SHAREDROOT, "--home", str(home), *args],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=HANG_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"sharedroot {' '.join(args)} hung (over {HANG_TIMEOUT}s)")
    return Ran(proc.returncode, proc.stdout, proc.stderr)


def rows(ran: Ran) -> list[dict[str, Any]]:
    """A command's --json output: a list of objects."""
    assert ran.code == 0, ran.err
    data = ran.json()
    assert isinstance(data, list)
    return data


def one_error_line(ran: Ran, code: int) -> str:
    assert "Traceback" not in ran.out + ran.err, ran.err
    assert ran.code == code, f"exit {ran.code}, not {code}: {ran.err}"
    lines = ran.err.splitlines()
    assert len(lines) == 1, ran.err
    assert lines[0].startswith("sharedroot: "), lines[0]
    return lines[0]


@pytest.fixture
def store(site: Site, home: Path) -> Path:
    """A paper site, closed (SQLite's side files gone), as a user leaves it."""
    site.state.close()
    for side in ("state.db-wal", "state.db-shm"):
        assert not (home / side).exists(), side
    return home


def test_families_are_large_enough() -> None:
    assert len(DAMAGES) >= 60
    assert len({d.id for d in DAMAGES}) == len(DAMAGES)


@pytest.mark.parametrize(
    ("damage", "command"), _case_ids(), ids=[f"{d.id}-{c}" for d, c in _case_ids()]
)
def test_damaged_store(store: Path, cli: Callable[..., Ran], damage: Damage, command: str) -> None:
    home = store
    damage.damage(home)
    before = snapshot(home)
    args = COMMANDS[command]
    ran = run_child(home, args) if damage.child else cli(*args)
    if command in damage.fails:
        line = one_error_line(ran, damage.code)
        assert str(home / damage.path) in line, line
        assert re.search(damage.says, line, re.IGNORECASE), line
        assert snapshot(home) == before, f"{command} changed the damaged store"
        return
    assert "Traceback" not in ran.out + ran.err, ran.err
    assert ran.code == 0, ran.err
    after = snapshot(home)
    touched = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    if command in READERS:
        assert not touched, f"{command} changed the store: {sorted(touched)}"
    else:  # a writer that never met the damage may write, but not over it
        assert not {k for k in touched if k.startswith(damage.path)}, sorted(touched)


@pytest.mark.parametrize("fails", [False, True], ids=["succeeds", "fails"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_closes_the_store(
    store: Path, cli: Callable[..., Ran], command: str, fails: bool
) -> None:
    """Whether a command succeeds or fails, it closes its SQLite connection before it
    returns: one left to the garbage collector closes (and a writer's removes the -wal)
    at some later moment, under whatever runs next in the same process."""
    if fails:
        truncate(SOURCE, half=True)(store)
        truncate(ADMIN, size=4096)(store)
    gc.disable()  # so only the command's own close can remove the side files
    try:
        ran = cli(*COMMANDS[command])
        assert (ran.code != 0) == (fails and command in WRITERS), ran.err
        left = sorted(p.name for p in store.iterdir())
        gc.collect()
        assert sorted(p.name for p in store.iterdir()) == left, f"{command} left a connection open"
    finally:
        gc.enable()


# --- init over a store that is there, damaged --------------------------------------------


@pytest.mark.parametrize(
    "damage",
    [d for d in DAMAGES if d.id in ("toml-missing", "db-missing", "db-zero-bytes", "drop-meta")],
    ids=lambda d: d.id,
)
def test_init_never_makes_a_store_over_a_damaged_one(
    store: Path, cli: Callable[..., Ran], damage: Damage
) -> None:
    home = store
    damage.damage(home)
    before = snapshot(home)
    line = one_error_line(cli("init", "--layout", "paper"), 1)
    assert str(home) in line and re.search(r"exists already|not empty", line), line
    assert snapshot(home) == before


# --- an image overwritten with garbage of its own size ---------------------------------


@pytest.mark.parametrize("verify", [False, True], ids=["plain", "verify"])
def test_garbage_image_of_the_right_size_is_copied_as_it_is(
    store: Path, cli: Callable[..., Ran], verify: bool
) -> None:
    """The store cannot tell garbage from a filesystem; the copy must be exact."""
    home = store
    source = home / SOURCE
    size = source.stat().st_size
    with open(source, "r+b") as f:
        for offset in range(0, size, size // 8):
            f.seek(offset)
            f.write(garbage(65536, str(offset)))
    want = sparse_hash(source)
    for args in READERS.values():
        ran = cli(*args)
        assert ran.code == 0, ran.err
    ran = cli("mnt2tst", "--yes", *(["--verify"] if verify else []))
    assert ran.code == 0 and "Traceback" not in ran.out + ran.err, ran.err
    assert sparse_hash(source) == want
    assert sparse_hash(home / "disks/S10RWTST/01B1.img") == want
    journal = cli("--json", "journal")
    assert rows(journal)[0]["status"] == "ok"


# --- a read-only store -----------------------------------------------------------------

READ_ONLY = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" "$1" && shift && exec "$@"'


def run_read_only(home: Path, args: list[str]) -> Ran:
    """Run sharedroot on `home` bind-mounted read-only, in a private mount namespace."""
    namespace = ["unshare", "-m", "sh", "-c", READ_ONLY, "sh", str(home)]
    try:
        proc = subprocess.run(
            [*namespace, SHAREDROOT, "--home", str(home), *args],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=HANG_TIMEOUT * 3,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"sharedroot {' '.join(args)} on a read-only store hung")
    return Ran(proc.returncode, proc.stdout, proc.stderr)


def killed_writer(home: Path) -> None:
    """A writer that committed a row and died before SQLite moved it out of the WAL."""
    code = (
        "import os, sqlite3, sys\n"
        "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "db.execute('PRAGMA wal_autocheckpoint = 0')\n"
        "db.execute(\"INSERT INTO guests VALUES ('LNXWAL', 'ro', '2024-01-01T00:00:00+00:00')\")\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(home / DB)], check=True)
    assert (home / "state.db-wal").stat().st_size > 0


def leftovers(home: Path, kind: str) -> None:
    if kind == "reader-left":  # an earlier reader made the WAL and its index
        assert subprocess.run([SHAREDROOT, "--home", str(home), "guests"]).returncode == 0
        assert (home / "state.db-shm").exists()
    elif kind in ("wal-pending", "wal-no-index"):
        killed_writer(home)
        if kind == "wal-no-index":
            (home / "state.db-shm").unlink()


LEFTOVERS = ["clean", "reader-left", "wal-pending", "wal-no-index"]
READ_ONLY_READERS = [
    ["guests"],
    ["guests", "--json"],
    ["linked"],
    ["linked", "--json"],
    ["journal"],
    ["journal", "--json"],
    ["inventory", "--list"],
    ["metrics"],
]


def without_page_cache(out: str) -> str:
    """A report without the host's page cache of the admin disk: the copy of the store was
    read and written through the cache, so the two images' cached sizes need not agree."""
    out = re.sub(r'"cached": (\d+|null)', '"cached": -', out)
    return re.sub(r"page cache [\d.]+M \(shared\)", "page cache", out)


@pytest.mark.parametrize("kind", LEFTOVERS)
@pytest.mark.parametrize("args", READ_ONLY_READERS, ids=[" ".join(a) for a in READ_ONLY_READERS])
def test_read_only_store_is_read(store: Path, tmp_path: Path, kind: str, args: list[str]) -> None:
    home = store
    leftovers(home, kind)
    twin = tmp_path / "twin"
    subprocess.run(["cp", "-a", "--sparse=always", str(home), str(twin)], check=True)
    before = snapshot(home)
    ro = run_read_only(home, args)
    assert ro.code == 0 and ro.err == "", ro.err
    assert snapshot(home) == before
    rw = run_child(twin, args)
    assert rw.code == 0, rw.err
    assert without_page_cache(ro.out) == without_page_cache(rw.out)
    if kind.startswith("wal") and args[0] == "guests":
        assert "LNXWAL" in ro.out  # what the WAL holds is read, not skipped


WRITES_ON_READ_ONLY = [
    ["mnt2tst", "--yes"],
    ["define", "LNXD", "--ro"],
    ["mnt2gold", "--yes"],
    ["start", "S10RWMNT"],
    ["clonerw", "S10RWTST", "--yes"],
]


@pytest.mark.parametrize("kind", ["clean", "wal-pending"])
@pytest.mark.parametrize(
    "args", WRITES_ON_READ_ONLY, ids=[" ".join(a) for a in WRITES_ON_READ_ONLY]
)
def test_read_only_store_refuses_writers(store: Path, kind: str, args: list[str]) -> None:
    home = store
    leftovers(home, kind)
    before = snapshot(home)
    ran = run_read_only(home, args)
    line = one_error_line(ran, 1)
    assert str(home) in line and re.search(r"read-only", line, re.IGNORECASE), line
    assert "damaged" not in line, line
    assert snapshot(home) == before


# --- a version-1 store -----------------------------------------------------------------

DOWNGRADE = (
    "ALTER TABLE generations DROP COLUMN stamps",
    "ALTER TABLE journal DROP COLUMN pid",
    "ALTER TABLE journal DROP COLUMN pid_start",
    "ALTER TABLE journal DROP COLUMN plan",
    "DROP TABLE incomplete",
    "UPDATE meta SET value = '1' WHERE key = 'schema_version'",
)


def columns(home: Path, table: str) -> list[str]:
    db = sqlite3.connect(f"file:{home / DB}?mode=ro", uri=True)
    try:
        return [r[1] for r in db.execute(f"PRAGMA table_info({table})")]
    finally:
        db.close()


def meta_version(home: Path) -> str:
    db = sqlite3.connect(f"file:{home / DB}?mode=ro", uri=True)
    try:
        return str(db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0])
    finally:
        db.close()


@pytest.fixture
def v1_store(store: Path, cli: Callable[..., Ran]) -> tuple[Path, dict[str, str]]:
    """A version-1 store with history in it; and what the readers printed before."""
    home = store
    assert cli("define", "LNXOLD", "--ro").code == 0
    printed = {" ".join(a): cli(*a).out for a in READ_ONLY_READERS}
    sql(*DOWNGRADE)(home)
    assert "plan" not in columns(home, "journal") and meta_version(home) == "1"
    return home, printed


def test_v1_store_is_read_as_it_is(
    v1_store: tuple[Path, dict[str, str]], cli: Callable[..., Ran]
) -> None:
    home, printed = v1_store
    before = snapshot(home)
    for words, out in printed.items():
        ran = cli(*words.split())
        assert ran.code == 0 and "Traceback" not in ran.err, ran.err
        assert ran.out == out, words
    assert snapshot(home) == before, "a reader upgraded the store"
    assert meta_version(home) == "1"


@pytest.mark.parametrize("args", READ_ONLY_READERS, ids=[" ".join(a) for a in READ_ONLY_READERS])
def test_v1_store_is_read_when_read_only(
    v1_store: tuple[Path, dict[str, str]], args: list[str]
) -> None:
    home, printed = v1_store
    ran = run_read_only(home, args)
    assert ran.code == 0 and ran.err == "", ran.err
    assert ran.out == printed[" ".join(args)]


def test_v1_store_is_upgraded_by_a_writer(
    v1_store: tuple[Path, dict[str, str]], cli: Callable[..., Ran]
) -> None:
    home, _ = v1_store
    ran = cli("define", "LNXNEW", "--ro")
    assert ran.code == 0, ran.err
    assert meta_version(home) == "2"
    assert columns(home, "journal")[-3:] == ["pid", "pid_start", "plan"]
    assert columns(home, "generations")[-1] == "stamps"
    assert columns(home, "incomplete") == ["guest", "operation", "op", "since"]
    guests = cli("--json", "guests")
    assert guests.code == 0, guests.err
    names = {g["name"] for g in rows(guests)}
    assert {"LNXOLD", "LNXNEW"} <= names
    journal = cli("--json", "journal")
    assert [j["operation"] for j in rows(journal)] == ["define", "define", "init"]


def test_damaged_v1_store_is_not_upgraded(
    v1_store: tuple[Path, dict[str, str]], cli: Callable[..., Ran]
) -> None:
    home, _ = v1_store
    sql("UPDATE journal SET args = 'not json' WHERE id = 1")(home)
    before = snapshot(home)
    line = one_error_line(cli("define", "LNXNEW", "--ro"), 1)
    assert str(home / DB) in line and "is not JSON" in line, line
    assert snapshot(home) == before
    assert meta_version(home) == "1"
