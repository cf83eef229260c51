"""`sharedroot serve` on loopback with a real store: views, auth, jobs run by real processes."""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from apikit import Server, sse, token
from conftest import Ran, fill_disk, sparse_hash
from sharedroot.model.access import JobStatus
from sharedroot.store.serverdb import ServerStore
from sharedroot.workflows.context import Site


@pytest.fixture
def fleet(site: Site, cli: Callable[..., Ran]) -> Site:
    """The paper's site with two read-only clones and a read-write one defined."""
    for name, ip in (("LNX227", "227"), ("LNX242", "242")):
        args = ["define", name, "--ro", "--hostname", name.lower(), "--ip", f"10.0.2.{ip}"]
        assert cli(*args).code == 0
    assert cli("define", "LNX226", "--rw").code == 0
    return site


@pytest.fixture
def tokens(fleet: Site) -> dict[str, str]:
    return {r: token(fleet.home, f"{r}1", r) for r in ("viewer", "operator", "admin")}


@pytest.fixture
def server(fleet: Site) -> Iterator[Server]:
    s = Server(fleet.home, env={"SHAREDROOT_LOCK_WAIT": "60"}).start()
    yield s
    s.stop()


@pytest.fixture
def site_lock(fleet: Site) -> Iterator[Callable[[], None]]:
    """The site lock, held here: a writing job waits for it (as a second CLI would)."""
    (fleet.home / "run").mkdir(exist_ok=True)
    fd = os.open(fleet.home / "run" / "site.lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    released = []

    def release() -> None:
        if not released:
            os.close(fd)
            released.append(True)

    yield release
    release()


def images(site: Site) -> dict[str, str]:
    return {str(p): sparse_hash(p) for p in sorted((site.home / "disks").rglob("*.img"))}


READ_PATHS = ["/site", "/pipeline", "/guests", "/guests/LNX227", "/slots", "/linked", "/journal"]


def test_reads_need_a_token_and_a_viewer_may_read(server: Server, tokens: dict[str, str]) -> None:
    for path in READ_PATHS:
        none = server.call("GET", "/api/v1" + path)
        assert none.status == 401, path
        assert none.headers.get("www-authenticate") == "Bearer"
        assert server.call("GET", "/api/v1" + path, token="sr_" + "x" * 43).status == 401
        assert (
            server.call("GET", "/api/v1" + path, headers={"Authorization": "Basic x"}).status == 401
        )
        assert server.call("GET", "/api/v1" + path, token=tokens["viewer"]).status == 200, path


def test_views_show_the_site(server: Server, tokens: dict[str, str]) -> None:
    get = lambda path: server.call("GET", "/api/v1" + path, token=tokens["viewer"])  # noqa: E731
    guests = {g["name"]: g for g in get("/guests").json()}
    assert {"LNX227", "LNX242", "LNX226", "S10RWMNT", "S10GOLD2"} <= set(guests)
    assert guests["LNX227"]["role"] == "ro"
    one = get("/guests/lnx227").json()
    assert one["name"] == "LNX227"
    assert one["parm"]["values"]["hostip"] == "10.0.2.227"
    assert "Hostname=lnx227" in one["parm"]["text"]
    assert get("/guests/LNX999").status == 404
    assert get("/guests/bad%21name").status == 404
    site = get("/site").json()
    assert site["guests"]["gold"] == ["S10GOLD", "S10GOLD2"]
    assert [d["address"] for d in site["layout"]][:2] == ["01B0", "01B1"]
    stages = [s["stage"] for s in get("/pipeline").json()["stages"]]
    assert stages == ["maintenance", "test", "staging", "gold 1", "gold 2"]
    assert [s["holder"] for s in get("/slots").json()] == ["S10GOLD", "S10GOLD2"]
    assert get("/linked").json()["holders"][0]["label"] == "TEST"
    ops = [j["operation"] for j in get("/journal").json()]
    assert ops.count("define") == 3


def test_a_viewer_is_refused_every_action(server: Server, tokens: dict[str, str]) -> None:
    v = tokens["viewer"]
    for path in ["/guests/LNX227/start", "/guests/LNX227/verify", "/pipeline/mnt2tst"]:
        got = server.call("POST", "/api/v1" + path, token=v)
        assert got.status == 403, path
        assert "operator" in got.json()["detail"]
    assert server.call("GET", "/api/v1/tokens", token=tokens["operator"]).status == 403


def test_job_lifecycle_with_live_events(
    fleet: Site, server: Server, tokens: dict[str, str]
) -> None:
    fill_disk(fleet, "S10RWMNT", "01B1", "maintenance")
    op = tokens["operator"]
    got = server.call("POST", "/api/v1/pipeline/mnt2tst", token=op)
    assert got.status == 202
    job = got.json()["id"]
    assert got.headers["location"] == f"/api/v1/jobs/{job}"
    assert got.json()["user"] == "operator1"
    events = sse(server, f"/api/v1/jobs/{job}/events", op)
    steps = [d["text"] for kind, d, _ in events if kind == "step"]
    assert steps[0] == "copy S10RWMNT 01B0 to S10RWTST 01B0"
    assert len(steps) == 7
    assert any(kind == "progress" and d["done"] == d["total"] for kind, d, _ in events)
    assert events[-1][0] == "done"
    assert events[-1][1]["status"] == "succeeded"
    done = server.wait_job(job, op)
    assert done["exit_code"] == 0
    assert done["command"] == ["sharedroot", "--json", "mnt2tst", "--yes"]
    (entry,) = done["steps"]
    assert entry["operation"] == "mnt2tst"
    assert all(s["done"] for s in entry["plan"])
    log = server.call("GET", f"/api/v1/jobs/{job}/log", token=tokens["viewer"]).body.decode()
    assert "> copy S10RWMNT 01B8 to S10RWTST 01B8" in log
    tst, mnt = (fleet.home / "disks" / g / "01B1.img" for g in ("S10RWTST", "S10RWMNT"))
    assert sparse_hash(tst) == sparse_hash(mnt)  # really copied
    # a reconnecting client (Last-Event-ID) gets only what it has not seen
    rest = sse(server, f"/api/v1/jobs/{job}/events", op)
    assert len(rest) == len(events)
    listed = server.call("GET", "/api/v1/jobs?status=succeeded", token=op).json()
    assert [j["id"] for j in listed] == [job]


def test_dry_run_answers_the_plan_and_writes_nothing(
    fleet: Site, server: Server, tokens: dict[str, str]
) -> None:
    before = images(fleet)
    op = tokens["operator"]
    got = server.call("POST", "/api/v1/pipeline/mnt2gold?dry_run=true", token=op)
    assert got.status == 200
    assert got.json()["dry_run"] is True
    assert got.json()["steps"][0].startswith("copy S10RWMNT 01B0 to S10GOLD")
    refused = server.call("POST", "/api/v1/guests/LNX227/verify?dry_run=true", token=op)
    assert refused.status == 400
    assert "no dry run" in refused.json()["detail"]
    assert server.call("GET", "/api/v1/jobs", token=op).json() == []
    assert images(fleet) == before


@pytest.mark.parametrize(
    ("path", "body", "status", "says"),
    [
        ("/guests/LNX227/clonero", {"slot": 1}, 400, "no option 'slot'"),
        ("/guests/LNX227/stop", {"timeout": True}, 400, "a string or a number"),
        ("/guests/LNX227/stop", {"timeout": "-5"}, 400, "timeout"),
        ("/guests/LNX227/stop", {"home": "/etc"}, 400, "no option 'home'"),
        ("/guests/LNX227/stop", {"yes": True}, 400, "no option 'yes'"),
        ("/guests/LNX227/migrate", {"slot": "1; rm -rf /"}, 400, "slot"),
        ("/guests/bad!name/start", None, 400, "A-Z 0-9 @ # $"),
        ("/guests/LNX227/format", None, 422, ""),
        ("/pipeline/install", None, 422, ""),
        ("/guests/LNX227/start", [1, 2], 422, ""),
    ],
)
def test_bad_action_input_is_refused_before_any_job(
    server: Server,
    tokens: dict[str, str],
    path: str,
    body: object,
    status: int,
    says: str,
) -> None:
    got = server.call("POST", "/api/v1" + path, token=tokens["operator"], body=body)
    assert got.status == status, got.body
    assert says in str(got.json()["detail"])
    assert server.call("GET", "/api/v1/jobs", token=tokens["operator"]).json() == []


def test_a_job_the_cli_would_refuse_fails_with_its_words(
    fleet: Site,
    server: Server,
    tokens: dict[str, str],
    lock_holders: Callable[[Path, str], None],
) -> None:
    lock_holders(fleet.home, "S10RWTST")  # the test guest is logged on
    before = images(fleet)
    op = tokens["operator"]
    job = server.call("POST", "/api/v1/pipeline/mnt2tst", token=op).json()["id"]
    done = server.wait_job(job, op)
    assert done["status"] == "failed"
    assert done["exit_code"] == 1
    assert done["message"] == "Error: S10RWTST user ID must be logged off"  # the paper's words
    assert images(fleet) == before


def test_a_second_writer_waits_for_the_first(
    server: Server, tokens: dict[str, str], site_lock: Callable[[], None]
) -> None:
    """Jobs are serialized by the CLI's own site lock: one waits while another writes."""
    op = tokens["operator"]
    job = server.call("POST", "/api/v1/pipeline/mnt2tst", token=op).json()["id"]
    server.wait_status(job, op, "running")
    time.sleep(1)
    assert server.call("GET", f"/api/v1/jobs/{job}", token=op).json()["status"] == "running"
    site_lock()
    assert server.wait_job(job, op)["status"] == "succeeded"


def test_a_server_restart_neither_kills_nor_forgets_a_job(
    fleet: Site, server: Server, tokens: dict[str, str], site_lock: Callable[[], None]
) -> None:
    op = tokens["operator"]
    job = server.call("POST", "/api/v1/pipeline/mnt2tst", token=op).json()["id"]
    server.wait_status(job, op, "running")
    # A browser follows the job: its open event stream must not keep the server up.
    follower = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    follower.sendall(
        f"GET /api/v1/jobs/{job}/events HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {op}\r\n\r\n".encode()
    )
    assert follower.recv(4096).startswith(b"HTTP/1.1 200")
    server.stop(signal.SIGINT)  # Ctrl-C; stop() gives it 30 s
    follower.close()
    row = ServerStore(fleet.home).job(job)
    assert row is not None and row.status is JobStatus.RUNNING
    assert row.runner is not None
    os.kill(row.runner, 0)  # the runner lives on
    server.start()
    assert server.call("GET", f"/api/v1/jobs/{job}", token=op).json()["status"] == "running"
    site_lock()
    assert server.wait_job(job, op)["status"] == "succeeded"


def test_a_job_accepted_but_never_started_is_started_by_the_next_server(
    fleet: Site, tokens: dict[str, str]
) -> None:
    store = ServerStore(fleet.home)
    job = store.add_job("mnt2tst", [], ["--json", "mnt2tst", "--yes"], "operator1")
    store.close()
    server = Server(fleet.home).start()
    try:
        assert server.wait_job(job, tokens["viewer"])["status"] == "succeeded"
    finally:
        server.stop()


def test_a_killed_runner_fails_its_job(
    fleet: Site, server: Server, tokens: dict[str, str], site_lock: Callable[[], None]
) -> None:
    op = tokens["operator"]
    job = server.call("POST", "/api/v1/pipeline/mnt2tst", token=op).json()["id"]
    server.wait_status(job, op, "running")
    row = ServerStore(fleet.home).job(job)
    assert row is not None and row.runner is not None and row.child is not None
    os.kill(row.runner, signal.SIGKILL)
    done = server.wait_job(job, op)
    assert done["status"] == "failed"
    assert "runner process ended" in done["message"]
    os.kill(row.child, signal.SIGKILL)  # its command, orphaned, still waits for the lock


def test_cancel_interrupts_the_command(
    fleet: Site, server: Server, tokens: dict[str, str], site_lock: Callable[[], None]
) -> None:
    before = images(fleet)
    op = tokens["operator"]
    job = server.call("POST", "/api/v1/pipeline/mnt2tst", token=op).json()["id"]
    server.wait_status(job, op, "running")
    assert server.call("POST", f"/api/v1/jobs/{job}/cancel", token=tokens["viewer"]).status == 403
    assert server.call("POST", f"/api/v1/jobs/{job}/cancel", token=op).status == 200
    done = server.wait_job(job, op)
    assert done["status"] == "cancelled"
    # 130: the CLI's answer to Ctrl-C; killed by it while still starting up: -SIGINT
    assert done["exit_code"] in (130, -signal.SIGINT)
    again = server.call("POST", f"/api/v1/jobs/{job}/cancel", token=op)
    assert again.status == 409
    assert images(fleet) == before


def test_browser_session_needs_csrf_and_ends_with_its_token(
    server: Server, tokens: dict[str, str]
) -> None:
    assert server.call("POST", "/login", form={"token": "sr_" + "y" * 43}).status == 401
    signed = server.call("POST", "/login", form={"token": tokens["operator"]})
    assert signed.status == 200
    cookie = signed.headers["set-cookie"].split(";")[0]
    assert "httponly" in signed.headers["set-cookie"].lower()
    csrf = signed.json()["csrf"]
    who = server.call("GET", "/api/v1/whoami", headers={"Cookie": cookie}).json()
    assert who == {"name": "operator1", "role": "operator", "session": True}
    bare = server.call("POST", "/api/v1/pipeline/mnt2tst", headers={"Cookie": cookie})
    assert bare.status == 403 and "CSRF" in bare.json()["detail"]
    wrong = {"Cookie": cookie, "X-CSRF-Token": csrf[::-1]}
    assert server.call("POST", "/api/v1/pipeline/mnt2tst", headers=wrong).status == 403
    good = {"Cookie": cookie, "X-CSRF-Token": csrf}
    assert server.call("POST", "/api/v1/pipeline/mnt2tst?dry_run=true", headers=good).status == 200
    forged = cookie[:-3] + ("AAA" if not cookie.endswith("AAA") else "BBB")
    assert server.call("GET", "/api/v1/whoami", headers={"Cookie": forged}).status == 401
    admin = tokens["admin"]
    assert server.call("DELETE", "/api/v1/tokens/operator1", token=admin).status == 204
    assert server.call("GET", "/api/v1/whoami", headers={"Cookie": cookie}).status == 401


def test_tokens_through_the_api(server: Server, tokens: dict[str, str]) -> None:
    admin = tokens["admin"]
    made = server.call("POST", "/api/v1/tokens", token=admin, body={"name": "ci", "role": "viewer"})
    assert made.status == 201
    secret = made.json()["token"]
    assert server.call("GET", "/api/v1/whoami", token=secret).json()["role"] == "viewer"
    names = [t["name"] for t in server.call("GET", "/api/v1/tokens", token=admin).json()]
    assert names == ["admin1", "ci", "operator1", "viewer1"]
    assert all("token" not in t for t in server.call("GET", "/api/v1/tokens", token=admin).json())
    dup = server.call("POST", "/api/v1/tokens", token=admin, body={"name": "ci", "role": "admin"})
    assert dup.status == 409
    bad = server.call("POST", "/api/v1/tokens", token=admin, body={"name": "../x", "role": "admin"})
    assert bad.status == 400
    assert server.call("DELETE", "/api/v1/tokens/ci", token=admin).status == 204
    assert server.call("GET", "/api/v1/whoami", token=secret).status == 401
    assert server.call("DELETE", "/api/v1/tokens/ci", token=admin).status == 409


def test_openapi_schema_names_the_contract(server: Server) -> None:
    schema = server.call("GET", "/openapi.json").json()
    paths = set(schema["paths"])
    for p in [
        "/api/v1/guests",
        "/api/v1/slots",
        "/api/v1/jobs/{job}",
        "/api/v1/guests/{name}/{action}",
        "/api/v1/pipeline/{op}",
    ]:
        assert p in paths, p


def test_token_cli_refuses_bad_input_and_shows_the_token_once(
    fleet: Site, cli: Callable[..., Ran]
) -> None:
    made = cli("token", "add", "robot", "--role", "operator")
    assert made.code == 0
    secret = made.out.split()[-1]
    assert secret.startswith("sr_") and len(secret) == 46
    listed = cli("--json", "token", "list").json()
    assert isinstance(listed, list)
    assert [t["name"] for t in listed] == ["robot"]
    assert secret not in (fleet.home / "server" / "server.db").read_bytes().decode(errors="ignore")
    assert cli("token", "add", "robot", "--role", "viewer").code == 1
    assert cli("token", "add", "Robot", "--role", "viewer").code == 2
    assert cli("token", "add", "x", "--role", "root").code == 2
    assert cli("token", "revoke", "nobody").code == 1
    assert cli("token", "list", "robot").code == 2
    assert cli("token", "revoke", "robot").code == 0
    assert cli("--json", "token", "list").json() == []


def test_metrics_and_inventory_for_a_viewer(server: Server, tokens: dict[str, str]) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    assert server.call("GET", "/metrics").status == 401
    got = server.call("GET", "/metrics", token=tokens["viewer"])
    assert got.status == 200
    assert got.headers["content-type"].startswith("text/plain; version=0.0.4")
    found = {f.name: f for f in text_string_to_metric_families(got.body.decode())}
    assert [s.value for s in found["sharedroot_jobs_running"].samples] == [0.0]
    up = {s.labels["guest"]: s.value for s in found["sharedroot_guest_up"].samples}
    assert up["LNX227"] == 0.0
    inv = server.call("GET", "/api/v1/inventory", token=tokens["viewer"]).json()
    assert "LNX227" in inv["role_ro_clone"]["hosts"]
    assert inv["_meta"]["hostvars"]["LNX227"]["ansible_host"] == "10.0.2.227"


@pytest.mark.parametrize(
    ("asked", "goes"),
    [
        ("/guests?role=ro", "/guests?role=ro"),
        ("/jobs/3", "/jobs/3"),
        ("//evil.example", "/"),
        ("/\\evil.example", "/"),
        ("https://evil.example/", "/"),
        ("/a\r\nSet-Cookie: x=1", "/"),
        ("javascript:alert(1)", "/"),
    ],
)
def test_sign_in_sends_a_browser_only_to_a_page_of_this_site(asked: str, goes: str) -> None:
    from sharedroot.api.dashboard import safe_next

    assert safe_next(asked) == goes


@pytest.mark.parametrize(
    "args",
    [
        ["serve", "--host", "1.2.3"],
        ["serve", "--socket", "/tmp/x;y"],
        ["token", "add", "a/b", "--role", "admin"],
    ],
)
def test_refused_server_arguments_make_no_server_files(
    site: Site, cli: Callable[..., Ran], args: list[str]
) -> None:
    assert cli(*args).code == 2
    assert not (site.home / "server").exists()


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["token", "list", "--json"], 0, "[]"),
        (["token", "revoke", "ops"], 1, "token ops: no such token"),
        (["rollout", "list", "--json"], 0, "[]"),
        (["rollout", "show", "7"], 1, "rollout 7: no such rollout"),
        (["rollout", "pause", "7"], 1, "rollout 7: no such rollout"),
    ],
)
def test_readers_leave_a_site_that_never_served_untouched(
    site: Site, cli: Callable[..., Ran], args: list[str], code: int, says: str
) -> None:
    ran = cli(*args)
    assert ran.code == code
    assert says in ran.out + ran.err
    assert not (site.home / "server").exists()
