"""Moving one read-only clone between gold slots: relink, then merge its /etc.

The move is recorded in the state until both steps are done; `recover` finishes an
interrupted one (the process killed between relink and merge), and every command that
acts on a clone calls it first.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from sharedroot.guestos import etcmerge
from sharedroot.model.layout import gold_ro_address
from sharedroot.workflows.attach import guest_tree
from sharedroot.workflows.context import UI, Site, Step


def profile(site: Site, slot: int) -> list[tuple[str, str, str]]:
    """A slot's profile (S10DFLT, S10DFLT2): the RR links (address, holder, holder address)."""
    holder = site.config.slot_holder(slot)
    return [(d.address, holder, gold_ro_address(d.address)) for d in site.config.layout.shared]


def profile_name(site: Site, slot: int) -> str:
    """The directory profile a read-only clone of a slot INCLUDEs (paper: S10DFLT, S10DFLT2)."""
    return f"{site.config.prefix}DFLT" + ("" if slot == 1 else str(slot))


def slot_of(site: Site, guest: str) -> int | None:
    """The gold slot whose profile a clone links, or None."""
    shared = site.config.layout.shared
    link = site.state.link(guest, shared[0].address) if shared else None
    if link is None or link.owner not in site.config.guests.gold:
        return None
    return site.config.guests.gold.index(link.owner) + 1


def _record_key(guest: str) -> str:
    return f"migrating:{guest}"


def work_dir(site: Site, guest: str) -> Path:
    return site.home / "work" / guest


@contextmanager
def _etc_trees(
    site: Site, guest: str, base: int, theirs: int, *, look_only: bool = False
) -> Iterator[tuple[Path, ...]]:
    """base, theirs (read-only) and ours (read-write unless look_only) /etc trees.

    A look mounts everything read-only in places of its own, so it neither writes the
    clone's disk nor touches the work directory an interrupted merge keeps its journal in.
    """
    local = next(d for d in site.config.layout.private if d.mount == "/local")
    alone = replace(local, mount="/")  # each /local disk mounted as a tree of its own
    template = [gold_ro_address(local.address)]  # a slot's /local template (21B5)
    work = None if look_only else work_dir(site, guest)

    def at(name: str) -> Path | None:
        return None if work is None else work / name

    def holder(slot: int) -> str:
        return site.config.slot_holder(slot)

    with (
        guest_tree(site, holder(base), [alone], addresses=template, at=at("base")) as b,
        guest_tree(site, holder(theirs), [alone], addresses=template, at=at("theirs")) as t,
        guest_tree(site, guest, [alone], write=not look_only, at=at("ours")) as o,
    ):
        yield b / "etc", t / "etc", o / "etc"


def relink_to(site: Site, guest: str, slot: int) -> None:
    with site.state.transaction():
        site.hv.set_profile(guest, profile_name(site, slot), profile(site, slot))


def _merge(site: Site, ui: UI, guest: str, base: int, theirs: int) -> dict[str, Any]:
    journal = work_dir(site, guest) / "etcmerge.json"
    with _etc_trees(site, guest, base, theirs) as (b, t, o):
        if journal.exists():
            plan = etcmerge.resume_merge(journal, t, o)
        else:
            plan = etcmerge.plan_merge(b, t, o)
            etcmerge.apply_merge(plan, t, o, journal=journal)
    for c in plan.conflicts:
        ui.step(f"{guest}: /etc/{c.path}: {c.reason}")
    beside = [c.target for c in plan.conflicts if c.writes]  # the gold's, as NAME.sharedroot-new
    return {
        "guest": guest,
        "merge": plan.counts(),
        "conflicts": [c.path for c in plan.conflicts],
        "beside": beside,
    }


def _finish(site: Site, guest: str, *, clear_mark: bool = True) -> None:
    """The move is whole: its record goes; and its incomplete mark, unless the migrate's
    own journal entry is still open (then the transaction that ends it clears the mark)."""
    shutil.rmtree(work_dir(site, guest), ignore_errors=True)
    half = site.state.incomplete().get(guest)
    with site.state.transaction():
        site.state.forget_fact(_record_key(guest))
        if clear_mark and half is not None and half.operation == "migrate":
            site.state.mark_complete(guest)


def recover(site: Site, ui: UI, guest: str) -> None:
    """Finish a move that was interrupted (the process killed between its steps)."""
    record = site.state.fact(_record_key(guest))
    if record is None:
        half = site.state.incomplete().get(guest)
        if half is not None and half.operation == "migrate":  # killed after the merge
            with site.state.transaction():
                site.state.mark_complete(guest)
        return
    move = json.loads(record)
    base, target = int(move["from"]), int(move["to"])
    if slot_of(site, guest) == base:  # killed before the relink: nothing happened yet
        ui.step(f"{guest}: an interrupted migrate had not relinked yet; nothing to finish")
        _finish(site, guest)
        return
    ui.step(f"{guest}: finishing an interrupted migrate from slot {base} to slot {target}")
    relink_to(site, guest, target)
    _merge(site, ui, guest, base, target)
    _finish(site, guest)


def preview(site: Site, guest: str, base: int, target: int) -> etcmerge.Plan:
    """The /etc merge a move would do, read from the disks without changing them."""
    with _etc_trees(site, guest, base, target, look_only=True) as (b, t, o):
        return etcmerge.plan_merge(b, t, o)


def move_steps(site: Site, ui: UI, guest: str, base: int, target: int) -> list[Step]:
    holder = site.config.slot_holder(target)

    def relink() -> None:
        with site.state.transaction():
            site.state.set_fact(_record_key(guest), json.dumps({"from": base, "to": target}))
        relink_to(site, guest, target)

    def merge() -> dict[str, Any]:
        result = _merge(site, ui, guest, base, target)
        _finish(site, guest, clear_mark=False)
        return result | {"from": base, "to": target}

    return [
        Step(f"{guest}: LINK {holder} 21Bx RR (gold slot {base} -> {target})", relink),
        Step(f"{guest}: merge /local/etc (slot {base} template -> slot {target})", merge),
    ]
