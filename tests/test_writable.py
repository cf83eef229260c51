"""Writable paths for picky software (site.toml [writable]): the table, the units
mnt2rogld writes, and the picky program that test_variants.py runs on two read-only
clones (real boots, in the fleet of the paper's variants).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import BootSite, Ran, tree_hashes
from sharedroot.errors import InputError, RefusedError
from sharedroot.guestos import earlybind, writable
from sharedroot.guestos.readonly import make_readonly
from sharedroot.guestos.tree import install_extra, replace_file
from sharedroot.hypervisor.ipl import BootConfig, render_boot_config
from sharedroot.model.layout import PAPER_LAYOUT
from sharedroot.model.types import DiskKind
from sharedroot.model.writable import Kind, Start, Where, WritablePath, escape_path, parse_table
from sharedroot.store.config import SITE_FILE, load_config, render_config
from sharedroot.workflows.attach import guest_tree
from sharedroot.workflows.context import Site

TABLE = """
[writable."/opt/picky/state"]
where = "local"
start = "copy"

[writable."/opt/picky/log"]
where = "tmpfs"
start = "empty"

[writable."/usr/share/picky/lock"]
where = "var"
kind = "file"

[writable."/opt/picky/cache"]
where = "tmpfs"
start = "empty"

[writable."/opt/picky/conf"]
where = "tmpfs"
"""
# The table changed: the cache is gone, the log kept on /local.
TABLE2 = TABLE.replace(
    '[writable."/opt/picky/cache"]\nwhere = "tmpfs"\nstart = "empty"\n', ""
).replace('"/opt/picky/log"]\nwhere = "tmpfs"', '"/opt/picky/log"]\nwhere = "local"')
STATE = WritablePath("/opt/picky/state")
LOG = WritablePath("/opt/picky/log", Where.TMPFS, Start.EMPTY)
LOCK = WritablePath("/usr/share/picky/lock", Where.VAR, kind=Kind.FILE)
CACHE = WritablePath("/opt/picky/cache", Where.TMPFS, Start.EMPTY)
CONF = WritablePath("/opt/picky/conf", Where.TMPFS)


def entry(path: str, body: str = 'where = "local"') -> str:
    return f'\n[writable."{path}"]\n{body}\n'


# ---------------------------------------------------------------- the table (fast)


def test_escape_path_is_systemd_escape(tmp_path: Path) -> None:
    paths = ["/opt/picky/state", "/opt/my-app/log", "/usr/lib/x+y", "/opt/.hidden/a",
             "/opt/a.b/_c/1", "/opt/-lead", "/usr/share/x--y"]  # fmt: skip
    if shutil.which("systemd-escape"):
        out = subprocess.run(["systemd-escape", "--path", *paths], capture_output=True,
                             text=True, check=True).stdout.split()  # fmt: skip
        assert [escape_path(p) for p in paths] == out
    assert escape_path("/opt/my-app/log") == "opt-my\\x2dapp-log"
    assert escape_path("/opt/.hidden/a") == "opt-.hidden-a"
    with pytest.raises(InputError):
        escape_path("/opt/../etc")


def test_a_table_is_read_and_written_back(site: Site, cli: Callable[..., Ran]) -> None:
    path = site.home / SITE_FILE
    path.write_text(path.read_text() + TABLE)
    config = load_config(path)
    assert config.writable == (STATE, LOG, LOCK, CACHE, CONF)
    path.write_text(render_config(config))
    assert load_config(path) == config
    assert cli("guests").code == 0


BAD_TABLES = [
    (entry("/opt/../etc"), '[writable."/opt/../etc"]: the path must be'),
    (entry("opt/x"), '[writable."opt/x"]: the path must be'),
    (entry("/opt/my app"), '[writable."/opt/my app"]'),
    (entry("/opt/x\\ny"), '[writable."/opt/x\\ny"]'),
    (entry("/opt/x/"), '[writable."/opt/x/"]'),
    (entry("/"), '[writable."/"]'),
    (entry("/proc/x"), "/proc is the system's own"),
    (entry("/etc/picky"), "/etc is writable on a clone already (its own disk"),
    (entry("/var/log/picky"), "/var is writable"),
    (entry("/usr/lib/sharedroot/dpkg"), "sharedroot's"),
    (entry("/opt"), '[writable."/opt"]: /opt is a disk of the layout'),
    (entry("/opt/a") + entry("/opt/a/b"), '[writable."/opt/a/b"]: inside [writable."/opt/a"]'),
    (entry("/opt/a", "size = 1"), "[writable.\"/opt/a\"]: unknown key 'size'"),
    (entry("/opt/a", "where = 1"), '[writable."/opt/a"] where = 1: must be a string'),
    (entry("/opt/a", 'where = "disk"'), "where = 'disk': must be one of local, var, tmpfs"),
    (entry("/opt/a", 'start = ["copy"]'), '[writable."/opt/a"] start = '),
    (entry("/opt/a", 'kind = "fifo"'), "kind = 'fifo': must be one of dir, file"),
    ('\n[writable]\n"/opt/a" = "local"\n', "[writable.\"/opt/a\"] = 'local': must be a table"),
    ("\nwritable = 3\n", "[writable] = 3: must be a table"),
    ("".join(entry(f"/opt/p{n}") for n in range(65)), "65 paths; at most 64"),
    (entry("/opt/" + "/".join(["a-b"] * 40)), "too long for a systemd unit name"),
]


@pytest.mark.parametrize(("table", "words"), BAD_TABLES)
def test_a_bad_table_is_refused_in_one_line_and_nothing_written(
    site: Site, cli: Callable[..., Ran], table: str, words: str
) -> None:
    path = site.home / SITE_FILE
    text = path.read_text()
    # a top-level key must come before the first table
    path.write_text(table + text if table.startswith("\nwritable") else text + table)
    before = tree_hashes(site.home)
    for args in (["guests"], ["mnt2rogld", "--yes"]):
        ran = cli(*args)
        assert ran.code == 2, ran.err
        lines = ran.err.strip().splitlines()
        assert len(lines) == 1 and str(path) in lines[0] and words in lines[0], ran.err
    assert tree_hashes(site.home) == before


def test_a_layout_without_var_takes_no_var_paths(site: Site, cli: Callable[..., Ran]) -> None:
    path = site.home / SITE_FILE
    text = path.read_text().replace('mount = "/var"', 'mount = "/data"')
    path.write_text(text + entry("/opt/a", 'where = "var"'))
    ran = cli("guests")
    assert ran.code == 2 and "where = 'var': no read-write /var disk" in ran.err, ran.err


def test_var_on_a_logical_volume_takes_var_paths() -> None:
    """The paper's rwVG holds /var: where = "var" needs a read-write /var, disk or LV."""
    from test_layouts import both  # the LVM layout of the variants' boot test

    assert parse_table(tomllib.loads(TABLE)["writable"], both()) == (STATE, LOG, LOCK, CACHE, CONF)


