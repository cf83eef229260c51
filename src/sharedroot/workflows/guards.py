"""The paper's checks before anything is written (its CheckLoggedOff and RO2GOLD2's warning)."""

from __future__ import annotations

from collections.abc import Iterable

from sharedroot.errors import RefusedError
from sharedroot.model.layout import ADMIN_LINK_ADDRESS
from sharedroot.model.types import GuestState, Role
from sharedroot.workflows.attach import disk_hash
from sharedroot.workflows.context import Site


def logged_off(site: Site, guest: str) -> None:
    """CheckLoggedOff: rc 45 is right; rc 0 and rc 3 are refusals."""
    state = site.hv.query(guest)
    if state is GuestState.NO_SUCH:
        raise RefusedError(f"Error: {guest} user ID does not exist")
    if state is GuestState.LOGGED_ON:
        raise RefusedError(f"Error: {guest} user ID must be logged off")


def exists(site: Site, guest: str) -> Role:
    row = site.state.guest(guest)
    if row is None:
        raise RefusedError(f"Error: {guest} user ID does not exist")
    return row.role


def where(site: Site, guests: list[str]) -> list[str]:
    """The guests as a refusal names them: on a site of several hosts, each with its host."""
    hosts = site.hv.placement()
    return [f"{g} on {hosts[g]}" if g in hosts else g for g in guests]


def not_linked(site: Site, owner: str, addresses: Iterable[str]) -> None:
    """No other guest may link a disk that is about to be overwritten."""
    users: dict[str, set[str]] = {}
    for addr in addresses:
        for lk in site.hv.links_to(owner, addr):
            if lk.guest != owner:
                users.setdefault(lk.guest, set()).add(addr)
    if users:
        named = dict(zip(sorted(users), where(site, sorted(users)), strict=True))
        who = "; ".join(f"{named[g]} ({', '.join(sorted(a))})" for g, a in sorted(users.items()))
        raise RefusedError(
            f"{owner}: guests are linked to the disks to be overwritten: {who}."
            " Shut them down or migrate them first"
        )


def has_disks(site: Site, guest: str, addresses: Iterable[str]) -> None:
    wanted = list(addresses)
    missing = [a for a in wanted if site.state.disk(guest, a) is None]
    if missing:
        raise RefusedError(f"{guest} has no disk at {', '.join(missing)}")
    lost = site.hv.missing_devices(guest, wanted)
    if lost:
        raise RefusedError(f"{guest}: disk images are missing or damaged: {', '.join(lost)}")


def devices_present(site: Site, guest: str) -> None:
    """Every disk a guest would attach, its own or linked, is there."""
    lost = site.hv.missing_devices(guest)
    if lost:
        raise RefusedError(f"{guest}: disk images are missing or damaged: {', '.join(lost)}")


def rerun_hint(site: Site, operation: str, op: int | None) -> str:
    """The command that finishes an interrupted operation, from its journal entry."""
    entry = site.state.journal_entry(op) if op is not None else None
    args = entry.args if entry else {}
    words = ["sharedroot", operation]
    if "guest" in args:
        words.append(str(args["guest"]))
    elif "guests" in args:  # a batch: its file is not recorded, its guests are
        words.append("--from FILE (the same guests)")
    if "slot" in args:
        words += ["--slot", str(args["slot"])]
    return " ".join(words)


def complete(site: Site, guest: str, use: str) -> None:
    """Refuse a guest whose disk set was being written when its operation stopped."""
    row = site.state.incomplete().get(guest)
    if row is None:
        return
    raise RefusedError(
        f"{guest} is incomplete: {row.operation} (journal #{row.op}) stopped while writing"
        f" its disks, which may be part old, part new; it cannot be used as {use} until"
        f" `{rerun_hint(site, row.operation, row.op)}` is rerun"
    )


def awaits_clone(site: Site, guest: str) -> bool:
    """A read-only clone defined but never cloned: its private disks are still blank,
    and it links nothing of a gold slot yet (only the admin disk)."""
    row = site.state.guest(guest)
    if row is None or row.role is not Role.RO_CLONE:
        return False
    return all(lk.address == ADMIN_LINK_ADDRESS for lk in site.state.links(guest))


def cloned(site: Site, guest: str) -> None:
    """Refuse to start a read-only clone that clonero has not filled yet."""
    if awaits_clone(site, guest):
        raise RefusedError(
            f"{guest} has not been cloned yet (its private disks are blank);"
            f" run `sharedroot clonero {guest}` first"
        )


def defined(site: Site, guest: str) -> None:
    """Refuse a guest whose definition was cut short (rerun define first)."""
    row = site.state.incomplete().get(guest)
    if row is not None and row.operation == "define":
        raise RefusedError(
            f"{guest} is incomplete: its define (journal #{row.op}) did not finish; rerun"
            f" `sharedroot define {guest} ...` with the same options (or the same"
            " `define --from` file), or delete it"
        )


def gold_intact(site: Site, slot: int) -> None:
    """A gold slot holds the whole set its generation recorded, unchanged."""
    holder = site.config.slot_holder(slot)
    complete(site, holder, f"gold slot {slot}")
    row = next((s for s in site.state.slots() if s.slot == slot), None)
    gen = site.state.generation(row.generation) if row and row.generation else None
    if gen is None:
        raise RefusedError(f"gold slot {slot} ({holder}) holds nothing yet; run ro2gold first")
    for addr, want in sorted(gen.hashes.items()):
        site.hv.check_disk(holder, addr)
        stamp = site.hv.stamp(holder, addr)
        if stamp is not None and gen.stamps.get(addr) == stamp:
            continue
        if disk_hash(site, holder, addr) != want:
            raise RefusedError(
                f"gold slot {slot}: {holder} {addr} is not the disk generation {gen.id}"
                f" recorded (its content differs); rerun `sharedroot ro2gold --slot {slot}`"
            )
