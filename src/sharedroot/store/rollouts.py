"""Rollouts in server/server.db: each rollout, its clones' states, and the flags
(pause, abort) its process reads between two clones.

Every change of state is one conditional UPDATE, so the process and a request of the
API or the CLI that race each other cannot both win (e.g. resume and a late pause).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sharedroot.errors import InputError, RefusedError
from sharedroot.model.rollout import CloneState, RolloutState
from sharedroot.store.rows import now
from sharedroot.store.serverdb import ServerStore

ROLLOUTS_DIR = "rollouts"


@dataclass(frozen=True)
class RolloutRow:
    id: int
    slot: int
    wave_size: int
    pause_each: bool
    max_failures: int
    selection: dict[str, Any]
    user: str
    state: RolloutState
    created: str
    started: str | None
    ended: str | None
    runner: int | None
    runner_start: str | None
    wave: int
    pause: bool
    abort: bool
    message: str | None


@dataclass(frozen=True)
class CloneRow:
    clone: str
    position: int
    wave: int | None
    state: CloneState
    attempts: int
    started: str | None
    ended: str | None
    message: str | None


_ROLLOUT_COLUMNS = (
    "id, slot, wave_size, pause_each, max_failures, selection, user, state, created, started,"
    " ended, runner, runner_start, wave, pause, abort, message"
)


def _rollout(r: Sequence[Any]) -> RolloutRow:
    return RolloutRow(
        id=r[0],
        slot=r[1],
        wave_size=r[2],
        pause_each=bool(r[3]),
        max_failures=r[4],
        selection=json.loads(r[5]),
        user=r[6],
        state=RolloutState(r[7]),
        created=r[8],
        started=r[9],
        ended=r[10],
        runner=r[11],
        runner_start=r[12],
        wave=r[13],
        pause=bool(r[14]),
        abort=bool(r[15]),
        message=r[16],
    )


class RolloutStore(ServerStore):
    """server.db with the rollouts' tables (one connection, as ServerStore)."""

    def clone_log(self, rollout: int, clone: str) -> Path:
        # A file name: a user ID as the store keeps it, nothing else.
        if not re.fullmatch(r"[A-Z0-9@#$]{1,8}", clone):
            raise InputError(f"clone {clone!r}: not a user ID (1-8 of A-Z 0-9 @ # $)")
        return self.dir / ROLLOUTS_DIR / str(rollout) / f"{clone}.log"

    def wave_log(self, rollout: int, wave: int) -> Path:
        """The whole log of one wave's migrate (a clone's log has its own lines of it)."""
        return self.dir / ROLLOUTS_DIR / str(rollout) / f"wave-{wave}.log"

    def add_rollout(
        self,
        clones: Sequence[str],
        slot: int,
        wave_size: int,
        pause_each: bool,
        max_failures: int,
        selection: dict[str, Any],
        user: str,
    ) -> int:
        """A new pending rollout, unless another one still active holds one of `clones`."""
        active = [s.value for s in RolloutState if s.active]
        with self.transaction():
            taken = self.db.execute(
                "SELECT c.clone, r.id FROM rollout_clones c JOIN rollouts r ON r.id = c.rollout"
                f" WHERE r.state IN ({', '.join('?' * len(active))})",
                active,
            ).fetchall()
            busy = sorted(f"{c} (rollout {r})" for c, r in taken if c in clones)
            if busy:
                raise RefusedError(
                    f"already in a rollout that has not ended: {', '.join(busy)};"
                    " abort it or wait for its end"
                )
            cur = self.db.execute(
                "INSERT INTO rollouts (slot, wave_size, pause_each, max_failures, selection,"
                " user, state, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    slot,
                    wave_size,
                    int(pause_each),
                    max_failures,
                    json.dumps(selection),
                    user,
                    RolloutState.PENDING,
                    now(),
                ),
            )
            rid = cur.lastrowid
            assert rid is not None
            self.db.executemany(
                "INSERT INTO rollout_clones (rollout, clone, position, state) VALUES (?, ?, ?, ?)",
                [(rid, c, n, CloneState.PENDING) for n, c in enumerate(clones)],
            )
        (self.dir / ROLLOUTS_DIR / str(rid)).mkdir(mode=0o700, parents=True, exist_ok=True)
        return rid

    def rollout(self, rollout: int) -> RolloutRow | None:
        row = self.db.execute(
            f"SELECT {_ROLLOUT_COLUMNS} FROM rollouts WHERE id=?", (rollout,)
        ).fetchone()
        return None if row is None else _rollout(row)

    def rollouts(self, limit: int = 100) -> list[RolloutRow]:
        rows = self.db.execute(
            f"SELECT {_ROLLOUT_COLUMNS} FROM rollouts ORDER BY id DESC LIMIT ?", (limit,)
        )
        return [_rollout(r) for r in rows]

    def clones(self, rollout: int) -> list[CloneRow]:
        rows = self.db.execute(
            "SELECT clone, position, wave, state, attempts, started, ended, message"
            " FROM rollout_clones WHERE rollout=? ORDER BY position",
            (rollout,),
        )
        return [CloneRow(r[0], r[1], r[2], CloneState(r[3]), *r[4:]) for r in rows]

    def set_runner(self, rollout: int, pid: int, started: str) -> None:
        with self.transaction():
            self.db.execute(
                "UPDATE rollouts SET runner=?, runner_start=? WHERE id=?", (pid, started, rollout)
            )

    def move(
        self,
        rollout: int,
        were: Iterable[RolloutState],
        to: RolloutState,
        message: str | None = None,
    ) -> bool:
        """Change the rollout's state if it is one of `were`; whether it did."""
        were = list(were)
        with self.transaction():
            cur = self.db.execute(
                "UPDATE rollouts SET state=?, message=?,"
                " started=CASE WHEN ?='running' THEN coalesce(started, ?) ELSE started END,"
                " ended=CASE WHEN ? IN ('aborted', 'succeeded', 'failed') THEN ? ELSE NULL END,"
                " pause=CASE WHEN ?='running' THEN pause ELSE 0 END"
                f" WHERE id=? AND state IN ({', '.join('?' * len(were))})",
                (to, message, to, now(), to, now(), to, rollout, *were),
            )
        return cur.rowcount == 1

    def set_flag(self, rollout: int, flag: str, value: bool) -> None:
        column = {"pause": "pause", "abort": "abort"}[flag]  # never a caller's text
        with self.transaction():
            self.db.execute(f"UPDATE rollouts SET {column}=? WHERE id=?", (int(value), rollout))

    def begin_wave(self, rollout: int, wave: int, clones: Sequence[str]) -> None:
        with self.transaction():
            self.db.execute("UPDATE rollouts SET wave=? WHERE id=?", (wave, rollout))
            self.db.executemany(
                "UPDATE rollout_clones SET wave=? WHERE rollout=? AND clone=?",
                [(wave, rollout, c) for c in clones],
            )

    def set_clone(
        self,
        rollout: int,
        clone: str,
        state: CloneState,
        message: str | None = None,
        *,
        first: bool = False,
    ) -> None:
        """A clone's new state (`first`: its step begins, an attempt); an end is dated."""
        with self.transaction():
            self.db.execute(
                "UPDATE rollout_clones SET state=?, message=?,"
                " attempts=attempts+?, started=CASE WHEN ? THEN ? ELSE started END,"
                " ended=CASE WHEN ? IN ('ok', 'failed') THEN ? ELSE NULL END"
                " WHERE rollout=? AND clone=?",
                (state, message, int(first), first, now(), state, now(), rollout, clone),
            )

    def requeue(self, rollout: int, states: Iterable[CloneState], message: str | None) -> list[str]:
        """Clones in one of `states` back to pending (retry; a process that died mid-clone)."""
        states = list(states)
        marks = ", ".join("?" * len(states))
        with self.transaction():
            names = [
                r[0]
                for r in self.db.execute(
                    f"SELECT clone FROM rollout_clones WHERE rollout=? AND state IN ({marks})"
                    " ORDER BY position",
                    (rollout, *states),
                )
            ]
            self.db.execute(
                "UPDATE rollout_clones SET state=?, message=?"
                f" WHERE rollout=? AND state IN ({marks})",
                (CloneState.PENDING, message, rollout, *states),
            )
        return names

    def fail_busy(self, rollout: int, message: str) -> list[str]:
        """Clones caught between the start and the end of their step: failed."""
        busy = [c.clone for c in self.clones(rollout) if c.state.busy]
        for c in busy:
            self.set_clone(rollout, c, CloneState.FAILED, message)
        return busy
