"""The seam where a logged-on user's virtual machine would run.

XAUTOLOG calls `started` once the user's devices exist; logoff (SIGNAL SHUTDOWN, FORCE)
calls `stopped` before they are released. Today nothing boots: a later step runs s390x
guests here (QEMU, each device as virtio-blk-ccw at its virtual address).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from zvmsim.state import Session


def started(s: Session, userid: str) -> None:
    """Boot `userid`'s guest from its devices (not emulated yet)."""


def stopped(s: Session, userid: str) -> None:
    """Stop `userid`'s guest (not emulated yet)."""
