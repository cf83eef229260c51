"""The command line of `sharedroot serve` and its API tokens."""

from __future__ import annotations

import argparse

from sharedroot.cli import commands_server as c
from sharedroot.cli.argtypes import UsageError
from sharedroot.cli.grammar import Add
from sharedroot.model.access import ApiRole
from sharedroot.store.retention import KEEP_DAYS


def _port(text: str) -> int:
    if not text.isdecimal() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"port {text!r}: a number from 1 to 65535")
    return int(text)


def _keep_days(text: str) -> int:
    if not text.isdecimal() or int(text) > 36500:
        raise argparse.ArgumentTypeError(f"--keep-days {text!r}: a number of days, 0 to 36500")
    return int(text)


def _token_words(args: argparse.Namespace) -> None:
    if args.action in ("add", "revoke") and args.name is None:
        raise UsageError(f"token {args.action}: the token's NAME is needed")
    if args.action == "add" and args.role is None:
        raise UsageError("token add: --role viewer|operator|admin is needed")
    if args.action != "add" and args.role is not None:
        raise UsageError(f"token {args.action}: --role is for token add")
    if args.action == "list" and args.name is not None:
        raise UsageError("token list: takes no NAME")


def add_server_commands(add: Add) -> None:
    p = add(
        "serve",
        c.cmd_serve,
        "serve the REST API (/api/v1, schema at /openapi.json), the dashboard (/) and"
        " Prometheus metrics (/metrics) for this site; actions run as jobs, each in a"
        " process of its own that a restart of the server does not stop",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only)",
    )
    p.add_argument("--port", type=_port, default=8080, help="TCP port (default 8080)")
    p.add_argument("--socket", metavar="PATH", help="listen on this unix socket instead of TCP")
    p.add_argument(
        "--keep-days",
        type=_keep_days,
        default=KEEP_DAYS,
        metavar="N",
        help=f"ended jobs and rollouts, their logs and events, go after N days (default"
        f" {KEEP_DAYS}; 0 keeps them for good); the newest of each always stays",
    )

    p = add(
        "token",
        c.cmd_token,
        "API tokens for serve: `token add NAME --role R` prints a new token once (only"
        " its hash is kept); `token list`; `token revoke NAME` ends it and its browser"
        " sessions. A viewer reads, an operator also starts jobs, an admin also manages"
        " tokens",
    )
    p.add_argument("action", choices=["add", "list", "revoke"])
    p.add_argument("name", nargs="?", help="the token's name: 1-32 of a-z 0-9 . _ -")
    p.add_argument("--role", choices=[r.value for r in ApiRole], help="for token add")
    p.set_defaults(combination=_token_words)
