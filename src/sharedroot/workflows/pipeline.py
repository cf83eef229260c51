"""Copies between whole guests: MNT2TST, TST2MNT, MNT2GOLD, CLONERW (paper §1.5.5-§1.5.8)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict

from sharedroot.errors import RefusedError
from sharedroot.model.layout import gold_rw_address
from sharedroot.model.types import Role
from sharedroot.workflows import guards
from sharedroot.workflows.context import UI, Options, Outcome, Site, Step, perform


def copy_guest(
    site: Site,
    ui: UI,
    opts: Options,
    operation: str,
    source: str,
    target: str,
    pairs: Sequence[tuple[str, str]],
) -> Outcome:
    """Copy source's disks onto target's, address pair by pair, after the paper's checks."""
    with site.locked():
        guards.logged_off(site, source)
        guards.logged_off(site, target)
        guards.has_disks(site, source, [s for s, _ in pairs])
        guards.has_disks(site, target, [t for _, t in pairs])
        guards.not_linked(site, target, [t for _, t in pairs])

        def copier(src_addr: str, dst_addr: str) -> Step:
            size = site.state.disk(source, src_addr)
            total = size.size if size else 0

            def action() -> dict[str, object]:
                label = f"{source} {src_addr} -> {target} {dst_addr}"
                with ui.progress(label, total) as progress:
                    result = site.hv.copy_disk(
                        source, src_addr, target, dst_addr, progress=progress, verify=opts.verify
                    )
                return {"source": f"{source} {src_addr}", "target": f"{target} {dst_addr}"} | {
                    k: (v.value if hasattr(v, "value") else v) for k, v in asdict(result).items()
                }

            return Step(f"copy {source} {src_addr} to {target} {dst_addr}", action)

        steps = [copier(s, t) for s, t in pairs]
        question = f"Do you want to copy R/W disks from {source} to {target}? y/n"
        return perform(
            site,
            ui,
            opts,
            operation,
            {"source": source, "target": target},
            steps,
            question,
        )


def _same(site: Site) -> list[tuple[str, str]]:
    return [(d.address, d.address) for d in site.config.layout.copied]


def mnt2tst(site: Site, ui: UI, opts: Options) -> Outcome:
    g = site.config.guests
    return copy_guest(site, ui, opts, "mnt2tst", g.maintenance, g.test, _same(site))


def tst2mnt(site: Site, ui: UI, opts: Options) -> Outcome:
    g = site.config.guests
    return copy_guest(site, ui, opts, "tst2mnt", g.test, g.maintenance, _same(site))


def mnt2gold(site: Site, ui: UI, opts: Options) -> Outcome:
    """S10RWMNT 01Bx -> S10GOLD 11Bx: the gold read-write system."""
    g = site.config.guests
    pairs = [(d.address, gold_rw_address(d.address)) for d in site.config.layout.copied]
    return copy_guest(site, ui, opts, "mnt2gold", g.maintenance, g.gold[0], pairs)


def clonerw(site: Site, ui: UI, opts: Options, guest: str) -> Outcome:
    """S10GOLD 11Bx -> GUEST 01Bx: a read-write clone."""
    role = guards.exists(site, guest)
    if role is not Role.RW_CLONE:
        raise RefusedError(f"{guest} is a {role.value} guest; clonerw needs one defined with --rw")
    if site.state.last_success("mnt2gold") is None:
        raise RefusedError("the gold has no read-write system yet; run mnt2gold first")
    pairs = [(gold_rw_address(d.address), d.address) for d in site.config.layout.copied]
    return copy_guest(site, ui, opts, "clonerw", site.config.guests.gold[0], guest, pairs)
