"""Hypervisor backends, chosen by name from the site config."""

from __future__ import annotations

import json
import os
from pathlib import Path

from sharedroot.errors import InputError
from sharedroot.hypervisor.base import Hypervisor
from sharedroot.hypervisor.local import LocalBackend
from sharedroot.store.config import SITE_FILE, SiteConfig
from sharedroot.store.state import State

AVAILABLE = ("local",)  # backends this build can run; site.toml may name more
_TITLES = {"zvm": "z/VM", "libvirt": "libvirt"}


def title(backend: str) -> str:
    """How messages name a backend (z/VM, not zvm)."""
    return _TITLES.get(backend, repr(backend))


def cache_dir() -> Path:
    """Host-wide cache (golden trees, the acceleration probe): $SHAREDROOT_CACHE."""
    return Path(os.environ.get("SHAREDROOT_CACHE", "/var/cache/sharedroot"))


def new(config: SiteConfig, home: Path, state: State) -> Hypervisor:
    """The backend the site config names."""
    if config.backend == "local":
        return LocalBackend(home, state, config.guests.admin, cache_dir())
    # Name the file and key to edit: the setting is valid, this build just lacks the backend.
    name = json.dumps(config.backend)  # as TOML writes it
    raise InputError(
        f"{home / SITE_FILE}: [site] backend = {name}: the {title(config.backend)} backend"
        ' is not available yet; use backend = "local"'
    )
