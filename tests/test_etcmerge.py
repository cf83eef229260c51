"""The /etc three-way merge on real trees in temporary directories (no mocks)."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from sharedroot.errors import InputError, OperationError, RefusedError
from sharedroot.guestos.etcmerge import (
    NEW_SUFFIX,
    Action,
    Change,
    Plan,
    apply_merge,
    default_backup,
    plan_merge,
    resume_merge,
    undo_merge,
)
from sharedroot.run import run

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="chown to other owners and mknod need root")


# --- helpers -----------------------------------------------------------------------------


def put(
    root: Path,
    rel: str,
    text: str = "x\n",
    *,
    mode: int = 0o644,
    owner: tuple[int, int] | None = None,
    xattrs: dict[str, bytes] | None = None,
) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    path.write_text(text)
    if owner is not None:
        os.chown(path, *owner)
    os.chmod(path, mode)
    for name, value in (xattrs or {}).items():
        os.setxattr(path, name, value)
    return path


def link(root: Path, rel: str, target: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    path.symlink_to(target)
    return path


def copy(src: Path, dst: Path) -> Path:
    run(["cp", "-a", "--", src, dst])  # owners, modes, symlinks, xattrs and times
    return dst


def snap(root: Path, *, times: bool = False) -> dict[str, tuple[object, ...]]:
    """Everything the merge promises about a tree (and with `times`, every timestamp
    but atime, so that any write shows)."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            st = path.lstat()
            if stat.S_ISREG(st.st_mode):
                data: object = path.read_bytes()
            elif stat.S_ISLNK(st.st_mode):
                data = os.readlink(path)
            else:
                data = st.st_rdev
            xattrs = sorted(
                (n, os.getxattr(path, n, follow_symlinks=False))
                for n in os.listxattr(path, follow_symlinks=False)
            )
            row: tuple[object, ...] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode))
            row += (st.st_uid, st.st_gid, tuple(xattrs), data)
            if times:
                row += (st.st_mtime_ns, st.st_ctime_ns)
            elif not stat.S_ISDIR(st.st_mode):
                # Files keep their times through a merge and an undo; directories change
                # theirs whenever an entry inside does.
                row += (st.st_mtime_ns,)
            out[str(path.relative_to(root))] = row
    return out


@dataclass
class Trees:
    base: Path
    theirs: Path
    ours: Path

    def fork(self) -> None:
        """theirs and ours start as exact copies of base."""
        copy(self.base, self.theirs)
        copy(self.base, self.ours)

    def plan(self) -> Plan:
        return plan_merge(self.base, self.theirs, self.ours)

    def merge(self) -> Plan:
        plan = self.plan()
        apply_merge(plan, self.theirs, self.ours)
        return plan


@pytest.fixture
def trees(tmp_path: Path) -> Trees:
    base = tmp_path / "base"
    base.mkdir()
    return Trees(base, tmp_path / "theirs", tmp_path / "ours")


def actions(plan: Plan) -> dict[str, Action]:
    return {c.path: c.action for c in plan.changes}


def xattrs_supported(where: Path) -> bool:
    probe = where / ".xattr-probe"
    probe.write_text("")
    try:
        os.setxattr(probe, "user.probe", b"1")
        return True
    except OSError:
        return False
    finally:
        probe.unlink()


# --- the rules ---------------------------------------------------------------------------


def test_unchanged_here_changed_in_gold_takes_theirs(trees: Trees) -> None:
    put(trees.base, "hosts", "old\n")
    put(trees.base, "same", "same\n")
    trees.fork()
    put(trees.theirs, "hosts", "new\n")
    plan = trees.merge()
    assert actions(plan) == {"hosts": Action.TAKE_NEW}
    assert "content" in plan.changes[0].reason
    assert (trees.ours / "hosts").read_text() == "new\n"
    assert not plan.conflicts


