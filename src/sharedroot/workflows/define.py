"""DEFINE: a new clone guest, its disks, its link to the admin disk and its parm file."""

from __future__ import annotations

from sharedroot.errors import RefusedError
from sharedroot.model.layout import ADMIN_LINK_ADDRESS, ADMIN_OWN_ADDRESS
from sharedroot.model.parm import Identity, format_parm
from sharedroot.model.types import Mode, Role
from sharedroot.workflows.context import UI, Options, Outcome, Site, Step, perform


def define(
    site: Site, ui: UI, opts: Options, guest: str, role: Role, identity: Identity | None
) -> Outcome:
    if role not in (Role.RW_CLONE, Role.RO_CLONE):
        raise RefusedError(f"define makes read-write or read-only clones, not {role.value}")
    layout = site.config.layout
    disks = layout.copied if role is Role.RW_CLONE else layout.private
    with site.locked():
        if guest in site.config.guests.all():
            raise RefusedError(f"{guest} is one of the pipeline's own guests")
        if site.state.guest(guest) is not None:
            raise RefusedError(f"{guest} is already defined")
        admin = site.config.guests.admin

        def create() -> None:
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
        if identity is not None:
            text = format_parm(identity)
            steps.append(
                Step(
                    f"write {guest} PARM-S10 on {admin} {ADMIN_OWN_ADDRESS}"
                    f" ({identity.hostname} {identity.ip}/{identity.prefix})",
                    lambda: site.hv.put_parm(guest, text),
                )
            )
        args = {"guest": guest, "role": role.value}
        if identity is not None:
            args |= {"hostname": identity.hostname, "ip": identity.ip}
        return perform(site, ui, opts, "define", args, steps)
