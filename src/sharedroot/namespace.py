"""Worker-side mounts live in a private mount namespace of the running command.

The kernel drops a namespace's mounts when its last process ends, however it ends
(SIGKILL included), and mount(8) gives its loop devices autoclear: a killed command
leaves no mount and no loop device behind, and nobody else ever sees a guest's disk
mounted on the worker.  Guests started by such a command go back to the host's
namespace first, so a long-lived QEMU never keeps the command's mounts alive.
"""

from __future__ import annotations

import ctypes
import os
import threading

from sharedroot.errors import OperationError
from sharedroot.run import run

_CLONE_NEWNS = 0x00020000
_lock = threading.Lock()
_host_ns: int | None = None  # fd of the namespace this process started in


def private_mounts() -> None:
    """Move this process into a mount namespace of its own (once; needs root)."""
    global _host_ns
    with _lock:
        if _host_ns is not None:
            return
        host = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(_CLONE_NEWNS) != 0:
            os.close(host)
            err = ctypes.get_errno()
            raise OperationError(
                f"cannot make a private mount namespace for the worker's mounts:"
                f" {os.strerror(err)} (sharedroot mounts guest disks as root)"
            )
        # Without this, mounts made here would propagate back to the host's tree.
        run(["mount", "--make-rprivate", "/"])
        _host_ns = host


def host_namespace_fd() -> int | None:
    """The host's mount namespace, when this process has left it (for nsenter)."""
    return _host_ns