def test_new_in_gold_is_added_file_and_directory(trees: Trees) -> None:
    put(trees.base, "a.conf")
    trees.fork()
    put(trees.theirs, "b.conf", "b\n")
    put(trees.theirs, "new.d/one.conf", "1\n")
    put(trees.theirs, "new.d/sub/two.conf", "2\n", mode=0o600)
    plan = trees.merge()
    # A new directory is one change: it is added whole.
    assert actions(plan) == {"b.conf": Action.ADD, "new.d": Action.ADD}
    assert snap(trees.ours) == snap(trees.theirs)


def test_removed_in_gold_unchanged_here_is_removed(trees: Trees) -> None:
    put(trees.base, "old.conf")
    put(trees.base, "old.d/x")
    put(trees.base, "keep")
    trees.fork()
    (trees.theirs / "old.conf").unlink()
    run(["rm", "-r", trees.theirs / "old.d"])
    plan = trees.merge()
    assert actions(plan) == {"old.conf": Action.REMOVE, "old.d": Action.REMOVE}
    assert sorted(p.name for p in trees.ours.iterdir()) == ["keep"]


def test_removed_in_gold_changed_here_is_kept(trees: Trees) -> None:
    put(trees.base, "gone.conf", "base\n")
    trees.fork()
    (trees.theirs / "gone.conf").unlink()
    put(trees.ours, "gone.conf", "local\n")
    plan = trees.merge()
    assert actions(plan) == {"gone.conf": Action.KEEP_LOCAL_REMOVED}
    assert plan.conflicts == plan.changes
    assert "removed in gold" in plan.changes[0].reason
    assert (trees.ours / "gone.conf").read_text() == "local\n"


@needs_root
def test_changed_on_both_sides_keeps_ours_and_writes_theirs_beside(trees: Trees) -> None:
    has_xattrs = xattrs_supported(trees.base)
    put(trees.base, "sshd_config", "base\n")
    trees.fork()
    gold_xattrs = {"user.origin": b"gold"} if has_xattrs else {}
    put(trees.theirs, "sshd_config", "gold\n", mode=0o640, owner=(0, 42), xattrs=gold_xattrs)
    put(trees.ours, "sshd_config", "local\n")
    plan = trees.merge()
    assert actions(plan) == {"sshd_config": Action.KEEP_BOTH}
    assert plan.changes[0].target == "sshd_config" + NEW_SUFFIX
    assert (trees.ours / "sshd_config").read_text() == "local\n"
    new = trees.ours / ("sshd_config" + NEW_SUFFIX)
    assert new.read_text() == "gold\n"
    assert snap(trees.theirs)["sshd_config"] == snap(trees.ours)["sshd_config" + NEW_SUFFIX]


def test_changed_identically_on_both_sides_is_nothing(trees: Trees) -> None:
    put(trees.base, "a", "base\n")
    trees.fork()
    put(trees.theirs, "a", "same edit\n")
    put(trees.ours, "a", "same edit\n")
    assert trees.plan().changes == ()


def test_local_changes_alone_are_kept(trees: Trees) -> None:
    put(trees.base, "edited", "base\n")
    put(trees.base, "deleted", "base\n")
    trees.fork()
    put(trees.ours, "edited", "local\n")
    put(trees.ours, "added-here", "local\n")
    (trees.ours / "deleted").unlink()
    before = snap(trees.ours)
    plan = trees.merge()
    assert plan.changes == ()
    assert snap(trees.ours) == before


def test_removed_here_changed_in_gold_writes_gold_beside(trees: Trees) -> None:
    put(trees.base, "motd", "base\n")
    trees.fork()
    (trees.ours / "motd").unlink()
    put(trees.theirs, "motd", "gold\n")
    plan = trees.merge()
    assert actions(plan) == {"motd": Action.KEEP_BOTH}
    assert not (trees.ours / "motd").exists()
    assert (trees.ours / ("motd" + NEW_SUFFIX)).read_text() == "gold\n"


