"""The journal: the newest operations, each with the steps it recorded."""

from __future__ import annotations

from typing import Any

from sharedroot.workflows.context import Site


def entries(site: Site, limit: int) -> list[dict[str, Any]]:
    with site.state.reading():
        return [
            {
                "id": j.id,
                "operation": j.operation,
                "args": j.args,
                "started": j.started,
                "ended": j.ended,
                "status": j.status,
                "message": j.message,
                "steps": [
                    {"at": at, "step": step, "status": status}
                    for at, step, status in site.state.journal_steps(j.id)
                ],
            }
            for j in site.state.journal(limit)
        ]
