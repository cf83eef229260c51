"""Checked argument types, and the rules on combinations of arguments argparse cannot state.

Each bad value or combination is a UsageError: one line naming the option, the value and
the rule (exit 2, with a pointer to --help).
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable

from sharedroot.errors import InputError
from sharedroot.model.parm import check_netmask
from sharedroot.model.types import guest_name

MAX_TIMEOUT = 86400.0  # a day: longer is a typo, and time.monotonic() arithmetic stays sane

_WHOLE = re.compile(r"[0-9]{1,12}")  # ASCII digits only: int() takes "1_0" and other scripts
_DECIMAL = re.compile(r"[0-9]{1,12}(\.[0-9]*)?|\.[0-9]+")


class UsageError(InputError):
    """The command line itself is malformed (exit 2, with a pointer to --help)."""


def whole(lo: int, hi: int) -> Callable[[str], int]:
    """An argparse type: a whole number from lo to hi, written in plain digits."""

    def parse(text: str) -> int:
        if not _WHOLE.fullmatch(text) or not lo <= int(text) <= hi:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a whole number from {lo} to {hi:_}".replace("_", ",")
            )
        return int(text)

    return parse


def seconds(text: str) -> float:
    """An argparse type: a positive, finite number of seconds up to a day."""
    value = float(text) if _DECIMAL.fullmatch(text) else math.nan
    if not (math.isfinite(value) and 0 < value <= MAX_TIMEOUT):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of seconds above 0 and at most {MAX_TIMEOUT:.0f}"
        )
    return value


def guest(text: str) -> str:
    """An argparse type: a z/VM user ID, upper-cased; checked before the store is opened."""
    try:
        return guest_name(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def netmask(text: str) -> int:
    """An argparse type: a dotted netmask or prefix length, as a prefix length 1-32."""
    try:
        prefix = check_netmask(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if prefix < 1:  # 0.0.0.0 parses, but leaves the guest no network of its own
        raise argparse.ArgumentTypeError(f"netmask {text!r}: the prefix must be 1 to 32")
    return prefix


def guests_or_file(args: argparse.Namespace) -> None:
    """GUEST... or --from FILE (define, clonero), never both, one of them always."""
    if args.from_file is not None and args.guests:
        raise UsageError("give guests or --from FILE, not both")
    if args.from_file is None and not args.guests:
        raise UsageError("the following arguments are required: guest (or --from FILE)")


def define_combination(args: argparse.Namespace) -> None:
    guests_or_file(args)
    single = [args.hostname, args.ip, args.netmask, args.gateway, args.nameserver]
    given = any(v is not None for v in single)
    if args.from_file is not None:
        if args.rw or args.ro or given:
            raise UsageError("--from FILE: the file gives each guest's kind and identity")
    elif not (args.rw or args.ro):
        raise UsageError("one of the arguments --rw --ro is required")
    elif len(args.guests) > 1 and given:
        raise UsageError("--hostname, --ip, ... name one guest; use --from FILE for several")
