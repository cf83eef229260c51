"""The tables of state.db, and the upgrades from earlier versions."""

from __future__ import annotations

SCHEMA_VERSION = 2

SCHEMA = """
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
    hashes TEXT NOT NULL,
    stamps TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE journal (
    id INTEGER PRIMARY KEY,
    operation TEXT NOT NULL,
    args TEXT NOT NULL,
    started TEXT NOT NULL,
    ended TEXT,
    status TEXT NOT NULL,
    message TEXT,
    pid INTEGER,
    pid_start TEXT,
    plan TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE journal_steps (
    op INTEGER NOT NULL REFERENCES journal(id),
    seq INTEGER NOT NULL,
    at TEXT NOT NULL,
    step TEXT NOT NULL,
    status TEXT NOT NULL,
    PRIMARY KEY (op, seq)
);
CREATE TABLE incomplete (
    guest TEXT PRIMARY KEY,
    operation TEXT NOT NULL,
    op INTEGER,
    since TEXT NOT NULL
);
"""
# Version 1 -> 2: interrupted operations are told by their process; disk sets being
# written are marked incomplete; generations keep a cheap stamp of each disk.
UPGRADE_1 = """
ALTER TABLE generations ADD COLUMN stamps TEXT NOT NULL DEFAULT '{}';
ALTER TABLE journal ADD COLUMN pid INTEGER;
ALTER TABLE journal ADD COLUMN pid_start TEXT;
ALTER TABLE journal ADD COLUMN plan TEXT NOT NULL DEFAULT '[]';
CREATE TABLE incomplete (
    guest TEXT PRIMARY KEY,
    operation TEXT NOT NULL,
    op INTEGER,
    since TEXT NOT NULL
);
"""
# What version-1 readers see of version 2 (temporary views: a reader writes nothing).
VIEWS_1 = """
CREATE TEMP VIEW journal AS SELECT id, operation, args, started, ended, status, message,
    NULL AS pid, NULL AS pid_start, '[]' AS plan FROM main.journal;
CREATE TEMP VIEW generations AS SELECT id, slot, source, created, hashes, '{}' AS stamps
    FROM main.generations;
CREATE TEMP TABLE incomplete (
    guest TEXT PRIMARY KEY,
    operation TEXT NOT NULL,
    op INTEGER,
    since TEXT NOT NULL
);
"""
TABLES_1 = (
    *("meta", "guests", "disks", "links", "slots", "generations"),
    *("journal", "journal_steps"),
)
TABLES = (
    *("meta", "guests", "disks", "links", "slots", "generations"),
    *("journal", "journal_steps", "incomplete"),
)
JOURNAL_STATUSES = ("running", "ok", "failed", "interrupted")
