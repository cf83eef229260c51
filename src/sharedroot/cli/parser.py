"""The command line's grammar: argparse built from the commands, with checked argument types
(sharedroot.cli.argtypes). The site and the pipeline are here; a guest's own life (define,
start, stop, console, exec, delete) is in parser_guests.py.

Every malformed argument ends in a UsageError with one line naming the option, the value
and the rule; main() prints it (as JSON with --json) and exits 2.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from sharedroot.cli import commands as c
from sharedroot.cli.argtypes import guest, guests_or_file, whole
from sharedroot.cli.exports import add_export_commands
from sharedroot.cli.grammar import (
    EPILOG,
    ArgumentParser,
    guest_arg,
    timeout,
    writer_flags,
)
from sharedroot.cli.parser_guests import add_guest_commands
from sharedroot.cli.parser_rollout import add_rollout_commands
from sharedroot.cli.parser_server import add_server_commands
from sharedroot.model.layout import ADDRESS_HELP
from sharedroot.model.types import Distro, Initramfs, Network
from sharedroot.store.settings import LIBVIRT_SETTINGS, SETTINGS, ZVM_SETTINGS
from sharedroot.workflows import pipeline

MAX_PARALLEL = 64
MAX_SLOT = 999  # the site's own range (gold_slots) is checked when the store is open


class VersionRequested(Exception):
    """--version was given; main() prints it in the form asked for."""


class _VersionAction(argparse.Action):
    def __init__(self, option_strings: Sequence[str], dest: str, help: str | None = None):
        super().__init__(
            option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0, help=help
        )

    def __call__(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise VersionRequested


DESCRIPTION = """\
Run fleets of Linux guests on one shared read-only golden root, and keep that root
maintained: the system of IBM Redpaper "Sharing and maintaining SLES 10 SP2 Linux
under z/VM". Guests are z/VM user IDs, disks are minidisks at addresses (01B0 ...),
a link is LINK owner 21B1 01B1 RR (read-only) or MR (read-write).

