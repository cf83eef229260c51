"""The one table of site settings: it feeds site.toml, its validation and `init`'s options.

As in mkosi, each setting is declared once, with its parser, default and help; the
config loader and the command line are both generated from this table.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sharedroot.errors import InputError
from sharedroot.model.types import shown

BACKENDS = ("local", "zvm")
DISTROS = ("debian-bookworm",)


def _choice(options: tuple[str, ...]) -> Callable[[Any, str], Any]:
    def parse(value: Any, key: str) -> str:
        if not isinstance(value, str) or value not in options:
            raise InputError(f"{key} = {shown(value)}: must be one of {', '.join(options)}")
        return value

    return parse


# Plain ASCII decimal: str.isdigit() also takes digits int() refuses (superscripts).
_WHOLE = re.compile(r"0|[1-9][0-9]{0,8}")
# The longest role suffix is RWMNT/RWTST/ROGLD (5), so names stay within 8 characters.
_PREFIX = re.compile(r"[A-Za-z0-9@#$]{0,3}")


def _int_range(lo: int, hi: int) -> Callable[[Any, str], Any]:
    def parse(value: Any, key: str) -> int:
        number = int(value) if isinstance(value, str) and _WHOLE.fullmatch(value) else value
        if isinstance(number, bool) or not isinstance(number, int) or not lo <= number <= hi:
            raise InputError(f"{key} = {shown(value)}: must be a whole number from {lo} to {hi}")
        return number

    return parse


def _prefix(value: Any, key: str) -> str:
    if not isinstance(value, str) or not _PREFIX.fullmatch(value):
        raise InputError(f"{key} = {shown(value)}: must be 0-3 characters of A-Z 0-9 @ # $")
    return value.upper()


@dataclass(frozen=True)
class Setting:
    key: str  # the key under [site] in site.toml, and the --key option of `init`
    parse: Callable[[Any, str], Any]
    default: Any
    help: str
    metavar: str = "VALUE"


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "backend",
        _choice(BACKENDS),
        "local",
        "hypervisor backend: local (image files + QEMU, the embedded default) or zvm",
        "NAME",
    ),
    Setting(
        "prefix",
        _prefix,
        "S10",
        "prefix of the pipeline's guest names, as S10 in S10RWMNT, S10GOLD (paper: S10)",
        "PFX",
    ),
    Setting(
        "gold_slots",
        _int_range(1, 9),
        2,
        "number of gold slots (paper: S10GOLD and S10GOLD2) for rolling updates",
        "N",
    ),
    Setting("distro", _choice(DISTROS), DISTROS[0], "Linux distribution `install` lays down", "D"),
    Setting(
        "memory_mb",
        _int_range(128, 65536),
        512,
        "memory of each guest in MiB (local backend)",
        "MIB",
    ),
)

SETTINGS_BY_KEY = {s.key: s for s in SETTINGS}
