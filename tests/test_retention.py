"""What server.db keeps: ended jobs and rollouts outstaying --keep-days go, files too."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from apikit import Server, token
from conftest import Ran
from sharedroot.model.access import JobStatus
from sharedroot.model.rollout import RolloutState
from sharedroot.store import retention
from sharedroot.store.rollouts import RolloutStore
from sharedroot.workflows.context import Site


def _days_ago(days: int) -> str:
    return (datetime.now(UTC) - timedelta(days=days)).isoformat(timespec="seconds")


def _job(store: RolloutStore, ended_days_ago: int | None) -> int:
    """A job with a log and an answer file; ended that long ago (None: still running)."""
    job = store.add_job("mnt2tst", [], ["--json", "mnt2tst", "--yes"], "operator1")
    store.add_event(job, "step", "copying", None, None)
    store.log_path(job).write_text("log\n")
    store.log_path(job).with_suffix(".out").write_text("{}\n")
    if ended_days_ago is not None:
        store.end_job(job, JobStatus.SUCCEEDED, None, 0)
        store.db.execute("UPDATE jobs SET ended=? WHERE id=?", (_days_ago(ended_days_ago), job))
    return job


def _rollout(store: RolloutStore, ended_days_ago: int | None) -> int:
    rid = store.add_rollout(["LNX241"], 1, 1, False, 0, {"clones": ["LNX241"]}, "cli")
    store.clone_log(rid, "LNX241").write_text("migrate\n")
    if ended_days_ago is not None:
        assert store.move(rid, [RolloutState.PENDING], RolloutState.ABORTED)
        store.db.execute("UPDATE rollouts SET ended=? WHERE id=?", (_days_ago(ended_days_ago), rid))
    return rid


@pytest.fixture
def store(site: Site) -> RolloutStore:
    return RolloutStore(site.home)


def test_prune_takes_what_ended_before_the_cutoff_with_its_files(store: RolloutStore) -> None:
    old_job, running, recent_job, newest_job = (_job(store, d) for d in (40, None, 3, 50))
    old_ro, recent_ro, newest_ro = (_rollout(store, d) for d in (40, 3, 60))
    stray = store.log_path(0)  # a file with no row: of a pruning killed halfway
    stray.write_text("left\n")
    pruned = retention.prune(store, retention.cutoff(30))
    assert pruned == retention.Pruned(jobs=1, rollouts=1)
    assert store.job(old_job) is None and store.events(old_job) == []
    assert not store.log_path(old_job).exists()
    assert not store.log_path(old_job).with_suffix(".out").exists()
    assert not stray.exists()
    assert store.rollout(old_ro) is None and store.clones(old_ro) == []
    assert not store.clone_log(old_ro, "LNX241").parent.exists()
    # Still running however old it is; ended within the retention; the newest of each.
    for job in (running, recent_job, newest_job):
        assert store.job(job) is not None and store.log_path(job).exists()
        assert store.events(job) != []
    for rid in (recent_ro, newest_ro):
        assert store.rollout(rid) is not None and store.clone_log(rid, "LNX241").exists()
    assert retention.prune(store, retention.cutoff(30)) == retention.Pruned(0, 0)


def test_a_server_prunes_as_it_starts(site: Site) -> None:
    store = RolloutStore(site.home)
    old, newest = _job(store, 45), _job(store, 45)
    store.close()
    viewer = token(site.home, "viewer1", "viewer")
    server = Server(site.home).start()
    try:
        assert server.call("GET", f"/api/v1/jobs/{old}", token=viewer).status == 404
        assert server.call("GET", f"/api/v1/jobs/{newest}", token=viewer).status == 200
    finally:
        server.stop()


@pytest.mark.parametrize("days", ["-1", "x", "36501", "1.5"])
def test_keep_days_must_be_a_number_of_days(site: Site, cli: Callable[..., Ran], days: str) -> None:
    ran = cli("serve", "--keep-days", days)
    assert ran.code == 2 and "--keep-days" in ran.err
    assert not (site.home / "server").exists()


def test_the_cutoff_is_in_the_stores_time_format() -> None:
    at = datetime(2026, 3, 31, 12, 0, 0, tzinfo=UTC)
    assert retention.cutoff(30, at) == "2026-03-01T12:00:00+00:00"
