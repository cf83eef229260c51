"""The QEMU guest agent of a domain, reached through its host's libvirtd.

libvirt owns the agent's channel (and resynchronises it before each command), so the
controller needs no socket on the host: the same guest-exec protocol as the local
backend's, over `virDomainQemuAgentCommand`.
"""

from __future__ import annotations

import json
from typing import Any

import libvirt  # type: ignore[import-untyped]  # the binding ships no types
import libvirt_qemu  # type: ignore[import-untyped]

from sharedroot.errors import OperationError
from sharedroot.hypervisor.libvirt.hosts import error_text
from sharedroot.hypervisor.qemu.control import AgentCall, run_in_guest


def agent_call(domain: Any) -> AgentCall:
    """A caller of `domain`'s agent: (command, timeout=..., **arguments) -> its return."""

    def call(name: str, timeout: float = 30, **arguments: Any) -> Any:
        request: dict[str, Any] = {"execute": name}
        if arguments:
            request["arguments"] = arguments
        try:
            answer = libvirt_qemu.qemuAgentCommand(
                domain, json.dumps(request), max(1, int(timeout)), 0
            )
        except libvirt.libvirtError as exc:
            raise OperationError(f"guest agent {name}: {error_text(exc)}") from None
        try:
            message = json.loads(answer)
        except ValueError:
            raise OperationError(f"guest agent {name}: not JSON: {answer[:200]!r}") from None
        if not isinstance(message, dict) or "error" in message:
            error = message.get("error", {}) if isinstance(message, dict) else {}
            raise OperationError(f"guest agent {name}: {error.get('class')}: {error.get('desc')}")
        return message.get("return")

    return call


def ping(domain: Any, timeout: float) -> None:
    agent_call(domain)("guest-ping", timeout=timeout)


def execute(
    domain: Any, argv: list[str], timeout: float, input: bytes | None = None
) -> tuple[int, bytes, bytes]:
    return run_in_guest(agent_call(domain), argv, timeout, input)
