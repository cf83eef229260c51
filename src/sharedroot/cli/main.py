"""sharedroot's command line: argument parsing, tables and JSON; no logic of its own."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from sharedroot.cli.ui import TerminalUI
from sharedroot.errors import InputError, SharedrootError
from sharedroot.model.parm import Identity, check_hostname, check_ipv4, check_netmask
from sharedroot.model.types import Role, format_size, guest_name, parse_size
from sharedroot.store.config import make_config
from sharedroot.store.settings import SETTINGS
from sharedroot.workflows import (
    cloneprep,
    clones,
    define,
    doctor,
    install,
    migrate,
    pipeline,
    report,
    verify,
)
from sharedroot.workflows import guest as guest_ops
from sharedroot.workflows.context import Options, Outcome, Site, resolve_home
from sharedroot.workflows.site import init_site

Render = Callable[[Console], None]


@dataclass(frozen=True)
class Result:
    data: Any
    render: Render
    exit_code: int = 0


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # exit 2 with one clear line, as for bad files
        self.exit(2, f"sharedroot: error: {message} (see --help)\n")


def _ui(args: argparse.Namespace) -> TerminalUI:
    return TerminalUI(quiet=args.json)


def _opts(args: argparse.Namespace) -> Options:
    return Options(
        dry_run=getattr(args, "dry_run", False),
        yes=getattr(args, "yes", False),
        verify=getattr(args, "verify", False),
    )


def _site(args: argparse.Namespace) -> Site:
    return Site.open(resolve_home(args.home))


def _outcome(outcome: Outcome) -> Result:
    def render(out: Console) -> None:
        if outcome.dry_run:
            out.print(f"{outcome.operation}: dry run, {len(outcome.steps)} steps, nothing changed")
            return
        copies = [r for r in outcome.results if "method" in r]
        if copies:
            table = Table("source", "target", "method", "size", "copied", "seconds")
            for r in copies:
                table.add_row(
                    r["source"],
                    r["target"],
                    r["method"],
                    format_size(r["size"]),
                    f"{r['bytes_copied'] / 2**20:.1f} MiB",
                    f"{r['seconds']:.2f}",
                )
            out.print(table)
        for r in outcome.results:
            if "merge" in r:
                counts = ", ".join(f"{n} {a}" for a, n in r["merge"].items() if n)
                out.print(f"  {r['guest']}: /etc merged: {counts or 'nothing to do'}")
                for path in r["beside"]:
                    out.print(
                        f"  {r['guest']}: the gold's new version is /etc/{path}", markup=False
                    )
            for op, paths in r.get("changes", {}).items():
                shown = ", ".join(paths[:4]) + (
                    f" (+{len(paths) - 4} more)" if len(paths) > 4 else ""
                )
                out.print(f"  {op}: {shown or 'nothing to do'}", markup=False)
        out.print(f"{outcome.operation}: done ({len(outcome.steps)} steps)")

    data = {
        "operation": outcome.operation,
        "dry_run": outcome.dry_run,
        "steps": outcome.steps,
        "results": outcome.results,
    }
    return Result(data, render)


# commands -------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> Result:
    values = {s.key: getattr(args, s.key) for s in SETTINGS if getattr(args, s.key) is not None}
    sizes: dict[str, int] = {}
    for item in args.size or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise InputError(f"--size {item!r}: expected MOUNT=SIZE, e.g. /usr=2G")
        sizes[key] = parse_size(value, f"--size {key}")
    config = make_config(values, sizes)
    home = resolve_home(args.home)
    site = init_site(home, config, _ui(args))
    data = {"home": str(home), "guests": [g.name for g in site.state.guests()]}

    def render(out: Console) -> None:
        out.print(f"site created in {home} with {len(data['guests'])} guests")

    return Result(data, render)


def cmd_doctor(args: argparse.Namespace) -> Result:
    rows = doctor.doctor()
    missing = [r for r in rows if r["required"] and not r["found"]]

    def render(out: Console) -> None:
        table = Table("program", "found", "package", "needed for")
        for r in rows:
            mark = "yes" if r["found"] else ("[red]MISSING[/]" if r["required"] else "no")
            table.add_row(str(r["program"]), mark, str(r["package"]), str(r["purpose"]))
        out.print(table)
        pkgs = sorted({str(r["package"]) for r in rows if not r["found"]})
        if pkgs:
            out.print(f"install with: apt-get install {' '.join(pkgs)}")
        else:
            out.print("everything sharedroot uses is here")

    return Result({"programs": rows, "ok": not missing}, render, 1 if missing else 0)


def cmd_guests(args: argparse.Namespace) -> Result:
    rows = report.guests(_site(args))

    def cells(g: dict[str, Any]) -> list[str]:
        state = "logged on" if g["state"] == "logged_on" else "logged off"
        disks = " ".join(d["address"] for d in g["disks"])
        links = " ".join(
            f"{lk['address']}->{lk['owner']}.{lk['owner_address']}/{lk['mode']}"
            for lk in g["links"]
        )
        return [g["name"], g["role"], state, disks, links]

    def render(out: Console) -> None:
        _table(out, ["guest", "role", "state", "disks", "links"], [cells(g) for g in rows])

    return Result(rows, render)


def _table(out: Console, headers: list[str], rows: list[list[str]]) -> None:
    """A Rich table for a screenful; plain columns for long lists (fast, and for grep)."""
    if len(rows) <= 100:
        table = Table(*headers)
        for r in rows:
            table.add_row(*r)
        out.print(table)
        return
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = [headers, *rows]
    text = "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in lines
    )
    out.file.write(text + "\n")


def cmd_linked(args: argparse.Namespace) -> Result:
    facts = report.linked(_site(args))

    def render(out: Console) -> None:
        for line in report.linked_lines(facts):
            out.print(line, markup=False)
        rows = [
            [
                str(h["slot"]) + (" (current)" if h["current"] else ""),
                str(h["generation"] or "-"),
                h["built_from"] or "-",
                h["built"] or "-",
                " ".join(c["name"] for c in h["clones"]) or "-",
                " ".join(c["name"] for c in h["clones"] if c["running"]) or "-",
            ]
            for h in facts["holders"]
            if h["slot"] is not None
        ]
        out.print()
        _table(out, ["slot", "generation", "built from", "when", "clones", "running"], rows)

    return Result(facts, render)


def cmd_define(args: argparse.Namespace) -> Result:
    guest = guest_name(args.guest)
    role = Role.RW_CLONE if args.rw else Role.RO_CLONE
    identity = None
    given = [args.hostname, args.ip]
    if any(given) and not all(given):
        raise InputError("--hostname and --ip go together")
    if args.hostname and args.ip:
        identity = Identity(
            hostname=check_hostname(args.hostname),
            ip=check_ipv4(args.ip, "--ip"),
            prefix=check_netmask(args.netmask),
            gateway=check_ipv4(args.gateway, "--gateway") if args.gateway else None,
            nameserver=check_ipv4(args.nameserver, "--nameserver") if args.nameserver else None,
        )
    elif args.netmask != "255.255.255.0" or args.gateway or args.nameserver:
        raise InputError("--netmask, --gateway and --nameserver need --hostname and --ip")
    site = _site(args)
    return _outcome(define.define(site, _ui(args), _opts(args), guest, role, identity))


def _copy_command(fn: Callable[[Site, TerminalUI, Options], Outcome]) -> Callable[..., Result]:
    def handler(args: argparse.Namespace) -> Result:
        return _outcome(fn(_site(args), _ui(args), _opts(args)))

    return handler


def cmd_clonerw(args: argparse.Namespace) -> Result:
    guest = guest_name(args.guest)
    return _outcome(clones.clonerw(_site(args), _ui(args), _opts(args), guest))


def cmd_install(args: argparse.Namespace) -> Result:
    return _outcome(install.install(_site(args), _ui(args), _opts(args), args.distro))


def cmd_cloneprep(args: argparse.Namespace) -> Result:
    if args.list:
        text = cloneprep.listing()
        return Result(cloneprep.operations(), lambda out: out.print(text, end="", markup=False))
    names = (
        [n.strip() for n in args.operations.split(",") if n.strip()] if args.operations else None
    )
    return _outcome(cloneprep.cloneprep(_site(args), _ui(args), _opts(args), names))


def cmd_start(args: argparse.Namespace) -> Result:
    guest = guest_name(args.guest)
    outcome = guest_ops.start(
        _site(args), _ui(args), _opts(args), guest, wait=args.wait, timeout=args.timeout
    )
    return _outcome(outcome)


def cmd_stop(args: argparse.Namespace) -> Result:
    guest = guest_name(args.guest)
    return _outcome(
        guest_ops.stop(_site(args), _ui(args), _opts(args), guest, timeout=args.timeout)
    )


def cmd_exec(args: argparse.Namespace) -> Result:
    guest = guest_name(args.guest)
    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise InputError("exec: give the command after the guest, e.g. exec LNX226 -- hostname")
    code, stdout, stderr = guest_ops.execute(_site(args), guest, argv, args.timeout)
    data = {
        "guest": guest,
        "argv": argv,
        "exit_code": code,
        "stdout": stdout.decode(errors="replace"),
        "stderr": stderr.decode(errors="replace"),
    }

    def render(out: Console) -> None:
        sys.stdout.buffer.write(stdout)
        sys.stdout.flush()
        sys.stderr.buffer.write(stderr)
        sys.stderr.flush()

    return Result(data, render, code)


def cmd_console(args: argparse.Namespace) -> Result:
    site = _site(args)
    guest = guest_name(args.guest)
    log = guest_ops.console_log(site, guest)
    text = log.read_bytes()
    tail = b"\n".join(text.splitlines()[-args.lines :]) + b"\n" if args.lines else text

    def render(out: Console) -> None:
        sys.stdout.buffer.write(tail)
        sys.stdout.flush()
        if args.follow:
            follow_console(site, guest, log, len(text))

    return Result(
        {"guest": guest, "log": str(log), "console": tail.decode(errors="replace")}, render
    )


def follow_console(site: Site, guest: str, log: Path, offset: int) -> None:
    """Print what the guest writes to its console until it logs off (or Ctrl-C)."""
    with open(log, "rb") as f:
        f.seek(offset)
        while True:
            chunk = f.read(65536)
            if chunk:
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
                continue
            if not guest_ops.running(site, guest):
                return
            time.sleep(0.2)


def cmd_mnt2rogld(args: argparse.Namespace) -> Result:
    return _outcome(pipeline.mnt2rogld(_site(args), _ui(args), _opts(args)))


def cmd_ro2gold(args: argparse.Namespace) -> Result:
    slot = 2 if args.command == "ro2gold2" and args.slot is None else args.slot
    return _outcome(pipeline.ro2gold(_site(args), _ui(args), _opts(args), slot))


def cmd_clonero(args: argparse.Namespace) -> Result:
    guest = guest_name(args.guest)
    return _outcome(clones.clonero(_site(args), _ui(args), _opts(args), guest))


def cmd_verify(args: argparse.Namespace) -> Result:
    guest = guest_name(args.guest)
    checks = verify.verify(_site(args), _ui(args), _opts(args), guest, args.timeout)
    failed = [c for c in checks if not c.ok]
    data = {
        "guest": guest,
        "ok": not failed,
        "checks": [{"check": c.name, "ok": c.ok, "detail": c.detail} for c in checks],
    }

    def render(out: Console) -> None:
        table = Table("check", "result", "detail", title=f"verify {guest}")
        for c in checks:
            table.add_row(c.name, "[green]ok[/]" if c.ok else "[red]FAILED[/]", c.detail)
        out.print(table)
        out.print(f"{guest}: {'all checks passed' if not failed else f'{len(failed)} failed'}")

    return Result(data, render, 1 if failed else 0)


def cmd_migrate(args: argparse.Namespace) -> Result:
    guests = [guest_name(g) for g in args.guests]
    outcome = migrate.migrate(
        _site(args),
        _ui(args),
        _opts(args),
        guests,
        args.slot,
        reboot=args.reboot,
        parallel=args.parallel,
        timeout=args.timeout,
    )
    return _outcome(outcome)


def cmd_journal(args: argparse.Namespace) -> Result:
    site = _site(args)
    rows = site.state.journal(args.limit)
    data = [
        {
            "id": j.id,
            "operation": j.operation,
            "args": j.args,
            "started": j.started,
            "ended": j.ended,
            "status": j.status,
            "message": j.message,
            "steps": [
                {"at": at, "step": step, "status": status}
                for at, step, status in site.state.journal_steps(j.id)
            ],
        }
        for j in rows
    ]

    def render(out: Console) -> None:
        table = Table("id", "operation", "started", "status", "steps", "message")
        for j in reversed(data):
            table.add_row(
                str(j["id"]),
                j["operation"],
                j["started"],
                j["status"],
                str(len(j["steps"])),
                j["message"] or "",
            )
        out.print(table)

    return Result(data, render)


# the parser -----------------------------------------------------------------


def _writer_flags(p: argparse.ArgumentParser, confirm: bool = True) -> None:
    p.add_argument("--dry-run", action="store_true", help="list the steps; change nothing")
    if confirm:
        p.add_argument(
            "--yes",
            "-y",
            action="store_true",
            help="do not ask before overwriting disks (needed without a terminal)",
        )
        p.add_argument(
            "--verify", action="store_true", help="compare content hashes after each copy"
        )


def build_parser() -> ArgumentParser:
    common = ArgumentParser(add_help=False)
    common.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print the result as JSON for scripts",
    )
    common.add_argument(
        "--home",
        default=argparse.SUPPRESS,
        metavar="DIR",
        help="the store (default: $SHAREDROOT_HOME, else /var/lib/sharedroot)",
    )
    parser = ArgumentParser(
        prog="sharedroot",
        description=(
            "Run fleets of Linux guests on one shared read-only golden root, and keep that"
            " root maintained: the system of IBM Redpaper 'Sharing and maintaining SLES 10"
            " SP2 Linux under z/VM'. Pipeline: install -> maintenance guest (RWMNT) <->"
            " test guest (RWTST); maintenance -> gold (mnt2gold); gold -> clones (clonerw)."
        ),
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument(
        "--home",
        metavar="DIR",
        help="the store (default: $SHAREDROOT_HOME, else /var/lib/sharedroot)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(
        name: str,
        handler: Callable[[argparse.Namespace], Result],
        help: str,
        aliases: Sequence[str] = (),
    ) -> ArgumentParser:
        p: ArgumentParser = sub.add_parser(
            name, help=help, description=help, aliases=list(aliases), parents=[common]
        )
        p.set_defaults(handler=handler)
        return p

    p = add("init", cmd_init, "create site.toml and the store with the paper's guests and disks")
    p.add_argument(
        "--layout",
        choices=["paper"],
        default="paper",
        help="paper: the guests of §1.4 and the disks of Table 1-1",
    )
    for s in SETTINGS:
        p.add_argument(
            f"--{s.key.replace('_', '-')}",
            dest=s.key,
            metavar=s.metavar,
            help=f"{s.help} (default: {s.default})",
        )
    p.add_argument(
        "--size",
        action="append",
        metavar="MOUNT=SIZE",
        help="size of a layout disk, by mount point or address, e.g. /usr=2G",
    )

    add(
        "doctor", cmd_doctor, "list host programs sharedroot needs and the packages that bring them"
    )
    add("guests", cmd_guests, "every guest: role, state (logged on/off), disks and links")
    add(
        "linked",
        cmd_linked,
        "which guests link which gold slot (LINKED EXEC); [[GOLD n]] is the current slot",
    )
    p = add("journal", cmd_journal, "the operation journal: what ran, each step, how it ended")
    p.add_argument("--limit", type=int, default=20, help="how many operations (default 20)")

    p = add(
        "define",
        cmd_define,
        "define a clone guest: its disks, its link to the admin disk, its parm file",
    )
    p.add_argument("guest", help="the guest (z/VM user ID): 1-8 of A-Z 0-9 @ # $")
    kind = p.add_mutually_exclusive_group(required=True)
    kind.add_argument("--rw", action="store_true", help="read-write clone (a full copy)")
    kind.add_argument("--ro", action="store_true", help="read-only clone (links the gold)")
    p.add_argument("--hostname", help="host name or FQDN (parm file Hostname=)")
    p.add_argument("--ip", help="IPv4 address (parm file HostIP=)")
    p.add_argument("--netmask", default="255.255.255.0", help="netmask or prefix length")
    p.add_argument("--gateway", help="default gateway (parm file Gateway=)")
    p.add_argument("--nameserver", help="DNS server (parm file Nameserver=)")
    _writer_flags(p, confirm=False)

    for name, fn, help, aliases in (
        (
            "mnt2tst",
            pipeline.mnt2tst,
            "copy the maintenance guest's disks onto the test guest (MNT2TST)",
            ["maint-to-test"],
        ),
        (
            "tst2mnt",
            pipeline.tst2mnt,
            "copy the test guest's disks back onto the maintenance guest (TST2MNT)",
            ["test-to-maint"],
        ),
        (
            "mnt2gold",
            pipeline.mnt2gold,
            "copy the maintenance guest onto the gold read-write disks 11Bx (MNT2GOLD)",
            ["maint-to-gold"],
        ),
    ):
        p = add(name, _copy_command(fn), help, aliases)
        _writer_flags(p)

    p = add(
        "install",
        cmd_install,
        "install Linux onto the maintenance guest's disks from a cached golden tree (§1.5.4)",
    )
    p.add_argument("--distro", choices=["debian-bookworm"], help="default: the site's distro")
    _writer_flags(p)

    p = add(
        "cloneprep",
        cmd_cloneprep,
        "clean the maintenance system before mnt2gold: machine-id, SSH host keys, logs, ..."
        " (cloneprep.sh)",
    )
    p.add_argument("--list", action="store_true", help="list the operations and stop")
    p.add_argument("--operations", metavar="A,B,...", help="run only these operations")
    _writer_flags(p)

    p = add("start", cmd_start, "LOGON a guest and IPL its boot disk (01B0) under QEMU", ["ipl"])
    p.add_argument("guest")
    p.add_argument("--wait", action="store_true", help="return when the guest is ready")
    p.add_argument("--timeout", type=float, default=300, help="seconds --wait waits (300)")
    _writer_flags(p, confirm=False)

    p = add(
        "stop", cmd_stop, "shut a guest down cleanly, forced after --timeout (LOGOFF)", ["logoff"]
    )
    p.add_argument("guest")
    p.add_argument("--timeout", type=float, default=60, help="seconds before forcing (60)")
    _writer_flags(p, confirm=False)

    p = add("console", cmd_console, "show a guest's console output (the serial console log)")
    p.add_argument("guest")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing until logoff")
    p.add_argument("--lines", "-n", type=int, default=0, help="only the last N lines")

    p = add(
        "exec",
        cmd_exec,
        "run a command in a running guest (guest agent); exits with the command's code",
    )
    p.add_argument("guest")
    p.add_argument(
        "argv", nargs=argparse.REMAINDER, metavar="-- CMD", help="the command and its arguments"
    )
    p.add_argument("--timeout", type=float, default=120, help="seconds to wait (120)")

    p = add(
        "mnt2rogld",
        cmd_mnt2rogld,
        "copy the maintenance guest to the read-only staging guest (ROGLD) and make it a"
        " read-only-root system: /etc, /root, /srv from /local (mnt2rogld.sh)",
        ["maint-to-readonly"],
    )
    _writer_flags(p)

    p = add(
        "ro2gold",
        cmd_ro2gold,
        "copy the read-only staging guest to a gold slot's 21Bx disks and make that slot"
        " current (RO2GOLD; ro2gold2 is --slot 2)",
        ["ro2gold2", "promote"],
    )
    p.add_argument("--slot", type=int, help="gold slot (default: one that nobody links)")
    _writer_flags(p)

    p = add(
        "clonero",
        cmd_clonero,
        "a read-only clone: copy its private disks (swap, /local, /var) from the current"
        " gold slot, LINK the rest RR (CLONERO)",
        ["clone-ro"],
    )
    p.add_argument("guest", help="a guest defined with --ro")
    _writer_flags(p)

    p = add(
        "verify",
        cmd_verify,
        "boot a guest if needed and run the read-only checks of §1.6.3 (touch /etc/foo ...),"
        " hostname, machine-id, failed units, read-only disks",
    )
    p.add_argument("guest")
    p.add_argument("--timeout", type=float, default=600, help="seconds to wait for boot")

    p = add(
        "migrate",
        cmd_migrate,
        "move read-only clones to another gold slot (§1.7): relink to the slot's profile and"
        " merge each clone's /etc three ways; rollback is a migrate back",
    )
    p.add_argument("guests", nargs="+", metavar="GUEST")
    p.add_argument("--slot", type=int, required=True, help="the gold slot to move to")
    p.add_argument(
        "--reboot", action="store_true", help="stop running clones, move, start them again"
    )
    p.add_argument("--parallel", type=int, default=1, metavar="K", help="clones per wave (1)")
    p.add_argument("--timeout", type=float, default=600, help="seconds a clone may take to boot")
    _writer_flags(p)

    p = add(
        "clonerw",
        cmd_clonerw,
        "copy the gold read-write disks 11Bx onto a guest's 01Bx (CLONERW)",
        ["clone-rw"],
    )
    p.add_argument("guest", help="a guest defined with --rw")
    _writer_flags(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or bad arguments (exit 2)
        return exc.code if isinstance(exc.code, int) else 2
    out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)
    try:
        result: Result = args.handler(args)
    except SharedrootError as exc:
        if args.json:
            print(json.dumps({"error": str(exc), "exit_code": exc.exit_code}))
        Console(stderr=True, highlight=False, soft_wrap=True).print(
            f"sharedroot: {exc}", markup=False
        )
        return exc.exit_code
    except KeyboardInterrupt:
        Console(stderr=True).print("sharedroot: interrupted")
        return 130
    if args.json:
        print(json.dumps(result.data, indent=2, default=str))
    else:
        result.render(out)
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
