"""DEFINE: a new clone guest, its disks, its link to the admin disk and its parm file.

The guest is marked incomplete until every step is done.  A define that fails is
undone; one that was killed is undone by the next `define` of the same guest, which
then defines it afresh.
"""

from __future__ import annotations

from sharedroot.errors import RefusedError
from sharedroot.model.layout import ADMIN_LINK_ADDRESS, ADMIN_OWN_ADDRESS
from sharedroot.model.parm import Identity, format_parm
from sharedroot.model.types import GuestState, Mode, Role
from sharedroot.workflows.context import UI, Options, Outcome, Site, Step, perform


def _undo(site: Site, guest: str) -> None:
    """Remove whatever a define of `guest` made: parm file, links, disks, definition."""
    if site.hv.get_parm(guest) is not None:
        site.hv.remove_parm(guest)
    if site.state.guest(guest) is not None:
        site.hv.delete_guest(guest)  # its disks and links with it
    with site.state.transaction():
        site.state.mark_complete(guest)


def define(
    site: Site, ui: UI, opts: Options, guest: str, role: Role, identity: Identity | None
) -> Outcome:
    if role not in (Role.RW_CLONE, Role.RO_CLONE):
        raise RefusedError(f"define makes read-write or read-only clones, not {role.value}")
    layout = site.config.layout
    disks = layout.copied if role is Role.RW_CLONE else layout.private
    admin = site.config.guests.admin
    text = format_parm(identity) if identity is not None else None  # validated before writing
    with site.locked(ui, writes=not opts.dry_run):
        if guest in site.config.guests.all():
            raise RefusedError(f"{guest} is one of the pipeline's own guests")
        half = site.state.incomplete().get(guest)
        redo = half is not None and half.operation == "define"
        if site.state.guest(guest) is not None and not redo:
            raise RefusedError(f"{guest} is already defined")
        site.hv.check_disk(admin, ADMIN_OWN_ADDRESS)  # the admin disk is there and whole
        if redo and site.hv.query(guest) is GuestState.LOGGED_ON:
            raise RefusedError(f"{guest} is logged on; an incomplete define cannot be redone")

        def create() -> None:
            if redo:
                ui.step(f"{guest}: removing what an interrupted define left")
                _undo(site, guest)
                with site.state.transaction():
                    site.state.mark_incomplete(guest, "define", half.op if half else None)
            with site.state.transaction():
                site.hv.define_guest(guest, role)
                for d in disks:
                    site.hv.add_disk(guest, d.address, d.kind, d.size, d.fs)
                site.hv.link(guest, ADMIN_LINK_ADDRESS, admin, ADMIN_OWN_ADDRESS, Mode.RR)

        kind = "read-write" if role is Role.RW_CLONE else "read-only"
        steps = [
            Step(
                f"define {guest} ({kind} clone) with disks {', '.join(d.address for d in disks)}"
                f" and LINK {admin} {ADMIN_OWN_ADDRESS} {ADMIN_LINK_ADDRESS} RR",
                create,
            )
        ]
        if identity is not None and text is not None:
            parm = text
            steps.append(
                Step(
                    f"write {guest} PARM-S10 on {admin} {ADMIN_OWN_ADDRESS}"
                    f" ({identity.hostname} {identity.ip}/{identity.prefix})",
                    lambda: site.hv.put_parm(guest, parm),
                )
            )
        args = {"guest": guest, "role": role.value}
        if identity is not None:
            args |= {"hostname": identity.hostname, "ip": identity.ip}
        try:
            return perform(site, ui, opts, "define", args, steps, targets=[guest])
        except Exception:
            if not opts.dry_run and site.state.incomplete().get(guest) is not None:
                _undo(site, guest)  # a define that failed leaves nothing behind
            raise
