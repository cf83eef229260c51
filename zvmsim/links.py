"""CP's LINK rules, and what logon/logoff do to a user's devices.

Who holds a minidisk counts only logged-on users' devices: a user's own MDISK becomes a
device at logon by the same rules as a LINK with the MDISK's mode, and every LINK (command
or directory statement) is a device of the user that made it.
"""

from __future__ import annotations

from zvmsim import directory as dirmod
from zvmsim import guest
from zvmsim.state import Device, Session

MODES = ("R", "RR", "W", "WR", "M", "MR", "MW")


def _by(holders: list[tuple[str, str]]) -> str:
    """`LNX227` for one holder, `0003 users` for more (unconfirmed text, FACTS §1.5/§6)."""
    users = sorted({uid for uid, _ in holders})
    return users[0] if len(users) == 1 else f"{len(users):04d} users"


def _not_linked(
    owner: str, vdev1: str, writers: list[tuple[str, str]], readers: list[tuple[str, str]]
) -> tuple[str, int]:
    # unconfirmed text and number mapping (FACTS §1.5): HCPLNM104E/105E/106E
    if writers and readers:
        text = f"R/W by {_by(writers)}; R/O by {len({u for u, _ in readers}):04d} users"
        return f"HCPLNM106E {owner} {vdev1} not linked; {text}", 106
    if writers:
        return f"HCPLNM105E {owner} {vdev1} not linked; R/W by {_by(writers)}", 105
    return f"HCPLNM104E {owner} {vdev1} not linked; R/O by {_by(readers)}", 104


def _forced(
    vdev2: str, writers: list[tuple[str, str]], readers: list[tuple[str, str]]
) -> tuple[str, int]:
    # unconfirmed text and number mapping (FACTS §1.5): HCPLNM101E/102E
    if writers:
        return f"HCPLNM102E DASD {vdev2} forced R/O; R/W by {_by(writers)}", 102
    return (
        f"HCPLNM101E DASD {vdev2} forced R/O; R/O by {len({u for u, _ in readers}):04d} users",
        101,
    )


def decide(mode: str, others: list[tuple[str, str, str]]) -> tuple[str | None, bool]:
    """(access or None if not linked, forced R/O?) for a link in `mode` given the others'
    (userid, vdev, access) holdings of the same minidisk."""
    writers = [o for o in others if o[2] == "R/W"]
    if mode == "RR":
        return "R/O", False
    if mode == "R":
        return (None, False) if writers else ("R/O", False)
    if mode == "W":
        return (None, False) if others else ("R/W", False)
    if mode == "WR":
        return ("R/O", True) if others else ("R/W", False)
    if mode == "M":
        return (None, False) if writers else ("R/W", False)
    if mode == "MR":
        return ("R/O", True) if writers else ("R/W", False)
    return "R/W", False  # MW: write whatever others hold


def link(
    s: Session,
    issuer: str,
    owner: str,
    vdev1: str,
    vdev2: str,
    mode: str,
    md: dirmod.Mdisk | None = None,
) -> tuple[str, int]:
    """Make `vdev2` of `issuer` a link to `owner`'s minidisk `vdev1`. Returns (message, rc);
    a forced R/O link exists although rc is nonzero. Passwords are not checked (the worker
    has OPTION LNKNOPAS; directory LINKs need none). `md`: the MDISK statement itself, for
    a user's own minidisk at logon (it may come from an INCLUDEd profile)."""
    entry = s.directory.user(owner)
    if entry is None:
        return f"HCPLNM053E {owner} not in CP directory", 53
    if md is None:
        md = entry.mdisk(vdev1)
    if md is None:
        # unconfirmed text (FACTS §1.5)
        return f"HCPLNM107E {owner} {vdev1} not linked; not in CP directory", 107
    if vdev2 in s.devices(issuer):
        # unconfirmed text (FACTS §1.5)
        return f"HCPLNM110E {owner} {vdev1} not linked; DASD {vdev2} already defined", 110
    others = [(uid, v, s.devices(uid)[v]["access"]) for uid, v in s.holders(owner, vdev1)]
    access, forced = decide(mode, others)
    writers = [(u, v) for u, v, a in others if a == "R/W"]
    readers = [(u, v) for u, v, a in others if a == "R/O"]
    if access is None:
        return _not_linked(owner, vdev1, writers, readers)
    dev: Device = {
        "owner": owner,
        "mdisk": vdev1,
        "access": access,
        "devtype": "9336" if md.vdisk else md.devtype,
        "volser": md.volser,
        "size": md.size,
        "vdisk": md.vdisk,
    }
    s.add_device(issuer, vdev2, dev)
    if forced:
        return _forced(vdev2, writers, readers)
    return "", 0


def parse_mode(word: str) -> str | None:
    up = word.upper()
    # SR/SW/SM and ER/EW (stable/exclusive) are taken as their plain modes
    plain = {"SR": "R", "SW": "W", "SM": "M", "ER": "R", "EW": "W"}.get(up, up)
    return plain if plain in MODES else None


def logon(s: Session, userid: str) -> None:
    """Log `userid` on: its MDISKs and directory LINKs (INCLUDEd profile too), in directory
    order, become its devices; a LINK that fails is skipped, as CP does at logon. No guest
    runs yet: XAUTOLOG then calls guest.started (the worker and `populate` users get none)."""
    entry = s.directory.user(userid)
    assert entry is not None
    s.users[userid] = {"devices": {}, "next_sch": 0}
    s.dirty = True
    for w in s.directory.expanded(entry):
        if w[0] == "MDISK":
            md = dirmod.parse_mdisk(w)
            if md is not None:
                mode = "MW" if md.vdisk else (parse_mode(md.mode) or "R")
                link(s, userid, userid, md.vdev, md.vdev, mode, md)
        elif w[0] == "LINK":
            ln = dirmod.parse_link(w)
            if ln is not None:
                owner = userid if ln.owner == "*" else ln.owner
                link(s, userid, owner, ln.vdev1, ln.vdev2, parse_mode(ln.mode) or "R")


def logoff(s: Session, userid: str, why: str = "") -> None:
    """The user's guest ends (QEMU killed if it still runs), then its devices go."""
    guest.stopped(s, userid, why)
    s.drop_user(userid)
