"""Administrator's side of the emulated z/VM, for tests: `python -m zvmsim.admin DIR ...`

set KEY JSON          write a control.json knob (e.g. `set flashcopy '"fail"'`); `vswitch`
                      changes VSW1's address at once
apply-direct FILE     replace/create the USER entries in FILE (as DIRECTXA would)
state                 JSON: logged-on users and their devices, the worker's online devices
cp USERID COMMAND...  issue a CP command as another user
populate N            add N users LNX0001.. (INCLUDE S10DFLT, own 01B4 01B5 01B6), half
                      of them logged on
cleanup               log off every user running a guest (its QEMU killed), kill any other
                      guest QEMU of DIR, take every online device offline (loop devices
                      detached), delete DIR's network namespace (the VSWITCH)
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from zvmsim import directory as dirmod
from zvmsim import guest, links, loops, vswitch
from zvmsim.cp import cp
from zvmsim.launch import prepare
from zvmsim.state import open_session


def set_knob(root: Path, key: str, value: str) -> None:
    with open_session(root) as s:
        data = s.control()
        data[key] = json.loads(value)
        tmp = root / "control.json.tmp"
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        os.replace(tmp, root / "control.json")
        if key == "vswitch" and vswitch.exists(root):
            # the gateway address changes at once, on the bridge that carries it
            ns = vswitch.netns_name(root)
            vswitch.ensure_bridge(ns, vswitch.DEFAULT_VSWITCH, vswitch.gateway(data))


def apply_direct(root: Path, path: Path) -> list[str]:
    new = dirmod.parse(path.read_text())
    names = []
    with open_session(root) as s:
        for name, entry in new.entries.items():
            s.directory.put(entry)
            names.append(name)
        s.directory_changed()
    return names


def show_state(root: Path) -> dict[str, object]:
    with open_session(root) as s:
        return {
            "logged_on": sorted(s.users),
            "devices": {u: s.users[u]["devices"] for u in sorted(s.users)},
            "online": s.online,
        }


def populate(root: Path, count: int) -> None:
    """Many clones for benchmarks: images appear only when a disk is first used."""
    sizes = (("01B4", 10), ("01B5", 20), ("01B6", 30))
    with open_session(root) as s:
        start = 1
        for i in range(1, count + 1):
            name = f"LNX{i:04d}"
            lines = [f"USER {name} PASSWD 256M 1G G", "  INCLUDE S10DFLT"]
            for vdev, cyl in sizes:
                lines.append(f"  MDISK {vdev} 3390 {start:04d} {cyl:04d} DM63CD MR")
                start += cyl
            s.directory.put(dirmod.Entry("USER", name, lines))
        s.directory_changed()
        for i in range(1, count // 2 + 1):
            name = f"LNX{i:04d}"
            if not s.logged_on(name):
                links.logon(s, name)


def cleanup(root: Path) -> None:
    with open_session(root) as s:
        for userid in [u for u in s.users if guest.running(s, u)]:
            links.logoff(s, userid, "cleanup")
        for vdev, rec in list(s.online.items()):
            loops.take_offline(rec, root / "by-path", vdev)
            del s.online[vdev]
        s.dirty = True
        guest.kill_all(root)
        vswitch.delete(root)


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        sys.stderr.write(__doc__ or "")
        return 2
    root, cmd, rest = Path(argv[0]).resolve(), argv[1], argv[2:]
    prepare(root)
    if cmd == "set" and len(rest) == 2:
        set_knob(root, rest[0], rest[1])
    elif cmd == "apply-direct" and len(rest) == 1:
        print(" ".join(apply_direct(root, Path(rest[0]))))
    elif cmd == "state" and not rest:
        print(json.dumps(show_state(root), indent=1, sort_keys=True))
    elif cmd == "cp" and len(rest) >= 2:
        response, rc = cp(root, rest[0].upper(), " ".join(rest[1:]).upper())
        if response:
            print(response)
        return 1 if rc else 0
    elif cmd == "populate" and len(rest) == 1:
        populate(root, int(rest[0]))
    elif cmd == "cleanup" and not rest:
        cleanup(root)
    else:
        sys.stderr.write(__doc__ or "")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
