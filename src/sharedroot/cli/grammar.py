"""What every command's grammar is built from: the parser class that raises instead of
printing, the options writers share, and the guest argument.

parser.py (the site and the pipeline) and parser_guests.py (a guest's life: define,
start, stop, console, exec, delete) both build on these.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import NoReturn, Protocol

from sharedroot.cli.argtypes import MAX_TIMEOUT, UsageError, guest, seconds
from sharedroot.cli.commands import Handler

EPILOG = "exit codes: 0 done, 1 refused or failed (the message says why), 2 bad input"


class ArgumentParser(argparse.ArgumentParser):
    # The dest that takes every word after the first `--` (exec's command); options before
    # it stay the parser's, wherever they stand (argparse's REMAINDER would swallow them).
    trailing: str | None = None

    def error(self, message: str) -> NoReturn:
        # Raised, not printed: main() alone knows whether the answer must be JSON.
        raise UsageError(message)

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        words = list(args) if args is not None else None
        if self.trailing is None or words is None or "--" not in words:
            parsed, extras = super().parse_known_args(words, namespace)
        else:
            cut = words.index("--")
            parsed, extras = super().parse_known_args(words[:cut], namespace)
            setattr(parsed, self.trailing, [*getattr(parsed, self.trailing), *words[cut + 1 :]])
        # Rules on combinations of arguments that argparse cannot state (a usage error too).
        combination: Callable[[argparse.Namespace], None] | None = getattr(
            parsed, "combination", None
        )
        if combination is not None:
            combination(parsed)
        return parsed, extras


class Add(Protocol):
    """Adds one subcommand (with --json and --home) and returns its parser."""

    def __call__(
        self, name: str, handler: Handler, help: str, aliases: Sequence[str] = ()
    ) -> ArgumentParser: ...


def writer_flags(
    p: argparse.ArgumentParser,
    confirm: bool = True,
    *,
    copies: bool = True,
    asks: str = "before overwriting disks",
) -> None:
    p.add_argument("--dry-run", action="store_true", help="list the steps; change nothing")
    if confirm:
        p.add_argument(
            "--yes",
            "-y",
            action="store_true",
            help=f"do not ask {asks} (needed without a terminal)",
        )
    if confirm and copies:
        p.add_argument(
            "--verify", action="store_true", help="compare content hashes after each copy"
        )


def timeout(p: argparse.ArgumentParser, default: float, what: str) -> None:
    p.add_argument(
        "--timeout",
        type=seconds,
        default=default,
        metavar="SECONDS",
        help=f"{what} ({default:.0f}; at most {MAX_TIMEOUT:.0f})",
    )


def guest_arg(p: argparse.ArgumentParser, help: str = "the guest (z/VM user ID)") -> None:
    p.add_argument("guest", type=guest, help=f"{help}: 1-8 of A-Z 0-9 @ # $")
