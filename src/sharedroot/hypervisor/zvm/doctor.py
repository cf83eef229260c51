"""What the z/VM backend needs on the worker, and how to get what is missing."""

from __future__ import annotations

import shutil
from typing import NamedTuple

from sharedroot.errors import OperationError
from sharedroot.hypervisor.zvm.cp import Cp
from sharedroot.hypervisor.zvm.guestlink import smcli_program
from sharedroot.store.config import ZvmSettings

_TOOLS = {
    "chccwdev": "s390-tools (s390-tools package): brings LINKed minidisks online",
    "cio_ignore": "s390-tools: frees a LINKed device from the ignore list",
    "dasdfmt": "s390-tools: formats new minidisks",
    "fdasd": "s390-tools: partitions new minidisks",
    "udevadm": "udev: waits until device nodes exist",
}


class Check(NamedTuple):
    name: str
    found: bool
    required: bool
    hint: str


def doctor_checks(settings: ZvmSettings, cp: Cp | None = None) -> list[Check]:
    cp = cp or Cp()
    rows: list[Check] = []
    try:
        me = cp.whoami()
        rows.append(Check("vmcp", True, True, f"CP answers: this worker is {me}"))
    except OperationError as exc:
        rows.append(Check("vmcp", False, True, f"{exc}"))
        me = ""
    if me:
        try:
            classes = cp.privileges()
        except OperationError:
            classes = ""
        rows.append(
            Check(
                "privilege class B",
                "B" in classes,
                True,
                f"QUERY PRIVCLAS: {classes or '?'}; {me} needs class B (FLASHCOPY, LINK of any"
                " minidisk) or OPTION LNKNOPAS in its directory entry, then a new LOGON",
            )
        )
        flash = cp("FLASHCOPY")  # bare: HCPNFC026E (operand missing) means it exists
        rows.append(
            Check(
                "FLASHCOPY",
                "026E" in flash.text,
                False,
                "without it every copy falls back to dd (slower); it needs class B and"
                " FlashCopy-capable storage",
            )
        )
    if settings.directory == "smcli":
        program = smcli_program(settings.smcli)
        rows.append(
            Check(
                "smcli",
                shutil.which(program) is not None,
                True,
                "Feilong's zthin smcli (/opt/zthin/bin/smcli) with SMAPI authorizing this"
                ' worker; or [zvm] directory = "manual"',
            )
        )
    for tool, hint in _TOOLS.items():
        rows.append(Check(tool, shutil.which(tool) is not None, tool != "udevadm", hint))
    return rows
