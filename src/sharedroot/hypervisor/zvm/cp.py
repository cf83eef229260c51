"""CP commands through `vmcp`, decided by exit code and CP return code.

vmcp writes CP's response to stdout (also on error) and exits 1 with
`Error: non-zero CP response for command '...': #<rc>` on stderr when CP's rc is not 0;
the rc of an error is its message number (HCPCQU045E -> 45). The echoed command text is
never parsed: its case depends on the s390-tools version.

Every value put into a command is checked with a full match first, so nothing but a user
ID or a device number can reach CP.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sharedroot.errors import InputError, OperationError, RefusedError
from sharedroot.model.types import GuestState, exact_address
from sharedroot.run import run

MAX_COMMAND = 240  # vmcp and the kernel refuse longer commands
BIG_BUFFER = "1048576"  # vmcp's largest response buffer (QUERY LINKS/NAMES of 1000s)

_USERID = re.compile(r"[A-Z0-9@#$]{1,8}")
_RC = re.compile(r"#(\d+)\s*$")
_MSG = re.compile(r"^HCP\w{3}(\d+)E", re.MULTILINE)
_DASD = re.compile(
    r"^DASD\s+([0-9A-F]{4})\s+(\S+)\s+(\S+)\s+(R/[OW])\s+(\d+)\s+(CYL|BLK)", re.MULTILINE
)
_LINK_ENTRY = re.compile(r"([A-Z0-9@#$]{1,8})\s+([0-9A-F]{1,4})\s+(R/[OW])")
_NAME_ENTRY = re.compile(r"([A-Z0-9@#$]{1,8})\s+-\s+\S+")
WRITE_MODES = ("W", "WR", "M", "MR", "MW")
LINK_MODES = ("R", "RR", *WRITE_MODES)

# CP return codes (= message numbers) the backend acts on.
RC_NO_SUCH_USER = 3  # HCPCQV003E Invalid option - userid
RC_NOT_FOUND = 40  # HCPQVD040E / HCPDTV040E Device ... does not exist
RC_LOGGED_OFF = 45  # HCPCQU045E userid not logged on
RC_LOGOFF_PENDING = 361  # HCPCQU361E LOGOFF/FORCE pending for user


def userid(value: str) -> str:
    """A z/VM user ID as CP takes it: 1-8 of A-Z 0-9 @ # $ (upper case)."""
    if not isinstance(value, str) or not _USERID.fullmatch(value):
        raise InputError(f"user ID {value!r}: must be 1-8 characters of A-Z 0-9 @ # $")
    return value


def vdev(value: str) -> str:
    """A virtual device number as CP takes it: 4 upper-case hex digits."""
    return exact_address(value, "device")


@dataclass(frozen=True)
class Response:
    command: str
    rc: int  # CP's return code (0: success)
    text: str  # CP's response, also on error

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def message(self) -> str:
        """CP's response on one line, for an error message."""
        return " / ".join(line.strip() for line in self.text.splitlines() if line.strip())


class CpError(OperationError):
    def __init__(self, response: Response, hint: str = "") -> None:
        self.response = response
        detail = response.message() or "no response"
        text = f"CP {response.command}: rc {response.rc}: {detail}"
        super().__init__(f"{text}; {hint}" if hint else text)


@dataclass(frozen=True)
class Dasd:
    """One line of QUERY VIRTUAL DASD."""

    vdev: str
    devtype: str
    volser: str
    access: str  # R/W or R/O
    size: int
    unit: str  # CYL or BLK


@dataclass(frozen=True)
class Linker:
    """One entry of QUERY LINKS: a user that has the minidisk, at which vdev, how."""

    user: str
    vdev: str
    access: str  # R/O or R/W


