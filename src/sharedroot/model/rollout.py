"""Rollouts: read-only clones moved to a gold slot in waves, `verify` as the gate.

The states, the wave plan (a canary of one clone until one passes, then waves of
wave_size) and how a migrate's step lines tell where a clone stands: pure functions,
so the runner, the API and the tests share them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from enum import StrEnum

from sharedroot.errors import InputError

MAX_WAVE_SIZE = 1000
MAX_FAILURES = 10_000
MAX_CLONES = 10_000


class RolloutState(StrEnum):
    PENDING = "pending"  # accepted; its process has not begun
    RUNNING = "running"
    PAUSED = "paused"  # no process: resume starts one
    ABORTED = "aborted"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def ended(self) -> bool:
        return self in (RolloutState.ABORTED, RolloutState.SUCCEEDED, RolloutState.FAILED)

    @property
    def active(self) -> bool:
        """Its clones are taken: no other rollout may move them meanwhile."""
        return self in (RolloutState.PENDING, RolloutState.RUNNING, RolloutState.PAUSED)


class CloneState(StrEnum):
    PENDING = "pending"
    STOPPING = "stopping"
    RELINKING = "relinking"
    MERGING_ETC = "merging_etc"
    BOOTING = "booting"
    VERIFYING = "verifying"
    OK = "ok"
    FAILED = "failed"

    @property
    def busy(self) -> bool:
        """Somewhere between the start of its migrate and the end of its verify."""
        return self not in (CloneState.PENDING, CloneState.OK, CloneState.FAILED)


# migrate's step lines (workflows/migrate.py, relink.py, guest.py), the clones each one
# names and the state it begins for them; any other line leaves the states as they are.
_STEPS = (
    (re.compile(r"wave [0-9]+: stopping (?P<who>.+)"), CloneState.STOPPING),
    (re.compile(r"(?P<who>\S+): LINK .* RR \(gold slot .*"), CloneState.RELINKING),
    (re.compile(r"(?P<who>\S+): finishing an interrupted migrate .*"), CloneState.RELINKING),
    (re.compile(r"(?P<who>\S+): merge /local/etc .*"), CloneState.MERGING_ETC),
    (re.compile(r"wave [0-9]+: starting (?P<who>.+)"), CloneState.BOOTING),
    (re.compile(r"waiting until (?P<who>\S+) is ready.*"), CloneState.BOOTING),
)


def state_of_step(text: str) -> tuple[CloneState, list[str]] | None:
    """The state a step line begins, and the clones it begins it for."""
    for rule, state in _STEPS:
        if found := rule.fullmatch(text):
            return state, found["who"].split(", ")
    return None


def next_wave(clones: Sequence[tuple[str, CloneState]], wave_size: int) -> list[str]:
    """The clones of the next wave, in the rollout's order: one alone (the canary)
    until a clone of the rollout has passed, then up to wave_size."""
    pending = [name for name, state in clones if state is CloneState.PENDING]
    passed = any(state is CloneState.OK for _, state in clones)
    return pending[: wave_size if passed else 1]


def plan(clones: Sequence[tuple[str, CloneState]], wave_size: int) -> list[list[str]]:
    """The waves still to come, if every clone from here on passes."""
    states = list(clones)
    waves: list[list[str]] = []
    while wave := next_wave(states, wave_size):
        waves.append(wave)
        states = [(n, CloneState.OK if n in wave else s) for n, s in states]
    return waves


def within(value: object, lo: int, hi: int, what: str) -> int:
    """A whole number from lo to hi (not a bool, not a float)."""
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InputError(f"{what} {value!r}: a whole number from {lo} to {hi}")
    return value
