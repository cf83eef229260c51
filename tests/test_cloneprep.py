"""cloneprep on real directory trees, hostile ones included (no mocks)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from sharedroot.errors import InputError, RefusedError
from sharedroot.guestos.cloneprep import (
    OPERATIONS,
    cloneprep,
    format_operations,
    operation_names,
)

MACHINE_ID = "0123456789abcdef0123456789abcdef\n"

FILES = {
    "etc/machine-id": MACHINE_ID,
    "var/lib/dbus/machine-id": MACHINE_ID,
    "etc/ssh/ssh_host_ed25519_key": "private\n",
    "etc/ssh/ssh_host_ed25519_key.pub": "public\n",
    "etc/ssh/sshd_config": "PermitRootLogin no\n",
    "var/log/syslog": "boot messages\n",
    "var/log/syslog.1": "older\n",
    "var/log/syslog.2.gz": "gz\n",
    "var/log/dpkg.log-20240101": "dated\n",
    "var/log/apt/history.log": "apt install foo\n",
    "var/log/wtmp": "logins\n",
    "var/log/empty.log": "",
    "var/log/journal/0123456789abcdef0123456789abcdef/system.journal": "journal\n",
    "root/.bash_history": "rm -rf /tmp/x\n",
    "root/.profile": "# keep\n",
    "home/alice/.bash_history": "ls\n",
    "home/alice/notes.txt": "keep\n",
    "tmp/foo": "x\n",
    "tmp/dir/sub/file": "x\n",
    "var/tmp/systemd-private-x/tmp/y": "x\n",
    "var/cache/apt/archives/foo_1.0_amd64.deb": "deb\n",
    "var/cache/apt/archives/partial/bar_1.0_amd64.deb": "deb\n",
    "var/cache/apt/archives/lock": "",
    "var/cache/apt/pkgcache.bin": "bin\n",
    "var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages": "P\n",
    "var/lib/apt/lists/lock": "",
    "var/lib/dhcp/dhclient.eth0.leases": "lease\n",
    "var/lib/systemd/network/lease": "lease\n",
    "etc/udev/rules.d/70-persistent-net.rules": "SUBSYSTEM==net\n",
    "etc/udev/rules.d/99-local.rules": "# keep\n",
    "var/lib/systemd/random-seed": "seed\n",
    "var/crash/core.1": "core\n",
    "etc/sharedroot/identity": "{}\n",
}

# What each operation reports on the tree above.
EXPECTED = {
    "machine-id": ["etc/machine-id", "var/lib/dbus/machine-id"],
    "ssh-hostkeys": ["etc/ssh/ssh_host_ed25519_key", "etc/ssh/ssh_host_ed25519_key.pub"],
    "logfiles": [
        "var/log/dpkg.log-20240101",
        "var/log/syslog",
        "var/log/syslog.1",
        "var/log/syslog.2.gz",
        "var/log/wtmp",
        "var/log/apt/history.log",
    ],
    "journal": ["var/log/journal/0123456789abcdef0123456789abcdef"],
    "bash-history": ["root/.bash_history", "home/alice/.bash_history"],
    "tmp-files": ["tmp/dir", "tmp/foo", "var/tmp/systemd-private-x"],
    "package-manager-cache": [
        "var/cache/apt/archives/foo_1.0_amd64.deb",
        "var/cache/apt/archives/partial/bar_1.0_amd64.deb",
        "var/cache/apt/pkgcache.bin",
    ],
    "dhcp-client-state": ["var/lib/dhcp/dhclient.eth0.leases", "var/lib/systemd/network/lease"],
    "udev-persistent-net": ["etc/udev/rules.d/70-persistent-net.rules"],
    "random-seed": ["var/lib/systemd/random-seed"],
    "crash-data": ["var/crash/core.1"],
    "findself-identity": ["etc/sharedroot/identity"],
    "apt-lists": [
        "var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages"
    ],
}

# Files no default operation may touch.
KEPT = [
    "etc/ssh/sshd_config",
    "root/.profile",
    "home/alice/notes.txt",
    "var/cache/apt/archives/lock",
    "var/lib/apt/lists/lock",
    "etc/udev/rules.d/99-local.rules",
]


def make_tree(root: Path) -> Path:
    for rel, text in FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "var/log/syslog").chmod(0o640)
    return root


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "root")


def hashes(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            out[str(p)] = "->" + os.readlink(p)
        elif p.is_file():
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[str(p)] = "dir"
    return out


def test_every_operation_is_tested() -> None:
    assert set(EXPECTED) == set(operation_names())


@pytest.mark.parametrize("name", list(EXPECTED))
def test_each_operation(tree: Path, name: str) -> None:
    report = cloneprep(tree, [name])
    assert report == {name: EXPECTED[name]}
    for rel in KEPT:
        assert (tree / rel).exists(), rel
    assert cloneprep(tree, [name]) == {name: []}


def test_operation_effects(tree: Path) -> None:
    syslog_inode = (tree / "var/log/syslog").stat().st_ino
    cloneprep(tree)
    assert (tree / "etc/machine-id").read_text() == "uninitialized\n"
    assert not (tree / "var/lib/dbus/machine-id").exists()
    # Logs are truncated in place: same inode, same mode.
    st = (tree / "var/log/syslog").stat()
    assert (st.st_size, st.st_ino, st.st_mode & 0o777) == (0, syslog_inode, 0o640)
    assert not (tree / "var/log/syslog.1").exists()
    assert (tree / "var/log/wtmp").stat().st_size == 0
    assert (tree / "var/log/journal").is_dir() and not list((tree / "var/log/journal").iterdir())
    assert (tree / "tmp").is_dir() and not list((tree / "tmp").iterdir())
    assert (tree / "var/cache/apt/archives/partial").is_dir()
    # apt-lists is optional: the lists stay by default.
    assert (tree / EXPECTED["apt-lists"][0]).exists()


def test_defaults_then_clean(tree: Path) -> None:
    logged: list[str] = []
    report = cloneprep(tree, log=logged.append)
    defaults = [op.name for op in OPERATIONS if op.default]
    assert list(report) == defaults and "apt-lists" not in report
    assert report == {name: EXPECTED[name] for name in defaults}
    assert "cloneprep: machine-id: etc/machine-id" in logged
    again = cloneprep(tree)
    assert again == {name: [] for name in defaults}


def test_dbus_symlink_left(tree: Path) -> None:
    (tree / "var/lib/dbus/machine-id").unlink()
    (tree / "var/lib/dbus/machine-id").symlink_to("/etc/machine-id")
    assert cloneprep(tree, ["machine-id"]) == {"machine-id": ["etc/machine-id"]}
    assert os.readlink(tree / "var/lib/dbus/machine-id") == "/etc/machine-id"


def test_missing_machine_id_is_created(tmp_path: Path) -> None:
    (tmp_path / "root/etc").mkdir(parents=True)
    assert cloneprep(tmp_path / "root", ["machine-id"]) == {"machine-id": ["etc/machine-id"]}
    assert (tmp_path / "root/etc/machine-id").read_text() == "uninitialized\n"


def test_unknown_operation(tree: Path) -> None:
    with pytest.raises(InputError) as err:
        cloneprep(tree, ["machine-id", "format-disk"])
    assert "format-disk" in str(err.value)
    for name in operation_names():
        assert name in str(err.value)
    assert (tree / "etc/machine-id").read_text() == MACHINE_ID


def test_listing() -> None:
    text = format_operations()
    for op in OPERATIONS:
        assert op.name in text and op.description in text
    rows = {line.split()[0]: line.split()[1] for line in text.splitlines()}
    assert rows["apt-lists"] == "optional" and rows["machine-id"] == "default"


def test_refuses_the_workers_own_root() -> None:
    with pytest.raises(RefusedError):
        cloneprep(Path("/"), ["tmp-files"])
    with pytest.raises(RefusedError):
        OPERATIONS[0].func(Path("/"))


def test_symlinks_out_of_the_tree_are_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    for name in ("syslog", ".bash_history", "ssh_host_rsa_key", "machine-id", "random-seed"):
        (outside / name).write_text(f"outside {name}\n")
    (outside / "journal").mkdir()
    (outside / "journal/system.journal").write_text("outside journal\n")
    root = tmp_path / "root"
    for d in ("etc", "var/lib/systemd", "home", "var/lib/dbus", "var/cache/apt"):
        (root / d).mkdir(parents=True)
    # Whole directories pointing out of the tree.
    (root / "var/log").symlink_to(outside)
    (root / "tmp").symlink_to(outside)
    (root / "var/tmp").symlink_to("../../outside")
    (root / "etc/ssh").symlink_to(outside)
    (root / "root").symlink_to(outside)
    (root / "home/evil").symlink_to(outside)
    (root / "var/cache/apt/archives").symlink_to(outside)
    # Single files pointing out of the tree.
    (root / "etc/machine-id").symlink_to(outside / "machine-id")
    (root / "var/lib/dbus/machine-id").symlink_to(outside / "machine-id")
    (root / "var/lib/systemd/random-seed").symlink_to(outside / "random-seed")
    before = hashes(outside)

    logged: list[str] = []
    report = cloneprep(root, operation_names(), log=logged.append)

    assert hashes(outside) == before
    # The machine-id symlink itself is replaced by a plain file inside the tree.
    assert (root / "etc/machine-id").read_text() == "uninitialized\n"
    assert not (root / "etc/machine-id").is_symlink()
    # The random-seed link is removed (unlinking never follows it).
    assert report["random-seed"] == ["var/lib/systemd/random-seed"]
    assert report["logfiles"] == report["journal"] == report["tmp-files"] == []
    assert report["ssh-hostkeys"] == report["bash-history"] == []
    assert any("var/log: not a plain directory" in line for line in logged)


def test_symlinked_log_file_not_truncated(tree: Path, tmp_path: Path) -> None:
    secret = tmp_path / "shadow"
    secret.write_text("root:secret\n")
    (tree / "var/log/evil.log").symlink_to(secret)
    (tree / "var/log/evil.log.1").symlink_to(secret)
    (tree / "var/log/linkdir").symlink_to(tmp_path)
    report = cloneprep(tree, ["logfiles"])
    assert report["logfiles"] == EXPECTED["logfiles"]
    assert secret.read_text() == "root:secret\n"
    assert (tree / "var/log/evil.log").is_symlink()
