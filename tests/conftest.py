"""Shared fixtures: a real site in a temporary store, real images, real lock holders."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from sharedroot.cli.main import main
from sharedroot.hypervisor.images import make_filesystem
from sharedroot.hypervisor.qemu import cmdline
from sharedroot.namespace import private_mounts
from sharedroot.workflows.context import Site


def pytest_sessionstart(session: pytest.Session) -> None:
    # Mounts made by fixtures (XFS and btrfs stores) die with the test run, however it ends.
    private_mounts()


def pytest_report_header(config: pytest.Config) -> str:
    # A run that fills its disk fails everywhere at once; the header says what there was.
    free = shutil.disk_usage(tempfile.gettempdir()).free
    return f"free space for temporary folders: {free / 2**30:.1f} GiB"


# Folders a module-scoped fixture made (guests' disks, fleets): gone at its teardown, not
# at the end of the run, so the run's disk use is one module's at a time. Folders that
# session fixtures made while it was being set up are theirs, and stay.
_MODULE_DIRS: dict[int, set[Path]] = {}
_SESSION_DIRS: set[Path] = set()


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(
    fixturedef: pytest.FixtureDef[object], request: pytest.FixtureRequest
) -> Iterator[object]:
    if fixturedef.scope not in ("module", "session") or fixturedef.argname == "tmp_path_factory":
        return (yield)
    base = request.getfixturevalue("tmp_path_factory").getbasetemp()
    before = set(base.iterdir())
    try:
        return (yield)
    finally:
        made = set(base.iterdir()) - before
        if fixturedef.scope == "session":
            _SESSION_DIRS.update(made)
        else:
            _MODULE_DIRS[id(fixturedef)] = made - _SESSION_DIRS


def pytest_fixture_post_finalizer(
    fixturedef: pytest.FixtureDef[object], request: pytest.FixtureRequest
) -> None:
    made = _MODULE_DIRS.pop(id(fixturedef), set())
    if not made or request.session.testsfailed:
        return  # kept for a look, as pytest keeps a failed test's folder
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    for path in made:
        if not any(m == str(path) or m.startswith(f"{path}/") for m in mounts):
            shutil.rmtree(path, ignore_errors=True)  # never into a mount left behind


# The paper's own sample parm file (§1.6.4), as it stands in the paper.
PAPER_SAMPLE = """ramdisk_size=65536 root=/dev/ram1 ro init=/linuxrc TERM=dumb
HostIP=129.40.179.227 Hostname=ntc227.pbm.ihost.com
Gateway=129.40.179.254 Netmask=255.255.255.0
Broadcast=129.40.179.255 Layer2=0
ReadChannel=0.0.0600 WriteChannel=0.0.0601 DataChannel=0.0.0602
Nameserver=129.40.106.1 Portname=dontcare
Install=nfs://129.40.179.200/nfs/sles10/SLES-10-CD-s390x-GMC-CD1
"""


@dataclass
class Ran:
    code: int
    out: str
    err: str

    def json(self) -> object:
        return json.loads(self.out)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], home: Path) -> Callable[..., Ran]:
    """Run `sharedroot --home HOME ARGS...` in-process; returns exit code and output."""

    def call(*args: str, home_dir: Path | None = None) -> Ran:
        capsys.readouterr()
        code = main(["--home", str(home_dir or home), *args])
        captured = capsys.readouterr()
        return Ran(code, captured.out, captured.err)

    return call


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "site"


@pytest.fixture(scope="session")
def site_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A paper site made once by `init`; each test gets its own copy."""
    home = tmp_path_factory.mktemp("template") / "site"
    assert main(["--home", str(home), "init", "--layout", "paper"]) == 0
    return home


@pytest.fixture
def site(site_template: Path, home: Path) -> Site:
    subprocess.run(["cp", "-a", "--sparse=always", site_template, home], check=True)
    return Site.open(home)


