"""Bad input: one clear line naming the file, key and rule; exit 2; nothing written."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import Ran, tree_hashes
from sharedroot.store.config import SITE_FILE, load_config, make_config, render_config
from sharedroot.workflows.context import Site

# (what to do to a good site.toml, words the error must contain)
BROKEN_FILES = [
    (lambda t: t + "\n[site\n", "malformed TOML"),
    (lambda t: t.replace("[site]", "[site]\nflavour = 1"), "unknown key 'flavour'"),
    (lambda t: t + "\n[extras]\nx = 1\n", "unknown key 'extras'"),
    (lambda t: t.replace('size = "64M"', 'size = "64M"\ncolour = "red"', 1), "unknown key"),
    (lambda t: t + '\n[disks.1B0]\nmount = "/x"\nfs = "ext2"\nsize = "8M"\n', "overlaps"),
    (lambda t: t + '\n[disks.11B0]\nmount = "/x"\nfs = "ext2"\nsize = "8M"\n', "gold sets"),
    (lambda t: t + '\n[disks.0191]\nmount = "/x"\nfs = "ext2"\nsize = "8M"\n', "admin disk"),
    (lambda t: t + '\n[disks.1FFFF]\nmount = "/x"\nfs = "ext2"\nsize = "8M"\n', "0000-FFFF"),
    (lambda t: t + '\n[disks.0200]\nmount = "/usr"\nfs = "ext2"\nsize = "8M"\n', "twice"),
    (lambda t: t.replace('size = "64M"', 'size = "12Q"', 1), "size"),
    (lambda t: t.replace('size = "64M"', 'size = "1000"', 1), "multiple of 4 KiB"),
    (lambda t: t.replace('size = "64M"', "size = 0", 1), "positive"),
    (lambda t: t.replace('maintenance = "S10RWMNT"', 'maintenance = "S10-RWMNT"'), "A-Z"),
    (lambda t: t.replace('test = "S10RWTST"', 'test = "S10RWTSTXX"'), "1-8"),
    (lambda t: t.replace('test = "S10RWTST"', 'test = "S10RWMNT"'), "two roles"),
    (lambda t: t.replace("gold_slots = 2", "gold_slots = 0"), "gold_slots"),
    (lambda t: t.replace('backend = "local"', 'backend = "vmware"'), "backend"),
    (lambda t: t.replace('fs = "ext4"', 'fs = "ntfs"', 1), "fs"),
    (lambda t: t.replace('fs = "ext4"', 'fs = "xfs"', 1), "mke2fs -d"),
    (lambda t: t.replace('"/opt"', '"/../../tmp/x"'), "[disks.01B8] mount"),
    (lambda t: t.replace('"/opt"', '"/opt\\n/etc"'), "[disks.01B8] mount"),
    (lambda t: t.replace('"/opt"', '"/usr/"'), "did you mean '/usr'"),
    (lambda t: t + '\n[disks.0x1b0]\nmount = "/x"\nfs = "ext2"\nsize = "8M"\n', "overlaps"),
    (lambda t: t.replace('size = "64M"', 'size = "99999999999T"', 1), "too large"),
    (lambda t: t.replace('test = "S10RWTST"', 'test = "s10rwmnt"'), "two roles"),
]


@pytest.mark.parametrize(("mutate", "words"), BROKEN_FILES)
def test_broken_site_file_is_refused_and_nothing_written(
    site: Site, home: Path, cli: Callable[..., Ran], mutate: Callable[[str], str], words: str
) -> None:
    path = home / SITE_FILE
    path.write_text(mutate(path.read_text()))
    before = tree_hashes(home)
    for args in (["define", "LNX226", "--rw"], ["guests"], ["mnt2tst", "--yes"]):
        ran = cli(*args)
        assert ran.code == 2, ran.err
        lines = ran.err.strip().splitlines()
        assert len(lines) == 1, ran.err
        assert str(path) in lines[0] and words in lines[0], lines[0]
    assert tree_hashes(home) == before


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["init", "--prefix", "TOOLONG"], "prefix"),
        (["init", "--prefix", "S-1"], "prefix"),
        (["init", "--gold-slots", "x"], "gold_slots"),
        (["init", "--size", "/usr=12Q"], "--size /usr"),
        (["init", "--size", "/nowhere=1G"], "no such mount point"),
        (["init", "--size", "usr"], "MOUNT=SIZE"),
        (["init", "--backend", "vmware"], "backend"),
        (["init", "--layout", "mine"], "is not paper and no such file"),
    ],
)
def test_bad_init_arguments_write_nothing(
    home: Path, cli: Callable[..., Ran], args: list[str], words: str
) -> None:
    ran = cli(*args)
    assert ran.code == 2
    assert words in ran.err
    assert not home.exists()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["define", "LNX-226", "--rw"], "A-Z"),
        (["define", "LNX226789", "--rw"], "1-8"),
        (["define", "LNX226", "--rw", "--hostname", "a;reboot", "--ip", "10.0.0.5"], "hostname"),
        (["define", "LNX226", "--rw", "--hostname", "lnx", "--ip", "300.1.1.1"], "--ip"),
        (["define", "LNX226", "--rw", "--hostname", "lnx"], "go together"),
        (
            [
                "define",
                "LNX226",
                "--rw",
                "--hostname",
                "l",
                "--ip",
                "10.0.0.5",
                "--netmask",
                "1.2.3.4",
            ],
            "netmask",
        ),
        (
            [
                "define",
                "LNX226",
                "--rw",
                "--hostname",
                "l",
                "--ip",
                "10.0.0.5",
                "--gateway",
                "9.9.9.9",
            ],
            "Gateway",
        ),
        (["define", "LNX226", "--rw", "--hostname", "lnx\n.evil", "--ip", "10.0.0.5"], "hostname"),
        (
            [
                "define",
                "LNX226",
                "--rw",
                "--hostname",
                "l",
                "--ip",
                "10.0.0.5",
                "--netmask",
                "0.0.0.0",
            ],
            "netmask",
        ),
        (["define", "LNX226"], "one of the arguments --rw --ro is required"),
        (["clonerw", "BAD NAME"], "A-Z"),
    ],
)
def test_bad_arguments_write_nothing(
    site: Site, home: Path, cli: Callable[..., Ran], args: list[str], words: str
) -> None:
    before = tree_hashes(home)
    ran = cli(*args)
    assert ran.code == 2, ran.err
    assert words in ran.err
    assert tree_hashes(home) == before


def test_rendered_config_loads_back(tmp_path: Path) -> None:
    config = make_config({"prefix": "D12", "gold_slots": 3}, {"/usr": 2 << 30})
    path = tmp_path / SITE_FILE
    path.write_text(render_config(config))
    loaded = load_config(path)
    assert loaded == config
    assert loaded.guests.maintenance == "D12RWMNT"
    assert loaded.guests.gold == ("D12GOLD", "D12GOLD2", "D12GOLD3")
    assert loaded.layout.get("01B7").size == 2 << 30


def test_init_twice_is_refused(site: Site, home: Path, cli: Callable[..., Ran]) -> None:
    before = tree_hashes(home)
    ran = cli("init")
    assert ran.code == 1 and "exists already" in ran.err
    assert tree_hashes(home) == before


def test_prefix_names_the_guests(home: Path, cli: Callable[..., Ran]) -> None:
    assert cli("init", "--prefix", "D12", "--gold-slots", "3").code == 0
    names = {g["name"] for g in cli("guests", "--json").json()}  # type: ignore[union-attr]
    assert {"D12RWMNT", "D12RWTST", "D12GOLD", "D12GOLD2", "D12GOLD3", "D12ROGLD"} <= names


def test_init_leaves_what_a_store_does_not_use(home: Path, cli: Callable[..., Ran]) -> None:
    """An emulated z/VM's state beside the store ($SHAREDROOT_HOME/zvmsim) stays as it is;
    a directory a store uses (another store's disks, say) is refused."""
    (home / "zvmsim").mkdir(parents=True)
    (home / "zvmsim" / "state.json").write_text("{}")
    assert cli("init", "--layout", "paper").code == 0
    assert (home / "zvmsim" / "state.json").read_text() == "{}"
    other = home.parent / "other"
    (other / "disks").mkdir(parents=True)
    ran = cli("init", "--layout", "paper", home_dir=other)
    assert ran.code == 1 and "not empty (it holds disks)" in ran.err
    assert [p.name for p in other.iterdir()] == ["disks"]
