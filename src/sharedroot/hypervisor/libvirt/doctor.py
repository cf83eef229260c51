"""What the libvirt backend needs on the controller: the binding, each host, the pool."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import NamedTuple

from sharedroot.errors import RefusedError
from sharedroot.store.config import LibvirtSettings


class Check(NamedTuple):
    name: str
    found: bool
    package: str
    hint: str


def doctor_checks(settings: LibvirtSettings) -> list[Check]:
    if importlib.util.find_spec("libvirt") is None:
        return [
            Check(
                "libvirt (Python)",
                False,
                "pip: libvirt-python",
                "the libvirt binding: bash scripts/setup installs it (extra `libvirt`)",
            )
        ]
    rows = [Check("libvirt (Python)", True, "pip: libvirt-python", "the libvirt binding")]
    from sharedroot.hypervisor.libvirt.hosts import Hosts

    fleet = Hosts(settings.hosts)
    try:
        for uri in fleet.uris:
            try:
                conn = fleet.connection(uri)
                version = conn.getLibVersion()
                seen = f"libvirt {version // 1000000}.{version // 1000 % 1000}.{version % 1000}"
                rows.append(Check(uri, True, "libvirt-daemon-system", f"answers: {seen}"))
            except RefusedError as exc:
                rows.append(Check(uri, False, "libvirt-daemon-system", str(exc)))
    finally:
        fleet.close()
    pool = Path(settings.pool)
    usable = pool.is_dir() and os.access(pool, os.W_OK | os.X_OK)
    rows.append(
        Check(
            str(pool),
            usable,
            "(shared storage)",
            "the pool every host sees, at this same path"
            + ("" if usable else ": not a writable directory here"),
        )
    )
    return rows
