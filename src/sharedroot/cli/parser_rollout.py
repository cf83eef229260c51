"""The command line of `sharedroot rollout`: read-only clones moved to a gold slot in
waves, each clone's migrate --reboot checked by verify."""

from __future__ import annotations

import argparse

from sharedroot.cli import commands_rollout as c
from sharedroot.cli.argtypes import UsageError, guest, whole
from sharedroot.cli.grammar import Add
from sharedroot.model.rollout import MAX_FAILURES, MAX_WAVE_SIZE

MAX_SLOT = 999  # the site's own range is checked when the store is open
ON_ONE = ("show", "pause", "resume", "abort", "retry")


def _words(args: argparse.Namespace) -> None:
    """What each action takes: start its clones (or --from-slot), the others one ID."""
    starts = (
        args.slot,
        args.from_slot,
        args.wave_size,
        args.max_failures,
        args.pause_after_each_wave or None,
    )
    if args.action != "start" and any(x is not None for x in starts):
        raise UsageError(
            f"rollout {args.action}: --slot, --from-slot, --wave-size, --max-failures and"
            " --pause-after-each-wave are for rollout start"
        )
    if args.action == "start":
        if args.slot is None:
            raise UsageError("rollout start: --slot N (the gold slot to move to) is needed")
        if bool(args.words) == (args.from_slot is not None):
            raise UsageError("rollout start: name the clones, or --from-slot N; one of the two")
        try:
            args.words = [guest(w) for w in args.words]
        except argparse.ArgumentTypeError as exc:
            raise UsageError(f"rollout start: {exc}") from None
    elif args.action == "list":
        if args.words:
            raise UsageError("rollout list: takes no words")
    elif len(args.words) != 1 or not args.words[0].isdecimal() or len(args.words[0]) > 12:
        raise UsageError(f"rollout {args.action}: one rollout ID (a number) is needed")


def add_rollout_commands(add: Add) -> None:
    p = add(
        "rollout",
        c.cmd_rollout,
        "move read-only clones to a gold slot in waves, with verify as the gate: each"
        " wave is one `migrate C1 C2 ... --slot N --reboot --parallel K` (side by side),"
        " then `verify CLONE` of each clone it moved; the first wave"
        " is one clone alone until one passes (the canary), then waves of --wave-size."
        " `rollout start` returns at once with the rollout's ID: the rollout runs in a"
        " process of its own (the same one `serve` starts), which goes on when the"
        " command or the server ends. `rollout list`, `rollout show ID`; `rollout pause ID`"
        " (after the current wave), `resume ID`, `abort ID` (before the next wave: a"
        " migrate that has begun ends), `retry ID` (its failed clones again)",
    )
    p.add_argument("action", choices=["start", "list", *ON_ONE])
    p.add_argument("words", nargs="*", metavar="CLONE|ID", help="start: the clones; else an ID")
    p.add_argument(
        "--slot", type=whole(1, MAX_SLOT), metavar="N", help="start: the gold slot to move to"
    )
    p.add_argument(
        "--from-slot",
        type=whole(1, MAX_SLOT),
        metavar="N",
        help="start: every read-only clone linking gold slot N, instead of naming them",
    )
    p.add_argument(
        "--wave-size",
        type=whole(1, MAX_WAVE_SIZE),
        metavar="K",
        help="start: clones per wave once the canary has passed (1)",
    )
    p.add_argument(
        "--pause-after-each-wave",
        action="store_true",
        help="start: pause after each wave, until `rollout resume ID`",
    )
    p.add_argument(
        "--max-failures",
        type=whole(0, MAX_FAILURES),
        metavar="F",
        help="start: the rollout stops, failed, once more than F clones failed (0)",
    )
    p.set_defaults(combination=_words)
