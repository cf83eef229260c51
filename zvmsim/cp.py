"""The CP command interpreter: `cp(dir, issuer, command_text) -> (response_text, rc)`.

CP matches keywords case-sensitively in upper case (which is why vmcp upper-cases unless
-k) and accepts abbreviations down to each command's minimum. The rc of an error is its
message number (HCPCQU045E -> 45), as CP does.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from zvmsim import SYSTEM_NAME, WORKER, guest, links
from zvmsim import directory as dirmod
from zvmsim.state import Device, Session, open_session

Result = tuple[str, int]
# unconfirmed: which module prefix each command's syntax error carries (FACTS §1.2)
OPERAND = ("HCPCFC026E Operand missing or invalid", 26)


def cp(root: Path, issuer: str, command: str) -> Result:
    """Run one CP command as `issuer`; logged to DIR/cp.log as USERID<TAB>COMMAND<TAB>RC."""
    with open_session(root) as s:
        resp, rc = execute(s, issuer, command)
        s.log_cp(issuer, command, rc)
    return resp, rc


def abbrev(word: str, full: str, minimum: int) -> bool:
    return len(word) >= minimum and full.startswith(word)


def execute(s: Session, issuer: str, command: str) -> Result:
    words = command.split()
    if not words:
        return "", 0
    table: list[tuple[str, int, Callable[[Session, str, list[str]], Result]]] = [
        ("QUERY", 1, query),
        ("DETACH", 3, detach),
        ("LINK", 4, link),
        ("FLASHCOPY", 5, flashcopy),
        ("XAUTOLOG", 5, xautolog),
        ("SIGNAL", 3, signal),
        ("FORCE", 5, force),
    ]
    for full, minimum, fn in table:
        if abbrev(words[0], full, minimum):
            return fn(s, issuer, words[1:])
    return f"HCPCMD001E Unknown CP command: {words[0]}", 1


def flashcopy(s: Session, issuer: str, ops: list[str]) -> Result:
    from zvmsim import flash  # ctypes and friends only when needed: vmcp starts faster

    return flash.flashcopy(s, issuer, ops)


def users_count(s: Session) -> int:
    return len(s.users)


def name_entry(userid: str) -> str:
    # the worker is shown at a terminal, every other guest disconnected
    return f"{userid:<8} - 0009" if userid == WORKER else f"{userid:<8} - DSC"


# --- QUERY ---------------------------------------------------------------------------------
def query(s: Session, issuer: str, ops: list[str]) -> Result:
    if not ops:
        return OPERAND
    op = ops[0]
    if op == "USERID":
        return f"{issuer} AT {SYSTEM_NAME}", 0
    if op == "USER":
        return query_user(s, ops[1] if len(ops) > 1 else issuer)
    if abbrev(op, "NAMES", 1):
        return query_names(s), 0
    if abbrev(op, "VIRTUAL", 1):
        return query_virtual(s, issuer, ops[1:])
    if abbrev(op, "LINKS", 1):
        return query_links(s, issuer, ops[1:])
    if abbrev(op, "PRIVCLAS", 4):
        return query_privclas(s, issuer)
    if dirmod.is_vdev(op):
        # 1-4 hex digits are a device number, not a user ID (FACTS §1.2)
        return query_virtual(s, issuer, [op])
    return query_user(s, op)


def query_user(s: Session, userid: str) -> Result:
    if s.logged_on(userid):
        return name_entry(userid), 0
    if s.directory.user(userid) is not None:
        return f"HCPCQU045E {userid} not logged on", 45
    return f"HCPCQV003E Invalid option - {userid}", 3


def query_names(s: Session) -> str:
    entries = [name_entry(u) for u in sorted(s.users)]
    lines = [" , ".join(entries[i : i + 4]) for i in range(0, len(entries), 4)]
    return "\n".join(lines)


def dasd_line(vdev: str, dev: Device) -> str:
    if dev.get("vdisk"):
        # unconfirmed layout (FACTS §1.3)
        return (
            f"DASD {vdev} 9336 (VDSK) {dev['access']}{dev['size']:>11} BLK ON DASD  VDSK "
            f"SUBCHANNEL = {dev['sch']:04X}"
        )
    volser = str(dev["volser"])
    rdev = volser[-4:] if dirmod.is_vdev(volser[-4:]) else "0000"
    return (
        f"DASD {vdev} {dev['devtype']} {volser} {dev['access']}{dev['size']:>11} CYL ON DASD  "
        f"{rdev} SUBCHANNEL = {dev['sch']:04X}"
    )


def missing(vdev: str) -> Result:
    return f"HCPQVD040E Device {vdev} does not exist", 40


def query_virtual(s: Session, issuer: str, ops: list[str]) -> Result:
    devs = s.devices(issuer)
    if not ops or ops[0] in ("DASD", "ALL"):
        return "\n".join(dasd_line(v, devs[v]) for v in sorted(devs)), 0
    try:
        vdev = dirmod.norm_vdev(ops[0])
    except ValueError:
        return OPERAND
    if vdev not in devs:
        return missing(vdev)
    return dasd_line(vdev, devs[vdev]), 0


def query_links(s: Session, issuer: str, ops: list[str]) -> Result:
    if not ops:
        return OPERAND
    try:
        vdev = dirmod.norm_vdev(ops[0])
    except ValueError:
        return OPERAND
    dev = s.devices(issuer).get(vdev)
    if dev is None:
        return missing(vdev)
    holders = sorted(s.holders(dev["owner"], dev["mdisk"]))
    entries = [f"{u:<8} {v} {s.devices(u)[v]['access']}" for u, v in holders]
    # unconfirmed layout (FACTS §1.4/§6): 3 entries a line, continued lines end in a comma
    lines = [", ".join(entries[i : i + 3]) for i in range(0, len(entries), 3)]
    return ",\n".join(lines), 0


def query_privclas(s: Session, issuer: str) -> Result:
    entry = s.directory.user(issuer)
    classes = entry.privclasses if entry is not None else "G"
    # unconfirmed text
    return (
        f"Privilege classes for user {issuer}\n"
        f"Currently: {classes}\n"
        f"Directory: {classes}\n"
        "The privilege classes are not locked against changes."
    ), 0


# --- LINK / DETACH -------------------------------------------------------------------------
def link(s: Session, issuer: str, ops: list[str]) -> Result:
    """LINK [TO] userid vdev1 [AS] vdev2 [mode] [[PASS=] password]"""
    words = list(ops)
    if words and words[0] == "TO":
        words.pop(0)
    if len(words) >= 3 and words[2] == "AS":
        words.pop(2)
    if len(words) < 3:
        return OPERAND
    owner = issuer if words[0] == "*" else words[0]
    try:
        vdev1, vdev2 = dirmod.norm_vdev(words[1]), dirmod.norm_vdev(words[2])
    except ValueError:
        return OPERAND
    mode = links.parse_mode(words[3]) if len(words) > 3 else "R"
    if mode is None:
        return OPERAND
    return links.link(s, issuer, owner, vdev1, vdev2, mode)


def _detach_targets(op: str) -> list[str] | None:
    if "-" in op:
        a, _, b = op.partition("-")
        try:
            lo, hi = int(dirmod.norm_vdev(a), 16), int(dirmod.norm_vdev(b), 16)
        except ValueError:
            return None
        return [f"{n:04X}" for n in range(lo, hi + 1)]
    try:
        return [dirmod.norm_vdev(op)]
    except ValueError:
        return None


def release(s: Session, userid: str, vdev: str) -> None:
    """Take a device away; if it is online in the worker's Linux, Linux loses it too."""
    if userid == WORKER and vdev in s.online:
        from zvmsim import loops

        loops.take_offline(s.online.pop(vdev), s.root / "by-path", vdev)
    s.remove_device(userid, vdev)


