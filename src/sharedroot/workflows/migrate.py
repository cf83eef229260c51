"""MIGRATE: move read-only clones to another gold slot, their /etc merged (paper §1.7).

Per clone, logged off: relink its read-only disks to the target slot's profile, then
merge /local/etc three ways (see relink.py).  With --reboot, running clones are
stopped, moved and started again in waves of --parallel; the rollout stops at the first
clone that does not come back ready, and the clones after it are not touched.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from sharedroot.errors import OperationError, RefusedError
from sharedroot.model.types import GuestState, Role
from sharedroot.workflows import guards
from sharedroot.workflows.context import UI, Options, Outcome, Site, perform
from sharedroot.workflows.guest import start_request, wait_ready
from sharedroot.workflows.relink import move_steps, preview, recover, slot_of

T = TypeVar("T")


def _parallel(
    items: Sequence[str], k: int, fn: Callable[[str], T]
) -> list[tuple[str, T | Exception]]:
    out: list[tuple[str, T | Exception]] = []
    with ThreadPoolExecutor(max_workers=max(1, k)) as pool:
        futures = [(g, pool.submit(fn, g)) for g in items]
        for g, f in futures:
            try:
                out.append((g, f.result()))
            except Exception as exc:  # reported per guest; the caller stops the rollout
                out.append((g, exc))
    return out


def migrate(
    site: Site,
    ui: UI,
    opts: Options,
    guests: Sequence[str],
    slot: int,
    *,
    reboot: bool = False,
    parallel: int = 1,
    timeout: float = 600,
) -> Outcome:
    holder = site.config.slot_holder(slot)
    if not [s for s in site.state.slots() if s.slot == slot and s.generation is not None]:
        raise RefusedError(
            f"gold slot {slot} ({holder}) holds nothing yet; run ro2gold --slot {slot}"
        )
    with site.locked(ui, writes=not opts.dry_run):
        guards.gold_intact(site, slot)
        for g in guests:
            if guards.exists(site, g) is not Role.RO_CLONE:
                raise RefusedError(f"{g} is not a read-only clone; only those link a gold slot")
            if not opts.dry_run:
                recover(site, ui, g)
        moves = {g: slot_of(site, g) for g in guests}
        unlinked = [g for g, s in moves.items() if s is None]
        if unlinked:
            raise RefusedError(f"{', '.join(unlinked)}: not linked to a gold slot; clonero first")
        todo = [g for g in guests if moves[g] != slot]
        running = [g for g in todo if site.hv.query(g) is GuestState.LOGGED_ON]
        if running and not reboot:
            raise RefusedError(
                f"{', '.join(running)} logged on; stop them first, or pass --reboot to stop,"
                " move and start them again"
            )
        for g in todo:
            guards.devices_present(site, g)
        if opts.dry_run:
            steps = [s for g in todo for s in move_steps(site, ui, g, int(moves[g] or 0), slot)]
            outcome = perform(site, ui, opts, "migrate", {"slot": slot}, steps)
            for g in todo:
                plan = preview(site, g, int(moves[g] or 0), slot)
                for c in plan.changes:
                    ui.step(f"would {g}: /etc/{c.path}: {c.action} ({c.reason})")
                outcome.results.append({"guest": g, "merge_plan": plan.to_json()})
            return outcome

        question = (
            f"Do you want to move {len(todo)} clone(s) to gold slot {slot}"
            + (f", stopping and restarting {', '.join(running)}" if running else "")
            + "? y/n"
        )
        if todo and not opts.yes and not ui.confirm(question):
            raise RefusedError("migrate: not confirmed; nothing was changed")
        outcome = Outcome("migrate", False, [])
        waves = [todo[i : i + max(1, parallel)] for i in range(0, len(todo), max(1, parallel))]
        for n, wave in enumerate(waves, start=1):
            up = [g for g in wave if g in running]
            if up:
                ui.step(f"wave {n}: stopping {', '.join(up)}")
                stopped = _parallel(up, parallel, lambda g: site.hv.stop(g, 120))
                still = [
                    (g, r)
                    for g, r in stopped
                    if isinstance(r, Exception) or site.hv.query(g) is GuestState.LOGGED_ON
                ]
                if still:  # never merge into the disk of a guest that may still run
                    bad = {g for g, _ in still}
                    for g in up:  # back up, unchanged, on the slot they were on
                        if g not in bad:
                            site.hv.start(g, start_request(site))
                    left = [g for w in waves[n - 1 :] for g in w]
                    raise OperationError(
                        "migrate stopped: "
                        + "; ".join(
                            f"{g} did not log off" + (f" ({r})" if isinstance(r, Exception) else "")
                            for g, r in still
                        )
                        + f". Not moved: {', '.join(left)}"
                    )
            for g in wave:
                steps = move_steps(site, ui, g, int(moves[g] or 0), slot)
                done = perform(
                    site, ui, opts, "migrate", {"guest": g, "slot": slot}, steps, targets=[g]
                )
                outcome.steps += done.steps
                outcome.results += done.results
            if not up:
                continue
            ui.step(f"wave {n}: starting {', '.join(up)}")
            request = start_request(site)
            for g in up:
                site.hv.start(g, request)
            results = _parallel(up, parallel, lambda g: wait_ready(site, ui, g, timeout))
            failed = [(g, r) for g, r in results if isinstance(r, Exception)]
            if failed:
                left = [g for w in waves[n:] for g in w]
                raise OperationError(
                    "migrate stopped: "
                    + "; ".join(f"{g} did not come back ready ({r})" for g, r in failed)
                    + (f". Not touched: {', '.join(left)}" if left else "")
                )
        return outcome
