"""Copies along the pipeline: MNT2TST, TST2MNT, MNT2GOLD, MNT2ROGLD, RO2GOLD (§1.5-§1.7)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict

from sharedroot.errors import RefusedError
from sharedroot.guestos.platform import find
from sharedroot.guestos.readonly import check_supported, make_readonly
from sharedroot.guestos.writable import check_tree
from sharedroot.model.layout import gold_ro_address, gold_rw_address
from sharedroot.workflows import guards
from sharedroot.workflows.attach import disk_hash, guest_tree
from sharedroot.workflows.context import UI, Options, Outcome, Site, Step, perform

Pairs = Sequence[tuple[str, str]]


def copy_guards(site: Site, source: str, target: str, pairs: Pairs) -> None:
    """The paper's checks before a copy: both logged off, nobody else on the target disks.

    Also: the source is a whole set (not left half written by an interrupted command),
    and its images are what the store records.
    """
    guards.logged_off(site, source)
    guards.logged_off(site, target)
    guards.complete(site, source, "a source")
    guards.defined(site, target)
    guards.has_disks(site, source, [s for s, _ in pairs])
    guards.has_disks(site, target, [t for _, t in pairs])
    guards.not_linked(site, target, [t for _, t in pairs])
    for s, _ in pairs:
        site.hv.check_disk(source, s)  # whole: what the store records


def copy_steps(
    site: Site, ui: UI, opts: Options, source: str, target: str, pairs: Pairs
) -> list[Step]:
    def copier(src_addr: str, dst_addr: str) -> Step:
        disk = site.state.disk(source, src_addr)
        total = disk.size if disk else 0

        def action() -> dict[str, object]:
            label = f"{source} {src_addr} -> {target} {dst_addr}"
            with ui.progress(label, total) as progress:
                result = site.hv.copy_disk(
                    source, src_addr, target, dst_addr, progress=progress, verify=opts.verify
                )
            fields = {k: getattr(v, "value", v) for k, v in asdict(result).items()}
            return {"source": f"{source} {src_addr}", "target": f"{target} {dst_addr}"} | fields

        return Step(f"copy {source} {src_addr} to {target} {dst_addr}", action)

    return [copier(s, t) for s, t in pairs]


def copy_guest(
    site: Site,
    ui: UI,
    opts: Options,
    operation: str,
    source: str,
    target: str,
    pairs: Pairs,
    args: dict[str, object] | None = None,
) -> Outcome:
    """Copy source's disks onto target's, address pair by pair, after the paper's checks."""
    with site.locked(ui, writes=not opts.dry_run):
        copy_guards(site, source, target, pairs)
        return perform(
            site,
            ui,
            opts,
            operation,
            args or {"source": source, "target": target},
            copy_steps(site, ui, opts, source, target, pairs),
            f"Do you want to copy R/W disks from {source} to {target}? y/n",
            targets=[target],
        )


def same_addresses(site: Site) -> list[tuple[str, str]]:
    return [(d.address, d.address) for d in site.config.layout.copied]


def mnt2tst(site: Site, ui: UI, opts: Options) -> Outcome:
    g = site.config.guests
    return copy_guest(site, ui, opts, "mnt2tst", g.maintenance, g.test, same_addresses(site))


def tst2mnt(site: Site, ui: UI, opts: Options) -> Outcome:
    g = site.config.guests
    return copy_guest(site, ui, opts, "tst2mnt", g.test, g.maintenance, same_addresses(site))


def mnt2gold(site: Site, ui: UI, opts: Options) -> Outcome:
    """S10RWMNT 01Bx -> S10GOLD 11Bx: the gold read-write system."""
    g = site.config.guests
    pairs = [(d.address, gold_rw_address(d.address)) for d in site.config.layout.copied]
    return copy_guest(site, ui, opts, "mnt2gold", g.maintenance, g.gold[0], pairs)