def detach(s: Session, issuer: str, ops: list[str]) -> Result:
    """DETACH [VIRTUAL] vdev|vdev-vdev ..."""
    if ops and abbrev(ops[0], "VIRTUAL", 1):
        ops = ops[1:]
    if not ops:
        return OPERAND
    out: list[str] = []
    rc = 0
    for op in ops:
        targets = _detach_targets(op)
        if targets is None:
            msg, rc = OPERAND
            out.append(msg)
            continue
        present = [v for v in targets if v in s.devices(issuer)]
        if not present:
            msg, rc = f"HCPDTV040E Device {targets[0]} does not exist", 40
            out.append(msg)
            continue
        for vdev in present:
            release(s, issuer, vdev)
            # unconfirmed single-device text (FACTS §1.6)
            out.append(f"DASD {vdev} DETACHED")
    return "\n".join(out), rc


# --- XAUTOLOG / SIGNAL / FORCE -------------------------------------------------------------
def xautolog(s: Session, issuer: str, ops: list[str]) -> Result:
    """XAUTOLOG userid [SYNCH] [...] — logs the user on and IPLs 01B0 (guest.py): the
    answer comes at once, whether or not a guest could be booted (see its console log)."""
    if not ops:
        return OPERAND
    userid = ops[0]
    entry = s.directory.user(userid)
    if entry is None:
        return f"HCPXAU053E {userid} not in CP directory", 53  # unconfirmed text (FACTS §1.8)
    if s.logged_on(userid):
        return "HCPLGA054E Already logged on", 54  # unconfirmed for XAUTOLOG (FACTS §1.8)
    if entry.password == "NOLOG":
        # unconfirmed for XAUTOLOG (FACTS §1.9: LOGON's text)
        return "HCPLGA050E LOGON unsuccessful--incorrect userid and/or password", 50
    links.logon(s, userid)
    guest.started(s, userid)
    return f"Command accepted\nAUTO LOGON  ***       {userid:<8} USERS = {users_count(s)}", 0


