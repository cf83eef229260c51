"""One job's process: `python -m sharedroot.api.runner HOME JOB`.

It runs the job's command line (the CLI itself, with --json) as its child, turns the
child's step and progress lines into the job's events, and records how it ended. It
lives in a session of its own, so the server can stop and start again meanwhile: the
job goes on and the new server finds it in server.db. A cancel is a flag in server.db;
the runner passes it on as SIGINT, which the CLI answers as it answers Ctrl-C (the
workflow's own clean-up runs, the journal says where it stopped).
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
from pathlib import Path
from typing import Any

from sharedroot.cli.ui import EVENTS_FD
from sharedroot.model.access import JobStatus
from sharedroot.run import start
from sharedroot.store.serverdb import ServerStore

POLL = 0.2  # seconds between two looks at the cancel flag
INTERRUPTED = 130  # the CLI's exit code after SIGINT


def _result(out: Path) -> Any:
    """The command's --json answer, or None where it printed none."""
    try:
        return json.loads(out.read_text()) if out.stat().st_size else None
    except (ValueError, UnicodeDecodeError):
        return None


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
    out_path = log_path.with_suffix(".out")
    read_end, write_end = os.pipe()
    with open(log_path, "ab", buffering=0) as log, open(out_path, "wb") as out:
        child = start(
            [sys.executable, "-m", "sharedroot.cli.main", "--home", home, *job.argv],
            env=os.environ | {EVENTS_FD: str(write_end)},
            stdout=out,
            stderr=log,
            pass_fds=[write_end],
        )
        os.close(write_end)
        store.set_running(job_id, child.pid)
        signal.signal(signal.SIGTERM, lambda *_: store.request_cancel(job_id))
        cancelled = False
        pending = b""
        with os.fdopen(read_end, "rb", buffering=0) as events:
            while True:
                ready, _, _ = select.select([events], [], [], POLL)
                chunk = os.read(events.fileno(), 65536) if ready else b""
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    _event(store, job_id, log, line)
                row = store.job(job_id)
                if not cancelled and row is not None and row.cancel:
                    cancelled = True
                    log.write(b"> cancel requested: interrupting\n")
                    child.send_signal(signal.SIGINT)
                if ready and not chunk:  # every writer has closed its end
                    break
                if not ready and child.poll() is not None:
                    break  # ended, yet a grandchild may still hold the pipe open
        code = child.wait()
    result = _result(out_path)
    status, message = _outcome(code, cancelled, result, _tail(log_path))
    store.add_event(job_id, "end", f"{status.value}" + (f": {message}" if message else ""))
    store.end_job(job_id, status, message, code, result)
    with open(log_path, "ab") as log:
        log.write(f"> {status.value} (exit code {code})\n".encode())
    store.close()
    return 0


def _event(store: ServerStore, job: int, log: Any, line: bytes) -> None:
    try:
        fields = json.loads(line)
        kind, text = str(fields["kind"]), str(fields["text"])
    except (ValueError, KeyError, TypeError):
        return  # not ours: a line the child did not write as an event
    done, total = fields.get("done"), fields.get("total")
    store.add_event(
        job,
        kind,
        text,
        done if isinstance(done, int) else None,
        total if isinstance(total, int) else None,
    )
    if kind == "step":
        log.write(f"> {text}\n".encode())


def _tail(log: Path) -> str:
    lines = [x for x in log.read_text(errors="replace").splitlines() if not x.startswith("> ")]
    return lines[-1].removeprefix("sharedroot: ") if lines else ""


def main() -> int:
    if len(sys.argv) != 3 or not sys.argv[2].isdecimal():
        sys.stderr.write("usage: python -m sharedroot.api.runner HOME JOB\n")
        return 2
    return run_job(Path(sys.argv[1]), int(sys.argv[2]))


if __name__ == "__main__":
    sys.exit(main())
