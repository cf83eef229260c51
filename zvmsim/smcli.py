"""smcli, as Feilong's zthin builds it: `smcli FUNCTION [--addRCheader] -T target [options]`.

Output follows zthin's smcliImage.c and rcdescriptions.c: with --addRCheader the first line
is `0 0 0 (details) None` on success or `8 <rc> <rs> (details) ULGSMC5<rc>E <text>` on a
SMAPI error (then `Failed` and the Return/Reason Code lines); exit 0 / 1. The directory
(DIR/USER.DIRECT) is changed at once, as a directory manager with DIRECTXA would; a
logged-on user keeps its running devices until its next logon.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from pathlib import Path

from zvmsim import directory as dirmod
from zvmsim.state import Session, open_session, sim_dir

# SMAPI return/reason code texts (zthin rcdescriptions.c)
TEXTS = {
    (0, 0): "Request successful",
    (200, 4): "Image not found",
    (200, 8): "Image already active",
    (200, 12): "Image not active",
    (204, 4): "Image device already exists",
    (204, 8): "Image device does not exist",
    (400, 0): "Image or profile definition error",
    (400, 4): "Image or profile definition not found",
    (400, 8): "Image or profile name already defined",
    (400, 12): "Image or profile definition is locked ",
    (400, 24): "Image or profile definition is not locked",
    (404, 4): "Image device already defined",
    (404, 8): "Image device not defined",
    (408, 0): "Image disk definition error",
    (408, 4): "Image disk already defined",
    (408, 8): "Image disk not defined",
    (436, 4): "Profile included not found",
    (900, 12): "Specified function does not exist",
}
# the volume AUTOG allocations land on (the paper's clone volume)
AUTOG_VOLUME = "DM63CD"


class Failure(Exception):
    def __init__(self, rc: int, rs: int) -> None:
        super().__init__(rc, rs)
        self.rc, self.rs = rc, rs


class Syntax(Exception):
    pass


class Out:
    def __init__(self, api: str, header: bool) -> None:
        self.api, self.header = api, header

    def success(self, body: list[str]) -> int:
        if self.header:
            print("0 0 0 (details) None")
        for line in body:
            print(line)
        return 0

    def failure(self, rc: int, rs: int, status: str) -> int:
        text = TEXTS.get(
            (rc, rs), "Unknown. Consult the SMAPI manual return and reason code summary"
        )
        sev = "W" if rc == 4 else "E"
        described = f"ULGSMC5{rc:03d}{sev} {text}\n  API issued : {self.api}"
        if self.header:
            print(f"8 {rc} {rs} (details) {described}")
        if status:
            print(status)
        print(f"Failed\n  Return Code: {rc}\n  Reason Code: {rs}\n  Description: {described}")
        return 1

    def syntax(self, text: str) -> int:
        if self.header:
            print("24 0 0 (details) Input error")
        print(f"\nERROR: {text}")
        return 1


def parse_opts(args: list[str]) -> tuple[dict[str, str], bool]:
    """getopt-style `-X value` pairs in any order; flags without value are stored as ''."""
    opts: dict[str, str] = {}
    header = False
    flags = {"-s", "-h"}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--addRCheader":
            header = True
        elif arg in flags:
            opts[arg[1]] = ""
        elif arg.startswith("-") and len(arg) == 2:
            if i + 1 >= len(args):
                raise Syntax(f"This option requires an argument: {arg}")
            opts[arg[1]] = args[i + 1]
            i += 1
        elif arg.startswith("-") and len(arg) > 2:
            opts[arg[1]] = arg[2:]
        i += 1
    return opts, header


def need(opts: dict[str, str], letters: str) -> None:
    if any(c not in opts for c in letters):
        raise Syntax("Missing required options")


def read_entry(opts: dict[str, str]) -> str:
    if "s" in opts:
        return sys.stdin.read()
    path = Path(opts["f"])
    try:
        data = path.read_text()
    except OSError as e:
        raise Syntax(f"Failed to open file {path}") from e
    for n, line in enumerate(data.split("\n")[:-1], start=1):
        # zthin counts the newline too and allows 72
        if len(line) + 1 > 72:
            raise Syntax(
                f"Input file {path} line {n} contains {len(line) + 1} chars of input "
                "and the max is 72"
            )
    return data


def _entry_from(opts: dict[str, str], target: str, s: Session) -> dirmod.Entry:
    entry = dirmod.parse_entry(read_entry(opts))
    if entry is None or entry.name != target:
        raise Failure(400, 0)
    for w in entry.statements():
        if w[0] == "INCLUDE" and len(w) > 1:
            prof = s.directory.entries.get(w[1])
            if prof is None or prof.kind != "PROFILE":
                raise Failure(436, 4)
    return entry


def _drop_images(s: Session, userid: str, vdevs: set[str]) -> None:
    for vdev in vdevs:
        with contextlib.suppress(FileNotFoundError):
            (s.root / "disks" / userid / f"{vdev}.img").unlink()


def _user(s: Session, target: str) -> dirmod.Entry:
    entry = s.directory.user(target)
    if entry is None:
        raise Failure(400, 4)
    return entry


def run(api: str, opts: dict[str, str], s: Session) -> list[str]:
    target = opts.get("T", "").upper()
    if api == "Image_Name_Query_DM":
        need(opts, "T")
        return s.directory.users()
    if api == "Image_Query_DM":
        need(opts, "T")
        entry = _user(s, target)
        return [" ".join(line.split()) for line in entry.lines if dirmod.tokens(line)]
    if api == "Profile_Query_DM":
        need(opts, "T")
        prof = s.directory.entries.get(target)
        if prof is None or prof.kind != "PROFILE":
            raise Failure(400, 4)
        return [" ".join(line.split()) for line in prof.lines if dirmod.tokens(line)]
    if api in ("Image_Lock_DM", "Image_Unlock_DM"):
        need(opts, "T")
        _user(s, target)
        locks: list[str] = s.state.setdefault("locks", [])
        if (target in locks) == (api == "Image_Lock_DM"):
            raise Failure(400, 12 if api == "Image_Lock_DM" else 24)
        if api == "Image_Lock_DM":
            locks.append(target)
        else:
            locks.remove(target)
        s.dirty = True
        return ["Done"]
    if api == "Image_Create_DM":
        need(opts, "T")
        if "f" not in opts and "s" not in opts:
            raise Syntax("Missing required options")
        if target in s.directory.entries:
            raise Failure(400, 8)
        s.directory.put(_entry_from(opts, target, s))
        s.directory_changed()
        _drop_images(s, target, {p.stem for p in (s.root / "disks" / target).glob("*.img")})
        return ["Done"]
    if api == "Image_Replace_DM":
        need(opts, "T")
        if "f" not in opts and "s" not in opts:
            raise Syntax("Missing required options")
        old = _user(s, target)
        # a directory manager replaces only a locked entry, and the replace unlocks it
        # (Feilong: Image_Lock_DM, Image_Replace_DM; Image_Unlock_DM only on failure)
        locks = s.state.setdefault("locks", [])
        if target not in locks:
            raise Failure(400, 24)
        new = _entry_from(opts, target, s)
        locks.remove(target)
        s.dirty = True
        s.directory.entries[target] = new
        s.directory_changed()
        _drop_images(s, target, {m.vdev for m in old.mdisks()} - {m.vdev for m in new.mdisks()})
        return ["Done"]
    if api == "Image_Delete_DM":
        need(opts, "Te")
        entry = _user(s, target)
        del s.directory.entries[target]
        s.directory_changed()
        if target in s.state.get("locks", []):
            s.state["locks"].remove(target)
            s.dirty = True
        _drop_images(s, target, {m.vdev for m in entry.mdisks()})
        return ["Done"]
    if api == "Image_Disk_Create_DM":
        return disk_create(opts, s, target)
    if api == "Image_Disk_Delete_DM":
        need(opts, "Tve")
        entry = _user(s, target)
        vdev = _vdev(opts["v"])
        if entry.mdisk(vdev) is None:
            raise Failure(408, 8)
        entry.lines = [
            line
            for line in entry.lines
            if not (dirmod.tokens(line)[:1] == ["MDISK"] and _is(dirmod.tokens(line)[1], vdev))
        ]
        s.directory_changed()
        _drop_images(s, target, {vdev})
        return ["Done"]
    raise Failure(900, 12)


def _is(word: str, vdev: str) -> bool:
    try:
        return dirmod.norm_vdev(word) == vdev
    except ValueError:
        return False


def _vdev(text: str) -> str:
    try:
        return dirmod.norm_vdev(text)
    except ValueError as e:
        raise Syntax(f"Invalid virtual device address {text}") from e


def disk_create(opts: dict[str, str], s: Session, target: str) -> list[str]:
    """-T user -v vdev -t 3390|FB-512 -a AUTOG|V-DISK -r pool -u 1 -z size -m mode [-f n]"""
    need(opts, "Tvtaz")
    entry = _user(s, target)
    vdev = _vdev(opts["v"])
    if entry.mdisk(vdev) is not None:
        raise Failure(408, 4)
    try:
        size = int(opts["z"])
    except ValueError as e:
        raise Syntax(f"Invalid disk size {opts['z']}") from e
    mode = opts.get("m", "MR").upper()
    alloc = opts["a"].upper()
    if alloc == "V-DISK":
        md = dirmod.Mdisk(vdev, "FB-512", "V-DISK", size, "", mode)
    elif alloc == "AUTOG":
        used = [
            int(m.start) + m.size
            for name in s.directory.users()
            for m in s.directory.entries[name].mdisks()
            if m.volser == AUTOG_VOLUME and m.start.isdigit()
        ]
        pw = tuple(opts[c].upper() for c in "RWM" if c in opts)
        start = f"{max(used, default=1):04d}"
        md = dirmod.Mdisk(vdev, opts["t"].upper(), start, size, AUTOG_VOLUME, mode, pw)
    else:
        raise Failure(408, 0)
    last = max(
        (i for i, line in enumerate(entry.lines) if dirmod.tokens(line)[:1] == ["MDISK"]),
        default=len(entry.lines) - 1,
    )
    entry.lines.insert(last + 1, md.line())
    s.directory_changed()
    _drop_images(s, target, {vdev})
    return ["Done"]


STATUS = {
    "Image_Create_DM": "Defining {} in the directory... ",
    "Image_Delete_DM": "Deleting {} from the directory... ",
    "Image_Replace_DM": "Replacing definition of {}... ",  # unconfirmed text
    "Image_Disk_Create_DM": "Adding a disk to {}'s directory entry... ",  # unconfirmed text
    "Image_Disk_Delete_DM": "Deleting a disk from {}'s directory entry... ",  # unconfirmed text
}


def main(argv: list[str]) -> int:
    # a closed stdout ends the program quietly, as it does a C program
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    if not argv or argv[0] in ("--help", "-h"):
        print("Command line interface to SMAPI socket APIs (zvmsim emulation).\n")
        print("Usage: smcli function_name")
        return 0
    api = argv[0]
    try:
        opts, header = parse_opts(argv[1:])
    except Syntax as e:
        return Out(api, "--addRCheader" in argv).syntax(str(e))
    out = Out(api, header)
    status = STATUS.get(api, "").format(opts.get("T", "").upper())
    try:
        with open_session(sim_dir()) as s:
            body = run(api, opts, s)
    except Failure as f:
        return out.failure(f.rc, f.rs, status)
    except Syntax as e:
        return out.syntax(str(e))
    return out.success(body)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
