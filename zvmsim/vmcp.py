"""vmcp, as s390-tools' vmcp/vmcp.c behaves (FACTS §2.1); the issuer is the worker."""

from __future__ import annotations

import re
import signal
import sys

from zvmsim import WORKER
from zvmsim.cp import cp
from zvmsim.state import sim_dir

MAXCMDLEN = 240
MINBUFFER, MAXBUFFER = 4096, 1048576
DEFAULT_BUFFER = 16384  # VMCP_DEFAULT_BUFSZ (the man page's 8192 is stale)

HELP = """Usage: vmcp [OPTIONS] CP-command

z/VM CP command interface

OPTIONS
  -k, --keepcase       Do not convert CP-command string to uppercase
  -b, --buffer SIZE    Specify buffer size in bytes, kilobytes (k) or megabytes (M).
                       SIZE range from 4096 to 1048576 bytes
  -h, --help           Print this help, then exit
  -v, --version        Print version information, then exit
"""
VERSION = "vmcp: version 2.31.0 (zvmsim)\nCopyright IBM Corp. 2005, 2018\n"
TRY = "Try 'vmcp --help' for more information.\n"


def parse_buffersize(text: str) -> int:
    """strtol + optional k/m suffix, as parse_buffersize(); -1 when invalid."""
    m = re.match(r"\s*[+-]?\d*", text)
    num, suffix = m.group(0) if m else "", text[m.end() if m else 0 :]
    try:
        value = int(num) if num.strip() not in ("", "+", "-") else 0
    except ValueError:
        value = 0
    if len(suffix) > 1:
        return -1
    if suffix in ("k", "K"):
        value *= 1024
    elif suffix in ("m", "M"):
        value *= 1048576
    elif suffix:
        return -1
    return value if MINBUFFER <= value <= MAXBUFFER else -1


def main(argv: list[str]) -> int:
    # a closed stdout ends the program quietly, as it does a C program
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    keep_case = False
    bufsize = DEFAULT_BUFFER
    i = 0
    # options end at the first word that is not one, so CP operands may start with '-'
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "-":
        arg = argv[i]
        if arg == "--":
            i += 1
            break
        if arg in ("-h", "--help"):
            sys.stdout.write(HELP)
            return 0
        if arg in ("-v", "--version"):
            sys.stdout.write(VERSION)
            return 0
        if arg in ("-k", "--keepcase"):
            keep_case = True
        elif arg in ("-b", "--buffer") or arg.startswith(("-b", "--buffer=")):
            if arg in ("-b", "--buffer"):
                if i + 1 >= len(argv):
                    sys.stderr.write(f"vmcp: option requires an argument -- 'b'\n{TRY}")
                    return 4
                value = argv[i + 1]
                i += 1
            else:
                value = arg.split("=", 1)[1] if arg.startswith("--") else arg[2:]
            bufsize = parse_buffersize(value)
            if bufsize == -1:
                sys.stderr.write(
                    f"Error: Invalid buffersize (needs to be between {MINBUFFER} and {MAXBUFFER})\n"
                )
                return 4
        else:
            sys.stderr.write(f"vmcp: invalid option -- '{arg.lstrip('-')}'\n{TRY}")
            return 4
        i += 1
    command = ""
    for word in argv[i:]:
        if len(command) + (1 if command else 0) + len(word) > MAXCMDLEN:
            sys.stderr.write(
                f"Error: Command too long (cannot be longer than {MAXCMDLEN} characters)\n"
            )
            return 4
        command = f"{command} {word}" if command else word
    if not command:
        sys.stdout.write(HELP)
        return 4
    response, rc = cp(sim_dir(), WORKER, command if keep_case else command.upper())
    data = (response + "\n").encode() if response else b""
    sys.stdout.buffer.write(data[:bufsize])
    sys.stdout.flush()
    if rc > 0:
        # since s390-tools 2.14 a CP error wins over truncation; the echo is as typed (2.4)
        sys.stderr.write(f"Error: non-zero CP response for command '{command}': #{rc}\n")
        return 1
    if len(data) > bufsize:
        sys.stderr.write(
            f"Error: output ({len(data)} bytes) was truncated, try --buffer to increase size\n"
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
