"""Running the z/VM backend inside the CP emulator (scripts/zvmsim), for tests.

`Zvm(tmp_path).run(code)` runs `code` in a fresh Python inside the emulator, with `hv`
(a ZvmBackend on a site store under tmp_path/home), `state`, `cp` and the model's types
in scope; whatever the code puts into the dict `out` comes back (as JSON).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
ZVMSIM = REPO / "scripts" / "zvmsim"
MARK = "ZVMKIT-OUT "

PRELUDE = """
import json, os, sys, traceback
from pathlib import Path
from sharedroot.errors import InputError, OperationError, RefusedError
from sharedroot.model.types import DiskKind, GuestState, Mode, Role
from sharedroot.store.config import make_config
from sharedroot.store.state import State
from sharedroot.hypervisor.zvm import devices
from sharedroot.hypervisor.zvm.backend import create
from sharedroot.hypervisor.zvm.cp import Cp
HOME = Path(sys.argv[1])
SIM = Path(os.environ["ZVMSIM_DIR"])
HOME.mkdir(parents=True, exist_ok=True)
state = State(HOME / "state.db", create=not (HOME / "state.db").exists())
SETTINGS = {"backend": "zvm", **json.loads(os.environ.get("ZVMKIT_SETTINGS", "{}"))}
config = make_config(SETTINGS)
hv = create(config, HOME, state)
cp = Cp()
out = {}

def refused(action):
    try:
        action()
    except RefusedError as exc:
        return str(exc)
    return None

def cplog():
    return [line.split("\\t") for line in (SIM / "cp.log").read_text().splitlines()]

def mark():
    return len(cplog())
"""


class Zvm:
    """One emulated z/VM (tmp/sim) and one sharedroot site store on it (tmp/home)."""

    def __init__(self, tmp: Path) -> None:
        self.sim = tmp / "sim"
        self.home = tmp / "home"

    def run(
        self, code: str, *, timeout: float = 120, settings: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Run `code` in the emulator; `settings` are `init` settings (zvm_directory...)."""
        program = PRELUDE + textwrap.dedent(code) + f"\nprint({MARK!r} + json.dumps(out))\n"
        env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
        env["ZVMKIT_SETTINGS"] = json.dumps(settings or {})
        argv = [str(ZVMSIM), str(self.sim), "--", sys.executable, "-c", program, str(self.home)]
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)]
        if proc.returncode != 0 or not lines:
            raise AssertionError(
                f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
            )
        result: dict[str, Any] = json.loads(lines[-1][len(MARK) :])
        return result

    def admin(self, *args: str) -> str:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        proc = subprocess.run(
            [sys.executable, "-m", "zvmsim.admin", str(self.sim), *args],
            capture_output=True,
            text=True,
            env=env,
            check=True,
            cwd=REPO,
        )
        return proc.stdout

    def cp_log(self) -> list[list[str]]:
        text = (self.sim / "cp.log").read_text()
        return [line.split("\t") for line in text.splitlines()]

    def image(self, user: str, vdev: str) -> Path:
        return self.sim / "disks" / user / f"{vdev}.img"