# ---------------------------------------------------------------- the units (fast)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A system as mnt2rogld gets it, with a picky program's files in /opt and /usr."""
    root = tmp_path / "root"
    for d in ("usr/sbin", "boot", "var/lib/dpkg", "etc", "root", "srv", "local", "usr/share"):
        (root / d).mkdir(parents=True)
    (root / "usr/sbin/update-initramfs").write_text("#!/bin/sh\n")
    (root / "boot/sharedroot.conf").write_text(
        render_boot_config(BootConfig("vmlinux", "initrd.img", "root=/dev/vda rw"))
    )
    earlybind.write_scripts(root)
    (root / "opt/picky/state").mkdir(parents=True)
    (root / "opt/picky/state/seed").write_text("from the gold\n")
    (root / "usr/share/picky").mkdir()
    (root / "usr/share/picky/lock").write_text("unlocked\n")
    (root / "opt/picky/conf").mkdir()
    (root / "opt/picky/conf/seed").write_text("conf from the gold\n")
    return root


UNITS = "usr/lib/systemd/system"


def units(root: Path) -> set[str]:
    return {str(p.relative_to(root / UNITS)) for p in (root / UNITS).rglob("*")}


def test_make_readonly_puts_the_table_in_place(tree: Path, tmp_path: Path) -> None:
    said: list[str] = []
    pid = WritablePath("/usr/share/picky/pid", Where.VAR, Start.EMPTY, Kind.FILE)
    count = WritablePath("/usr/share/picky/count", Where.TMPFS, Start.EMPTY, Kind.FILE)
    os.chown(tree / "usr/share/picky/lock", 7, 8)
    make_readonly(
        tree, PAPER_LAYOUT, said.append, paths=(STATE, LOG, LOCK, CACHE, pid, CONF, count)
    )
    assert any("/opt/picky/log (dir) bound from a tmpfs" in s for s in said)
    mounts = {"opt-picky-state.mount", "opt-picky-log.mount", "usr-share-picky-lock.mount",
              "opt-picky-cache.mount", "usr-share-picky-pid.mount", "opt-picky-conf.mount",
              "usr-share-picky-count.mount"}  # fmt: skip
    wants = {f"local-fs.target.wants/{m}" for m in mounts}
    services = {writable.SERVICE, writable.RUN_SERVICE}
    assert units(tree) == {*services, "local-fs.target.wants", *mounts, *wants}
    for m in mounts:
        assert os.readlink(tree / UNITS / "local-fs.target.wants" / m) == f"../{m}"
    lock = (tree / UNITS / "usr-share-picky-lock.mount").read_text()
    assert "What=/var/lib/sharedroot/writable/usr/share/picky/lock\n" in lock
    assert "Where=/usr/share/picky/lock\n" in lock and "Options=bind\n" in lock
    assert f"Requires={writable.SERVICE}\n" in lock and "Before=local-fs.target\n" in lock
    # an empty directory in memory is a tmpfs with the gold's owner and mode, no service
    cache = (tree / UNITS / "opt-picky-cache.mount").read_text()
    assert "What=tmpfs\nWhere=/opt/picky/cache\nType=tmpfs\n" in cache
    assert "Options=mode=0755,uid=0,gid=0\n" in cache and "Requires=" not in cache
    conf = (tree / UNITS / "opt-picky-conf.mount").read_text()
    assert "What=/run/sharedroot/writable/opt/picky/conf\n" in conf
    assert f"Requires={writable.RUN_SERVICE}\n" in conf
    # the kept copies' service runs only while one of them is missing
    service = (tree / UNITS / writable.SERVICE).read_text()
    assert "DefaultDependencies=no\n" in service and "Before=local-fs.target" in service
    needs = next(ln for ln in service.splitlines() if ln.startswith("RequiresMountsFor="))
    assert set(needs.split("=")[1].split()) == {
        "/opt/picky", "/usr/share/picky", "/local/writable/opt/picky",
        "/var/lib/sharedroot/writable/usr/share/picky",
    }  # fmt: skip
    conditions = [ln for ln in service.splitlines() if ln.startswith("Condition")]
    assert conditions == [
        "ConditionPathExists=|!/local/writable/opt/picky/state",
        "ConditionPathExists=|!/var/lib/sharedroot/writable/usr/share/picky/lock",
        "ConditionPathExists=|!/var/lib/sharedroot/writable/usr/share/picky/pid",
    ]
    run = (tree / UNITS / writable.RUN_SERVICE).read_text()
    assert f"ExecStart=systemd-tmpfiles --create {writable.RUN_CONF}\n" in run
    assert "RequiresMountsFor=/opt/picky\n" in run and "Condition" not in run
    # mount points in the read-only root: a directory, or an empty file for a file
    assert (tree / "opt/picky/log").is_dir() and (tree / "opt/picky/cache").is_dir()
    assert (tree / "usr/share/picky/pid").read_text() == ""
    assert (tree / "usr/share/picky/lock").read_text() == "unlocked\n"
    assert (tree / "opt/picky/state/seed").read_text() == "from the gold\n"
    script = tree / writable.PREPARE.lstrip("/")
    assert os.access(script, os.X_OK)
    subprocess.run(["sh", "-n", script], check=True)
    text = script.read_text()
    assert "sharedroot_writable /local/writable/opt/picky/state /opt/picky/state copy dir" in text
    assert "/run/" not in text  # the copies in memory are tmpfiles' job
    listed = (tree / writable.LISTED.lstrip("/")).read_text().split()
    assert sorted(listed) == sorted(w.path for w in (STATE, LOG, LOCK, CACHE, pid, CONF, count))
    if shutil.which("systemd-analyze"):  # reads the units as systemd would, no chroot
        (tree / "usr/bin").mkdir()  # it looks for the programs the units run in the tree
        replace_file(tree / "usr/bin/systemd-tmpfiles", b"", 0o755)
        files = [tree / UNITS / n for n in (*sorted(services), *sorted(mounts))]
        subprocess.run(["systemd-analyze", "verify", f"--root={tree}", *files], check=True)


