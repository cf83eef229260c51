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


def test_not_registered_yet_writes_nothing(home: Path, cli: Callable[..., Ran]) -> None:
    ran = cli("init", "--backend", "libvirt", "--host", "qemu:///system", "--pool", "/srv/p")
    assert ran.code == 2
    assert "the libvirt backend is not available" in ran.err
    assert not home.exists()


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
