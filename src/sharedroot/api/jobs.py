"""Jobs: an action the server accepted, run by its own runner process (api/runner.py).

The server only starts runners and reads server.db; it never holds a job in memory
alone. A server that starts finds jobs a previous one accepted but never started
(it died in between) and starts them, and marks failed those whose runner is gone
without having said how they ended.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from sharedroot.api import detached
from sharedroot.api.actions import Command, takes_yes
from sharedroot.errors import RefusedError
from sharedroot.model.access import JobStatus
from sharedroot.run import run
from sharedroot.store.serverdb import JobRow, ServerStore
from sharedroot.workflows.context import Site

DRY_RUN_TIMEOUT = 120.0


def submit(home: Path, store: ServerStore, cmd: Command, user: str) -> int:
    argv = ["--json", *cmd.argv] + (["--yes"] if takes_yes(cmd.kind) else [])
    job = store.add_job(cmd.kind, cmd.targets, argv, user)
    _spawn(home, store, job)
    return job


def _spawn(home: Path, store: ServerStore, job: int) -> None:
    pid, started = detached.launch("sharedroot.api.runner", home, job, store.log_path(job))
    store.set_runner(job, pid, started)


def settle(home: Path, store: ServerStore, *, resume: bool = False) -> None:
    """Jobs whose runner is gone end as failed; with `resume` (a server starting), jobs
    accepted but never started are started now."""
    detached.reap()
    for status in (JobStatus.QUEUED, JobStatus.RUNNING):
        for job in store.jobs(limit=10_000, status=status):
            if job.runner is None:
                if resume:
                    _spawn(home, store, job.id)
                continue
            if not detached.alive(job.runner, job.runner_start):
                store.end_job(
                    job.id,
                    JobStatus.FAILED,
                    "the job's runner process ended without recording a result"
                    " (killed?); the command's journal entry says how far it got",
                )


def cancel(store: ServerStore, job: int) -> JobRow:
    """Ask a job's runner to interrupt its command (it does within a fifth of a second)."""
    row = store.job(job)
    if row is None:
        raise LookupError(f"job {job}: no such job")
    if row.status.ended:
        raise RefusedError(f"job {job}: already {row.status.value}")
    store.request_cancel(job)
    if row.status is JobStatus.QUEUED and row.runner is None:
        store.end_job(job, JobStatus.CANCELLED, "cancelled before it started")
    got = store.job(job)
    assert got is not None
    return got


def dry_run(home: Path, cmd: Command) -> tuple[int, Any]:
    """The plan of an action: the same command with --dry-run, which writes nothing."""
    proc = run(
        [
            sys.executable,
            "-m",
            "sharedroot.cli.main",
            "--home",
            home,
            "--json",
            *cmd.argv,
            "--dry-run",
        ],
        check=False,
        timeout=DRY_RUN_TIMEOUT,
    )
    try:
        answer = json.loads(proc.stdout) if proc.stdout.strip() else None
    except ValueError:
        answer = None
    if answer is None:
        answer = {"error": proc.stderr.strip().removeprefix("sharedroot: ")}
    return proc.returncode, answer


def view(job: JobRow, site: Site | None = None) -> dict[str, Any]:
    """A job for the API: its row, and the journal entries its command wrote."""
    out: dict[str, Any] = {
        "id": job.id,
        "type": job.kind,
        "targets": job.targets,
        "user": job.user,
        "status": job.status.value,
        "created": job.created,
        "started": job.started,
        "ended": job.ended,
        "exit_code": job.exit_code,
        "message": job.message,
        "cancel_requested": job.cancel,
        "command": ["sharedroot", *job.argv],
        "result": job.result,
        "steps": [],
    }
    if site is not None and job.child is not None:
        for entry in site.state.journal(limit=50):
            if entry.pid == job.child and entry.started >= (job.started or ""):
                done = {s for _, s, status in site.state.journal_steps(entry.id) if status}
                out["steps"].append(
                    {
                        "operation": entry.operation,
                        "journal": entry.id,
                        "status": entry.status,
                        "plan": [{"step": p, "done": p in done} for p in entry.plan],
                    }
                )
    return out