def test_the_copies_in_memory_are_made_by_tmpfiles(tree: Path) -> None:
    """The tmpfiles lines on real files: a copy of the gold's with its owner and mode,
    an empty file with the gold's owner and mode, and a second run that keeps both."""
    if not shutil.which("systemd-tmpfiles"):
        pytest.skip("systemd-tmpfiles is not installed")
    (tree / "opt/picky/conf").chmod(0o750)
    os.chown(tree / "opt/picky/conf", 7, 8)
    (tree / "usr/share/picky/lock").chmod(0o640)
    os.chown(tree / "usr/share/picky/lock", 9, 10)
    empty = WritablePath("/usr/share/picky/lock", Where.TMPFS, Start.EMPTY, Kind.FILE)
    make_readonly(tree, PAPER_LAYOUT, print, paths=(CONF, empty))
    conf = tree / writable.RUN_CONF.lstrip("/")
    subprocess.run(["systemd-tmpfiles", "--create", f"--root={tree}", conf], check=True)
    made = tree / "run/sharedroot/writable"
    st = (made / "opt/picky/conf").stat()
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o750, 7, 8)
    assert (made / "opt/picky/conf/seed").read_text() == "conf from the gold\n"
    st = (made / "usr/share/picky/lock").stat()
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid, st.st_size) == (0o640, 9, 10, 0)
    (made / "opt/picky/conf/seed").write_text("changed\n")
    subprocess.run(["systemd-tmpfiles", "--create", f"--root={tree}", conf], check=True)
    assert (made / "opt/picky/conf/seed").read_text() == "changed\n"
    assert not (tree / writable.PREPARE.lstrip("/")).exists()  # nothing kept: no script
    assert not (tree / UNITS / writable.SERVICE).exists()


