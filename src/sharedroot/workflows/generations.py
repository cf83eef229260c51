"""GENERATIONS and PRUNE: ro2gold's history.

A generation is one ro2gold into a gold slot: the paper's RO2GOLD (or RO2GOLD2) copying
S10ROGLD onto S10GOLD's (S10GOLD2's) 21Bx disks and making that slot current. The store
records its source, its time and each disk's content hash; clonero and migrate check
a slot against the generation it holds. A later ro2gold into the same slot overwrites
its disks: the older generation is then history only. Only the generation a slot holds
can be linked (clones link the slot's disks), so only that one is ever in use.

prune forgets the history rows of generations no slot holds; nothing else is stored for
a generation (its disks are the slot's, already overwritten).
"""

from __future__ import annotations

from typing import Any

from sharedroot.workflows import report
from sharedroot.workflows.context import UI, Options, Outcome, Site, Step, perform


def generations(site: Site) -> dict[str, Any]:
    """Every generation: its slot, source, time, whether its slot holds it, who links it."""
    facts = report.linked(site)  # who links each slot, as CP sees it now
    holders = {h["slot"]: h for h in facts["holders"] if h["slot"] is not None}
    with site.state.reading():
        held = _held(site)
        rows = site.state.generations()
        # ... and as the store records it (the directory's links, running or not)
        stored = {
            n: {lk.guest for lk in site.state.links_to(h["holder"])} - {h["holder"]}
            for n, h in holders.items()
        }
    out = []
    for g in rows:
        holder = holders.get(g.slot)
        holds = held.get(g.slot) == g.id
        linkers: set[str] = set()
        if holds and holder is not None:  # only what a slot holds can be linked
            linkers = {c["name"] for c in holder["clones"]} | stored[g.slot]
        out.append(
            {
                "id": g.id,
                "slot": g.slot,
                "holder": holder["holder"] if holder else None,
                "built_from": g.source,
                "built": g.created,
                "held": holds,  # the slot's content now
                "current": holds and g.slot == facts["current_slot"],  # and the slot is CURGOLD
                "linked_by": sorted(linkers),
                "removable": not holds,
            }
        )
    return {"current_slot": facts["current_slot"], "generations": out}


def _held(site: Site) -> dict[int, int]:
    """slot -> the generation it holds."""
    return {s.slot: s.generation for s in site.state.slots() if s.generation is not None}


def prune(site: Site, ui: UI, opts: Options) -> Outcome:
    """Forget the generations no slot holds any more (never one a slot holds)."""
    with site.locked(ui, writes=not opts.dry_run):
        held = set(_held(site).values())
        gone = [g for g in site.state.generations() if g.id not in held]
        if not gone:
            ui.step("nothing to prune: every generation recorded is what its slot holds")
            return Outcome("prune", opts.dry_run, [])
        ids = [g.id for g in gone]
        shown = ", ".join(f"{g.id} (slot {g.slot}, {g.created})" for g in gone)

        def forget() -> dict[str, object]:
            with site.state.transaction():  # held again, under the write lock of SQLite
                now = set(_held(site).values())
                site.state.delete_generations([i for i in ids if i not in now])
            return {"pruned": ids}

        step = Step(f"forget generations {shown}: their slots hold later ones", forget)
        question = f"Do you want to forget {len(ids)} generation(s) of ro2gold's history? y/n"
        return perform(site, ui, opts, "prune", {"generations": ids}, [step], question)