def logoff_line(s: Session, userid: str, by: str | None) -> str:
    line = f"USER DSC   LOGOFF AS  {userid:<8} USERS = {users_count(s)}"
    return f"{line}    FORCED BY {by}" if by else line


def signal(s: Session, issuer: str, ops: list[str]) -> Result:
    """SIGNAL SHUTDOWN [USER] userid [WITHIN n] — answers at once, never waits n seconds.

    A user running a guest gets QMP system_powerdown and the answer is empty: it is
    logged off once its QEMU has exited, or n seconds after the signal at the latest (the
    reaper, guest.reap). A user without a guest (nothing IPLed) logs off at once, with the
    HCPSIG2113I line and the LOGOFF line. A user in the `ignore_signal` knob gets no
    signal and stays logged on (HCPSIG2115I at once), until FORCE."""
    if not ops or not abbrev(ops[0], "SHUTDOWN", 4):
        return OPERAND
    rest = ops[1:]
    if rest and rest[0] == "USER":
        rest = rest[1:]
    if not rest:
        return OPERAND
    userid = rest[0]
    within = rest[2] if len(rest) > 2 and rest[1] == "WITHIN" else "300"
    if not within.isdigit():
        return OPERAND
    if not s.logged_on(userid):
        return f"HCPCQU045E {userid} not logged on", 45
    if userid in s.control().get("ignore_signal", []):
        # unconfirmed text (FACTS §1.9): the guest never reports back within the interval
        return f"HCPSIG2115I User {userid} did not respond to signal within {within} seconds", 0
    if guest.running(s, userid):
        guest.powerdown(s, userid, int(within))
        return "", 0
    links.logoff(s, userid, f"SIGNAL SHUTDOWN by {issuer}")
    # unconfirmed text (FACTS §1.9)
    return (
        f"HCPSIG2113I User {userid} has reported successful termination\n"
        f"{logoff_line(s, userid, None)}"
    ), 0


def force(s: Session, issuer: str, ops: list[str]) -> Result:
    """FORCE userid [IMMED] — the guest's QEMU is killed (SIGKILL), the user logged off."""
    if not ops:
        return OPERAND
    userid = ops[0]
    if not s.logged_on(userid):
        return f"HCPCQU045E {userid} not logged on", 45
    links.logoff(s, userid, f"FORCE by {issuer}")
    return logoff_line(s, userid, issuer), 0
