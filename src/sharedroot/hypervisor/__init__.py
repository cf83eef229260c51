"""Hypervisor backends, chosen by name from the site config."""

from __future__ import annotations

from pathlib import Path

from sharedroot.errors import InputError
from sharedroot.hypervisor.base import Hypervisor
from sharedroot.hypervisor.local import LocalBackend
from sharedroot.store.config import SiteConfig
from sharedroot.store.state import State


def new(config: SiteConfig, home: Path, state: State) -> Hypervisor:
    """The backend the site config names."""
    if config.backend == "local":
        return LocalBackend(home, state, config.guests.admin)
    raise InputError(f'backend {config.backend!r} is not available yet; use backend = "local"')