the pipeline (the paper's EXECs and scripts in brackets):
  install           Linux onto the maintenance guest S10RWMNT (§1.5.4)
  mnt2tst, tst2mnt  maintenance S10RWMNT <-> test guest S10RWTST (MNT2TST, TST2MNT EXEC)
  cloneprep         clean the maintenance system before it is copied (cloneprep.sh)
  mnt2gold          maintenance -> gold read-write set 11Bx (MNT2GOLD EXEC)
  clonerw           gold 11Bx -> a read-write clone's 01Bx (CLONERW EXEC)
  mnt2rogld         maintenance -> staging S10ROGLD, made a read-only root (mnt2rogld.sh)
  ro2gold           staging -> gold slot N's 21Bx (slot 1 = S10GOLD, 2 = S10GOLD2);
                    slot N becomes current, the paper's CURGOLD (RO2GOLD, RO2GOLD2 EXEC)
  clonero           a read-only clone: private disks copied, the rest LINKed RR from
                    the current slot, as profile S10DFLT does (CLONERO EXEC)
  linked            which guest links which gold slot (LINKED EXEC)
  migrate           move read-only clones to another slot, e.g. S10DFLT -> S10DFLT2,
                    each clone's /etc merged; rollback is a migrate back (§1.7)
  generations       ro2gold's history: one generation per ro2gold into a slot
  prune             forget generations no slot holds any more
  delete            remove a clone: parm file, disks, links (the directory's PURGE)
  inventory         the guests as an Ansible dynamic inventory (--list, --host GUEST)
  metrics           the fleet as Prometheus metrics (node-exporter's textfile collector)

Each clone finds its identity on first boot (boot.findself) in its parm file
(PARM-S10: Hostname=, HostIP=, ...) on the admin disk CMSCLONE 192.
"""


def build_parser() -> ArgumentParser:
    common = ArgumentParser(add_help=False)
    common.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print the result, or the error, as JSON for scripts",
    )
    common.add_argument(
        "--home",
        default=argparse.SUPPRESS,
        metavar="DIR",
        help="the store (default: $SHAREDROOT_HOME, else /var/lib/sharedroot)",
    )
    parser = ArgumentParser(
        prog="sharedroot",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument(
        "--home",
        metavar="DIR",
        help="the store (default: $SHAREDROOT_HOME, else /var/lib/sharedroot)",
    )
    parser.add_argument(
        "--version", action=_VersionAction, help="print sharedroot's version and exit"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(
        name: str, handler: c.Handler, help: str, aliases: Sequence[str] = ()
    ) -> ArgumentParser:
        p: ArgumentParser = sub.add_parser(
            name,
            help=help,
            description=help,
            epilog=EPILOG,
            aliases=list(aliases),
            parents=[common],
        )
        p.set_defaults(handler=handler)
        return p

    p = add(
        "init",
        c.cmd_init,
        "create site.toml and the store with the paper's guests (§1.4: S10RWMNT, S10RWTST,"
        " S10GOLD, S10GOLD2, S10ROGLD, CMSCLONE) and disks (Table 1-1)",
    )

    def layout_arg(text: str) -> str:
        # `paper` is Table 1-1; anything else names a layout file (./paper for one so named).
        if text != "paper" and not Path(text).is_file():
            raise argparse.ArgumentTypeError(
                f"{text!r} is not paper and no such file: give paper (Table 1-1) or a"
                " layout file with a [disks] table, e.g. layouts/lvm.toml"
            )
        return text

    p.add_argument(
        "--layout",
        type=layout_arg,
        default="paper",
        metavar="paper|FILE",
        help="paper: the disks of Table 1-1; or a TOML file with a [disks] table as site.toml"
        " has it (examples in layouts/: a middleware disk, /var and /srv as LVM logical"
        " volumes). Addresses follow the paper's plan: " + ADDRESS_HELP,
    )
    for s in (*SETTINGS, *ZVM_SETTINGS, *LIBVIRT_SETTINGS):
        p.add_argument(
            s.flag,
            dest=s.option,
            action="append" if s.repeat else "store",
            metavar=s.metavar,
            help=s.help if s.default in ((), "") else f"{s.help} (default: {s.default})",
        )
    p.add_argument(
        "--size",
        action="append",
        metavar="MOUNT=SIZE",
        help="size of a layout disk, by mount point or address, e.g. /usr=2G",
    )

    p = add(
        "doctor",
        c.cmd_doctor,
        "list host programs sharedroot needs and the packages that bring them; on z/VM"
        " also whether CP answers (vmcp), class B or LNKNOPAS, FLASHCOPY and smcli",
    )
    p.add_argument(
        "--backend",
        choices=["local", "zvm", "libvirt"],
        help="check for this backend (default: the site's at --home, else local)",
    )
    add(
        "guests",
        c.cmd_guests,
        "every guest (z/VM user ID): role, state (logged on/off), disks (minidisks) and"
        " links (RR read-only, MR read-write)",
    )
    add(
        "linked",
        c.cmd_linked,
        "which guests link which gold slot (LINKED EXEC); [[GOLD n]] is the current slot,"
        " the paper's CURGOLD",
    )
    add(
        "generations",
        c.cmd_generations,
        "ro2gold's history: a generation is one ro2gold into a gold slot (RO2GOLD copying"
        " S10ROGLD onto S10GOLD, RO2GOLD2 onto S10GOLD2, that slot becoming current); per"
        " generation its slot, source, time, whether the slot still holds it (a later ro2gold"
        " into the slot supersedes it), which clones link it, whether prune may forget it",
    )
    p = add(
        "prune",
        c.cmd_prune,
        "forget the generations no gold slot holds any more (superseded by a later ro2gold"
        " into their slot); the generation a slot holds, which its clones link, always stays",
    )
    writer_flags(p, copies=False, asks="before forgetting")
    p = add("journal", c.cmd_journal, "the operation journal: what ran, each step, how it ended")
    p.add_argument(
        "--limit",
        type=whole(1, 1_000_000),
        default=20,
        metavar="N",
        help="how many operations, 1 to 1,000,000 (default 20)",
    )

    add_guest_commands(add)
    add_server_commands(add)
    add_rollout_commands(add)
    add_export_commands(add)

    for name, fn, help, aliases in (
        (
            "mnt2tst",
            pipeline.mnt2tst,
            "copy the maintenance guest S10RWMNT's disks onto the test guest S10RWTST"
            " (MNT2TST EXEC)",
            ["maint-to-test"],
        ),
        (
            "tst2mnt",
            pipeline.tst2mnt,
            "copy the test guest S10RWTST's disks back onto the maintenance guest S10RWMNT"
            " (TST2MNT EXEC)",
            ["test-to-maint"],
        ),
        (
            "mnt2gold",
            pipeline.mnt2gold,
            "copy the maintenance guest S10RWMNT onto the gold read-write disks 11Bx"
            " (MNT2GOLD EXEC)",
            ["maint-to-gold"],
        ),
    ):
        p = add(name, c.copy_command(fn), help, aliases)
        writer_flags(p)

    p = add(
        "install",
        c.cmd_install,
        "install Linux onto the maintenance guest S10RWMNT's disks from a cached golden tree"
        " (§1.5.4), or import a system of yours (--from-tree, --from-image)",
    )
    p.add_argument(
        "--distro",
        choices=[v.value for v in Distro],
        help="the distribution of the golden tree (default: the site's, see init --distro)",
    )
    p.add_argument(
        "--initramfs",
        choices=[v.value for v in Initramfs],
        help="what builds the initramfs, and so carries the early /etc binding of a read-only"
        " root (default: the distribution's own; dracut is what SUSE and Red Hat boot with)",
    )
    p.add_argument(
        "--network",
        choices=[v.value for v in Network],
        help="what configures the NIC, from the parm file's HostIP= Gateway= at each boot"
        " (default: the distribution's; networkmanager as on SUSE and Red Hat)",
    )
    p.add_argument(
        "--arch",
        choices=["amd64", "s390x"],
        help="the guests' architecture (default: the backend's: amd64 on local, s390x on"
        " zvm; local runs s390x guests with qemu-system-s390x too; s390x is built on another"
        " machine through qemu-user-static, the first time in about 7 to 15 minutes)",
    )
    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--from-tree",
        "--tree",  # the older name, kept working
        dest="from_tree",
        metavar="DIR",
        help="import this root tree (a directory holding a whole Linux system with systemd"
        " and initramfs-tools or dracut, e.g. one your own image builder made) instead of"
        " building Debian; split across the layout's disks by mount point",
    )
    source.add_argument(
        "--from-image",
        metavar="FILE",
        help="import the Linux system installed on this raw or qcow2 disk image (one root"
        " filesystem: bare, on a partition or an LVM logical volume; the other filesystems"
        " its fstab names are taken too), read-only; split across the layout's disks",
    )
    writer_flags(p)

    p = add(
        "cloneprep",
        c.cmd_cloneprep,
        "clean the maintenance system before mnt2gold: machine-id, SSH host keys, logs, ..."
        " (cloneprep.sh)",
    )
    p.add_argument("--list", action="store_true", help="list the operations and stop")
    p.add_argument("--operations", metavar="A,B,...", help="run only these operations")
    writer_flags(p)

    p = add(
        "mnt2rogld",
        c.cmd_mnt2rogld,
        "copy the maintenance guest S10RWMNT to the read-only staging guest S10ROGLD and make"
        " it a read-only-root system: fstab read-only (fstab.ror), /etc, /root, /srv bound"
        " from /local before systemd starts (the paper's boot.rootfsck) (mnt2rogld.sh)",
        ["maint-to-readonly"],
    )
    writer_flags(p)

    p = add(
        "ro2gold",
        c.cmd_ro2gold,
        "copy the read-only staging guest S10ROGLD to a gold slot's 21Bx disks (slot 1 ="
        " S10GOLD, slot 2 = S10GOLD2) and make that slot current, the paper's CURGOLD"
        " (RO2GOLD EXEC; ro2gold2 is RO2GOLD2 EXEC, --slot 2)",
        ["ro2gold2", "promote"],
    )
    p.add_argument(
        "--slot",
        type=whole(1, MAX_SLOT),
        metavar="N",
        help="gold slot: 1 = S10GOLD, 2 = S10GOLD2, ... (default: one that nobody links)",
    )
    writer_flags(p)

    p = add(
        "clonero",
        c.cmd_clonero,
        "a read-only clone: copy its private disks (swap, /local, /var) from the current"
        " gold slot (CURGOLD), LINK the rest RR as profile S10DFLT does (CLONERO EXEC)",
        ["clone-ro"],
    )
    p.add_argument(
        "guests",
        nargs="*",
        type=guest,
        metavar="GUEST",
        help="guests defined with --ro: 1-8 of A-Z 0-9 @ # $ (several: one site lock, one"
        " question)",
    )
    p.add_argument(
        "--from",
        dest="from_file",
        metavar="FILE",
        help="clone the read-only guests of a `define --from` file",
    )
    p.set_defaults(combination=guests_or_file)
    writer_flags(p)

    p = add(
        "verify",
        c.cmd_verify,
        "boot a guest if needed and run the read-only checks of §1.6.3 (touch /etc/foo ...),"
        " the hostname boot.findself took from the parm file, machine-id, failed units, RR"
        " disks read-only",
    )
    guest_arg(p)
    timeout(p, 600, "seconds to wait for boot")

    p = add(
        "migrate",
        c.cmd_migrate,
        "move read-only clones to another gold slot (§1.7): relink them to the slot's profile"
        " (S10DFLT for S10GOLD, S10DFLT2 for S10GOLD2) and merge each clone's /etc three"
        " ways; rollback is a migrate back",
    )
    p.add_argument("guests", nargs="+", type=guest, metavar="GUEST")
    p.add_argument(
        "--slot",
        type=whole(1, MAX_SLOT),
        required=True,
        metavar="N",
        help="the gold slot to move to: 1 = S10GOLD, 2 = S10GOLD2, ...",
    )
    p.add_argument(
        "--reboot", action="store_true", help="stop running clones, move, start them again"
    )
    p.add_argument(
        "--parallel",
        type=whole(1, MAX_PARALLEL),
        default=1,
        metavar="K",
        help=f"clones per wave, 1 to {MAX_PARALLEL} (1)",
    )
    timeout(p, 600, "seconds a clone may take to boot")
    writer_flags(p)

    p = add(
        "clonerw",
        c.cmd_clonerw,
        "copy the gold read-write disks 11Bx onto a guest's 01Bx (CLONERW EXEC)",
        ["clone-rw"],
    )
    guest_arg(p, "a guest defined with --rw")
    writer_flags(p)
    return parser
