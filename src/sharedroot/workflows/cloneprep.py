"""CLONEPREP: clean the maintenance system before it is copied to gold (cloneprep.sh)."""

from __future__ import annotations

from collections.abc import Sequence

from sharedroot.guestos import cloneprep as prep
from sharedroot.workflows import guards
from sharedroot.workflows.attach import guest_tree
from sharedroot.workflows.context import UI, Options, Outcome, Site, Step, perform


def operations() -> list[dict[str, object]]:
    """What `cloneprep --list` shows: each operation, whether it runs by default, what it does."""
    return [
        {"name": op.name, "default": op.default, "description": op.description}
        for op in prep.OPERATIONS
    ]


def listing() -> str:
    return prep.format_operations()


def cloneprep(
    site: Site, ui: UI, opts: Options, operations: Sequence[str] | None = None
) -> Outcome:
    guest = site.config.guests.maintenance
    selected = prep.select(operations)  # unknown names fail here, before anything
    filesystems = site.config.layout.with_filesystems  # logical volumes too
    with site.locked(ui, writes=not opts.dry_run):
        guards.logged_off(site, guest)
        guards.has_disks(site, guest, [d.address for d in filesystems])
        guards.not_linked(site, guest, [d.address for d in filesystems])

        def clean() -> dict[str, object]:
            with guest_tree(site, guest, filesystems, write=True) as root:
                changes = prep.cloneprep(root, [op.name for op in selected], log=ui.step)
            return {"guest": guest, "changes": changes}

        names = ", ".join(op.name for op in selected)
        return perform(
            site,
            ui,
            opts,
            "cloneprep",
            {"guest": guest, "operations": [op.name for op in selected]},
            [Step(f"mount {guest}'s disks on the worker and clean: {names}", clean)],
            f"Do you want to clean {guest} for cloning ({names})? y/n",
            targets=[guest],
        )
