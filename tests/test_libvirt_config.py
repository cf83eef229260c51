"""The libvirt backend's settings: `init --host ... --pool ...` and [libvirt] in site.toml."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import Ran, tree_hashes
from sharedroot.errors import InputError
from sharedroot.store.config import SITE_FILE, load_config, make_config, render_config
from sharedroot.workflows.context import Site

HOSTS = ["qemu:///system", "qemu+tcp://127.0.0.1:16510/system", "qemu+ssh://root@HostA/system"]


def test_site_toml_round_trip(tmp_path: Path) -> None:
    config = make_config(
        {"backend": "libvirt", "libvirt_hosts": HOSTS, "libvirt_pool": "/srv/sharedroot-pool"}
    )
    assert config.libvirt.hosts == (*HOSTS[:2], "qemu+ssh://root@hosta/system")
    assert config.libvirt.pool == "/srv/sharedroot-pool"
    path = tmp_path / SITE_FILE
    path.write_text(render_config(config))
    assert "\n[libvirt]\nhosts = [" in path.read_text()
    assert load_config(path) == config
    # other backends write no [libvirt] table and hold no libvirt settings
    local = make_config({})
    assert "[libvirt]" not in render_config(local)
    assert local.libvirt.hosts == () and local.libvirt.pool == ""


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--backend", "libvirt", "--pool", "/srv/p"], "--host: the libvirt backend needs"),
        (["--backend", "libvirt", "--host", "qemu:///system"], "--pool: the libvirt backend"),
        (["--host", "qemu:///system"], "--host: only the libvirt backend takes it, not local"),
        (["--backend", "zvm", "--pool", "/srv/p"], "--pool: only the libvirt backend"),
        (["--backend", "libvirt", "--host", "qemu:///session", "--pool", "/p"], "qemu:///session"),
        (["--backend", "libvirt", "--host", "qemu+tcp://h/system?x=1", "--pool", "/p"], "--host"),
        (
            [
                "--backend",
                "libvirt",
                "--host",
                "qemu+ssh://a/system",
                "--host",
                "qemu+ssh://A/system",
            ],
            "named twice",
        ),
        (["--backend", "libvirt", "--host", "qemu:///system", "--pool", "p"], "--pool = 'p'"),
        (["--backend", "libvirt", "--host", "qemu:///system", "--pool", "/"], "not /"),
        (["--backend", "libvirt", "--host", "qemu:///system", "--pool", "/a/../b"], "--pool"),
        (["--backend", "libvirt", "--host", "qemu:///system", "--pool", "/a\n"], "--pool"),
    ],
)
def test_bad_init_arguments_write_nothing(
    home: Path, cli: Callable[..., Ran], args: list[str], words: str
) -> None:
    ran = cli("init", *args)
    assert ran.code == 2
    lines = ran.err.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], ran.err
    assert not home.exists()


def test_store_stays_off_the_pool(tmp_path: Path, cli: Callable[..., Ran]) -> None:
    home = tmp_path / "pool" / "site"
    pool = tmp_path / "pool"
    ran = cli(
        "init",
        "--backend",
        "libvirt",
        "--host",
        "qemu:///system",
        "--pool",
        str(pool),
        home_dir=home,
    )
    assert ran.code == 2
    assert "must stay with the controller" in ran.err
    assert not home.exists()


GONE = "qemu+tcp://127.0.0.1:1/system"  # nothing listens on port 1


def libvirt_init(cli: Callable[..., Ran], pool: Path, home: Path | None = None) -> Ran:
    return cli("init", "--backend", "libvirt", "--host", GONE, "--pool", str(pool), home_dir=home)


def test_init_needs_the_pool_mounted_and_writes_nothing_without(
    tmp_path: Path, home: Path, cli: Callable[..., Ran]
) -> None:
    ran = libvirt_init(cli, tmp_path / "not-mounted")
    assert ran.code == 1
    assert "not a directory on this controller; mount the shared storage" in ran.err
    assert not home.exists() and not (tmp_path / "not-mounted").exists()


def test_images_live_in_the_pool_the_store_with_the_controller(
    tmp_path: Path, home: Path, cli: Callable[..., Ran]
) -> None:
    pool = tmp_path / "pool"
    pool.mkdir()
    assert libvirt_init(cli, pool).code == 0  # init asks no host: nothing can use its disks
    assert (pool / "disks" / "S10GOLD" / "21B1.img").is_file()
    assert (home / "state.db").is_file() and not list(home.rglob("*.img"))
    assert (pool / ".sharedroot-store").read_text().strip() == str(home.resolve())
    # A second site cannot take the same pool: it would write over the first one's images.
    before = tree_hashes(pool)
    ran = libvirt_init(cli, pool, tmp_path / "other")
    assert ran.code == 1 and f"holds the images of the site whose store is {home}" in ran.err
    assert tree_hashes(pool) == before
    # Every write asks every host first: one that cannot be reached refuses it, by name.
    ran = cli("define", "LNX226", "--rw")
    assert ran.code == 1
    assert f"host {GONE} cannot be reached" in ran.err and "libvirt:" not in ran.err
    assert not (pool / "disks" / "LNX226").exists()
    assert tree_hashes(pool) == before
    doctor = cli("--json", "doctor")
    assert doctor.code == 1
    rows = {r["program"]: r for r in doctor.json()["programs"]}  # type: ignore[index]
    assert rows[GONE]["found"] is False and rows[str(pool)]["found"] is True
    assert "qemu-system-x86_64" not in rows  # the hosts run the guests, not the controller


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["define", "LNX226", "--rw", "--host", "qemu:///system"], "--host: the local backend"),
        (["move", "LNX226", "--to-host", "qemu:///system"], "--to-host: the local backend"),
    ],
)
def test_hosts_are_the_libvirt_backends(
    site: Site, home: Path, cli: Callable[..., Ran], args: list[str], words: str
) -> None:
    if args[0] == "move":
        assert cli("define", "LNX226", "--rw").code == 0
    before = tree_hashes(home / "disks"), cli("--json", "guests").out
    ran = cli(*args)
    assert ran.code == 2 and words in ran.err, ran.err
    assert (tree_hashes(home / "disks"), cli("--json", "guests").out) == before


BROKEN = [
    ('hosts = ["qemu:///system"]\n', "[libvirt] pool: the libvirt backend needs"),
    ('pool = "/srv/p"\n', "[libvirt] hosts: the libvirt backend needs at least one host URI"),
    ('hosts = "qemu:///system"\npool = "/srv/p"\n', "[libvirt] hosts = 'qemu:///system'"),
    ('hosts = ["qemu:///system?socket=/x"]\npool = "/srv/p"\n', "[libvirt] hosts"),
    ('hosts = [1]\npool = "/srv/p"\n', "must be a string"),
    ('hosts = ["qemu:///system"]\npool = "/srv/../etc"\n', "[libvirt] pool"),
    ('hosts = ["qemu:///system"]\npool = "/srv/p"\nlock = "lockd"\n', "unknown key 'lock'"),
]


@pytest.mark.parametrize(("table", "words"), BROKEN)
def test_broken_libvirt_table_is_refused(
    site: Site, home: Path, cli: Callable[..., Ran], table: str, words: str
) -> None:
    path = home / SITE_FILE
    text = path.read_text().replace('backend = "local"', 'backend = "libvirt"')
    path.write_text(text + "\n[libvirt]\n" + table)
    before = tree_hashes(home)
    ran = cli("guests")
    assert ran.code == 2
    lines = ran.err.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and words in lines[0], ran.err
    assert tree_hashes(home) == before
    with pytest.raises(InputError):
        load_config(path)


def test_libvirt_table_on_a_local_site_is_refused(site: Site, home: Path) -> None:
    path = home / SITE_FILE
    path.write_text(path.read_text() + '\n[libvirt]\nhosts = ["qemu:///system"]\n')
    with pytest.raises(InputError, match=r"\[libvirt\] hosts: only the libvirt backend takes it"):
        load_config(path)