def mnt2rogld(site: Site, ui: UI, opts: Options) -> Outcome:
    """S10RWMNT -> S10ROGLD, then made a read-only-root system on the worker (mnt2rogld.sh).

    Always starts again from a fresh copy of the maintenance system, so a rerun (or a
    run after an interrupted one) gives the same result.
    """
    g = site.config.guests
    source, target = g.maintenance, g.staging
    pairs = same_addresses(site)
    filesystems = site.config.layout.with_filesystems  # logical volumes too
    platform = find(site.hv.bus)

    with site.locked(ui, writes=not opts.dry_run):
        copy_guards(site, source, target, pairs)
        # Before the staging disks are overwritten: can this system be made read-only?
        with guest_tree(site, source, filesystems) as root:
            check_supported(root)
            check_tree(root, site.config.writable)

        def convert() -> None:
            with guest_tree(site, target, filesystems, write=True) as root:
                make_readonly(root, site.config.layout, ui.step, platform, site.config.writable)

        steps = copy_steps(site, ui, opts, source, target, pairs)
        steps.append(Step(f"mount {target} on the worker and make it a read-only root", convert))
        return perform(
            site,
            ui,
            opts,
            "mnt2rogld",
            {"source": source, "target": target},
            steps,
            f"Do you want to copy {source} to {target} and make it read-only? y/n",
            targets=[target],
        )


def free_slot(site: Site) -> int:
    """A gold slot that no guest links, the current one last; refuse if there is none."""
    current = site.state.current_slot()
    free = [
        n
        for n, holder in enumerate(site.config.guests.gold, start=1)
        if not [lk for lk in site.hv.links_to(holder) if lk.guest != holder]
    ]
    if not free:
        raise RefusedError(
            "every gold slot is linked by read-only clones; migrate them off one first"
            " (see `sharedroot linked`)"
        )
    return sorted(free, key=lambda n: (n == current, n))[0]


def ro2gold(site: Site, ui: UI, opts: Options, slot: int | None = None) -> Outcome:
    """S10ROGLD 01Bx -> slot N's 21Bx (RO2GOLD, RO2GOLD2); slot N becomes current."""
    staging = site.config.guests.staging
    layout = site.config.layout
    if slot is not None:
        site.config.slot_holder(slot)  # a slot this site has, before anything else
    with site.locked(ui, writes=not opts.dry_run):
        if site.state.last_success("mnt2rogld") is None:
            raise RefusedError(f"{staging} holds no read-only system yet; run mnt2rogld first")
        guards.complete(site, staging, "the source of a gold slot")
        chosen = free_slot(site) if slot is None else slot
        holder = site.config.slot_holder(chosen)
        linkers = sorted({lk.guest for lk in site.hv.links_to(holder) if lk.guest != holder})
        if linkers:
            who = ", ".join(guards.where(site, linkers))
            raise RefusedError(
                f"WARNING: guests are currently reading the {holder} disks (gold slot"
                f" {chosen}): {who}. The slot cannot be overwritten while they link it;"
                " stop or migrate them, or choose another --slot"
            )
        moving = [
            k.removeprefix("migrating:")
            for k, v in site.state.facts("migrating:").items()
            if chosen in json.loads(v).values()
        ]
        if moving:  # an interrupted move still needs this slot's /etc template
            raise RefusedError(
                f"gold slot {chosen}: an interrupted migrate of {', '.join(moving)} still"
                " needs it; run any command on those clones (e.g. verify) to finish it"
            )
        pairs = [(d.address, gold_ro_address(d.address)) for d in layout.copied]
        copy_guards(site, staging, holder, pairs)

        def promote() -> dict[str, object]:
            hashes = {t: disk_hash(site, holder, t) for _, t in pairs}
            stamps = {t: stamp for _, t in pairs if (stamp := site.hv.stamp(holder, t))}
            with site.state.transaction():
                generation = site.state.add_generation(chosen, staging, hashes, stamps)
                site.state.set_current_slot(chosen)
            return {"slot": chosen, "holder": holder, "generation": generation}

        steps = copy_steps(site, ui, opts, staging, holder, pairs)
        steps.append(Step(f"record the generation and make gold slot {chosen} current", promote))
        return perform(
            site,
            ui,
            opts,
            "ro2gold",
            {"slot": chosen, "holder": holder},
            steps,
            f"Do you want to copy {staging} to {holder} (gold slot {chosen})? y/n",
            targets=[holder],
        )
