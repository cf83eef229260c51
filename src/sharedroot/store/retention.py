"""What server.db keeps: ended jobs and rollouts older than the retention go, files too.

Rows go first, in one transaction; then every file of a job or rollout that has no row
(so also the files of a pruning that was killed halfway). The newest job and rollout
always stay: SQLite would give a new row the number of a deleted newest one, and so
every number a sweep looks at is below the newest kept, never one being made now.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sharedroot.store.rollouts import ROLLOUTS_DIR, RolloutStore

KEEP_DAYS = 30  # how long ended jobs and rollouts stay, by default


@dataclass(frozen=True)
class Pruned:
    jobs: int
    rollouts: int


def cutoff(days: int, now: datetime | None = None) -> str:
    """The `ended` time before which a row goes, in the store's own format."""
    at = (now or datetime.now(UTC)) - timedelta(days=days)
    return at.isoformat(timespec="seconds")


def prune(store: RolloutStore, before: str) -> Pruned:
    db = store.db
    with store.transaction():
        jobs = _older(store, "jobs", before)
        rollouts = _older(store, "rollouts", before)
        db.executemany("DELETE FROM events WHERE job = ?", [(j,) for j in jobs])
        db.executemany("DELETE FROM jobs WHERE id = ?", [(j,) for j in jobs])
        db.executemany("DELETE FROM rollout_clones WHERE rollout = ?", [(r,) for r in rollouts])
        db.executemany("DELETE FROM rollouts WHERE id = ?", [(r,) for r in rollouts])
        kept_jobs = {r[0] for r in db.execute("SELECT id FROM jobs")}
        kept_rollouts = {r[0] for r in db.execute("SELECT id FROM rollouts")}
    newest_job, newest_rollout = max(kept_jobs, default=0), max(kept_rollouts, default=0)
    for path in (store.dir / "jobs").glob("*"):
        if _orphan(path.stem, kept_jobs, newest_job) and path.is_file():
            path.unlink(missing_ok=True)
    for path in (store.dir / ROLLOUTS_DIR).glob("*"):
        if _orphan(path.name, kept_rollouts, newest_rollout) and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
    return Pruned(len(jobs), len(rollouts))


def _older(store: RolloutStore, table: str, before: str) -> list[int]:
    rows = store.db.execute(
        f"SELECT id FROM {table} WHERE ended < ? AND id < (SELECT MAX(id) FROM {table})",
        (before,),
    )
    return [r[0] for r in rows]


def _orphan(name: str, kept: set[int], newest: int) -> bool:
    return name.isdecimal() and int(name) < newest and int(name) not in kept
