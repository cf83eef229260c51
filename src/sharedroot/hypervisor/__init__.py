"""Hypervisor backends, chosen by name from the site config."""

from __future__ import annotations

import os
from pathlib import Path

from sharedroot.errors import InputError
from sharedroot.hypervisor.base import Hypervisor
from sharedroot.hypervisor.local import LocalBackend
from sharedroot.store.config import SiteConfig
from sharedroot.store.state import State


def cache_dir() -> Path:
    """Host-wide cache (golden trees, the acceleration probe): $SHAREDROOT_CACHE."""
    return Path(os.environ.get("SHAREDROOT_CACHE", "/var/cache/sharedroot"))


def new(config: SiteConfig, home: Path, state: State) -> Hypervisor:
    """The backend the site config names."""
    if config.backend == "local":
        return LocalBackend(home, state, config.guests.admin, cache_dir())
    raise InputError(f'backend {config.backend!r} is not available yet; use backend = "local"')
