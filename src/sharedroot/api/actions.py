"""An API action as the command line it runs: the CLI's own grammar checks every option.

A job runs `sharedroot --json KIND [GUEST] OPTIONS --yes`, exactly what a person would
type, so the API refuses and guards precisely as the CLI does. The JSON body's keys are
the command's own option names (`{"slot": 2}` is `--slot=2`); what the server decides
itself (--json, --home, --yes, --dry-run) cannot be given.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import cache

from sharedroot.cli.argtypes import UsageError
from sharedroot.cli.parser import build_parser
from sharedroot.errors import InputError


class GuestAction(StrEnum):
    START = "start"
    STOP = "stop"
    VERIFY = "verify"
    CLONERO = "clonero"
    CLONERW = "clonerw"
    DELETE = "delete"
    MIGRATE = "migrate"


class PipelineOp(StrEnum):
    MNT2TST = "mnt2tst"
    TST2MNT = "tst2mnt"
    MNT2GOLD = "mnt2gold"
    MNT2ROGLD = "mnt2rogld"
    RO2GOLD = "ro2gold"


SERVER_OWNED = frozenset({"json", "home", "help", "yes", "dry_run", "guest", "guests"})


@dataclass(frozen=True)
class Command:
    kind: str
    targets: list[str]
    argv: list[str]  # after `sharedroot --json`, without --yes or --dry-run
    can_dry_run: bool


@cache
def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("the command line has no subcommands")


def _options(kind: str) -> dict[str, argparse.Action]:
    return {
        a.dest: a
        for a in _subparsers()[kind]._actions
        if a.option_strings and a.dest not in SERVER_OWNED and a.dest != argparse.SUPPRESS
    }


def _words(key: str, action: argparse.Action, value: object) -> list[str]:
    flag = max(action.option_strings, key=len)
    if action.nargs == 0:
        if not isinstance(value, bool):
            raise InputError(f"option {key!r}: true or false, not {value!r}")
        return [flag] if value else []
    values = value if isinstance(action, argparse._AppendAction) else [value]
    if not isinstance(values, list):
        raise InputError(f"option {key!r}: a list")
    words = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, str | int | float):
            raise InputError(f"option {key!r}: a string or a number, not {v!r}")
        words.append(f"{flag}={v}")  # one word: a value starting with - stays a value
    return words


def command(kind: str, guest: str | None, options: Mapping[str, object]) -> Command:
    """The checked command line of an action; InputError names what is wrong."""
    allowed = _options(kind)
    argv = [kind] + ([guest] if guest is not None else [])
    for key, value in options.items():
        action = allowed.get(key)
        if action is None:
            known = ", ".join(sorted(allowed)) or "none"
            raise InputError(f"{kind}: no option {key!r} (it takes: {known})")
        argv += _words(key, action, value)
    try:
        parsed = build_parser().parse_args(["--json", *argv])
    except UsageError as exc:
        raise InputError(str(exc)) from None
    targets = [guest] if guest is not None else []
    names: list[str] = getattr(parsed, "guests", None) or (
        [parsed.guest] if "guest" in parsed else []
    )
    if names:
        targets = [str(n) for n in names]
        argv = [kind, *targets, *argv[2:]]  # the guest as the CLI spelled it (upper case)
    can_dry_run = "dry_run" in {a.dest for a in _subparsers()[kind]._actions}
    return Command(kind, targets, argv, can_dry_run)


def takes_yes(kind: str) -> bool:
    return "yes" in {a.dest for a in _subparsers()[kind]._actions}
