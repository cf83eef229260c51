"""Hypervisor backends, chosen by name from the site config.

Each entry of the registry is a module imported only when a site uses it, with a
`create(config, home, state)` factory: a local site never imports the z/VM code.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

from sharedroot.errors import InputError
from sharedroot.hypervisor.base import Hypervisor
from sharedroot.store.config import SITE_FILE, SiteConfig
from sharedroot.store.state import State

REGISTRY = {
    "local": "sharedroot.hypervisor.local",
    "zvm": "sharedroot.hypervisor.zvm.backend",
    "libvirt": "sharedroot.hypervisor.libvirt.backend",
}
_TITLES = {"zvm": "z/VM", "libvirt": "libvirt"}


def title(backend: str) -> str:
    """How messages name a backend (z/VM, not zvm)."""
    return _TITLES.get(backend, repr(backend))


def cache_dir() -> Path:
    """Host-wide cache (golden trees, the acceleration probe): $SHAREDROOT_CACHE."""
    return Path(os.environ.get("SHAREDROOT_CACHE", "/var/cache/sharedroot"))


def new(config: SiteConfig, home: Path, state: State) -> Hypervisor:
    """The backend the site config names."""
    module = REGISTRY.get(config.backend)
    if module is None:
        # Name the file and key to edit: the setting is valid, this build just lacks the backend.
        name = json.dumps(config.backend)  # as TOML writes it
        raise InputError(
            f"{home / SITE_FILE}: [site] backend = {name}: the {title(config.backend)} backend"
            f" is not available; use one of {', '.join(REGISTRY)}"
        )
    backend: Hypervisor = importlib.import_module(module).create(config, home, state)
    return backend
