"""The commands that hand the fleet's facts to other tools, grammar and handlers:
`inventory` (an Ansible dynamic inventory script) and `metrics` (Prometheus' text
format, e.g. for node-exporter's textfile collector). Both only read the store."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from rich.console import Console

from sharedroot.cli.argtypes import guest
from sharedroot.cli.commands import open_site
from sharedroot.cli.grammar import Add
from sharedroot.cli.render import Result
from sharedroot.errors import InputError
from sharedroot.workflows import inventory, metrics


def cmd_inventory(args: argparse.Namespace) -> Result:
    site = open_site(args, readonly=True)
    if args.host is not None:
        data = inventory.site_host_vars(site, args.host)
    else:
        data = inventory.site_inventory(site)

    def render(out: Console) -> None:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")  # JSON either way: Ansible reads it

    return Result(data, render)


def cmd_metrics(args: argparse.Namespace) -> Result:
    site = open_site(args, readonly=True)
    found = metrics.site_families(site)
    text = metrics.exposition(found)
    if args.output is not None:
        _write_whole(Path(args.output), text)

    def render(out: Console) -> None:
        if args.output is None:
            sys.stdout.write(text)

    return Result(metrics.as_data(found), render)


def _write_whole(path: Path, text: str) -> None:
    """Written beside and renamed into place: a collector never reads half a file."""
    if not path.parent.is_dir():
        raise InputError(f"--output {path}: {path.parent} is not a directory")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def add_export_commands(add: Add) -> None:
    p = add(
        "inventory",
        cmd_inventory,
        "the guests as an Ansible dynamic inventory (JSON): groups by role (role_ro_clone,"
        " ...), gold slot (slot_1, ...), state (state_logged_on, state_logged_off) and last"
        " verify (verify_ok, verify_failed, verify_never); host variables ansible_host (the"
        " parm file's HostIP=) and sharedroot_*. Use it as a script: ansible-inventory -i"
        ' SCRIPT --list, where SCRIPT runs `sharedroot inventory "$@"`',
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--list", action="store_true", help="every group and host (Ansible's call)")
    which.add_argument(
        "--host",
        type=guest,
        metavar="GUEST",
        help="one guest's variables ({} for a guest the site has not)",
    )

    p = add(
        "metrics",
        cmd_metrics,
        "the fleet as Prometheus metrics (text exposition format): guests up, their role and"
        " slot, each gold slot's generation, whether it is current and how many clones link"
        " it, each guest's last verify and when one last passed; for node-exporter's"
        " textfile collector, or any scraper",
    )
    p.add_argument(
        "--output",
        metavar="FILE",
        help="write FILE whole (beside it, then renamed), e.g."
        " /var/lib/node_exporter/textfile/sharedroot.prom, instead of printing",
    )
