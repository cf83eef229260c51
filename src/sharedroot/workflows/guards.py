"""The paper's checks before anything is written (its CheckLoggedOff and RO2GOLD2's warning)."""

from __future__ import annotations

from collections.abc import Iterable

from sharedroot.errors import RefusedError
from sharedroot.model.types import GuestState, Role
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


def not_linked(site: Site, owner: str, addresses: Iterable[str]) -> None:
    """No other guest may link a disk that is about to be overwritten."""
    users: dict[str, set[str]] = {}
    for addr in addresses:
        for lk in site.hv.links_to(owner, addr):
            if lk.guest != owner:
                users.setdefault(lk.guest, set()).add(addr)
    if users:
        who = "; ".join(f"{g} ({', '.join(sorted(a))})" for g, a in sorted(users.items()))
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
        raise RefusedError(f"{guest}: disk images are missing: {', '.join(lost)}")


def devices_present(site: Site, guest: str) -> None:
    """Every disk a guest would attach, its own or linked, is there."""
    lost = site.hv.missing_devices(guest)
    if lost:
        raise RefusedError(f"{guest}: disk images are missing: {', '.join(lost)}")
