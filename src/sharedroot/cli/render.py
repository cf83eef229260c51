"""What a command hands back, and how it looks on a terminal (tables) or in JSON."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from sharedroot.model.types import format_size
from sharedroot.workflows.context import Outcome

Render = Callable[[Console], None]


@dataclass(frozen=True)
class Result:
    data: Any
    render: Render
    exit_code: int = 0


def table(out: Console, headers: list[str], rows: list[list[str]]) -> None:
    """A Rich table for a screenful; plain columns for long lists (fast, and for grep)."""
    if len(rows) <= 100:
        rich_table = Table(*headers)
        for r in rows:
            rich_table.add_row(*r)
        out.print(rich_table)
        return
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = [headers, *rows]
    text = "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in lines
    )
    out.file.write(text + "\n")


def memory_cell(g: dict[str, Any]) -> str:
    """A guest's host memory (RSS, PSS, KSM-merged, balloon); its linked disks' page cache."""
    parts = []
    held = g["memory"]
    if held is not None:
        parts += [f"RSS {_mib(held['rss'])}", f"PSS {_mib(held['pss'])}"]
        if held["ksm"]:
            parts.append(f"KSM {_mib(held['ksm'])}")
        if held["balloon"] is not None:
            parts.append(f"balloon {_mib(held['balloon'])}")
    elif g["state"] == "logged_on":
        parts.append("not visible")  # the backend cannot see it (z/VM), or QEMU ended
    if g["cached"] is not None:
        parts.append(f"page cache {_mib(g['cached'])} (shared)")
    return ", ".join(parts)


def _mib(size: int) -> str:
    mib = size / 2**20
    return f"{mib:.1f}M" if mib < 10 else f"{mib:.0f}M"


def outcome(done: Outcome) -> Result:
    """A workflow's outcome: its copies as a table, /etc merges and changes, a last line."""

    def render(out: Console) -> None:
        if done.dry_run:
            out.print(f"{done.operation}: dry run, {len(done.steps)} steps, nothing changed")
            return
        copies = [r for r in done.results if "method" in r]
        if copies:
            copy_table = Table("source", "target", "method", "size", "copied", "seconds")
            for r in copies:
                copy_table.add_row(
                    r["source"],
                    r["target"],
                    r["method"],
                    format_size(r["size"]),
                    f"{r['bytes_copied'] / 2**20:.1f} MiB",
                    f"{r['seconds']:.2f}",
                )
            out.print(copy_table)
        for r in done.results:
            if "kept" in r:
                out.print(f"  {r['guest']}: its disks are kept in {r['kept']}", markup=False)
            if "pruned" in r:
                out.print(f"  forgot generations {', '.join(map(str, r['pruned']))}")
            if "merge" in r:
                counts = ", ".join(f"{n} {a}" for a, n in r["merge"].items() if n)
                out.print(f"  {r['guest']}: /etc merged: {counts or 'nothing to do'}")
                for path in r["beside"]:
                    out.print(
                        f"  {r['guest']}: the gold's new version is /etc/{path}", markup=False
                    )
            for op, paths in r.get("changes", {}).items():
                shown = ", ".join(paths[:4]) + (
                    f" (+{len(paths) - 4} more)" if len(paths) > 4 else ""
                )
                out.print(f"  {op}: {shown or 'nothing to do'}", markup=False)
        out.print(f"{done.operation}: done ({len(done.steps)} steps)")

    data = {
        "operation": done.operation,
        "dry_run": done.dry_run,
        "steps": done.steps,
        "results": done.results,
    }
    return Result(data, render)