def test_a_changed_table_gives_a_gold_with_just_its_units(tmp_path: Path, tree: Path) -> None:
    """What a migrate carries: the units are on the gold's /usr, so a clone moved to a
    slot made with another table has exactly that table's units (nothing in /etc)."""
    other = tmp_path / "other"
    subprocess.run(["cp", "-a", tree, other], check=True)
    make_readonly(tree, PAPER_LAYOUT, print, paths=(STATE, LOG, CACHE))
    moved = WritablePath(LOG.path, Where.LOCAL, Start.EMPTY)
    make_readonly(other, PAPER_LAYOUT, print, paths=(STATE, moved))
    assert "opt-picky-cache.mount" in units(tree)
    assert units(other) == {
        writable.SERVICE, "local-fs.target.wants", "opt-picky-state.mount",
        "opt-picky-log.mount", "local-fs.target.wants/opt-picky-state.mount",
        "local-fs.target.wants/opt-picky-log.mount",
    }  # fmt: skip
    assert (
        "What=/local/writable/opt/picky/log\n"
        in (other / UNITS / "opt-picky-log.mount").read_text()
    )
    assert not any("writable" in str(p) for p in (other / "local/etc").rglob("*"))
    # no table, no units and no script: a clone boots as before
    bare = tmp_path / "bare"
    subprocess.run(["cp", "-a", other, bare], check=True)
    shutil.rmtree(bare / "usr/lib")
    make_readonly(bare, PAPER_LAYOUT, print)
    assert not (bare / UNITS).exists() and not (bare / writable.PREPARE.lstrip("/")).exists()


@pytest.mark.parametrize(
    ("paths", "words"),
    [
        ((WritablePath("/opt/none"),), 'start = "copy": /opt/none is not in the maintenance'),
        ((WritablePath("/opt/link/x", start=Start.EMPTY),), "/opt/link is a symlink"),
        ((WritablePath("/opt/picky/state/seed"),), "/opt/picky/state/seed is not a directory"),
        ((WritablePath("/opt/picky/state", kind=Kind.FILE),), "is not a regular file"),
    ],
)
def test_what_the_tree_cannot_take_is_refused_before_any_change(
    tree: Path, paths: tuple[WritablePath, ...], words: str
) -> None:
    (tree / "opt/link").symlink_to("/etc")
    before = sorted(str(p) for p in tree.rglob("*"))
    with pytest.raises(RefusedError, match=words):
        make_readonly(tree, PAPER_LAYOUT, print, paths=paths)
    assert sorted(str(p) for p in tree.rglob("*")) == before