@needs_root
def test_metadata_alone_is_a_change(trees: Trees) -> None:
    put(trees.base, "mode", mode=0o644)
    put(trees.base, "owner")
    trees.fork()
    os.chmod(trees.theirs / "mode", 0o600)
    os.chown(trees.theirs / "owner", 7, 8)
    plan = trees.merge()
    assert actions(plan) == {"mode": Action.TAKE_NEW, "owner": Action.TAKE_NEW}
    reasons = {c.path: c.reason for c in plan.changes}
    assert "mode 0644→0600" in reasons["mode"]
    assert "owner 0:0→7:8" in reasons["owner"]
    assert snap(trees.ours) == snap(trees.theirs)


def test_xattr_change_is_a_change_and_is_preserved(trees: Trees) -> None:
    if not xattrs_supported(trees.base):
        pytest.skip(f"user.* xattrs unsupported on the filesystem of {trees.base}")
    put(trees.base, "f", xattrs={"user.a": b"1"})
    (trees.base / "d").mkdir()
    os.setxattr(trees.base / "d", "user.dir", b"base")
    trees.fork()
    os.setxattr(trees.theirs / "f", "user.a", b"2")
    os.setxattr(trees.theirs / "f", "user.b", b"\x00binary\xff")
    os.setxattr(trees.theirs / "d", "user.dir", b"gold")
    os.setxattr(trees.ours / "d", "user.local", b"x")  # ours' dir metadata changed too
    put(trees.theirs, "added", xattrs={"user.new": b"yes"})
    plan = trees.merge()
    assert actions(plan) == {"added": Action.ADD, "d": Action.KEEP_BOTH, "f": Action.TAKE_NEW}
    assert os.getxattr(trees.ours / "f", "user.b") == b"\x00binary\xff"
    assert os.getxattr(trees.ours / "added", "user.new") == b"yes"
    # A directory's metadata changed on both sides: ours kept, nothing written beside it.
    assert os.getxattr(trees.ours / "d", "user.local") == b"x"
    assert not (trees.ours / ("d" + NEW_SUFFIX)).exists()


# --- type changes and directories ----------------------------------------------------------


def test_type_changes_follow_the_same_rules(trees: Trees) -> None:
    put(trees.base, "f2link", "file\n")
    link(trees.base, "link2dir", "somewhere")
    put(trees.base, "dir2file/inside", "x\n")
    put(trees.base, "both", "base\n")
    trees.fork()
    link(trees.theirs, "f2link", "target")
    (trees.theirs / "link2dir").unlink()
    put(trees.theirs, "link2dir/new", "n\n")
    run(["rm", "-r", trees.theirs / "dir2file"])
    put(trees.theirs, "dir2file", "now a file\n")
    link(trees.theirs, "both", "gold-target")
    (trees.ours / "both").unlink()
    put(trees.ours, "both/local", "dir here\n")
    plan = trees.merge()
    assert actions(plan) == {
        "both": Action.KEEP_BOTH,
        "dir2file": Action.TAKE_NEW,
        "f2link": Action.TAKE_NEW,
        "link2dir": Action.TAKE_NEW,
    }
    assert os.readlink(trees.ours / "f2link") == "target"
    assert (trees.ours / "link2dir/new").read_text() == "n\n"
    assert (trees.ours / "dir2file").read_text() == "now a file\n"
    assert (trees.ours / "both/local").read_text() == "dir here\n"
    assert os.readlink(trees.ours / ("both" + NEW_SUFFIX)) == "gold-target"


def test_directory_removed_in_gold_stays_while_something_inside_is_local(trees: Trees) -> None:
    put(trees.base, "a.d/one", "1\n")
    put(trees.base, "a.d/two", "2\n")
    put(trees.base, "b.d/one", "1\n")
    trees.fork()
    run(["rm", "-r", trees.theirs / "a.d", trees.theirs / "b.d"])
    put(trees.ours, "a.d/mine", "local\n")
    put(trees.ours, "b.d/one", "edited\n")
    plan = trees.merge()
    assert actions(plan) == {"a.d": Action.KEEP_LOCAL_REMOVED, "b.d": Action.KEEP_LOCAL_REMOVED}
    reasons = {c.path: c.reason for c in plan.changes}
    assert "inside: mine" in reasons["a.d"]
    assert "inside: one" in reasons["b.d"]
    assert sorted(p.name for p in (trees.ours / "a.d").iterdir()) == ["mine", "one", "two"]


