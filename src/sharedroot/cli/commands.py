"""One handler per subcommand: call the workflow, hand back its data and its rendering.

Arguments arrive checked by the parser (guest names upper-cased, numbers in range).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sharedroot.cli.render import Result, memory_cell, outcome, table
from sharedroot.cli.ui import TerminalUI
from sharedroot.errors import InputError
from sharedroot.model import fleetfile
from sharedroot.model.layout import PAPER_LAYOUT
from sharedroot.model.types import Distro, Initramfs, Network, Role, parse_size
from sharedroot.store.config import (
    PAPER,
    SITE_FILE,
    check_store_apart,
    load_config,
    load_layout,
    make_config,
)
from sharedroot.store.settings import LIBVIRT_SETTINGS, SETTINGS, ZVM_SETTINGS
from sharedroot.workflows import (
    cloneprep,
    clones,
    define,
    delete,
    doctor,
    generations,
    install,
    journal,
    migrate,
    pipeline,
    report,
    verify,
)
from sharedroot.workflows import guest as guest_ops
from sharedroot.workflows.context import Options, Outcome, Site, resolve_home
from sharedroot.workflows.site import init_site

Handler = Callable[[argparse.Namespace], Result]
MAX_GUEST_FILE = 16 << 20  # a line is under 200 bytes: room for far more guests than a site has


def _ui(args: argparse.Namespace) -> TerminalUI:
    return TerminalUI(quiet=args.json)


def _opts(args: argparse.Namespace) -> Options:
    return Options(
        dry_run=getattr(args, "dry_run", False),
        yes=getattr(args, "yes", False),
        verify=getattr(args, "verify", False),
    )


def open_site(args: argparse.Namespace, readonly: bool = False) -> Site:
    """The store; commands that only read open it read-only, so they work on a store
    the user cannot write (and can never change it by accident)."""
    site = Site.open(resolve_home(args.home), readonly=readonly)
    _opened(args).append(site)
    return site


def _opened(args: argparse.Namespace) -> list[Site]:
    """The sites a command opened: `main` closes them on every way out, so no SQLite
    connection is left for the garbage collector to close (and its -wal file to vanish)
    at some later moment."""
    opened: list[Site] = args.__dict__.setdefault("opened_sites", [])
    return opened


def cmd_init(args: argparse.Namespace) -> Result:
    values = {
        s.option: getattr(args, s.option)
        for s in (*SETTINGS, *ZVM_SETTINGS, *LIBVIRT_SETTINGS)
        if getattr(args, s.option) is not None
    }
    sizes: dict[str, int] = {}
    for item in args.size or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise InputError(f"--size {item!r}: expected MOUNT=SIZE, e.g. /usr=2G")
        sizes[key] = parse_size(value, f"--size {key}")
    # `paper` is Table 1-1; anything else names a layout file (./paper for one so named).
    layout = PAPER_LAYOUT if args.layout == PAPER else load_layout(Path(args.layout))
    config = make_config(values, sizes, layout)
    home = resolve_home(args.home)
    check_store_apart(config, home)
    site = init_site(home, config, _ui(args), args.layout)
    _opened(args).append(site)
    data = {"home": str(home), "guests": [g.name for g in site.state.guests()]}

    def render(out: Console) -> None:
        out.print(f"site created in {home} with {len(data['guests'])} guests")

    return Result(data, render)


def cmd_doctor(args: argparse.Namespace) -> Result:
    backend, zvm, libvirt = args.backend, None, None
    site_file = resolve_home(args.home) / SITE_FILE
    if site_file.is_file():  # a site's own settings, when there is one
        config = load_config(site_file)
        backend, zvm, libvirt = backend or config.backend, config.zvm, config.libvirt
    rows = doctor.doctor(backend or "local", zvm, libvirt)
    missing = [r for r in rows if r["required"] and not r["found"]]

    def render(out: Console) -> None:
        doctor_table = Table("program", "found", "package", "needed for")
        for r in rows:
            mark = "yes" if r["found"] else ("[red]MISSING[/]" if r["required"] else "no")
            cells = (str(r["program"]), str(r["package"]), str(r["purpose"]))
            doctor_table.add_row(escape(cells[0]), mark, escape(cells[1]), escape(cells[2]))
        out.print(doctor_table)
        apt = {str(r["package"]) for r in rows if not r["found"]}
        pkgs = sorted(p for p in apt if p.replace("-", "").isalnum())  # Debian packages only
        if pkgs:
            out.print(f"install with: apt-get install {' '.join(pkgs)}")
        elif not missing:
            out.print("everything sharedroot uses is here")

    return Result({"programs": rows, "ok": not missing}, render, 1 if missing else 0)


def cmd_guests(args: argparse.Namespace) -> Result:
    rows = report.guests(open_site(args, readonly=True))

    def cells(g: dict[str, Any]) -> list[str]:
        state = "logged on" if g["state"] == "logged_on" else "logged off"
        if g["incomplete"]:  # a disk set half written: say how to finish it
            state += f", INCOMPLETE (rerun: {g['incomplete']['rerun']})"
        elif g["cloned"] is False:
            state += f", NOT CLONED (run: sharedroot clonero {g['name']})"
        disks = " ".join(d["address"] for d in g["disks"])
        links = " ".join(
            f"{lk['address']}->{lk['owner']}.{lk['owner_address']}/{lk['mode']}"
            for lk in g["links"]
        )
        host = [g["host"] or "-"] if placed else []
        return [g["name"], g["role"], state, *host, disks, links, memory_cell(g)]

    placed = any(g["host"] for g in rows)  # a site of several hosts

    def render(out: Console) -> None:
        headers = ["guest", "role", "state", *(["host"] if placed else []), "disks", "links"]
        table(out, [*headers, "host memory"], [cells(g) for g in rows])

    return Result(rows, render)


def cmd_linked(args: argparse.Namespace) -> Result:
    facts = report.linked(open_site(args, readonly=True))

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
        table(out, ["slot", "generation", "built from", "when", "clones", "running"], rows)

    return Result(facts, render)


def _guest_file(name: str) -> tuple[fleetfile.Definition, ...]:
    """The guests of a `--from` file, every line checked (exit 2 naming the line)."""
    path = Path(name)
    try:
        if path.stat().st_size > MAX_GUEST_FILE:
            raise InputError(f"--from {name}: larger than {MAX_GUEST_FILE} bytes")
        text = path.read_bytes().decode()
    except OSError as exc:
        raise InputError(f"--from {name}: cannot read it: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise InputError(f"--from {name}: not UTF-8 text") from None
    return fleetfile.parse(text, name)


def cmd_define(args: argparse.Namespace) -> Result:
    # The combinations of arguments were checked by the parser.
    if args.from_file is not None:
        batch = _guest_file(args.from_file)
    else:
        role = Role.RW_CLONE if args.rw else Role.RO_CLONE
        found = fleetfile.identity(
            args.hostname, args.ip, args.netmask, args.gateway, args.nameserver, option="--"
        )
        batch = tuple(fleetfile.Definition(g, role, found) for g in args.guests)
    site = open_site(args)
    return outcome(define.define_many(site, _ui(args), _opts(args), batch, host=args.host))


def copy_command(fn: Callable[[Site, TerminalUI, Options], Outcome]) -> Handler:
    def handler(args: argparse.Namespace) -> Result:
        return outcome(fn(open_site(args), _ui(args), _opts(args)))

    return handler


def cmd_clonerw(args: argparse.Namespace) -> Result:
    return outcome(clones.clonerw(open_site(args), _ui(args), _opts(args), args.guest))


def cmd_install(args: argparse.Namespace) -> Result:
    tree = Path(args.from_tree) if args.from_tree is not None else None
    image = Path(args.from_image) if args.from_image is not None else None
    return outcome(
        install.install(
            open_site(args),
            _ui(args),
            _opts(args),
            Distro(args.distro) if args.distro else None,
            tree,
            args.arch,
            Initramfs(args.initramfs) if args.initramfs else None,
            Network(args.network) if args.network else None,
            image,
        )
    )


def cmd_cloneprep(args: argparse.Namespace) -> Result:
    if args.list:
        text = cloneprep.listing()
        return Result(cloneprep.operations(), lambda out: out.print(text, end="", markup=False))
    names = (
        [n.strip() for n in args.operations.split(",") if n.strip()] if args.operations else None
    )
    return outcome(cloneprep.cloneprep(open_site(args), _ui(args), _opts(args), names))


def cmd_start(args: argparse.Namespace) -> Result:
    done = guest_ops.start(
        open_site(args), _ui(args), _opts(args), args.guest, wait=args.wait, timeout=args.timeout
    )
    return outcome(done)


def cmd_stop(args: argparse.Namespace) -> Result:
    return outcome(
        guest_ops.stop(open_site(args), _ui(args), _opts(args), args.guest, timeout=args.timeout)
    )


def cmd_move(args: argparse.Namespace) -> Result:
    site, guest, host = open_site(args), args.guest, args.to_host
    return outcome(guest_ops.move(site, _ui(args), _opts(args), guest, host, timeout=args.timeout))


def cmd_exec(args: argparse.Namespace) -> Result:
    guest = args.guest
    argv = list(args.argv)  # the words after `--`, split off by the parser
    if not argv:
        raise InputError("exec: give the command after the guest, e.g. exec LNX226 -- hostname")
    code, stdout, stderr = guest_ops.execute(open_site(args), guest, argv, args.timeout)
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
    guest = args.guest
    site = open_site(args, readonly=True)
    stream = guest_ops.console(site, guest, follow=args.follow)
    text = next(stream)  # all of it so far: refused here, before any output, if there is none
    tail = b"\n".join(text.splitlines()[-args.lines :]) + b"\n" if args.lines else text

    def render(out: Console) -> None:
        sys.stdout.buffer.write(tail)
        sys.stdout.flush()
        for chunk in stream:  # with --follow: until the guest logs off (or Ctrl-C)
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()

    return Result({"guest": guest, "console": tail.decode(errors="replace")}, render)


def cmd_mnt2rogld(args: argparse.Namespace) -> Result:
    return outcome(pipeline.mnt2rogld(open_site(args), _ui(args), _opts(args)))


def cmd_ro2gold(args: argparse.Namespace) -> Result:
    slot = 2 if args.command == "ro2gold2" and args.slot is None else args.slot
    return outcome(pipeline.ro2gold(open_site(args), _ui(args), _opts(args), slot))


def cmd_clonero(args: argparse.Namespace) -> Result:
    guests = list(args.guests)
    if args.from_file is not None:
        guests = fleetfile.guests_of(_guest_file(args.from_file), Role.RO_CLONE)
        if not guests:
            raise InputError(f"--from {args.from_file}: no read-only (ro) guests in it")
    return outcome(clones.clonero_many(open_site(args), _ui(args), _opts(args), guests))


def cmd_verify(args: argparse.Namespace) -> Result:
    guest = args.guest
    checks = verify.verify(open_site(args), _ui(args), _opts(args), guest, args.timeout)
    failed = [c for c in checks if not c.ok]
    data = {
        "guest": guest,
        "ok": not failed,
        "checks": [{"check": c.name, "ok": c.ok, "detail": c.detail} for c in checks],
    }

    def render(out: Console) -> None:
        verify_table = Table("check", "result", "detail", title=f"verify {guest}")
        for c in checks:
            verify_table.add_row(c.name, "[green]ok[/]" if c.ok else "[red]FAILED[/]", c.detail)
        out.print(verify_table)
        out.print(f"{guest}: {'all checks passed' if not failed else f'{len(failed)} failed'}")

    return Result(data, render, 1 if failed else 0)


def cmd_migrate(args: argparse.Namespace) -> Result:
    done = migrate.migrate(
        open_site(args),
        _ui(args),
        _opts(args),
        list(args.guests),
        args.slot,
        reboot=args.reboot,
        parallel=args.parallel,
        timeout=args.timeout,
    )
    return outcome(done)


def cmd_journal(args: argparse.Namespace) -> Result:
    data = journal.entries(open_site(args, readonly=True), args.limit)

    def render(out: Console) -> None:
        journal_table = Table("id", "operation", "started", "status", "steps", "message")
        for j in reversed(data):
            journal_table.add_row(
                str(j["id"]),
                j["operation"],
                j["started"],
                j["status"],
                str(len(j["steps"])),
                j["message"] or "",
            )
        out.print(journal_table)

    return Result(data, render)


def cmd_delete(args: argparse.Namespace) -> Result:
    done = delete.delete(
        open_site(args), _ui(args), _opts(args), args.guest, keep_disks=args.keep_disks
    )
    return outcome(done)


def cmd_generations(args: argparse.Namespace) -> Result:
    facts = generations.generations(open_site(args, readonly=True))

    def render(out: Console) -> None:
        if not facts["generations"]:
            out.print("no generation yet: ro2gold records one each time it fills a gold slot")
            return
        rows = [
            [
                str(g["id"]),
                f"{g['slot']} ({g['holder'] or '-'})",
                g["built_from"],
                g["built"],
                "current" if g["current"] else "held" if g["held"] else "superseded",
                " ".join(g["linked_by"]) or "-",
                "yes" if g["removable"] else "no",
            ]
            for g in facts["generations"]
        ]
        headers = ["generation", "slot", "built from", "when", "content", "linked by"]
        table(out, [*headers, "prune"], rows)

    return Result(facts, render)


def cmd_prune(args: argparse.Namespace) -> Result:
    return outcome(generations.prune(open_site(args), _ui(args), _opts(args)))
