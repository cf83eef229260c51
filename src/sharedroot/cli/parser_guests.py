"""The command line of a guest's life: define it, start and stop it, read its console,
run commands in it (the paper's USER DIRECT entry, LOGON/IPL, LOGOFF, the console)."""

from __future__ import annotations

from sharedroot.cli import commands as c
from sharedroot.cli.argtypes import define_combination, guest, netmask, whole
from sharedroot.cli.grammar import Add, guest_arg, timeout, writer_flags


def add_guest_commands(add: Add) -> None:
    p = add(
        "define",
        c.cmd_define,
        "define clone guests (their USER DIRECT entries): disks, the RR link to the admin"
        " disk (CMSCLONE 192 as 191) and the parm file (PARM-S10), which boot.findself reads"
        " at first boot; several at once by name or from a file, the admin disk written once",
    )
    p.add_argument(
        "guests",
        nargs="*",
        type=guest,
        metavar="GUEST",
        help="the new guests (z/VM user IDs, e.g. LNX226): 1-8 of A-Z 0-9 @ # $",
    )
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--rw", action="store_true", help="read-write clone (a full copy, CLONERW)")
    kind.add_argument(
        "--ro",
        action="store_true",
        help="read-only clone (links the gold RR through profile S10DFLT, CLONERO)",
    )
    p.add_argument(
        "--from",
        dest="from_file",
        metavar="FILE",
        help="define the guests listed in FILE, one a line: GUEST ro|rw HOSTNAME|- IP|-"
        " [gateway=G] [netmask=M] [nameserver=N]; # starts a comment. Every line is checked"
        " first: a bad one refuses the whole file, naming its line",
    )
    p.add_argument("--hostname", help="host name or FQDN (parm file Hostname=; one guest only)")
    p.add_argument("--ip", help="IPv4 address (parm file HostIP=; one guest only)")
    p.add_argument(
        "--netmask",
        type=netmask,
        metavar="MASK",
        help="netmask or prefix length, e.g. 255.255.255.0 or 24 (parm file Netmask=; 24)",
    )
    p.add_argument("--gateway", help="default gateway (parm file Gateway=)")
    p.add_argument("--nameserver", help="DNS server (parm file Nameserver=)")
    p.add_argument(
        "--host",
        metavar="URI",
        help="(libvirt) the host the guests run on, one of the site's [libvirt] hosts;"
        " default: each on the host with the fewest guests",
    )
    p.set_defaults(combination=define_combination)
    writer_flags(p, confirm=False)

    p = add(
        "start",
        c.cmd_start,
        "LOGON a guest and IPL its boot disk 01B0 under QEMU; VDISK swap made fresh (SWAPGEN)",
        ["ipl"],
    )
    guest_arg(p)
    p.add_argument("--wait", action="store_true", help="return when the guest is ready")
    timeout(p, 300, "seconds --wait waits")
    writer_flags(p, confirm=False)

    p = add(
        "stop",
        c.cmd_stop,
        "shut a guest down cleanly (SIGNAL SHUTDOWN), forced after --timeout (LOGOFF)",
        ["logoff"],
    )
    guest_arg(p)
    timeout(p, 60, "seconds before forcing")
    writer_flags(p, confirm=False)

    p = add(
        "move",
        c.cmd_move,
        "(libvirt) run a guest on another host: stopped, it starts there next time;"
        " running, it is shut down, started there and waited for. Its disks stay where"
        " they are, in the pool every host sees",
    )
    guest_arg(p)
    p.add_argument(
        "--to-host", required=True, metavar="URI", help="the host, one of the site's hosts"
    )
    timeout(p, 300, "seconds to wait for a running guest to be ready again")
    writer_flags(p, confirm=False)

    p = add("console", c.cmd_console, "show a guest's console output (the serial console log)")
    guest_arg(p)
    p.add_argument("--follow", "-f", action="store_true", help="keep printing until logoff")
    p.add_argument(
        "--lines",
        "-n",
        type=whole(0, 1_000_000),
        default=0,
        metavar="N",
        help="only the last N lines, 0 to 1,000,000 (0: all)",
    )

    p = add(
        "exec",
        c.cmd_exec,
        "run a command in a running guest (guest agent); exits with the command's code",
    )
    guest_arg(p)
    p.add_argument("argv", nargs="*", metavar="-- CMD", help="the command and its arguments")
    p.trailing = "argv"
    timeout(p, 120, "seconds to wait")

    p = add(
        "delete",
        c.cmd_delete,
        "remove a clone guest, as the z/VM directory's PURGE: its parm file (PARM-S10) on"
        " the admin disk, its disks (minidisks), its links and its definition; refused while"
        " it is logged on, for the pipeline's own guests (S10RWMNT, S10GOLD, ...), and while"
        " other guests link its disks. Deleting the last clone that links a gold slot lets"
        " ro2gold refill that slot. A delete that was interrupted is finished by running it"
        " again",
    )
    guest_arg(p, "the clone to delete")
    p.add_argument(
        "--keep-disks",
        action="store_true",
        help="first copy each of its disks to kept/GUEST-WHEN/ADDRESS.img in the store (an"
        " image you can loop-mount), then forget the guest",
    )
    writer_flags(p, copies=False, asks="before deleting")
