"""One rollout's process: `python -m sharedroot.api.rollout_runner HOME ROLLOUT`.

Wave after wave, each clone as a person would move it: `sharedroot --json migrate
CLONE --slot N --reboot --yes`, then `sharedroot --json verify CLONE` as the gate, so
every guard of the CLI holds. The migrate's step lines (its $SHAREDROOT_EVENTS_FD)
tell the clone's state; its output goes to the clone's log. Between two clones the
process reads the rollout's flags in server.db: abort stops before the next clone (a
migrate that has begun always ends), pause takes effect after the wave. It ends the
rollout (or pauses it) in server.db and exits.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from sharedroot.api.clichild import last_error_line, run_cli
from sharedroot.errors import SharedrootError
from sharedroot.model.rollout import CloneState, RolloutState, next_wave, state_of_step
from sharedroot.model.types import GuestState
from sharedroot.store.rollouts import RolloutRow, RolloutStore
from sharedroot.workflows.context import Site


def run_rollout(home: Path, rollout: int) -> int:
    store = RolloutStore(home)
    try:
        if not store.move(rollout, [RolloutState.PENDING], RolloutState.RUNNING):
            return 1  # ended or paused meanwhile, or another process has it
        try:
            _drive(home, store, rollout)
        except BaseException as exc:
            busy = store.fail_busy(rollout, f"the rollout's process failed: {exc}")
            store.move(
                rollout,
                [RolloutState.RUNNING],
                RolloutState.FAILED,
                f"the rollout's process failed: {exc or type(exc).__name__}"
                + (f"; caught mid-step: {', '.join(busy)}" if busy else ""),
            )
            raise
        return 0
    finally:
        store.close()


def _drive(home: Path, store: RolloutStore, rollout: int) -> None:
    while True:
        row = _row(store, rollout)
        clones = [(c.clone, c.state) for c in store.clones(rollout)]
        failed = [n for n, s in clones if s is CloneState.FAILED]
        wave = next_wave(clones, row.wave_size)
        if len(failed) > row.max_failures:
            store.move(
                rollout,
                [RolloutState.RUNNING],
                RolloutState.FAILED,
                f"{len(failed)} clone(s) failed ({', '.join(failed)}), more than max failures"
                f" {row.max_failures}; retry takes the failed ones up again",
            )
            return
        if not wave:  # succeeded: every clone passed; within max failures it went on
            store.move(
                rollout,
                [RolloutState.RUNNING],
                RolloutState.FAILED if failed else RolloutState.SUCCEEDED,
                f"{len(failed)} clone(s) failed ({', '.join(failed)}), within max failures"
                f" {row.max_failures}: the others went on"
                if failed
                else None,
            )
            return
        if row.abort:
            store.move(
                rollout, [RolloutState.RUNNING], RolloutState.ABORTED, f"aborted before {wave[0]}"
            )
            return
        if row.pause:  # asked for before this process began: before any wave of it
            store.move(rollout, [RolloutState.RUNNING], RolloutState.PAUSED, "paused")
            return
        number = row.wave + 1
        store.begin_wave(rollout, number, wave)
        for n, clone in enumerate(wave):
            if n and _row(store, rollout).abort:
                store.move(
                    rollout, [RolloutState.RUNNING], RolloutState.ABORTED, f"aborted before {clone}"
                )
                return
            _one_clone(home, store, row, clone)
            gone = sum(1 for c in store.clones(rollout) if c.state is CloneState.FAILED)
            if gone > row.max_failures:
                break  # the top of the loop ends the rollout
        row = _row(store, rollout)
        clones = [(c.clone, c.state) for c in store.clones(rollout)]
        failed = [n for n, s in clones if s is CloneState.FAILED]
        more = next_wave(clones, row.wave_size) and len(failed) <= row.max_failures
        if more and not row.abort and (row.pause or row.pause_each):
            store.move(
                rollout, [RolloutState.RUNNING], RolloutState.PAUSED, f"paused after wave {number}"
            )
            return


def _row(store: RolloutStore, rollout: int) -> RolloutRow:
    row = store.rollout(rollout)
    assert row is not None  # rollouts are never deleted
    return row


def _one_clone(home: Path, store: RolloutStore, row: RolloutRow, clone: str) -> None:
    log_path = store.clone_log(row.id, clone)
    out_path = log_path.with_suffix(".out")
    store.set_clone(row.id, clone, _first_state(home, clone), first=True)
    with open(log_path, "ab", buffering=0) as log:

        def step(text: str) -> None:
            state = state_of_step(text)
            if state is not None:
                store.set_clone(row.id, clone, state)

        migrate = ["migrate", clone, "--slot", str(row.slot), "--reboot", "--yes"]
        code, result = _command(home, migrate, log, out_path, step)
        if code != 0:
            store.set_clone(row.id, clone, CloneState.FAILED, _failure("migrate", result, log_path))
            return
        store.set_clone(row.id, clone, CloneState.VERIFYING)
        code, result = _command(home, ["verify", clone], log, out_path, lambda text: None)
        if code == 0 and isinstance(result, dict) and result.get("ok") is True:
            store.set_clone(row.id, clone, CloneState.OK)
            log.write(b"> ok\n")
            return
        store.set_clone(row.id, clone, CloneState.FAILED, _failure("verify", result, log_path))


def _first_state(home: Path, clone: str) -> CloneState:
    """A running clone is stopped first; one logged off is relinked at once."""
    try:
        site = Site.open(home, readonly=True)
        try:
            up = site.hv.query(clone) is GuestState.LOGGED_ON
        finally:
            site.state.close()
    except (SharedrootError, OSError):
        up = True  # migrate says what is wrong, in its own words
    return CloneState.STOPPING if up else CloneState.RELINKING


def _command(
    home: Path, words: list[str], log: IO[bytes], out_path: Path, step: Callable[[str], None]
) -> tuple[int, Any]:
    """Run `sharedroot --json WORDS`: its steps to `step` and the log, its stderr to the
    log; its exit code and its --json answer."""
    log.write(f"> sharedroot {' '.join(words)}\n".encode())

    def event(fields: dict[str, Any]) -> None:
        if fields["kind"] == "step":
            step(str(fields["text"]))

    end = run_cli(home, ["--json", *words], log, out_path, event)
    log.write(f"> exit code {end.code}\n".encode())
    return end.code, end.result


def _failure(what: str, result: Any, log_path: Path) -> str:
    """The command's own words: its error, or the checks that failed."""
    if isinstance(result, dict) and isinstance(result.get("checks"), list):
        bad = [
            f"{c.get('check')}: {c.get('detail')}"
            for c in result["checks"]
            if isinstance(c, dict) and not c.get("ok")
        ]
        if bad:
            return f"{what}: " + "; ".join(bad)
    if isinstance(result, dict) and isinstance(result.get("error"), str):
        return f"{what}: {result['error']}"
    return f"{what}: " + (last_error_line(log_path) or "failed")


def main() -> int:
    if len(sys.argv) != 3 or not sys.argv[2].isdecimal():
        sys.stderr.write("usage: python -m sharedroot.api.rollout_runner HOME ROLLOUT\n")
        return 2
    return run_rollout(Path(sys.argv[1]), int(sys.argv[2]))


if __name__ == "__main__":
    sys.exit(main())
