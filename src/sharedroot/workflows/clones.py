"""CLONERW and CLONERO: new servers from the gold (§1.5.8, §1.6.4)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from sharedroot.errors import RefusedError
from sharedroot.model.layout import gold_ro_address, gold_rw_address
from sharedroot.model.types import Role
from sharedroot.workflows import facts, guards
from sharedroot.workflows.context import UI, Options, Outcome, Site, Step, perform
from sharedroot.workflows.pipeline import Pairs, copy_guards, copy_guest, copy_steps
from sharedroot.workflows.relink import profile, recover, relink_to


def _require_role(site: Site, guest: str, role: Role, flag: str, command: str) -> None:
    have = guards.exists(site, guest)
    if have is not role:
        raise RefusedError(
            f"{guest} is a {have.value} guest; {command} needs one defined with {flag}"
        )


def clonerw(site: Site, ui: UI, opts: Options, guest: str) -> Outcome:
    """S10GOLD 11Bx -> GUEST 01Bx: a read-write clone."""
    _require_role(site, guest, Role.RW_CLONE, "--rw", "clonerw")
    if site.state.last_success("mnt2gold") is None:
        raise RefusedError("the gold has no read-write system yet; run mnt2gold first")
    pairs = [(gold_rw_address(d.address), d.address) for d in site.config.layout.copied]
    gold = site.config.guests.gold[0]
    args: dict[str, object] = {"guest": guest, "source": gold, "target": guest}
    return copy_guest(site, ui, opts, "clonerw", gold, guest, pairs, args)


def clonero(site: Site, ui: UI, opts: Options, guest: str) -> Outcome:
    return clonero_many(site, ui, opts, [guest])


def clonero_many(site: Site, ui: UI, opts: Options, guests: Sequence[str]) -> Outcome:
    """Copy each guest's private disks from the current slot's templates; LINK the rest RR.

    Several guests under one site lock, all checked before the first is written; each
    is its own journaled operation, so a batch cut short leaves every guest either
    cloned, or marked incomplete (its clonero to rerun), or untouched.
    """
    if len(set(guests)) != len(guests):
        raise RefusedError("clonero: a guest is named twice")
    for guest in guests:
        _require_role(site, guest, Role.RO_CLONE, "--ro", "clonero")
    layout = site.config.layout
    with site.locked(ui, writes=not opts.dry_run):
        for guest in guests:
            guards.defined(site, guest)
        if not opts.dry_run:
            for guest in guests:
                recover(site, ui, guest)  # a migrate killed half-way is finished first
        slot = site.state.current_slot()
        if slot is None:
            raise RefusedError("there is no current gold slot yet; run mnt2rogld and ro2gold")
        holder = site.config.slot_holder(slot)
        guards.gold_intact(site, slot)
        pairs = [(gold_ro_address(d.address), d.address) for d in layout.private]
        for guest in guests:
            copy_guards(site, holder, guest, pairs)
        plans = [(guest, _steps(site, ui, opts, slot, guest, pairs)) for guest in guests]
        for guest in guests:
            if site.hv.get_parm(guest) is None:
                ui.step(f"note: {guest} has no parm file; it will keep the gold's identity")
        whom = guests[0] if len(guests) == 1 else f"{len(guests)} guests ({', '.join(guests)})"
        question = f"Do you want to clone {holder} (gold slot {slot}) to {whom}? y/n"
        if not opts.dry_run and not opts.yes and not ui.confirm(question):
            raise RefusedError("clonero: not confirmed; nothing was changed")
        confirmed = replace(opts, yes=True)  # asked once for the whole batch
        outcome = Outcome("clonero", opts.dry_run, [])
        for guest, steps in plans:
            args = {"guest": guest, "slot": slot}
            done = perform(site, ui, confirmed, "clonero", args, steps, targets=[guest])
            outcome.steps += done.steps
            outcome.results += done.results
        return outcome


def _steps(site: Site, ui: UI, opts: Options, slot: int, guest: str, pairs: Pairs) -> list[Step]:
    holder = site.config.slot_holder(slot)
    links = profile(site, slot)

    def relink() -> dict[str, object]:
        with site.state.transaction():
            facts.forget_learnt(site.state, guest)  # a new machine-id to learn
        relink_to(site, guest, slot)
        return {"guest": guest, "slot": slot, "holder": holder}

    steps = copy_steps(site, ui, opts, holder, guest, pairs)
    addrs = " ".join(a for a, _, _ in links)
    steps.append(Step(f"LINK {holder} 21Bx RR at {addrs} (gold slot {slot})", relink))
    return steps
