"""INVENTORY: the fleet as an Ansible dynamic inventory, from the reports' data.

The script form Ansible documents: `--list` gives every group with its hosts and, in
`_meta.hostvars`, every host's variables (so Ansible never calls `--host`); `--host
NAME` gives one host's variables. Hosts are guests by name; `ansible_host` is the
HostIP= of the guest's parm file (guests without one have none: Ansible then uses the
name). Groups:

  role_ro_clone, role_rw_clone, role_maintenance, ...   by role
  slot_1, slot_2, ...           read-only clones by the gold slot whose holder they link
  state_logged_on, state_logged_off
  verify_ok, verify_failed, verify_never                by their last verify

Every role, state and verify group and every gold slot's group is listed, empty or not,
so a play that names one always finds it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from sharedroot.model.types import GuestState, Role
from sharedroot.workflows import report
from sharedroot.workflows.context import Site

GROUP = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # what Ansible accepts without a warning
VERIFY_GROUPS = ("verify_ok", "verify_failed", "verify_never")

Row = dict[str, Any]


def group_name(text: str) -> str:
    if not GROUP.fullmatch(text):
        raise ValueError(f"{text!r}: not an Ansible group name (letters, digits, _)")
    return text


def role_group(role: str) -> str:
    return group_name(f"role_{Role(role).name.lower()}")


def state_group(state: str) -> str:
    return group_name(f"state_{GuestState(state).value}")


def verify_group(row: Row) -> str:
    seen = row["verify"]
    return VERIFY_GROUPS[2] if seen is None else VERIFY_GROUPS[0 if seen["ok"] else 1]


def slots_of(linked: Row) -> dict[str, Row]:
    """Guest -> the gold holder (its linked row) it links, for clones of a gold slot."""
    return {c["name"]: h for h in linked["holders"] if h["slot"] is not None for c in h["clones"]}


def host_vars(row: Row, holder: Row | None) -> dict[str, Any]:
    """One host's variables: where Ansible reaches it, and sharedroot's facts about it."""
    identity = row["identity"]
    found: dict[str, Any] = {} if identity is None else {"ansible_host": identity["ip"]}
    verified = row["verify"]
    return found | {
        "sharedroot_hostname": None if identity is None else identity["hostname"],
        "sharedroot_role": row["role"],
        "sharedroot_state": row["state"],
        "sharedroot_slot": None if holder is None else holder["slot"],
        "sharedroot_generation": None if holder is None else holder["generation"],
        "sharedroot_host": row["host"],  # the libvirt host it runs on; None on one system
        "sharedroot_verify_ok": None if verified is None else verified["ok"],
        "sharedroot_verify_at": None if verified is None else verified["at"],
    }


def inventory(guests: Sequence[Row], linked: Row) -> dict[str, Any]:
    """The `--list` answer for the reports' rows (report.guests, report.linked)."""
    holders = slots_of(linked)
    groups: dict[str, list[str]] = {role_group(r.value): [] for r in Role}
    groups |= {state_group(s.value): [] for s in (GuestState.LOGGED_ON, GuestState.LOGGED_OFF)}
    groups |= {group_name(f"slot_{h['slot']}"): [] for h in linked["holders"] if h["slot"]}
    groups |= {group_name(v): [] for v in VERIFY_GROUPS}
    hostvars: dict[str, dict[str, Any]] = {}
    for row in guests:
        name, holder = row["name"], holders.get(row["name"])
        hostvars[name] = host_vars(row, holder)
        member = [role_group(row["role"]), state_group(row["state"]), verify_group(row)]
        if holder is not None:
            member.append(f"slot_{holder['slot']}")
        for group in member:
            groups[group].append(name)
    answer: dict[str, Any] = {
        "_meta": {"hostvars": hostvars},
        "all": {"children": sorted(groups)},
    }
    return answer | {g: {"hosts": sorted(hosts)} for g, hosts in sorted(groups.items())}


def site_inventory(site: Site) -> dict[str, Any]:
    return inventory(report.guests(site), report.linked(site))


def site_host_vars(site: Site, guest: str) -> dict[str, Any]:
    """`--host GUEST`: its variables; {} for a name the site has not (Ansible's rule)."""
    rows = [r for r in report.guests(site) if r["name"] == guest]
    if not rows:
        return {}
    return host_vars(rows[0], slots_of(report.linked(site)).get(guest))
