"""GUESTS and LINKED: what the site holds, for people and for scripts."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from sharedroot.model.layout import ADMIN_LINK_ADDRESS, gold_ro_address
from sharedroot.model.types import GuestState, Role
from sharedroot.store.rows import LinkRow
from sharedroot.workflows import facts
from sharedroot.workflows.context import Site
from sharedroot.workflows.guards import rerun_hint


def guests(site: Site) -> list[dict[str, Any]]:
    with site.state.reading():  # one snapshot: a racing writer shows before or after
        return _guests(site)


def _guests(site: Site) -> list[dict[str, Any]]:
    disks: dict[str, list[dict[str, Any]]] = {}
    for d in site.state.disks():
        disks.setdefault(d.owner, []).append(
            {"address": d.address, "kind": d.kind.value, "fs": d.fs, "size": d.size}
        )
    links: dict[str, list[dict[str, Any]]] = {}
    every_link = site.state.links()
    for lk in every_link:
        links.setdefault(lk.guest, []).append(
            {
                "address": lk.address,
                "owner": lk.owner,
                "owner_address": lk.owner_address,
                "mode": lk.mode.value,
            }
        )
    incomplete = site.state.incomplete()
    found = facts.addresses(site)
    verified = facts.verify_records(site.state)
    on = site.hv.logged_on()  # one QUERY NAMES, not one QUERY per guest
    hosts = site.hv.placement()  # empty where every guest runs on one system
    held = site.hv.memory(on) or {}
    # Linked disks (the gold's, the admin disk) are in the host's page cache once for
    # all their users: counted once, on their owner's row.
    shared = sorted({(lk.owner, lk.owner_address) for lk in every_link})
    cached: dict[str, int] = {}
    for (owner, _), size in (site.hv.cached(shared) or {}).items():
        cached[owner] = cached.get(owner, 0) + size
    out = []
    for g in site.state.guests():
        state = GuestState.LOGGED_ON if g.name in on else GuestState.LOGGED_OFF
        half = incomplete.get(g.name)
        out.append(
            {
                "name": g.name,
                "role": g.role.value,
                "state": state.value,
                "disks": disks.get(g.name, []),
                "links": links.get(g.name, []),
                # the host it runs on (libvirt); None where there is one system
                "host": hosts.get(g.name),
                # A read-only clone that clonero has not filled yet (blank private disks).
                "cloned": None
                if g.role is not Role.RO_CLONE
                else any(lk["address"] != ADMIN_LINK_ADDRESS for lk in links.get(g.name, [])),
                # None when logged off, or when the backend has no view of it (z/VM)
                "memory": asdict(held[g.name]) if g.name in held else None,
                "cached": cached.get(g.name),
                # its parm file's Hostname= and HostIP=, as define wrote them
                "identity": asdict(found[g.name]) if g.name in found else None,
                # its last verify, and when one last passed; None if never verified
                "verify": verified[g.name].as_dict() if g.name in verified else None,
                "incomplete": None
                if half is None
                else {
                    "operation": half.operation,
                    "journal": half.op,
                    "since": half.since,
                    "rerun": rerun_hint(site, half.operation, half.op),
                },
            }
        )
    return out


def linked(site: Site) -> dict[str, Any]:
    """Who links each gold holder: the LINKED EXEC's facts, from one snapshot."""
    with site.state.reading():
        return _linked(site)


def _linked(site: Site) -> dict[str, Any]:
    cfg = site.config
    current = site.state.current_slot()
    slots = {s.slot: s for s in site.state.slots()}
    # A clone links a whole set (its profile), so one shared disk per holder tells who
    # links it: one round of CP calls for all holders, however many clones there are.
    shared = cfg.layout.shared
    tell = (cfg.layout.root if cfg.layout.root in shared or not shared else shared[0]).address
    disks = [(cfg.guests.staging, tell)] + [(h, gold_ro_address(tell)) for h in cfg.guests.gold]
    users = site.hv.users(disks)
    on = site.hv.logged_on() if users else set()  # who runs: asked only when someone links
    hosts = site.hv.placement()  # where each runs, on a site of several hosts
    holders: list[dict[str, Any]] = [
        {
            "holder": cfg.guests.staging,
            "label": "TEST",
            "slot": None,
            "current": False,
            "generation": None,
            "built_from": None,
            "built": None,
            "incomplete": cfg.guests.staging in site.state.incomplete(),
            "clones": _linkers(cfg.guests.staging, users, on, hosts),
        }
    ]
    incomplete = site.state.incomplete()
    for n, holder in enumerate(cfg.guests.gold, start=1):
        row = slots.get(n)
        gen = site.state.generation(row.generation) if row and row.generation else None
        holders.append(
            {
                "holder": holder,
                "label": f"GOLD {n}",
                "slot": n,
                "current": n == current,
                "generation": row.generation if row else None,
                "built_from": gen.source if gen else None,
                "built": gen.created if gen else None,
                "incomplete": holder in incomplete,
                "clones": _linkers(holder, users, on, hosts),
            }
        )
    return {"current_slot": current, "holders": holders}


def _linkers(
    owner: str, users: list[LinkRow], on: set[str], hosts: dict[str, str]
) -> list[dict[str, Any]]:
    names = sorted({lk.guest for lk in users if lk.owner == owner and lk.guest != owner})
    return [{"name": n, "running": n in on, "host": hosts.get(n)} for n in names]


def linked_lines(facts: dict[str, Any]) -> list[str]:
    """The LINKED EXEC's own form: `S10GOLD2 LINKS: [[GOLD 2]]` marks the current slot."""
    lines = []
    for h in facts["holders"]:
        label = f"[[{h['label']}]]" if h["current"] else h["label"]
        if h["incomplete"]:
            label += " (INCOMPLETE)"
        names = " ".join(
            c["name"] + (f" ({c['host']})" if c.get("host") else "") for c in h["clones"]
        )
        lines.append(f"{h['holder']} LINKS: {label}" + (f" {names}" if names else ""))
    return lines
