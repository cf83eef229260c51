"""Rollouts for the API and the CLI alike: check a new one, start its process, pause,
resume, abort and retry it, and show it.

A rollout runs in a process of its own (api/rollout_runner.py) that reads its state
and flags from server.db, so neither a server restart nor the end of the CLI command
that started it stops it. Paused, it has no process; resume or retry starts one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sharedroot.api import detached
from sharedroot.errors import InputError, RefusedError
from sharedroot.model.rollout import (
    MAX_CLONES,
    MAX_FAILURES,
    MAX_WAVE_SIZE,
    CloneState,
    RolloutState,
    plan,
    within,
)
from sharedroot.model.types import Role, guest_name
from sharedroot.store.rollouts import ROLLOUTS_DIR, RolloutRow, RolloutStore
from sharedroot.workflows.context import Site
from sharedroot.workflows.relink import slot_of

API = "/api/v1"


@dataclass(frozen=True)
class NewRollout:
    clones: tuple[str, ...]
    slot: int
    wave_size: int
    pause_each: bool
    max_failures: int
    selection: dict[str, Any]


def check(
    site: Site,
    *,
    clones: Sequence[object] | None,
    from_slot: object,
    slot: object,
    wave_size: object = 1,
    pause_each: object = False,
    max_failures: object = 0,
) -> NewRollout:
    """A new rollout's clones and figures, each checked against the site as it is."""
    target = within(slot, 1, site.config.gold_slots, "slot")
    size = within(wave_size, 1, MAX_WAVE_SIZE, "wave size")
    failures = within(max_failures, 0, MAX_FAILURES, "max failures")
    if not isinstance(pause_each, bool):
        raise InputError(f"pause after each wave {pause_each!r}: true or false")
    if (clones is None) == (from_slot is None):
        raise InputError(
            "name the clones, or a slot whose read-only clones all move (from slot); one of the two"
        )
    if from_slot is not None:
        source = within(from_slot, 1, site.config.gold_slots, "from slot")
        names = [
            g.name
            for g in site.state.guests()
            if g.role is Role.RO_CLONE and slot_of(site, g.name) == source
        ]
        if not names:
            raise InputError(f"no read-only clone links gold slot {source}")
        selection: dict[str, Any] = {"from_slot": source}
    else:
        assert clones is not None
        if not 1 <= len(clones) <= MAX_CLONES:
            raise InputError(f"clones: 1 to {MAX_CLONES} of them")
        names = [guest_name(c, "clone") for c in clones]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise InputError(f"clones named twice: {', '.join(twice)}")
        for n in names:
            row = site.state.guest(n)
            if row is None:
                raise InputError(f"{n}: no such guest")
            if row.role is not Role.RO_CLONE:
                raise InputError(
                    f"{n} is a {row.role.value} guest, not a read-only clone; only those"
                    " link a gold slot"
                )
        selection = {"clones": names}
    return NewRollout(tuple(names), target, size, pause_each, failures, selection)


def create(home: Path, store: RolloutStore, new: NewRollout, user: str) -> int:
    rid = store.add_rollout(
        new.clones,
        new.slot,
        new.wave_size,
        new.pause_each,
        new.max_failures,
        new.selection,
        user,
    )
    spawn(home, store, rid)
    return rid


def spawn(home: Path, store: RolloutStore, rollout: int) -> None:
    """Start the rollout's process in a session of its own."""
    log = store.dir / ROLLOUTS_DIR / str(rollout) / "rollout.log"
    pid, started = detached.launch("sharedroot.api.rollout_runner", home, rollout, log)
    store.set_runner(rollout, pid, started)


def one(store: RolloutStore, rollout: int) -> RolloutRow:
    row = store.rollout(rollout)
    if row is None:
        raise LookupError(f"rollout {rollout}: no such rollout")
    return row


def pause(store: RolloutStore, rollout: int) -> RolloutRow:
    """After the wave that runs now; a paused rollout stays paused."""
    row = one(store, rollout)
    if row.state.ended:
        raise RefusedError(f"rollout {rollout}: already {row.state.value}")
    if row.state is not RolloutState.PAUSED:
        store.set_flag(rollout, "pause", True)
    return one(store, rollout)