class Cp:
    """The CP command line of the worker."""

    def __init__(self, program: str = "vmcp") -> None:
        self.program = program

    def __call__(self, *words: str, big: bool = False) -> Response:
        """Issue one CP command; CP errors come back as a Response, never raised."""
        command = " ".join(words)
        if len(command) > MAX_COMMAND:
            raise InputError(f"CP command of {len(command)} characters (at most {MAX_COMMAND})")
        argv = [self.program, *(["-b", BIG_BUFFER] if big else []), *words]
        proc = run(argv, check=False)
        if proc.returncode == 2 and not big:  # response truncated: once more, larger
            return self(*words, big=True)
        if proc.returncode in (0, 2):
            return Response(command, 0, proc.stdout)
        if proc.returncode == 1:
            return Response(command, _cp_rc(proc.stdout, proc.stderr), proc.stdout)
        err = " ".join(proc.stderr.split()) or f"exit {proc.returncode}"
        if proc.returncode in (3, 127):
            raise OperationError(
                f"vmcp {command}: {err}; sharedroot's z/VM backend runs on a Linux guest of"
                " z/VM with the vmcp module loaded (modprobe vmcp) and root's rights"
            )
        raise OperationError(f"vmcp {command}: {err}")

    def must(
        self, *words: str, ok: tuple[int, ...] = (0,), hint: str = "", big: bool = False
    ) -> Response:
        """Issue a command that must succeed (rc in `ok`), else CpError."""
        response = self(*words, big=big)
        if response.rc not in ok:
            raise CpError(response, hint)
        return response

    # QUERY --------------------------------------------------------------------
    def whoami(self) -> str:
        """The worker's own user ID (QUERY USERID: `LNXCLONE AT ZVMSYS1`)."""
        words = self.must("QUERY", "USERID").text.split()
        if not words:
            raise OperationError("CP QUERY USERID gave no answer")
        return userid(words[0])

    def user_state(self, user: str) -> GuestState:
        """QUERY userid: rc 0 logged on, 45/361 logged off, 3 no such user."""
        # A name of hex digits alone would be taken for a device number: ask for a USER.
        words = ("QUERY", "USER", userid(user)) if _is_hex(user) else ("QUERY", userid(user))
        r = self(*words)
        if r.rc == 0:
            return GuestState.LOGGED_ON
        if r.rc in (RC_LOGGED_OFF, RC_LOGOFF_PENDING):
            return GuestState.LOGGED_OFF
        if r.rc == RC_NO_SUCH_USER:
            return GuestState.NO_SUCH
        raise CpError(r)

    def names(self) -> set[str]:
        """QUERY NAMES: every logged-on user, in one command."""
        text = self.must("QUERY", "NAMES", big=True).text
        found: set[str] = set()
        for line in text.splitlines():
            if line.lstrip().startswith("VSM "):  # virtual system management lines
                continue
            for part in line.split(","):
                m = _NAME_ENTRY.match(part.strip())
                if m:
                    found.add(m.group(1))
        return found

    def dasd(self) -> dict[str, Dasd]:
        """QUERY VIRTUAL DASD: the worker's disks by vdev."""
        r = self("QUERY", "VIRTUAL", "DASD")
        if r.rc not in (0, RC_NOT_FOUND):
            raise CpError(r)
        return {
            m.group(1): Dasd(
                m.group(1), m.group(2), m.group(3), m.group(4), int(m.group(5)), m.group(6)
            )
            for m in _DASD.finditer(r.text)
        }

    def links(self, device: str) -> list[Linker]:
        """QUERY LINKS vdev: every user that has the minidisk behind the worker's vdev.

        Entries `USERID VDEV R/O` separated by commas, over as many lines as needed.
        """
        # Thousands of guests on a gold disk outgrow vmcp's default 16 KiB response.
        text = self.must("QUERY", "LINKS", vdev(device), big=True).text
        out = []
        for part in " ".join(text.splitlines()).split(","):
            m = _LINK_ENTRY.search(part)
            if m:
                out.append(Linker(m.group(1), m.group(2).zfill(4), m.group(3)))
        return out

    def privileges(self) -> str:
        """The worker's current privilege classes (QUERY PRIVCLAS)."""
        text = self.must("QUERY", "PRIVCLAS").text
        m = re.search(r"Currently:\s*(\S+)", text, re.IGNORECASE)
        return m.group(1).upper() if m else ""

    # LINK / DETACH --------------------------------------------------------------
    def link(self, owner: str, device: str, alias: str, mode: str) -> None:
        """LINK owner vdev AS alias mode; refused when CP does not give that access.

        A write link that CP made read-only ("forced R/O") is DETACHed again and refused:
        another user has write access.
        """
        if mode not in LINK_MODES:
            raise InputError(f"LINK mode {mode!r}: must be one of {', '.join(LINK_MODES)}")
        r = self("LINK", userid(owner), vdev(device), "AS", vdev(alias), mode)
        forced = "forced r/o" in r.text.lower()
        if forced and mode in WRITE_MODES:
            self.detach(alias, missing_ok=True)
            raise RefusedError(
                f"{owner} {device} is in use with write access by another user"
                f" (CP: {r.message()}); stop that user, or wait until it has released the disk"
            )
        if r.ok or forced:
            return
        if "not linked" in r.text.lower():
            self.detach(alias, missing_ok=True)  # harmless when nothing was defined
            raise RefusedError(f"LINK {owner} {device} {mode}: {r.message()}")
        raise CpError(r, f"the worker could not LINK {owner} {device}")

    def detach(self, device: str, *, missing_ok: bool = False) -> None:
        ok = (0, RC_NOT_FOUND) if missing_ok else (0,)
        self.must("DETACH", vdev(device), ok=ok)

    def detach_all(self, devices: list[str]) -> None:
        """One DETACH of several devices (the paper's CleanUp); those gone are no error."""
        self.must("DETACH", *(vdev(d) for d in devices), ok=(0, RC_NOT_FOUND))

    # FLASHCOPY -------------------------------------------------------------------
    def flashcopy(self, source: str, target: str) -> Response:
        """FLASHCOPY src 0 END tgt 0 END (COPYMDSK); success is `Command complete`."""
        r = self("FLASHCOPY", vdev(source), "0", "END", vdev(target), "0", "END")
        if r.ok and "command complete" not in r.text.lower():
            return Response(r.command, -1, r.text)
        return r

    # LOGON / LOGOFF ----------------------------------------------------------------
    def xautolog(self, user: str) -> Response:
        return self.must(
            "XAUTOLOG",
            userid(user),
            hint="the worker needs privilege class A or B, or an XAUTOLOG statement"
            f" naming it in {user}'s directory entry",
        )

    def signal_shutdown(self, user: str, within: int) -> Response:
        return self("SIGNAL", "SHUTDOWN", userid(user), "WITHIN", str(int(within)))

    def force(self, user: str) -> Response:
        return self("FORCE", userid(user), "IMMED")


def _cp_rc(stdout: str, stderr: str) -> int:
    """CP's rc from vmcp's `#<rc>` on stderr, else from the message number."""
    for line in reversed(stderr.strip().splitlines()):
        m = _RC.search(line)
        if m:
            return int(m.group(1))
    m = _MSG.search(stdout)
    return int(m.group(1)) if m else 1


def _is_hex(name: str) -> bool:
    return len(name) <= 4 and all(c in "0123456789ABCDEF" for c in name)
