"""What the store remembers about a guest beyond its definition: the identity define
gave it (its parm file's Hostname= and HostIP=) and the outcome of its last verify.

Both are facts (`identity:GUEST`, `verify:GUEST`), small JSON objects; a guest's facts
go with it when it is deleted. Reading them takes no backend call, so reports of many
guests (inventories, metrics) stay one query. Every value read back is checked: a fact
that is not what sharedroot wrote is a StoreError naming it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sharedroot.errors import InputError, StoreError
from sharedroot.model.parm import Identity, check_hostname, check_ipv4
from sharedroot.model.types import Role
from sharedroot.store.rows import now
from sharedroot.store.state import State
from sharedroot.workflows.context import Site

IDENTITY = "identity:"
VERIFY = "verify:"
# What rows.now() writes: seconds, UTC.
_WHEN = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\+00:00")
_CHECK_NAME = re.compile(r"[^\x00-\x1f\x7f]{1,200}")
MAX_CHECKS = 1000  # verify runs a few dozen


@dataclass(frozen=True)
class Address:
    """Where a guest is reached: its parm file's Hostname= and HostIP=."""

    hostname: str
    ip: str


@dataclass(frozen=True)
class VerifyRecord:
    """The last verify of a guest; `last_success` is the last one that passed."""

    at: str
    ok: bool
    checks: int
    failed: tuple[str, ...]
    last_success: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "ok": self.ok,
            "checks": self.checks,
            "failed": list(self.failed),
            "last_success": self.last_success,
        }


def seconds(when: str) -> float:
    """A recorded time as seconds since the epoch (what Prometheus timestamps are)."""
    return datetime.fromisoformat(when).astimezone(UTC).timestamp()


# identity -------------------------------------------------------------------------------
def record_identity(state: State, guest: str, identity: Identity | None) -> None:
    """Inside the caller's transaction (define's, with the guest's definition)."""
    # null for none: a guest defined without a parm file is no guest of an older store
    value = None if identity is None else {"hostname": identity.hostname.lower(), "ip": identity.ip}
    state.set_fact(IDENTITY + guest, json.dumps(value, sort_keys=True))


def forget_learnt(state: State, guest: str) -> None:
    """Inside the caller's transaction: forget what running the guest taught (its
    machine-id, its last verify) when it is cloned anew; its identity stays."""
    identity = state.fact(IDENTITY + guest)
    state.forget_facts(guest)
    if identity is not None:
        state.set_fact(IDENTITY + guest, identity)


def addresses(site: Site) -> dict[str, Address]:
    """Guest -> its address, for every guest define gave one.

    Clones defined before define recorded it are found in define's journal entries
    (read only when such a clone exists).
    """
    recorded = {
        key.removeprefix(IDENTITY): _address(key, value)
        for key, value in site.state.facts(IDENTITY).items()
    }
    found = {guest: address for guest, address in recorded.items() if address is not None}
    clones = {g.name for g in site.state.guests() if g.role in (Role.RO_CLONE, Role.RW_CLONE)}
    if clones - recorded.keys():
        found = _from_journal(site, clones - recorded.keys()) | found
    return found


def _address(key: str, value: str) -> Address | None:
    try:
        data = json.loads(value)
        if data is None:
            return None
        if not isinstance(data, dict) or set(data) != {"hostname", "ip"}:
            raise InputError("not an object of hostname and ip")
        return Address(check_hostname(data["hostname"]), check_ipv4(data["ip"], "ip"))
    except (ValueError, InputError) as exc:
        raise StoreError(f"fact {key}: not what sharedroot writes ({exc})") from None


def _from_journal(site: Site, wanted: set[str]) -> dict[str, Address]:
    found: dict[str, Address] = {}
    for entry in reversed(site.state.journal(1 << 62, status="ok")):  # oldest first
        if entry.operation != "define":
            continue
        rows = entry.args.get("guests", [entry.args])  # a batch, or one guest
        for row in rows if isinstance(rows, list) else []:
            guest = row.get("guest") if isinstance(row, dict) else None
            if guest not in wanted:
                continue
            try:  # the latest define of the guest wins
                found[guest] = Address(check_hostname(row["hostname"]), check_ipv4(row["ip"], "ip"))
            except (KeyError, InputError):
                found.pop(guest, None)  # defined without an identity (or not one sharedroot wrote)
    return found


# verify ---------------------------------------------------------------------------------
def record_verify(site: Site, guest: str, total: int, failed: Sequence[str]) -> VerifyRecord:
    """Remember a verify's outcome, in its own short transaction."""
    names = tuple(failed)
    if not 0 <= len(names) <= total <= MAX_CHECKS:
        raise InputError(f"verify of {guest}: {len(names)} failed of {total} checks")
    for name in names:
        if not _CHECK_NAME.fullmatch(name):
            raise InputError(f"verify of {guest}: check name {name!r}: not one line of text")
    at = now()
    with site.state.transaction():
        before = verify_record(site.state, guest)
        last = at if not names else (before.last_success if before else None)
        record = VerifyRecord(at, not names, total, names, last)
        site.state.set_fact(VERIFY + guest, json.dumps(record.as_dict(), sort_keys=True))
    return record


def verify_record(state: State, guest: str) -> VerifyRecord | None:
    value = state.fact(VERIFY + guest)
    return None if value is None else _verify(VERIFY + guest, value)


def verify_records(state: State) -> dict[str, VerifyRecord]:
    """Guest -> its last verify, for every guest verified (one query)."""
    return {
        key.removeprefix(VERIFY): _verify(key, value) for key, value in state.facts(VERIFY).items()
    }


def _verify(key: str, value: str) -> VerifyRecord:
    try:
        data = json.loads(value)
        if not isinstance(data, dict) or set(data) != {
            "at",
            "ok",
            "checks",
            "failed",
            "last_success",
        }:
            raise ValueError("not the fields of a verify")
        at, ok, checks, failed, last = (
            data[k] for k in ("at", "ok", "checks", "failed", "last_success")
        )
        if not isinstance(at, str) or not _WHEN.fullmatch(at):
            raise ValueError(f"at {at!r}")
        if last is not None and (not isinstance(last, str) or not _WHEN.fullmatch(last)):
            raise ValueError(f"last_success {last!r}")
        if type(checks) is not int or not 0 <= checks <= MAX_CHECKS:
            raise ValueError(f"checks {checks!r}")
        if not isinstance(failed, list) or not all(
            isinstance(n, str) and _CHECK_NAME.fullmatch(n) for n in failed
        ):
            raise ValueError("failed: not a list of check names")
        if type(ok) is not bool or ok != (not failed) or len(failed) > checks:
            raise ValueError(f"ok {ok!r} with {len(failed)} of {checks} failed")
        return VerifyRecord(at, ok, checks, tuple(failed), last)
    except ValueError as exc:  # json's errors are ValueErrors too
        raise StoreError(f"fact {key}: not what sharedroot writes ({exc})") from None
