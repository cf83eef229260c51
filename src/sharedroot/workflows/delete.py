"""DELETE: remove a clone guest, as the directory's PURGE does on z/VM.

Its parm file leaves the admin disk, its disks are removed, then its definition with
the links it has (its own LINKs and, on z/VM, the profile it INCLUDEs). Refused while
it is logged on, for the pipeline's own guests, and while another guest links one of
its disks. With `keep_disks` each disk is first copied to `kept/GUEST-CREATED/` in the
store (a reflink where the storage can), where it stays for inspection.

The guest is marked incomplete from the first step to the end. The mark outlives the
guest's row, so a delete killed anywhere is finished by running it again: the steps
are planned from what is still left, and a guest already gone with a delete to finish
is no unknown guest. What an interrupted define left is removed the same way.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from sharedroot.errors import RefusedError
from sharedroot.hypervisor.copyengine import copy_image
from sharedroot.model.layout import ADMIN_OWN_ADDRESS
from sharedroot.model.types import DiskKind, GuestState, Role
from sharedroot.run import run
from sharedroot.workflows.context import UI, Options, Outcome, Site, Step, perform
from sharedroot.workflows.relink import slot_of, work_dir

CLONES = (Role.RW_CLONE, Role.RO_CLONE)
KEPT = "kept"  # the store's directory of disks kept from deleted guests


def delete(site: Site, ui: UI, opts: Options, guest: str, *, keep_disks: bool = False) -> Outcome:
    _not_the_pipelines(site, guest)
    with site.locked(ui, writes=not opts.dry_run):
        half = site.state.incomplete().get(guest)
        # What an interrupted delete, or define, left of a guest: this delete removes it.
        resumed = half if half is not None and half.operation in ("delete", "define") else None
        entry = site.state.journal_entry(resumed.op) if resumed and resumed.op else None
        if entry is not None and entry.operation == "delete":  # a rerun keeps what the first kept
            keep_disks = keep_disks or bool(entry.args.get("keep_disks"))
        # The interrupted run wrote parm files: removed again, since the file may be gone
        # while the admin disk, rebuilt after it, still shows it (local: files and image).
        parm_again = entry is not None and any("PARM-S10" in step for step in entry.plan)
        row = site.state.guest(guest)
        if row is None and resumed is None:
            raise RefusedError(f"Error: {guest} user ID does not exist")
        if row is not None:
            _guards(site, guest, row.role)
        if resumed is not None:
            ui.step(
                f"{guest}: removing what an interrupted {resumed.operation} left"
                f" (journal #{resumed.op})"
            )
        slot = slot_of(site, guest) if row is not None else None
        kept = None
        if row is not None and keep_disks:  # one directory per guest defined, never reused
            kept = site.home / KEPT / f"{guest}-{re.sub('[^0-9T]', '', row.created)[:15]}"
        steps = _steps(site, ui, guest, kept, parm_again)
        whose = f"{guest} and its disks" + (f" (kept in {kept})" if kept else "")
        args: dict[str, object] = {"guest": guest, "keep_disks": keep_disks}
        question = f"Do you want to delete {whose}? y/n"
        done = perform(site, ui, opts, "delete", args, steps, question, targets=[guest])
    if slot is not None and not opts.dry_run:
        holder = site.config.slot_holder(slot)
        if not site.hv.links_to(holder):
            ui.step(f"gold slot {slot} ({holder}) is linked by nobody now: ro2gold may refill it")
    return done


def _not_the_pipelines(site: Site, guest: str) -> None:
    if guest in site.config.guests.all():
        row = site.state.guest(guest)
        what = f" (its {row.role.value} guest)" if row else ""
        raise RefusedError(
            f"{guest} is one of the pipeline's own guests{what}; delete removes only"
            " clones made with define"
        )


def _guards(site: Site, guest: str, role: Role) -> None:
    if role not in CLONES:
        raise RefusedError(
            f"{guest} is a {role.value} guest; delete removes only clones made with define"
        )
    if site.hv.query(guest) is GuestState.LOGGED_ON:
        raise RefusedError(
            f"Error: {guest} user ID must be logged off; stop it first (sharedroot stop {guest})"
        )
    # Links the store records (the directory's LINK statements), and on z/VM the links
    # CP reports now (QUERY LINKS), whichever guest made them.
    users: dict[str, set[str]] = {}
    for lk in [*site.state.links_to(guest), *site.hv.links_to(guest)]:
        if lk.guest != guest:
            users.setdefault(lk.guest, set()).add(lk.owner_address)
    if users:
        who = "; ".join(f"{g} ({', '.join(sorted(a))})" for g, a in sorted(users.items()))
        raise RefusedError(
            f"{guest}: other guests link its disks: {who}; delete them or remove those links first"
        )


def _steps(site: Site, ui: UI, guest: str, kept: Path | None, parm_again: bool) -> list[Step]:
    exists = site.state.guest(guest) is not None
    disks = site.state.disks(guest) if exists else []
    lost = {item.split()[0] for item in site.hv.missing_devices(guest)} if exists else set()
    steps: list[Step] = []
    if kept is not None:
        for disk in disks:
            if disk.kind is DiskKind.VDISK:
                continue  # made fresh at each logon: nothing to keep
            if disk.address in lost:
                ui.step(f"note: {guest} {disk.address} is missing or damaged; it cannot be kept")
            else:
                steps.append(_keep_step(site, guest, disk.address, kept))
    admin = site.config.guests.admin
    if parm_again or site.hv.get_parm(guest) is not None:
        steps.append(
            Step(
                f"remove the PARM-S10 file of {guest} from {admin} {ADMIN_OWN_ADDRESS}",
                lambda: site.hv.remove_parm(guest),
            )
        )
    for disk in disks:
        if disk.address not in lost:  # a lost disk goes with the definition
            steps.append(_remove_step(site, guest, disk.address))
    links = site.state.links(guest)
    named = ", ".join(f"{lk.address} {lk.owner} {lk.owner_address}" for lk in links)

    def purge() -> dict[str, object]:
        if site.state.guest(guest) is not None:
            site.hv.delete_guest(guest)  # its links (and a lost disk's row) with it
        with site.state.transaction():
            site.state.forget_facts(guest)  # its machine-id, an interrupted move's record
        shutil.rmtree(work_dir(site, guest), ignore_errors=True)
        result: dict[str, object] = {"guest": guest, "deleted": True}
        if kept is not None:
            result["kept"] = str(kept)
        return result

    steps.append(Step(f"PURGE {guest}" + (f" and its links ({named})" if named else ""), purge))
    return steps


def _remove_step(site: Site, guest: str, address: str) -> Step:
    return Step(f"remove {guest} {address}", lambda: site.hv.remove_disk(guest, address))


def _keep_step(site: Site, guest: str, address: str, kept: Path) -> Step:
    target = kept / f"{address}.img"

    def keep() -> None:
        # Made in the store's tmp/ (cleared after a crash) and renamed into place whole.
        tmp = site.home / "tmp" / f"{guest}-{address}.kept"
        tmp.parent.mkdir(exist_ok=True)
        with site.hv.attach(guest, address) as device:
            if device.is_file():  # an image file: reflink, else a sparse copy
                copy_image(device, tmp)
            else:  # a block device (a minidisk linked to the worker)
                run(
                    ["dd", f"if={device}", f"of={tmp}", "bs=4M", "conv=sparse,fsync", "status=none"]
                )
        kept.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, target)

    return Step(f"keep a copy of {guest} {address} as {target}", keep)
