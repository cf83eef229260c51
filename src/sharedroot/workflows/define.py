"""DEFINE: new clone guests, their disks, their links to the admin disk and their parm files.

One guest or a batch of them (`define --from FILE`): every guard is checked for the
whole batch before anything is written, and the admin disk is written once, with all
the batch's parm files. The guests are marked incomplete until every step is done. A
define that fails is undone; one that was killed is undone by the next `define` of
the same guests, which then defines them afresh.

A read-only clone's private disks are left blank (sparse, unformatted): clonero
copies them whole from the gold right after, so a filesystem made here would only be
thrown away. Until then the clone is reported as not cloned and cannot be started.
"""

from __future__ import annotations

from collections.abc import Sequence

from sharedroot.errors import RefusedError
from sharedroot.model.fleetfile import Definition
from sharedroot.model.layout import ADMIN_LINK_ADDRESS, ADMIN_OWN_ADDRESS
from sharedroot.model.parm import Identity, format_parm
from sharedroot.model.types import GuestState, Mode, Role
from sharedroot.workflows import facts
from sharedroot.workflows.context import UI, Options, Outcome, Site, Step, perform
from sharedroot.workflows.guest import site_host

KIND = {Role.RW_CLONE: "read-write", Role.RO_CLONE: "read-only"}


def _undo(site: Site, guests: Sequence[str]) -> None:
    """Remove whatever a define of `guests` made: parm files, links, disks, definitions."""
    if not guests:
        return
    site.hv.put_parms(dict.fromkeys(guests))  # one write of the admin disk
    for guest in guests:
        if site.state.guest(guest) is not None:
            site.hv.delete_guest(guest)  # its disks and links with it
    with site.state.transaction():
        for guest in guests:
            site.state.forget_facts(guest)  # the identity its create step recorded
            site.state.mark_complete(guest)


def define(
    site: Site, ui: UI, opts: Options, guest: str, role: Role, identity: Identity | None
) -> Outcome:
    return define_many(site, ui, opts, [Definition(guest, role, identity)])


def define_many(
    site: Site, ui: UI, opts: Options, batch: Sequence[Definition], *, host: str | None = None
) -> Outcome:
    """Define the batch's guests; on a site of several hosts, all on `host` if given,
    else each on the host with the fewest guests."""
    names = [d.guest for d in batch]
    uri = None if host is None else site_host(site, host)
    if len(set(names)) != len(names):
        raise RefusedError("define: a guest is named twice in the batch")
    for d in batch:
        if d.role not in KIND:
            raise RefusedError(f"define makes read-write or read-only clones, not {d.role.value}")
    # Validated before anything is written (and again by each writer).
    texts = {d.guest: format_parm(d.identity) for d in batch if d.identity is not None}
    admin = site.config.guests.admin
    with site.locked(ui, writes=not opts.dry_run):
        incomplete = site.state.incomplete()
        redo = {n for n in names if (h := incomplete.get(n)) and h.operation == "define"}
        for guest in names:
            if guest in site.config.guests.all():
                raise RefusedError(f"{guest} is one of the pipeline's own guests")
            if site.state.guest(guest) is not None and guest not in redo:
                raise RefusedError(f"{guest} is already defined")
        site.hv.check_disk(admin, ADMIN_OWN_ADDRESS)  # the admin disk is there and whole
        for guest in sorted(redo):
            if site.hv.query(guest) is GuestState.LOGGED_ON:
                raise RefusedError(f"{guest} is logged on; an incomplete define cannot be redone")

        steps = [_create_step(site, ui, d, d.guest in redo, uri) for d in batch]
        # Parm files a redone guest had and its new definition has not go too.
        parms: dict[str, str | None] = {g: None for g in sorted(redo)} | dict(texts)
        if parms:
            who = (
                f"file{'s' if len(parms) > 1 else ''} for {', '.join(parms)}"
                if len(parms) <= 3
                else f"files of {len(parms)} guests"
            )
            steps.append(
                Step(
                    f"write the PARM-S10 {who} on {admin} {ADMIN_OWN_ADDRESS}",
                    lambda: site.hv.put_parms(parms),
                )
            )
        try:
            args = _args(batch) | ({} if uri is None else {"host": uri})
            return perform(site, ui, opts, "define", args, steps, targets=names)
        except Exception:
            if not opts.dry_run:  # a define that failed leaves nothing behind
                now = site.state.incomplete()
                _undo(site, [g for g in names if (h := now.get(g)) and h.operation == "define"])
            raise


def _create_step(site: Site, ui: UI, d: Definition, redo: bool, host: str | None) -> Step:
    layout = site.config.layout
    disks = layout.copied if d.role is Role.RW_CLONE else layout.private
    admin, guest = site.config.guests.admin, d.guest

    blank = d.role is Role.RO_CLONE

    def create() -> None:
        if redo:
            ui.step(f"{guest}: removing what an interrupted define left")
            if site.state.guest(guest) is not None:
                site.hv.delete_guest(guest)  # its parm file is rewritten with the batch's
        with site.state.transaction():
            site.hv.define_guest(guest, d.role)
            if host is not None:
                site.hv.place(guest, host)
            for disk in disks:
                site.hv.add_disk(guest, disk.address, disk.kind, disk.size, disk.fs, blank=blank)
            site.hv.link(guest, ADMIN_LINK_ADDRESS, admin, ADMIN_OWN_ADDRESS, Mode.RR)
            facts.record_identity(site.state, guest, d.identity)  # reports read it, not the disk

    identity = f" as {d.identity.hostname} {d.identity.ip}" if d.identity else ""
    identity += f" on {host}" if host else ""
    return Step(
        f"define {guest} ({KIND[d.role]} clone{identity}) with disks"
        f" {', '.join(disk.address for disk in disks)}"
        f" and LINK {admin} {ADMIN_OWN_ADDRESS} {ADMIN_LINK_ADDRESS} RR",
        create,
    )


def _args(batch: Sequence[Definition]) -> dict[str, object]:
    """The journal's record of the batch (one guest: as a single define has always had it)."""
    rows: list[dict[str, object]] = []
    for d in batch:
        row: dict[str, object] = {"guest": d.guest, "role": d.role.value}
        if d.identity is not None:
            row |= {"hostname": d.identity.hostname, "ip": d.identity.ip}
        rows.append(row)
    return rows[0] if len(rows) == 1 else {"guests": rows}
