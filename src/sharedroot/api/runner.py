"""One job's process: `python -m sharedroot.api.runner HOME JOB`.

It runs the job's command line (the CLI itself, with --json) as its child, turns the
child's step and progress lines into the job's events, and records how it ended. It
lives in a session of its own, so the server can stop and start again meanwhile: the
job goes on and the new server finds it in server.db. A cancel is a flag in server.db;
the runner passes it on as SIGINT, which the CLI answers as it answers Ctrl-C (the
workflow's own clean-up runs, the journal says where it stopped).
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

from sharedroot.api.clichild import last_error_line, run_cli
from sharedroot.model.access import JobStatus
from sharedroot.store.serverdb import ServerStore


def _outcome(
    code: int, cancelled: bool, result: Any, err_tail: str
) -> tuple[JobStatus, str | None]:
    message = result.get("error") if isinstance(result, dict) else None
    if code == 0:
        return JobStatus.SUCCEEDED, None
    if cancelled:
        return JobStatus.CANCELLED, message or "cancelled"
    return JobStatus.FAILED, message or err_tail or f"exit code {code}"


def run_job(home: Path, job_id: int) -> int:
    store = ServerStore(home)
    job = store.job(job_id)
    if job is None or job.status is not JobStatus.QUEUED:
        return 1
    log_path = store.log_path(job_id)
    signal.signal(signal.SIGTERM, lambda *_: store.request_cancel(job_id))

    def event(fields: dict[str, Any]) -> None:
        done, total = fields.get("done"), fields.get("total")
        store.add_event(
            job_id,
            str(fields["kind"]),
            str(fields["text"]),
            done if isinstance(done, int) else None,
            total if isinstance(total, int) else None,
        )

    def cancel() -> bool:
        row = store.job(job_id)
        return row is not None and row.cancel

    with open(log_path, "ab", buffering=0) as log:
        end = run_cli(
            home,
            job.argv,
            log,
            log_path.with_suffix(".out"),
            event,
            started=lambda pid: store.set_running(job_id, pid),
            cancel=cancel,
        )
        status, message = _outcome(end.code, end.cancelled, end.result, last_error_line(log_path))
        log.write(f"> {status.value} (exit code {end.code})\n".encode())
    store.add_event(job_id, "end", f"{status.value}" + (f": {message}" if message else ""))
    store.end_job(job_id, status, message, end.code, end.result)
    store.close()
    return 0


def main() -> int:
    if len(sys.argv) != 3 or not sys.argv[2].isdecimal():
        sys.stderr.write("usage: python -m sharedroot.api.runner HOME JOB\n")
        return 2
    return run_job(Path(sys.argv[1]), int(sys.argv[2]))


if __name__ == "__main__":
    sys.exit(main())
