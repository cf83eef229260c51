"""Linux-side device programs of the worker: chccwdev, cio_ignore, dasdfmt, fdasd, udevadm.

They act on the worker's own devices only (its MDISKs and links, as CP shows them with
QUERY VIRTUAL). See loops.py for what "online" means here and for the disk layout.
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
import struct
import sys
import zlib

from zvmsim import WORKER, loops
from zvmsim.state import Session, open_session, sim_dir


def _err(text: str) -> None:
    sys.stderr.write(text + "\n")


# --- cio_ignore ----------------------------------------------------------------------------
def cio_ignore(argv: list[str]) -> int:
    """Nothing is ignored here: every emulated device is visible, so -r and -l are no-ops."""
    if not argv:
        _err("cio_ignore: no option specified")
        return 1
    return 0


# --- chccwdev ------------------------------------------------------------------------------
_BUSID = re.compile(r"(?:([0-9a-f])\.([0-3])\.)?([0-9a-f]{1,4})")


def parse_busids(text: str) -> list[str] | None:
    out: list[str] = []
    for part in text.lower().split(","):
        ends = part.split("-")
        ids = []
        for end in ends:
            m = _BUSID.fullmatch(end)
            if m is None or len(ends) > 2:
                return None
            ids.append(f"{m.group(1) or '0'}.{m.group(2) or '0'}.{m.group(3).zfill(4)}")
        if len(ids) == 1:
            out.append(ids[0])
        else:
            lo, hi = int(ids[0][4:], 16), int(ids[1][4:], 16)
            out += [f"{ids[0][:4]}{n:04x}" for n in range(lo, hi + 1)]
    return out


def chccwdev(argv: list[str]) -> int:
    state = None
    ids: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-e", "--online", "-f", "--forceonline"):
            state = "online"
        elif arg in ("-d", "--offline", "-s", "--safeoffline"):
            state = "offline"
        elif arg in ("-a", "--attribute"):
            i += 1  # attributes are accepted and ignored
        elif arg.startswith("-"):
            _err(f"chccwdev: invalid option -- '{arg.lstrip('-')}'")
            return 1
        else:
            parsed = parse_busids(arg)
            if parsed is None:
                _err(f"{arg} is not a valid bus ID.")
                _err("ERROR: Evaluation of bus IDs failed!")
                return 1
            ids += parsed
        i += 1
    if state is None or not ids:
        _err("chccwdev: no action or no device given")
        return 1
    rc = 0
    with open_session(sim_dir()) as s:
        for busid in ids:
            if not _set_state(s, busid, state):
                rc = 1
    return rc


def _set_state(s: Session, busid: str, state: str) -> bool:
    vdev = busid[4:].upper()
    dev = s.devices(WORKER).get(vdev) if busid.startswith("0.0.") else None
    if dev is None:
        print(f"Device {busid} not found", flush=True)
        return False
    bypath = s.root / "by-path"
    rec = s.online.get(vdev)
    if (rec is not None) == (state == "online"):
        # chccwdev pads "online" to the width of "offline"
        _err(f"WARNING: Device[{busid}] is already {' online' if state == 'online' else 'offline'}")
        print("Done", flush=True)
        return True
    print(f"Setting device {busid} {state}", flush=True)
    if state == "online":
        image = s.device_image(dev)
        readonly = dev["access"] != "R/W"
        new: dict[str, str | None] = {"loop": loops.attach(image, readonly), "part1": None}
        loops.set_link(bypath, vdev, str(new["loop"]))
        if not dev.get("vdisk"):
            loops.attach_part1(new, image, readonly, bypath, vdev)
        s.online[vdev] = new
    else:
        assert rec is not None
        loops.take_offline(rec, bypath, vdev)
        del s.online[vdev]
    s.dirty = True
    print("Done", flush=True)
    return True


# --- dasdfmt / fdasd -----------------------------------------------------------------------
def _online_device(s: Session, node: str) -> tuple[str, dict[str, str | None]] | None:
    real = os.path.realpath(node)
    for vdev, rec in s.online.items():
        if rec.get("loop") == real:
            return vdev, rec
    return None


def _size(fd: int) -> int:
    return os.lseek(fd, 0, os.SEEK_END)


def _zero(fd: int, offset: int, length: int) -> None:
    try:
        fcntl.ioctl(fd, loops.BLKZEROOUT, struct.pack("QQ", offset, length))
    except OSError:
        zeros = bytes(1 << 20)
        end = offset + length
        while offset < end:
            offset += os.pwrite(fd, zeros[: min(len(zeros), end - offset)], offset)


def ebcdic(text: str) -> bytes:
    return text.encode("cp500")


def dasdfmt(argv: list[str]) -> int:
    mode, blocksize, volser, confirm = "full", "4096", "", True
    nodes: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        takes = {"-b": "blocksize", "-M": "mode", "-d": "layout", "-l": "volser"}
        if arg in takes:
            if i + 1 >= len(argv):
                _err(f"dasdfmt: option requires an argument -- '{arg[1]}'")
                return 1
            value = argv[i + 1]
            i += 1
            if arg == "-b":
                blocksize = value
            elif arg == "-M":
                mode = value
            elif arg == "-l":
                volser = value.upper()
        elif arg in ("-y", "-p", "-v", "-P", "-F", "-k", "-m", "-Y", "--force"):
            confirm = confirm and arg != "-y"
        elif arg == "-f":
            # -f DEVICE was removed in s390-tools 2.0: the device is positional now
            _err("dasdfmt: invalid option -- 'f'")
            _err("Try 'dasdfmt --help' for more information.")
            return 1
        elif arg.startswith("-"):
            _err(f"dasdfmt: invalid option -- '{arg.lstrip('-')}'")
            return 1
        else:
            nodes.append(arg)
        i += 1
    if len(nodes) != 1:
        _err("dasdfmt: exactly one device must be specified")
        return 1
    if blocksize != "4096" or mode not in ("full", "quick"):
        _err(f"dasdfmt: only -b 4096 and -M full|quick are emulated (got -b {blocksize} -M {mode})")
        return 1
    with open_session(sim_dir()) as s:
        found = _online_device(s, nodes[0])
        if found is None:
            _err(f"dasdfmt: {nodes[0]} is not an online DASD device")
            return 1
        vdev, rec = found
        if s.devices(WORKER)[vdev]["access"] != "R/W":
            _err(f"dasdfmt: {nodes[0]} is read-only")  # unconfirmed text
            return 1
        if confirm:
            sys.stdout.write(f"Drive {loops.busid(vdev)} will be formatted. Continue? (y/n): ")
            sys.stdout.flush()
            if sys.stdin.readline().strip().lower() != "y":
                return 1
        loops.drop_part1(rec, s.root / "by-path", vdev)
        s.dirty = True
        fd = os.open(str(rec["loop"]), os.O_RDWR)
        try:
            size = _size(fd)
            _zero(fd, 0, size if mode == "full" else min(size, loops.META_BYTES))
            label = (ebcdic("VOL1VOL1") + ebcdic((volser or f"0X{vdev}")[:6].ljust(6))).ljust(
                80, ebcdic(" ")
            )
            os.pwrite(fd, label, loops.LABEL_OFFSET)
            os.fsync(fd)
        finally:
            os.close(fd)
    print("Finished formatting the device.")
    print("Rereading the partition table... ok")
    return 0


def fdasd(argv: list[str]) -> int:
    auto, silent = False, False
    nodes = []
    for arg in argv:
        if arg in ("-a", "--auto"):
            auto = True
        elif arg in ("-s", "--silent"):
            silent = True
        elif arg.startswith("-"):
            _err(f"fdasd: option {arg} is not emulated (only -a)")
            return 1
        else:
            nodes.append(arg)
    if not auto or len(nodes) != 1:
        _err("fdasd: only 'fdasd -a DEVICE' is emulated")
        return 1
    with open_session(sim_dir()) as s:
        found = _online_device(s, nodes[0])
        if found is None:
            _err(f"fdasd error: Unable to open device {nodes[0]}")  # unconfirmed text
            return 255
        vdev, rec = found
        fd = os.open(str(rec["loop"]), os.O_RDONLY)
        try:
            label = os.pread(fd, 14, loops.LABEL_OFFSET)
            size = _size(fd)
        finally:
            os.close(fd)
        if label[:4] != ebcdic("VOL1"):
            # unconfirmed text
            _err("fdasd error: Unsupported disk format")
            _err(f"{nodes[0]} is not formatted with z/OS compatible disk layout!")
            return 255
        if s.devices(WORKER)[vdev]["access"] != "R/W":
            _err(f"fdasd error: Could not open device '{nodes[0]}' in read-write mode!")
            return 255
        if not silent:
            print("auto-creating one partition for the whole disk...")
            print("writing volume label...")
            print("writing VTOC...")
        fd = os.open(str(rec["loop"]), os.O_RDWR)
        try:
            # a DOS table a guest's kernel reads (see loops.py), identified by the volser
            table = loops.mbr(size, disk_id=zlib.crc32(label[8:14]))
            os.pwrite(fd, table, 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        if not silent:
            print("rereading partition table...")
        bypath = s.root / "by-path"
        loops.drop_part1(rec, bypath, vdev)
        dev = s.devices(WORKER)[vdev]
        loops.attach_part1(rec, s.device_image(dev), False, bypath, vdev)
        s.dirty = True
    return 0


# --- udevadm -------------------------------------------------------------------------------
def udevadm(argv: list[str]) -> int:
    if argv[:1] == ["settle"]:
        return 0  # emulated devices appear synchronously
    _err("udevadm (zvmsim): only 'udevadm settle' is emulated")
    return 1


PROGRAMS = {
    "cio_ignore": cio_ignore,
    "chccwdev": chccwdev,
    "dasdfmt": dasdfmt,
    "fdasd": fdasd,
    "udevadm": udevadm,
}


def main(argv: list[str]) -> int:
    # a closed stdout ends the program quietly, as it does a C program
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    if not argv or argv[0] not in PROGRAMS:
        _err(f"usage: python -m zvmsim.devices {{{','.join(PROGRAMS)}}} ARGS...")
        return 2
    return PROGRAMS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