def test_directory_type_change_blocked_by_local_content(trees: Trees) -> None:
    put(trees.base, "conf.d/a", "a\n")
    trees.fork()
    run(["rm", "-r", trees.theirs / "conf.d"])
    put(trees.theirs, "conf.d", "a file now\n")
    put(trees.ours, "conf.d/local", "mine\n")
    plan = trees.merge()
    assert actions(plan) == {"conf.d": Action.KEEP_BOTH}
    assert (trees.ours / "conf.d/local").read_text() == "mine\n"
    assert (trees.ours / ("conf.d" + NEW_SUFFIX)).read_text() == "a file now\n"


@needs_root
def test_directory_metadata_merges_and_entries_inside_merge_one_by_one(trees: Trees) -> None:
    put(trees.base, "ssl/a", "a\n")
    put(trees.base, "ssl/b", "b\n")
    os.chmod(trees.base / "ssl", 0o755)
    trees.fork()
    os.chmod(trees.theirs / "ssl", 0o750)
    os.chown(trees.theirs / "ssl", 0, 99)
    put(trees.theirs, "ssl/a", "gold a\n")
    put(trees.ours, "ssl/b", "local b\n")
    put(trees.ours, "ssl/mine", "local\n")
    plan = trees.merge()
    assert [(c.path, c.action, c.metadata_only) for c in plan.changes] == [
        ("ssl", Action.TAKE_NEW, True),
        ("ssl/a", Action.TAKE_NEW, False),
    ]
    st = (trees.ours / "ssl").stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o750, 0, 99)
    assert (trees.ours / "ssl/a").read_text() == "gold a\n"
    assert (trees.ours / "ssl/b").read_text() == "local b\n"
    assert (trees.ours / "ssl/mine").exists()


def test_directories_added_on_both_sides_merge_inside(trees: Trees) -> None:
    trees.fork()
    put(trees.theirs, "new.d/gold", "g\n")
    put(trees.theirs, "new.d/same", "s\n")
    put(trees.ours, "new.d/local", "l\n")
    put(trees.ours, "new.d/same", "s\n")
    plan = trees.merge()
    assert actions(plan) == {"new.d/gold": Action.ADD}
    assert sorted(p.name for p in (trees.ours / "new.d").iterdir()) == ["gold", "local", "same"]


# --- preservation ----------------------------------------------------------------------


@needs_root
def test_owner_mode_symlink_and_xattrs_are_preserved(trees: Trees) -> None:
    has_xattrs = xattrs_supported(trees.base)
    put(trees.base, "shadow", "base\n", mode=0o640, owner=(0, 42))
    trees.fork()
    xa = {"user.mark": b"gold", "security.test": b"s"} if has_xattrs else {}
    put(trees.theirs, "shadow", "gold\n", mode=0o640, owner=(0, 42), xattrs=xa)
    put(trees.theirs, "bin/su-like", "#!/bin/sh\n", mode=0o4755, owner=(0, 0))
    put(trees.theirs, "svc/conf", "c\n", mode=0o600, owner=(1234, 4321))
    os.chown(trees.theirs / "svc", 1234, 4321)
    os.chmod(trees.theirs / "svc", 0o1750)
    link(trees.theirs, "localtime", "/usr/share/zoneinfo/Etc/UTC")
    os.chown(trees.theirs / "localtime", 5, 6, follow_symlinks=False)
    trees.merge()
    assert snap(trees.ours) == snap(trees.theirs)
    assert stat.S_IMODE((trees.ours / "bin/su-like").stat().st_mode) == 0o4755
    assert (trees.ours / "localtime").lstat().st_uid == 5


def test_hard_links_are_separate_files(trees: Trees) -> None:
    put(trees.base, "a", "same inode\n")
    os.link(trees.base / "a", trees.base / "b")
    trees.fork()
    put(trees.theirs, "a", "gold\n")
    trees.merge()
    # The new version is a new inode renamed over a: b, its old link, keeps its content.
    assert (trees.ours / "a").read_text() == "gold\n"
    assert (trees.ours / "b").read_text() == "same inode\n"