def resume(home: Path, store: RolloutStore, rollout: int) -> RolloutRow:
    row = one(store, rollout)
    if row.state in (RolloutState.PENDING, RolloutState.RUNNING):
        store.set_flag(rollout, "pause", False)  # a pause asked for, not yet taken
    elif row.state is RolloutState.PAUSED and store.move(
        rollout, [RolloutState.PAUSED], RolloutState.PENDING
    ):
        spawn(home, store, rollout)
    elif row.state is not RolloutState.PAUSED:
        raise RefusedError(f"rollout {rollout}: {row.state.value}, nothing to resume")
    return one(store, rollout)


def abort(store: RolloutStore, rollout: int) -> RolloutRow:
    """A paused rollout ends at once; a running one before its next wave (a wave in
    the middle of its migrate finishes it: a migrate is never cut halfway)."""
    row = one(store, rollout)
    if row.state.ended:
        raise RefusedError(f"rollout {rollout}: already {row.state.value}")
    if not store.move(rollout, [RolloutState.PAUSED], RolloutState.ABORTED, "aborted while paused"):
        store.set_flag(rollout, "abort", True)
    return one(store, rollout)


def retry(home: Path, store: RolloutStore, rollout: int) -> RolloutRow:
    """The failed clones again, and the rollout goes on; clones that passed stay."""
    row = one(store, rollout)
    if row.state is RolloutState.ABORTED:
        raise RefusedError(f"rollout {rollout}: aborted, which is final; start a new rollout")
    again = store.requeue(rollout, [CloneState.FAILED], None)
    if not again:
        raise RefusedError(f"rollout {rollout}: no failed clone to retry")
    if store.move(rollout, [RolloutState.FAILED], RolloutState.PENDING):
        store.set_flag(rollout, "abort", False)  # an abort that came too late to count
        spawn(home, store, rollout)
    return one(store, rollout)


def settle(store: RolloutStore) -> None:
    """Rollouts whose process is gone without an end (killed, the machine restarted)
    end as failed; a clone it left mid-step is failed too (retry takes it up: the
    next migrate finishes an interrupted one)."""
    detached.reap()
    for r in store.rollouts(limit=10_000):
        if r.state not in (RolloutState.PENDING, RolloutState.RUNNING) or r.runner is None:
            continue
        if detached.alive(r.runner, r.runner_start):
            continue
        busy = store.fail_busy(r.id, "the rollout's process ended during this clone's step")
        store.move(
            r.id,
            [RolloutState.PENDING, RolloutState.RUNNING],
            RolloutState.FAILED,
            "the rollout's process ended without recording an end (killed?)"
            + (f"; caught mid-step: {', '.join(busy)}" if busy else ""),
        )


def view(store: RolloutStore, row: RolloutRow) -> dict[str, Any]:
    """A rollout as the API and `rollout show --json` give it."""
    clones = store.clones(row.id)
    waves: dict[int, list[str]] = {}
    for c in clones:
        if c.wave is not None:
            waves.setdefault(c.wave, []).append(c.clone)
    states = [(c.clone, c.state) for c in clones]
    counts = {s.value: sum(1 for c in clones if c.state is s) for s in CloneState}
    return {
        "id": row.id,
        "state": row.state.value,
        "slot": row.slot,
        "wave_size": row.wave_size,
        "pause_after_each_wave": row.pause_each,
        "max_failures": row.max_failures,
        "selection": row.selection,
        "user": row.user,
        "created": row.created,
        "started": row.started,
        "ended": row.ended,
        "message": row.message,
        "pause_requested": row.pause,
        "abort_requested": row.abort,
        "wave": row.wave,
        "failures": counts[CloneState.FAILED.value],
        "counts": {k: v for k, v in counts.items() if v},
        "waves": [{"wave": n, "clones": names} for n, names in sorted(waves.items())],
        "planned": [] if row.state.ended else plan(states, row.wave_size),
        "clones": [
            {
                "clone": c.clone,
                "state": c.state.value,
                "wave": c.wave,
                "attempts": c.attempts,
                "started": c.started,
                "ended": c.ended,
                "message": c.message,
                "log": str(store.clone_log(row.id, c.clone)),
                "log_url": f"{API}/rollouts/{row.id}/clones/{c.clone}/log",
            }
            for c in clones
        ],
    }
