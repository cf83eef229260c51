"""`scripts/zvmsim DIR -- COMMAND...`: run COMMAND as the worker of the emulated z/VM in DIR.

Creates DIR on first use from paper.direct (or the file named by $ZVMSIM_DIRECT), writes
DIR/bin wrappers, makes DIR's network namespace (the VSWITCH, vswitch.py), logs the worker
on, then runs COMMAND with PATH=DIR/bin:$PATH and ZVMSIM_DIR=DIR inside that network
namespace and in a private mount namespace where DIR/by-path is bind-mounted on
/dev/disk/by-path.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from zvmsim import WORKER, links, vswitch
from zvmsim.state import empty_state, open_session

REPO = Path(__file__).resolve().parent.parent
PROGRAMS = {
    "vmcp": "zvmsim.vmcp",
    "smcli": "zvmsim.smcli",
    "chccwdev": "zvmsim.devices chccwdev",
    "cio_ignore": "zvmsim.devices cio_ignore",
    "dasdfmt": "zvmsim.devices dasdfmt",
    "fdasd": "zvmsim.devices fdasd",
    "udevadm": "zvmsim.devices udevadm",
}
USAGE = "usage: scripts/zvmsim DIR -- COMMAND...\n"


def direct_source() -> Path:
    """The USER DIRECT a new DIR starts from: $ZVMSIM_DIRECT if set, else paper.direct."""
    named = os.environ.get("ZVMSIM_DIRECT")
    if not named:
        return Path(__file__).with_name("paper.direct")
    path = Path(named)
    if not path.is_file() and not path.is_absolute():
        # a name relative to the repository (zvmsim/paper-s390x.direct) works from anywhere
        path = REPO / named
    if not path.is_file():
        sys.stderr.write(f"zvmsim: ZVMSIM_DIRECT={named}: no such file\n")
        raise SystemExit(3)
    return path


def create(root: Path) -> None:
    """A new emulated system: the paper's directory, its minidisk images (sparse)."""
    source = direct_source()
    root.mkdir(parents=True, exist_ok=True)
    for sub in ("disks", "by-path", "bin", "guests"):
        (root / sub).mkdir(exist_ok=True)
    shutil.copyfile(source, root / "USER.DIRECT")
    (root / "control.json").write_text("{}\n")
    (root / "cp.log").touch()
    # state.json last: its presence marks DIR as complete
    tmp = root / "state.json.tmp"
    tmp.write_text(json.dumps(empty_state()))
    os.replace(tmp, root / "state.json")
    with open_session(root) as s:
        for name in s.directory.users():
            entry = s.directory.user(name)
            assert entry is not None
            for md in entry.mdisks():
                if not md.vdisk:
                    s.image(name, md.vdev, md.size)


def write_wrappers(root: Path) -> None:
    bindir = root / "bin"
    bindir.mkdir(exist_ok=True)
    for name, module in PROGRAMS.items():
        text = (
            "#!/bin/sh\n"
            "# zvmsim (CP emulator, a test double): not the real program\n"
            f'PYTHONPATH="{REPO}${{PYTHONPATH:+:$PYTHONPATH}}" '
            f'exec "{sys.executable}" -S -m {module} "$@"\n'
        )
        path = bindir / name
        if not path.exists() or path.read_text() != text:
            tmp = bindir / f".{name}.tmp"
            tmp.write_text(text)
            tmp.chmod(0o755)
            os.replace(tmp, path)


def prepare(root: Path) -> None:
    if not (root / "state.json").exists():
        create(root)
    (root / "by-path").mkdir(exist_ok=True)
    write_wrappers(root)
    with open_session(root) as s:
        # here, in the host's mount namespace: `ip netns add` publishes a mount
        vswitch.ensure(root, s.control())
        if not s.logged_on(WORKER):
            links.logon(s, WORKER)


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        sys.stderr.write(USAGE)
        return 2
    root = Path(argv[0]).resolve()
    command = argv[2:]
    prepare(root)
    # no udev here: the mount point is the only change on the host
    os.makedirs("/dev/disk/by-path", exist_ok=True)
    env = dict(os.environ)
    # scripts/zvmsim put the repository on PYTHONPATH for this launcher only
    kept = [p for p in env.get("PYTHONPATH", "").split(":") if p and Path(p) != REPO]
    if kept:
        env["PYTHONPATH"] = ":".join(kept)
    else:
        env.pop("PYTHONPATH", None)
    env["ZVMSIM_DIR"] = str(root)
    env["PATH"] = f"{root / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
    script = 'mount --bind "$0" /dev/disk/by-path || exit 126; exec "$@"'
    args = [
        "nsenter",
        f"--net={vswitch.netns_path(root)}",
        "--",
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        "/bin/sh",
        "-c",
        script,
    ]
    argv = [*args, str(root / "by-path"), *command]
    if os.environ.get("ZVMSIM_UPLINK") != "1":
        os.execvpe("nsenter", argv, env)
    uplink = vswitch.start_uplink(root)
    try:
        return subprocess.run(argv, env=env, check=False).returncode
    finally:
        vswitch.stop_uplink(uplink)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