@needs_root
def test_special_files_copied_as_such_sockets_skipped(
    trees: Trees, monkeypatch: pytest.MonkeyPatch
) -> None:
    trees.fork()
    os.mkfifo(trees.theirs / "initctl", 0o600)
    os.mknod(trees.theirs / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.chmod(trees.theirs / "null", 0o666)  # past the umask
    monkeypatch.chdir(trees.theirs)  # AF_UNIX paths are short
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind("sock")
        plan = trees.merge()
    assert actions(plan) == {"initctl": Action.ADD, "null": Action.ADD}
    assert any("sock" in n and "skipped" in n for n in plan.notes)
    assert stat.S_ISFIFO((trees.ours / "initctl").lstat().st_mode)
    st = (trees.ours / "null").lstat()
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    assert stat.S_IMODE(st.st_mode) == 0o666
    gold = snap(trees.theirs)
    del gold["sock"]
    assert snap(trees.ours) == gold
    assert not (trees.ours / "sock").exists()


# --- plan only, idempotence, reverse ------------------------------------------------------


def build_mixed(trees: Trees) -> None:
    """A tree with one of every case."""
    for i in range(6):
        put(trees.base, f"f{i}", f"base {i}\n")
    put(trees.base, "d/x", "x\n")
    put(trees.base, "d/y", "y\n")
    put(trees.base, "gone.d/z", "z\n")
    link(trees.base, "l", "f0")
    put(trees.base, "both" + NEW_SUFFIX, "left from an earlier merge\n")
    trees.fork()
    put(trees.theirs, "f0", "gold 0\n")  # take-new
    put(trees.theirs, "f1", "gold 1\n")  # keep-both
    put(trees.ours, "f1", "local 1\n")
    (trees.theirs / "f2").unlink()  # remove
    (trees.theirs / "f3").unlink()  # keep-local-removed
    put(trees.ours, "f3", "local 3\n")
    put(trees.theirs, "new", "n\n")  # add
    put(trees.theirs, "d/x", "gold x\n")  # take-new inside a directory
    put(trees.ours, "d/local", "l\n")  # local add
    run(["rm", "-r", trees.theirs / "gone.d"])  # remove a directory
    link(trees.theirs, "l", "f4")  # symlink target change
    put(trees.theirs, "both", "gold\n")  # added on both sides, differently
    put(trees.ours, "both", "local\n")


def test_plan_writes_nothing(trees: Trees) -> None:
    build_mixed(trees)
    before = [snap(t, times=True) for t in (trees.base, trees.theirs, trees.ours)]
    plan = trees.plan()
    assert {str(a) for a in actions(plan).values()} == {str(a) for a in Action}
    after = [snap(t, times=True) for t in (trees.base, trees.theirs, trees.ours)]
    assert before == after


def test_apply_twice_is_harmless_and_a_new_plan_settles(trees: Trees) -> None:
    build_mixed(trees)
    plan = trees.plan()
    apply_merge(plan, trees.theirs, trees.ours)
    once = snap(trees.ours)
    apply_merge(plan, trees.theirs, trees.ours)
    assert snap(trees.ours) == once
    again = trees.plan()
    # Only the conflicts remain, and applying them again writes the same.
    assert again.changes == again.conflicts
    apply_merge(again, trees.theirs, trees.ours)
    assert snap(trees.ours) == once


def test_reverse_direction_rolls_back(trees: Trees, tmp_path: Path) -> None:
    build_mixed(trees)
    # A clone without conflicting edits: only the local add and the untouched files.
    run(["rm", "-r", trees.ours])
    copy(trees.base, trees.ours)
    put(trees.ours, "d/local", "l\n")
    put(trees.ours, "f5", "local 5\n")
    original = snap(trees.ours)
    forward = trees.plan()
    assert not forward.conflicts
    apply_merge(forward, trees.theirs, trees.ours)
    back = plan_merge(trees.theirs, trees.base, trees.ours)  # base=new slot, theirs=old
    assert not back.conflicts
    apply_merge(back, trees.base, trees.ours)
    assert snap(trees.ours) == original


def test_plan_json_round_trip() -> None:
    plan = Plan(
        (
            Change("a", Action.TAKE_NEW, "changed in gold"),
            Change("d", Action.KEEP_BOTH, "dir", metadata_only=True),
            Change("b/c", Action.KEEP_LOCAL_REMOVED, "kept"),
        )
    )
    data = json.loads(json.dumps(plan.to_json()))
    assert data[0] == {"path": "a", "action": "take-new", "reason": "changed in gold"}
    assert Plan.from_json(data) == plan
    assert [c.path for c in plan.conflicts] == ["d", "b/c"]
    assert plan.counts()["take-new"] == 1 and plan.counts()["add"] == 0
    for bad in ("../x", "/etc/x", "a//b", "a/./b", ""):
        with pytest.raises(InputError):
            Plan.from_json([{"path": bad, "action": "add", "reason": ""}])
    with pytest.raises(InputError):
        Plan.from_json([{"path": "a", "action": "explode", "reason": ""}])


def test_leftovers_of_an_interrupted_merge_are_not_configuration(trees: Trees) -> None:
    trees.fork()
    put(trees.ours, ".sharedroot-tmp.0123456789abcdef", "half written\n")
    plan = trees.plan()
    assert plan.changes == ()
    assert any("interrupted merge" in n for n in plan.notes)


# --- journal, resume, undo ------------------------------------------------------------------


def test_journal_records_the_plan_and_undo_restores_ours(trees: Trees, tmp_path: Path) -> None:
    build_mixed(trees)
    original = snap(trees.ours)
    journal = tmp_path / "merge.json"
    plan = trees.plan()
    apply_merge(plan, trees.theirs, trees.ours, journal=journal)
    data = json.loads(journal.read_text())
    assert data["state"] == "done"
    assert data["changes"] == plan.to_json()
    assert data["done"] == list(range(len(plan.changes)))
    backup = default_backup(journal)
    assert stat.S_IMODE(backup.stat().st_mode) == 0o700  # copies of /etc: shadow too
    merged = snap(trees.ours)
    # Applying with the finished journal again is a no-op.
    apply_merge(plan, trees.theirs, trees.ours, journal=journal)
    assert snap(trees.ours) == merged
    undone = undo_merge(journal, trees.ours)
    assert undone == Plan.from_json(plan.to_json(), plan.notes)
    assert snap(trees.ours) == original
    # Undo can itself be repeated; a journal that was undone is not applied again.
    undo_merge(journal, trees.ours)
    assert snap(trees.ours) == original
    with pytest.raises(RefusedError):
        apply_merge(plan, trees.theirs, trees.ours, journal=journal)


@needs_root
def test_undo_restores_directory_metadata(trees: Trees, tmp_path: Path) -> None:
    put(trees.base, "d/f")
    trees.fork()
    os.chmod(trees.theirs / "d", 0o700)
    os.chown(trees.theirs / "d", 3, 3)
    original = snap(trees.ours)
    journal = tmp_path / "j.json"
    apply_merge(trees.plan(), trees.theirs, trees.ours, journal=journal)
    assert stat.S_IMODE((trees.ours / "d").stat().st_mode) == 0o700
    undo_merge(journal, trees.ours)
    assert snap(trees.ours) == original


def test_journal_guards(trees: Trees, tmp_path: Path) -> None:
    build_mixed(trees)
    journal = tmp_path / "j.json"
    plan = trees.plan()
    apply_merge(plan, trees.theirs, trees.ours, journal=journal)
    other = Plan(plan.changes[:1])
    with pytest.raises(RefusedError, match="another plan"):
        apply_merge(other, trees.theirs, trees.ours, journal=journal)
    with pytest.raises(RefusedError, match="is for ours"):
        resume_merge(journal, trees.theirs, trees.base)
    with pytest.raises(InputError):
        apply_merge(plan, trees.theirs, trees.ours, backup=tmp_path / "b")
    with pytest.raises(InputError):
        resume_merge(tmp_path / "missing.json", trees.theirs, trees.ours)
    # A second merge on the same journal while one runs (here: holds its lock) is refused.
    with open(tmp_path / "j.json.lock") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(RefusedError, match="another merge"):
            resume_merge(journal, trees.theirs, trees.ours)
        with pytest.raises(RefusedError, match="another merge"):
            undo_merge(journal, trees.ours)


def make_big(trees: Trees, files: int) -> None:
    """Many changes of every kind, so an apply can be stopped in the middle."""
    for i in range(files):
        put(trees.base, f"d{i % 10}/f{i:04d}", f"base {i}\n" * 20, mode=0o644)
    trees.fork()
    for i in range(files):
        rel = f"d{i % 10}/f{i:04d}"
        if i % 10 == 0:
            (trees.theirs / rel).unlink()
        elif i % 10 == 1:
            put(trees.ours, rel, f"local {i}\n")
            put(trees.theirs, rel, f"gold {i}\n", mode=0o600)
        elif i % 10 == 2:
            put(trees.ours, rel, f"local {i}\n")
        else:
            put(trees.theirs, rel, f"gold {i}\n", mode=0o640)
    for i in range(5):
        put(trees.theirs, f"new{i}.d/a", "a\n")
    os.chmod(trees.theirs / "d3", 0o750)


def expected_after(trees: Trees, plan: Plan, tmp_path: Path) -> dict[str, tuple[object, ...]]:
    """ours after an uninterrupted apply, on a copy."""
    ours = copy(trees.ours, tmp_path / "expected")
    apply_merge(plan, trees.theirs, ours, sync=False)
    return snap(ours)


def test_failed_apply_resumes_where_it_stopped(trees: Trees, tmp_path: Path) -> None:
    make_big(trees, 60)
    plan = trees.plan()
    expected = expected_after(trees, plan, tmp_path)
    original = snap(trees.ours)
    journal = tmp_path / "j.json"
    # Take away the gold's file of a change in the middle: the apply stops there.
    stop = next(
        i
        for i, c in enumerate(plan.changes)
        if c.action is Action.TAKE_NEW and i > len(plan.changes) // 2
    )
    hidden = tmp_path / "hidden"
    os.rename(trees.theirs / plan.changes[stop].path, hidden)
    with pytest.raises(OperationError, match="resume_merge"):
        apply_merge(plan, trees.theirs, trees.ours, journal=journal)
    data = json.loads(journal.read_text())
    assert data["state"] == "applying"
    assert max(data["done"]) < stop
    assert snap(trees.ours) not in (original, expected)
    os.rename(hidden, trees.theirs / plan.changes[stop].path)
    # The clone's disk mounted again at the same place: the same path, new inodes.
    os.rename(trees.ours, tmp_path / "unmounted")
    copy(tmp_path / "unmounted", trees.ours)
    assert resume_merge(journal, trees.theirs, trees.ours) == plan
    assert json.loads(journal.read_text())["state"] == "done"
    assert snap(trees.ours) == expected
    undo_merge(journal, trees.ours)
    assert snap(trees.ours) == original


APPLY = """
import json, sys
from pathlib import Path
from sharedroot.guestos.etcmerge import Plan, apply_merge
plan = Plan.from_json(json.loads(Path(sys.argv[1]).read_text()))
apply_merge(plan, Path(sys.argv[2]), Path(sys.argv[3]), journal=Path(sys.argv[4]))
"""


def kill_when(proc: subprocess.Popen[bytes], journal: Path, ready: Callable[[int], bool]) -> int:
    """SIGKILL proc as soon as the journal shows `ready(done)`; the count seen then."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            data = json.loads(journal.read_text())
        except (FileNotFoundError, ValueError):
            data = None
        if data is not None and (data["state"] == "done" or ready(len(data["done"]))):
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            assert data["state"] != "done", "the apply finished before it could be killed"
            return len(data["done"])
        if proc.poll() is not None:
            pytest.fail(f"the apply ended by itself: {proc.returncode}")
        time.sleep(0.0005)
    proc.kill()
    pytest.fail("the apply did not progress")


@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.75])
def test_sigkill_mid_apply_then_resume_and_undo(
    trees: Trees, tmp_path: Path, fraction: float
) -> None:
    make_big(trees, 200)
    plan = trees.plan()
    assert len(plan.changes) > 150
    expected = expected_after(trees, plan, tmp_path)
    original = snap(trees.ours)
    spare = copy(trees.ours, tmp_path / "spare")
    journal = tmp_path / "j.json"
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(plan.to_json()))
    argv = [sys.executable, "-c", APPLY, plan_file, trees.theirs, trees.ours, journal]
    proc = subprocess.Popen([str(a) for a in argv])
    at = kill_when(proc, journal, lambda done: done >= fraction * len(plan.changes))
    assert at < len(plan.changes)
    resume_merge(journal, trees.theirs, trees.ours)
    assert snap(trees.ours) == expected
    undo_merge(journal, trees.ours)
    assert snap(trees.ours) == original

    # Killed again, and this time undone straight from the interrupted state.
    run(["rm", "-r", trees.ours, journal, default_backup(journal)])
    os.rename(spare, trees.ours)
    proc = subprocess.Popen([str(a) for a in argv])
    kill_when(proc, journal, lambda done: done >= fraction * len(plan.changes))
    undo_merge(journal, trees.ours)
    assert snap(trees.ours) == original


# --- hostile trees -------------------------------------------------------------------------


def test_symlinks_in_ours_are_never_written_through(trees: Trees, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    put(outside, "secret", "do not touch\n")
    put(trees.base, "x/y", "base\n")
    put(trees.base, "f", "base\n")
    link(trees.base, "l", str(outside / "secret"))
    trees.fork()
    put(trees.theirs, "x/y", "gold\n")
    put(trees.theirs, "x/new", "gold\n")
    put(trees.theirs, "f", "gold\n")
    link(trees.theirs, "l", "elsewhere")
    link(trees.theirs, "added-link", str(outside / "secret"))
    run(["rm", "-r", trees.ours / "x"])
    link(trees.ours, "x", str(outside))  # ours/x -> /outside
    link(trees.ours, "f", str(outside / "secret"))  # ours/f -> /outside/secret
    before = snap(outside, times=True)
    plan = trees.merge()
    assert actions(plan) == {
        "added-link": Action.ADD,
        "f": Action.KEEP_BOTH,
        "l": Action.TAKE_NEW,
        "x": Action.KEEP_BOTH,
    }
    assert snap(outside, times=True) == before
    assert os.readlink(trees.ours / "x") == str(outside)
    assert os.readlink(trees.ours / "f") == str(outside / "secret")
    assert os.readlink(trees.ours / "l") == "elsewhere"  # the link replaced, not its target
    assert os.readlink(trees.ours / "added-link") == str(outside / "secret")
    assert (trees.ours / ("x" + NEW_SUFFIX) / "new").read_text() == "gold\n"


def test_directory_swapped_for_a_symlink_after_planning_is_refused(
    trees: Trees, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    put(trees.base, "d/f", "base\n")
    trees.fork()
    put(trees.theirs, "d/f", "gold\n")
    put(trees.theirs, "d/g", "gold\n")
    plan = trees.plan()
    run(["rm", "-r", trees.ours / "d"])
    link(trees.ours, "d", str(outside))
    with pytest.raises(OperationError, match="not a plain directory"):
        apply_merge(plan, trees.theirs, trees.ours, journal=tmp_path / "j.json")
    assert list(outside.iterdir()) == []
    assert list(default_backup(tmp_path / "j.json").iterdir()) == []


def test_symlinked_roots_are_refused(trees: Trees, tmp_path: Path) -> None:
    trees.fork()
    link(tmp_path, "ours-link", str(trees.ours))
    with pytest.raises(InputError, match="not a plain directory"):
        plan_merge(trees.base, trees.theirs, tmp_path / "ours-link")
