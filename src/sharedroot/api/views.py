"""What the API and the dashboard show: the CLI's reports, gathered per page.

Every view reads one store opened read-only, as `guests` and `linked` do.
"""

from __future__ import annotations

from typing import Any

from sharedroot.errors import InputError, RefusedError
from sharedroot.model.parm import parse_parm
from sharedroot.model.types import guest_name
from sharedroot.store.serverdb import ServerStore
from sharedroot.workflows import generations, report
from sharedroot.workflows.context import Site

CONSOLE_TAIL = 8192  # bytes of a guest's console shown on its page
PIPELINE_OPS = ("mnt2tst", "tst2mnt", "mnt2gold", "mnt2rogld", "ro2gold")


def site_view(site: Site) -> dict[str, Any]:
    cfg = site.config
    g = cfg.guests
    return {
        "home": str(site.home),
        "backend": cfg.backend,
        "distro": cfg.distro,
        "gold_slots": cfg.gold_slots,
        "current_slot": site.state.current_slot(),
        "guests": {
            "maintenance": g.maintenance,
            "test": g.test,
            "staging": g.staging,
            "admin": g.admin,
            "worker": g.worker,
            "gold": list(g.gold),
        },
        "layout": [
            {"address": d.address, "mount": d.mount, "fs": d.fs, "shared": d in cfg.layout.shared}
            for d in cfg.layout.disks
        ],
    }


def pipeline_view(site: Site) -> dict[str, Any]:
    """The pipeline as stages: maintenance -> test, staging, gold slots."""
    g = site.config.guests
    on = site.hv.logged_on()
    facts = report.linked(site)
    stages: list[dict[str, Any]] = [
        {"stage": "maintenance", "guest": g.maintenance, "logged_on": g.maintenance in on},
        {"stage": "test", "guest": g.test, "logged_on": g.test in on},
        {"stage": "staging", "guest": g.staging, "logged_on": False},
    ]
    for h in facts["holders"]:
        if h["slot"] is not None:
            stages.append(
                {
                    "stage": f"gold {h['slot']}",
                    "guest": h["holder"],
                    "slot": h["slot"],
                    "current": h["current"],
                    "generation": h["generation"],
                    "clones": len(h["clones"]),
                }
            )
    last = {op: site.state.last_success(op) for op in PIPELINE_OPS}
    return {"stages": stages, "last_success": last, "current_slot": facts["current_slot"]}


def slots_view(site: Site) -> list[dict[str, Any]]:
    """Each gold slot with the generation it holds (source, time, hashes) and its clones."""
    facts = report.linked(site)
    gens = {g["id"]: g for g in generations.generations(site)["generations"]}
    out = []
    for h in facts["holders"]:
        if h["slot"] is None:
            continue
        row = site.state.generation(h["generation"]) if h["generation"] else None
        out.append(
            h
            | {
                "hashes": row.hashes if row else {},
                "history": [g for g in gens.values() if g["slot"] == h["slot"]],
            }
        )
    return out


def guest_view(site: Site, server: ServerStore, name: str) -> dict[str, Any]:
    """One guest: the `guests` row, its parm file's values, console tail, verify history."""
    try:
        name = guest_name(name)
    except InputError as exc:
        raise LookupError(str(exc)) from None
    rows = [g for g in report.guests(site) if g["name"] == name]
    if not rows:
        raise LookupError(f"{name}: no such guest")
    text = site.hv.get_parm(name)
    verify = [
        {"job": j.id, "status": j.status.value, "ended": j.ended, "message": j.message}
        for j in server.jobs(limit=1000)
        if j.kind == "verify" and name in j.targets
    ][:20]
    return rows[0] | {
        # the file as written, and its values as findself reads them (keys lower-cased)
        "parm": None if text is None else {"text": text, "values": parse_parm(text)},
        "console": console_tail(site, name),
        "verify_history": verify,
    }


def console_tail(site: Site, name: str) -> str:
    try:
        data = b"".join(site.hv.console(name))
    except (RefusedError, OSError):
        return ""
    return data[-CONSOLE_TAIL:].decode(errors="replace")


def guest_rows(site: Site) -> list[dict[str, Any]]:
    """The `guests` rows, each with the gold holder it links and that holder's slot."""
    facts = report.linked(site)
    holder_of = {c["name"]: h for h in facts["holders"] for c in h["clones"]}
    out = []
    for g in report.guests(site):
        h = holder_of.get(g["name"])
        out.append(g | {"holder": h["holder"] if h else None, "slot": h["slot"] if h else None})
    return out
