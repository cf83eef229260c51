"""Handlers of `serve` and `token`."""

from __future__ import annotations

import argparse
import fcntl
import ipaddress
import os
from pathlib import Path

from rich.console import Console
from rich.table import Table

from sharedroot.cli.render import Result
from sharedroot.errors import InputError, RefusedError
from sharedroot.model.access import ApiRole, token_name
from sharedroot.model.layout import check_plain_path
from sharedroot.store.serverdb import ServerStore
from sharedroot.workflows.context import Site, resolve_home


def _server_store(args: argparse.Namespace, *, create: bool) -> ServerStore:
    home = resolve_home(args.home)
    Site.open(home, readonly=True).state.close()  # a site, not any directory
    return ServerStore(home, create=create)


def cmd_token(args: argparse.Namespace) -> Result:
    if args.name is not None:
        token_name(args.name)  # refused before server.db is made
    store = _server_store(args, create=args.action == "add")  # readers make no server.db
    try:
        if args.action == "add":
            secret = store.add_token(args.name, ApiRole(args.role))
            data = {"name": args.name, "role": args.role, "token": secret}
            return Result(
                data,
                lambda out: out.print(
                    f"token {args.name} ({args.role}), shown this once: {secret}"
                ),
            )
        if args.action == "revoke":
            store.revoke(args.name)
            return Result({"revoked": args.name}, lambda out: out.print(f"revoked {args.name}"))
        rows = [
            {"name": t.name, "role": t.role.value, "created": t.created} for t in store.tokens()
        ]
    finally:
        store.close()

    def render(out: Console) -> None:
        table = Table("name", "role", "created")
        for r in rows:
            table.add_row(r["name"], r["role"], r["created"])
        out.print(table)

    return Result(rows, render)


def _listen_host(text: str) -> str:
    if text == "localhost":
        return text
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise InputError(f"--host {text!r}: an IP address (or localhost)") from None


def cmd_serve(args: argparse.Namespace) -> Result:
    import uvicorn

    from sharedroot.api.app import create_app

    home = resolve_home(args.home)
    host = _listen_host(args.host)  # the arguments first: a refusal makes no server.db
    socket = None
    if args.socket is not None:
        socket = Path(os.path.normpath(os.path.abspath(args.socket)))
        check_plain_path(str(socket), "--socket")
    store = _server_store(args, create=True)
    lock_path = store.dir / "serve.lock"
    store.close()
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RefusedError(f"{home}: another sharedroot serve runs on this site") from None
        where = f"unix:{socket}" if socket else f"http://{host}:{args.port}"
        print(f"sharedroot: serving {home} at {where} (Ctrl-C stops; running jobs go on)")
        config = uvicorn.Config(
            create_app(home, args.keep_days),
            host=host,
            port=args.port,
            uds=None if socket is None else str(socket),
            log_level="warning",
            lifespan="on",
            # Open event streams never end by themselves: Ctrl-C cuts them after this.
            timeout_graceful_shutdown=3,
        )
        uvicorn.Server(config).run()
    finally:
        os.close(fd)
    return Result({"stopped": True}, lambda out: out.print("sharedroot: server stopped"))
