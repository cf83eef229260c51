"""Talking to a running guest's QEMU: QMP (power) and the guest agent (exec)."""

from __future__ import annotations

import base64
import contextlib
import json
import random
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sharedroot.errors import OperationError
from sharedroot.hypervisor.qemu.cmdline import QGA_SOCK


class QMP:
    """A QEMU Machine Protocol client on a unix socket."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._file = sock.makefile("rb")

    @classmethod
    def connect(cls, path: Path, timeout: float = 5) -> QMP:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
            qmp = cls(sock)
            greeting = qmp._read()
            if "QMP" not in greeting:
                raise OperationError(f"{path}: not a QMP greeting: {greeting}")
            qmp.command("qmp_capabilities")
        except BaseException:
            sock.close()
            raise
        return qmp

    def _read(self) -> dict[str, Any]:
        line = self._file.readline()
        if not line:
            raise OperationError("QMP connection closed")
        msg: dict[str, Any] = json.loads(line)
        return msg

    def command(self, name: str, **args: Any) -> Any:
        """Run a QMP command and return its "return" value (events are skipped)."""
        req: dict[str, Any] = {"execute": name}
        if args:
            req["arguments"] = args
        self._sock.sendall(json.dumps(req).encode() + b"\n")
        while True:
            msg = self._read()
            if "return" in msg:
                return msg["return"]
            if "error" in msg:
                err = msg["error"]
                raise OperationError(f"QMP {name}: {err.get('class')}: {err.get('desc')}")

    def system_powerdown(self) -> None:
        self.command("system_powerdown")

    def quit(self) -> None:
        with contextlib.suppress(OperationError, OSError):
            self.command("quit")

    def close(self) -> None:
        self._file.close()
        self._sock.close()

    def __enter__(self) -> QMP:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------- guest agent


class GuestAgent:
    """A qemu-guest-agent client on the virtio-serial port's unix socket."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = b""

    @classmethod
    def connect(cls, path: Path, timeout: float = 5) -> GuestAgent:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> GuestAgent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, req: dict[str, Any]) -> None:
        self._sock.sendall(json.dumps(req).encode() + b"\n")

    def _read_msg(self, deadline: float) -> dict[str, Any]:
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0:
                line, self._buf = self._buf[:nl], self._buf[nl + 1 :]
                # 0xFF is the guest-sync-delimited marker; drop it and any garbage before.
                line = line.rpartition(b"\xff")[2].strip()
                if not line:
                    continue
                try:
                    msg: dict[str, Any] = json.loads(line)
                except ValueError:
                    continue
                return msg
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("guest agent did not answer")
            self._sock.settimeout(left)
            chunk = self._sock.recv(65536)
            if not chunk:
                raise OperationError("guest agent connection closed")
            self._buf += chunk

    def sync(self, timeout: float = 5) -> None:
        """Resynchronise: answers left in the channel by earlier clients are skipped."""
        token = random.randrange(1, 1 << 31)
        self._sock.sendall(b"\xff")  # resets the agent's JSON parser
        self._send({"execute": "guest-sync-delimited", "arguments": {"id": token}})
        deadline = time.monotonic() + timeout
        while True:
            msg = self._read_msg(deadline)
            if msg.get("return") == token:
                return

    def command(self, name: str, timeout: float = 30, **args: Any) -> Any:
        req: dict[str, Any] = {"execute": name}
        if args:
            req["arguments"] = args
        self._send(req)
        deadline = time.monotonic() + timeout
        msg = self._read_msg(deadline)
        if "error" in msg:
            err = msg["error"]
            raise OperationError(f"guest agent {name}: {err.get('class')}: {err.get('desc')}")
        return msg.get("return")

    def ping(self, timeout: float = 5) -> None:
        self.sync(timeout)
        self.command("guest-ping", timeout=timeout)

    def exec(
        self, argv: list[str], timeout: float = 60, input: bytes | None = None
    ) -> tuple[int, bytes, bytes]:
        """Run `argv` in the guest; return (exit code, stdout, stderr)."""
        self.sync()
        return run_in_guest(self.command, argv, timeout, input)


# (command name, timeout=..., **arguments) -> the agent's "return" value
AgentCall = Callable[..., Any]


def run_in_guest(
    call: AgentCall, argv: list[str], timeout: float = 60, input: bytes | None = None
) -> tuple[int, bytes, bytes]:
    """guest-exec `argv` through an agent channel and wait for it: (exit code, stdout,
    stderr). A command killed by a signal returns 128 + the signal number, as a shell would.
    """
    if not argv:
        raise OperationError("exec: empty command")
    args: dict[str, Any] = {"path": argv[0], "arg": argv[1:], "capture-output": True}
    if input is not None:
        args["input-data"] = base64.b64encode(input).decode()
    started = call("guest-exec", **args)
    pid = started["pid"]
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        status = call("guest-exec-status", pid=pid)
        if status.get("exited"):
            break
        if time.monotonic() > deadline:
            raise OperationError(f"exec {argv[0]}: still running in the guest after {timeout:.0f}s")
        time.sleep(delay)
        delay = min(delay * 2, 0.5)
    out = base64.b64decode(status.get("out-data", ""))
    err = base64.b64decode(status.get("err-data", ""))
    code = status.get("exitcode")
    if code is None:
        code = 128 + int(status.get("signal", 0))
    return int(code), out, err


def agent_exec(
    run_dir: Path, argv: list[str], timeout: float = 60, input: bytes | None = None
) -> tuple[int, bytes, bytes]:
    """Run one command in the running guest of `run_dir` through its agent."""
    try:
        with GuestAgent.connect(run_dir / QGA_SOCK) as agent:
            return agent.exec(argv, timeout=timeout, input=input)
    except OSError as exc:  # includes timeouts: the guest is still booting, or hangs
        raise OperationError(
            f"the guest agent did not answer ({exc or type(exc).__name__}); is the guest"
            " still booting? `start --wait` waits until it is ready"
        ) from None
