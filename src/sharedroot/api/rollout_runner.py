"""One rollout's process: `python -m sharedroot.api.rollout_runner HOME ROLLOUT`.

Wave after wave, each wave as a person would move it: `sharedroot --json migrate
C1 C2 ... --slot N --reboot --parallel K --yes` (which stops, relinks and boots the
wave's clones side by side), then `sharedroot --json verify CLONE` of every clone it
moved, all at once, as the gate; so every guard of the CLI holds. The migrate's step
lines (its $SHAREDROOT_EVENTS_FD) tell each clone's state; its whole output goes to
the wave's log, the lines naming a clone also to that clone's log. Between two waves
the process reads the rollout's flags in server.db: abort stops before the next wave
(a migrate that has begun always ends), pause takes effect after the wave. It ends the
rollout (or pauses it) in server.db and exits.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

from sharedroot.api.clichild import last_error_line, run_cli
from sharedroot.errors import SharedrootError
from sharedroot.model.rollout import CloneState, RolloutState, next_wave, state_of_step
from sharedroot.model.types import GuestState
from sharedroot.store.rollouts import RolloutRow, RolloutStore
from sharedroot.workflows.context import Site
from sharedroot.workflows.relink import slot_of


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
        _wave(home, store, row, number, wave)
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
    assert row is not None  # only ended rollouts are ever pruned
    return row


def _wave(home: Path, store: RolloutStore, row: RolloutRow, number: int, wave: list[str]) -> None:
    for clone in wave:
        store.set_clone(row.id, clone, _first_state(home, clone), first=True)
    logs = {c: open(store.clone_log(row.id, c), "ab", buffering=0) for c in wave}  # noqa: SIM115
    wave_log = store.wave_log(row.id, number)
    try:
        migrate = ["migrate", *wave, "--slot", str(row.slot), "--reboot"]
        migrate += ["--parallel", str(len(wave)), "--yes"]
        for log in logs.values():
            log.write(f"> sharedroot {' '.join(migrate)}\n".encode())

        def step(text: str) -> None:  # a line naming clones goes to their logs too
            begun = state_of_step(text)
            named = begun[1] if begun else [c for c in logs if text.startswith(f"{c}: ")]
            for clone in (c for c in named if c in logs):
                logs[clone].write(f"> {text}\n".encode())
                if begun is not None:
                    store.set_clone(row.id, clone, begun[0])

        with open(wave_log, "ab", buffering=0) as log:
            code, result = _command(home, migrate, log, wave_log.with_suffix(".out"), step)
        moved = wave if code == 0 else _on_slot(home, wave, row.slot)
        for clone in wave:
            if clone not in moved:
                failure = _failure("migrate", result, wave_log)
                logs[clone].write(f"> {failure}\n> the wave's whole log: {wave_log}\n".encode())
                store.set_clone(row.id, clone, CloneState.FAILED, failure)
        for clone in moved:
            store.set_clone(row.id, clone, CloneState.VERIFYING)
        with ThreadPoolExecutor(max(1, len(moved))) as pool:
            verifies = {c: pool.submit(_verify, home, store, row.id, c, logs[c]) for c in moved}
        for clone, done in verifies.items():  # here, so only this thread writes server.db
            code, result = done.result()
            if code == 0 and isinstance(result, dict) and result.get("ok") is True:
                store.set_clone(row.id, clone, CloneState.OK)
                logs[clone].write(b"> ok\n")
            else:
                failure = _failure("verify", result, store.clone_log(row.id, clone))
                store.set_clone(row.id, clone, CloneState.FAILED, failure)
    finally:
        for log in logs.values():
            log.close()


def _verify(
    home: Path, store: RolloutStore, rollout: int, clone: str, log: IO[bytes]
) -> tuple[int, Any]:
    out_path = store.clone_log(rollout, clone).with_suffix(".out")
    return _command(home, ["verify", clone], log, out_path, lambda text: None)


def _on_slot(home: Path, wave: list[str], slot: int) -> list[str]:
    """The clones a failed migrate did move: those its verify is to judge."""
    try:
        site = Site.open(home, readonly=True)
        try:
            return [c for c in wave if slot_of(site, c) == slot]
        finally:
            site.state.close()
    except SharedrootError:
        return []


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
