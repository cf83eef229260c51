"""Handler of `rollout`: the same rollouts, and the same process, as the API's."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console
from rich.table import Table

from sharedroot.api import rollouts as ro
from sharedroot.cli.render import Result
from sharedroot.errors import RefusedError
from sharedroot.store.rollouts import RolloutRow, RolloutStore
from sharedroot.workflows.context import Site, resolve_home

USER = "cli"  # who started a rollout from the command line (the API names its token)


def cmd_rollout(args: argparse.Namespace) -> Result:
    home = resolve_home(args.home)
    site = Site.open(home, readonly=True)  # a site, not any directory
    store = RolloutStore(home, create=args.action == "start")  # readers make no server.db
    try:
        ro.settle(store)
        if args.action == "start":
            new = ro.check(
                site,
                clones=None if args.from_slot is not None else args.words,
                from_slot=args.from_slot,
                slot=args.slot,
                wave_size=args.wave_size or 1,
                pause_each=args.pause_after_each_wave,
                max_failures=args.max_failures or 0,
            )
            data = ro.view(store, ro.one(store, ro.create(home, store, new, USER)))
            return Result(data, lambda out: _started(out, data))
        if args.action == "list":
            rows = [ro.view(store, r) for r in store.rollouts(1000)]
            return Result(rows, lambda out: _list(out, rows))
        try:
            data = ro.view(store, _act(args.action, home, store, int(args.words[0])))
        except LookupError as exc:  # the API's 404
            raise RefusedError(str(exc.args[0])) from None
        return Result(data, lambda out: _show(out, data))
    finally:
        site.state.close()
        store.close()


def _act(action: str, home: Any, store: RolloutStore, rollout: int) -> RolloutRow:
    if action == "pause":
        return ro.pause(store, rollout)
    if action == "resume":
        return ro.resume(home, store, rollout)
    if action == "abort":
        return ro.abort(store, rollout)
    if action == "retry":
        return ro.retry(home, store, rollout)
    return ro.one(store, rollout)


def _started(out: Console, data: dict[str, Any]) -> None:
    out.print(
        f"rollout {data['id']}: {len(data['clones'])} clone(s) to gold slot {data['slot']},"
        f" running in the background; `sharedroot rollout show {data['id']}` follows it"
    )


def _list(out: Console, rows: list[dict[str, Any]]) -> None:
    table = Table("id", "state", "slot", "clones", "ok", "failed", "wave", "user", "created")
    for r in rows:
        counts = r["counts"]
        table.add_row(
            str(r["id"]),
            r["state"],
            str(r["slot"]),
            str(len(r["clones"])),
            str(counts.get("ok", 0)),
            str(counts.get("failed", 0)),
            str(r["wave"]),
            r["user"],
            r["created"],
        )
    out.print(table)


def _show(out: Console, data: dict[str, Any]) -> None:
    flags = [f for f in ("pause", "abort") if data[f"{f}_requested"]]
    out.print(
        f"rollout {data['id']}: {data['state']}, to gold slot {data['slot']}, waves of"
        f" {data['wave_size']} after the canary, max failures {data['max_failures']}"
        + (", pausing after each wave" if data["pause_after_each_wave"] else "")
        + (f" ({' and '.join(flags)} requested)" if flags else "")
    )
    if data["message"]:
        out.print(f"  {data['message']}")
    table = Table("clone", "wave", "state", "attempts", "message", "log")
    for c in data["clones"]:
        table.add_row(
            c["clone"],
            "" if c["wave"] is None else str(c["wave"]),
            c["state"],
            str(c["attempts"]),
            c["message"] or "",
            c["log"] if c["attempts"] else "",
        )
    out.print(table)
    if data["planned"]:
        out.print("next waves: " + " | ".join(", ".join(w) for w in data["planned"]))