def fill_disk(site: Site, guest: str, address: str, seed: str) -> None:
    """Give a disk a filesystem with real files in it (content depends on `seed`)."""
    disk = site.state.disk(guest, address)
    assert disk is not None
    src = site.home / "fill" / f"{guest}-{address}"
    src.mkdir(parents=True)
    for i in range(5):
        (src / f"file{i}").write_bytes(hashlib.sha256(f"{seed}{i}".encode()).digest() * 4096)
    (src / "etc").mkdir()
    (src / "etc" / "hostname").write_text(f"{seed}\n")
    make_filesystem(site.home / disk.file, disk.kind, disk.size, disk.fs, src)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def sparse_hash(path: Path) -> str:
    """Hash of a file's logical content that reads only its allocated parts.

    Non-zero 4 KiB blocks are hashed with their index, so the result does not depend
    on where the filesystem happens to keep extents (they move during writeback).
    Independent of the copy engine's own content_hash, though built alike.
    """
    block = 4096
    h = hashlib.sha256()
    with open(path, "rb") as f:
        fd = f.fileno()
        size = os.fstat(fd).st_size
        h.update(str(size).encode())
        off = 0
        while off < size:
            try:
                start = os.lseek(fd, off, os.SEEK_DATA) // block * block
            except OSError:  # ENXIO: only a hole is left
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            f.seek(start)
            while start < end:
                chunk = f.read(min(end - start, 1 << 20))
                for i in range(0, len(chunk), block):
                    piece = chunk[i : i + block]
                    if piece.strip(b"\0"):
                        h.update(((start + i) // block).to_bytes(8, "little") + piece)
                start += len(chunk)
            off = max(end, start)
    return h.hexdigest()


def tree_hashes(root: Path) -> dict[str, str]:
    """Every regular file under root by content (the state of a whole store)."""
    return {
        str(p.relative_to(root)): sparse_hash(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in ("site.lock",) and not p.name.endswith(".lock")
    }


def image_hashes(site: Site) -> dict[str, str]:
    return {f"{d.owner} {d.address}": sparse_hash(site.home / d.file) for d in site.state.disks()}


SHAREDROOT = str(Path(sys.executable).parent / "sharedroot")
# s390x trees are built from Debian 12: this machine's package mirror does not serve
# Debian 13's s390x packages (debootstrap cannot fetch libc6, apt, base-files).
S390X_DISTRO = "debian-bookworm"
BOOT_TIMEOUT = "600"  # TCG on a loaded 2-core machine


class BootSite:
    """A site driven through the `sharedroot` program, as its users do (for real boots)."""

    def __init__(self, home: Path) -> None:
        self.home = home

    @classmethod
    def installed(cls, factory: pytest.TempPathFactory, name: str, *install_args: str) -> BootSite:
        """A new paper site with Linux installed on its maintenance guest and cleaned
        (`install_args`: e.g. --from-tree DIR)."""
        site = cls(factory.mktemp(name) / "site")
        site.run("init", "--layout", "paper")
        site.run("install", "--yes", *install_args)
        site.run("cloneprep", "--yes")
        return site

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [SHAREDROOT, "--home", str(self.home), *args],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"sharedroot {' '.join(args)}: {proc.returncode}\n{proc.stderr}")
        return proc

    def killed(self, steps: int, *args: str) -> str:
        """Run a command and SIGKILL it once its journal entry has `steps` steps done.

        Returns the entry's status as the next command sees it ("interrupted" when the
        kill came mid-way; "ok" if the command was quicker than the poll).
        """
        db = self.home / "state.db"

        def newest() -> tuple[int, int]:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
                row = con.execute("SELECT max(id) FROM journal").fetchone()
                op = int(row[0] or 0)
                done = con.execute(
                    "SELECT count(*) FROM journal_steps WHERE op = ? AND status = 'done'", (op,)
                ).fetchone()
                return op, int(done[0])

        before, _ = newest()
        proc = subprocess.Popen(
            [SHAREDROOT, "--home", str(self.home), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            while proc.poll() is None:
                op, done = newest()
                if op > before and done >= steps:
                    break
                time.sleep(0.002)
        finally:
            proc.kill()
            proc.wait()
        rows = json.loads(self.run("journal", "--json", "--limit", "1").stdout)
        return str(rows[0]["status"])

    def sh(self, guest: str, script: str) -> str:
        return self.run("exec", guest, "--", "sh", "-c", script).stdout

    def placement(self) -> list[dict[str, object]]:
        """`guests --json` without the memory figures, which move on their own (the
        host's page cache of the gold)."""
        rows = json.loads(self.run("guests", "--json").stdout)
        return [{k: v for k, v in r.items() if k not in ("memory", "cached")} for r in rows]

    def state(self, guest: str) -> str:
        rows = json.loads(self.run("guests", "--json").stdout)
        return str(next(g["state"] for g in rows if g["name"] == guest))

    def start(self, *guests: str) -> None:
        """`start --wait` of each guest at once, so they boot side by side."""
        argv = [SHAREDROOT, "--home", str(self.home), "start", "--wait", "--timeout", BOOT_TIMEOUT]
        procs = [
            subprocess.Popen(
                [*argv, g],
                stdin=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                text=True,
            )
            for g in guests
        ]
        for g, p in zip(guests, procs, strict=True):
            _, err = p.communicate()
            assert p.returncode == 0, f"start --wait {g}: {err}"


@pytest.fixture
def lock_holders() -> Iterator[Callable[[Path, str], None]]:
    """Log a guest on the way QEMU does: a live process holding its run lock."""
    procs: list[subprocess.Popen[bytes]] = []

    def logon(home: Path, guest: str) -> None:
        lock = home / "run" / f"{guest}.lock"
        lock.parent.mkdir(exist_ok=True)
        proc = subprocess.Popen(["flock", "--no-fork", "--exclusive", str(lock), "sleep", "600"])
        procs.append(proc)
        deadline = time.monotonic() + 10
        while (
            subprocess.run(["flock", "--nonblock", "--shared", str(lock), "true"]).returncode == 0
        ):
            assert time.monotonic() < deadline, "lock holder did not take the lock"
            time.sleep(0.02)

    yield logon
    for p in procs:
        p.kill()
        p.wait()


@pytest.fixture
def logged_on(site: Site, lock_holders: Callable[[Path, str], None]) -> Callable[[str], None]:
    return lambda guest: lock_holders(site.home, guest)


@pytest.fixture
def logged_on_site(lock_holders: Callable[[Path, str], None]) -> Callable[[BootSite, str], None]:
    return lambda site, guest: lock_holders(site.home, guest)


def guest_spec(tmp_path: Path, **changes: object) -> cmdline.GuestSpec:
    """A guest's QEMU spec with no disks, for command-line tests; `changes` replace fields."""
    base = cmdline.GuestSpec(
        name="LNX227",
        kernel=tmp_path / "k",
        initrd=tmp_path / "i",
        cmdline="ro",
        drives=(),
        run_dir=tmp_path / "run",
        accel="tcg",
    )
    return replace(base, **changes)  # type: ignore[arg-type]