def test_the_boot_script_makes_each_copy_once(tmp_path: Path) -> None:
    """The script's function on real files: a copy, an empty one with the gold's mode,
    a file, and a copy already there left alone."""
    gold = tmp_path / "gold"
    (gold / "state").mkdir(parents=True)
    (gold / "state/seed").write_text("seed\n")
    (gold / "log").mkdir(mode=0o750)
    (gold / "log/old").write_text("old\n")
    (gold / "lock").write_text("unlocked\n")
    mine = tmp_path / "local/writable"
    calls = [
        f"sharedroot_writable {mine}/state {gold}/state copy dir",
        f"sharedroot_writable {mine}/log {gold}/log empty dir",
        f"sharedroot_writable {mine}/lock {gold}/lock copy file",
        f"sharedroot_writable {mine}/lock2 {gold}/lock empty file",
    ]
    script = writable.PREPARE_FUNCTION + "\n".join(calls) + "\n"
    subprocess.run(["sh", "-ec", script], check=True, capture_output=True)
    assert (mine / "state/seed").read_text() == "seed\n"
    assert list((mine / "log").iterdir()) == [] and (mine / "log").stat().st_mode & 0o777 == 0o750
    assert (mine / "lock").read_text() == "unlocked\n" and (mine / "lock2").read_text() == ""
    (mine / "state/seed").write_text("changed by the clone\n")
    subprocess.run(["sh", "-ec", script], check=True, capture_output=True)
    assert (mine / "state/seed").read_text() == "changed by the clone\n"
    assert not [p for p in mine.iterdir() if p.name.startswith(".")]


# ---------------------------------------------------------------- picky on clones (boot)

PICKY = """#!/bin/sh
# picky: insists on writing in its own install tree; refuses to start if it cannot
state=/opt/picky/state log=/opt/picky/log lock=/usr/share/picky/lock conf=/opt/picky/conf
host=$(cat /proc/sys/kernel/hostname)
n=$(( $(cat "$state/counter" 2>/dev/null || echo 0) + 1 ))
if ! { echo "$n" > "$state/counter" && echo "$host" >> "$state/hosts" &&
       echo "start $n" >> "$log/picky.log" && echo "$host" > "$lock" &&
       echo "$n" >> "$conf/boots"; } 2>/dev/null; then
    echo "picky: cannot write in $state, $log, $lock or $conf" >&2
    exit 1
fi
"""
PICKY_UNIT = """[Unit]
Description=picky, a program that writes inside its install tree

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/opt/picky/bin/picky

[Install]
WantedBy=multi-user.target
"""
CONF_SEED = "conf from the gold"


def put_picky(home: Path) -> None:
    """Install picky on the maintenance system's disks, as an admin would."""
    site = Site.open(home)
    disks = [d for d in site.config.layout.copied if d.kind is DiskKind.FS]
    with guest_tree(site, site.config.guests.maintenance, disks, write=True) as root:
        files = {"opt/picky/bin/picky": PICKY, "opt/picky/state/seed": "from the gold\n",
                 "usr/share/picky/lock": "unlocked\n",
                 "opt/picky/conf/seed": "conf from the gold\n",
                 "etc/systemd/system/picky.service": PICKY_UNIT}  # fmt: skip
        install_extra(root, files, ["picky.service"])  # a script is made executable
    site.state.close()  # its -wal and -shm files go with the last connection
    os.sync()  # the images settled before the tests compare their hashes


def picky(site: BootSite, guest: str) -> list[str]:
    """What picky left: its status, counter, hosts seen, log, lock, the seed, and its
    conf (a copy in memory: the boots it saw since this boot, and the gold's seed)."""
    out = site.sh(
        guest,
        "systemctl is-system-running --wait >/dev/null; systemctl is-active picky.service;"
        " cd /opt/picky; cat state/counter;"
        " tr '\\n' , < state/hosts; echo; tr '\\n' , < log/picky.log; echo;"
        " cat /usr/share/picky/lock state/seed; tr '\\n' , < conf/boots; echo; cat conf/seed",
    )
    return out.splitlines()
