"""A real `sharedroot serve` on a loopback port, and a small HTTP client for it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

READY_TIMEOUT = 30.0
SHAREDROOT = [sys.executable, "-m", "sharedroot.cli.main"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def token(home: Path, name: str, role: str) -> str:
    out = subprocess.run(
        [*SHAREDROOT, "--home", str(home), "token", "add", name, "--role", role],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.split()[-1]


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Server:
    home: Path
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[str] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Server:
        log = open(self.home.parent / f"serve-{self.port}.log", "a")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [*SHAREDROOT, "--home", str(self.home), "serve", "--port", str(self.port)],
            stdout=log,
            stderr=log,
            text=True,
            env=os.environ | self.env,
        )
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "serve ended at start"
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.1)
        raise AssertionError("serve did not listen in time")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)
        self.proc = None

    def call(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        body: object = None,
        form: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 60,
    ) -> Answer:
        data = None
        head = dict(headers or {})
        if token is not None:
            head["Authorization"] = f"Bearer {token}"
        if body is not None:
            data = json.dumps(body).encode()
            head["Content-Type"] = "application/json"
        if form is not None:
            data = urllib.parse.urlencode(form).encode()
            head["Content-Type"] = "application/x-www-form-urlencoded"
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=head)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return Answer(r.status, dict(r.headers.items()), r.read())
        except urllib.error.HTTPError as e:
            return Answer(e.code, dict(e.headers.items()), e.read())

    def wait_job(self, job: int, token: str, timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got: dict[str, Any] = self.call("GET", f"/api/v1/jobs/{job}", token=token).json()
            if got["status"] in ("succeeded", "failed", "cancelled"):
                return got
            time.sleep(0.2)
        raise AssertionError(f"job {job} did not end in {timeout}s")

    def wait_status(self, job: int, token: str, status: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.call("GET", f"/api/v1/jobs/{job}", token=token).json()["status"] == status:
                return
            time.sleep(0.1)
        raise AssertionError(f"job {job} never {status}")


def sse(server: Server, path: str, token: str, timeout: float = 60) -> list[tuple[str, Any, float]]:
    """Every server-sent event of a stream until it closes: (event, data, arrival time)."""
    req = urllib.request.Request(server.base + path, headers={"Authorization": f"Bearer {token}"})
    events: list[tuple[str, Any, float]] = []
    kind, data = "message", ""
    with urllib.request.urlopen(req, timeout=timeout) as r:
        for raw in r:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: "):
                data = line.removeprefix("data: ")
            elif line == "" and data:
                events.append((kind, json.loads(data), time.time()))
                kind, data = "message", ""
    return events
