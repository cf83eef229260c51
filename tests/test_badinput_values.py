"""Bad values: every value that reaches a file in a guest or the store is refused whole.

Families covered (table -> test):

| family                          | tables / properties                         | through      |
|---------------------------------|---------------------------------------------|--------------|
| site.toml syntax                | RAW_FILES                                   | cli guests   |
| site.toml types, structure      | STRUCTURE, KIND_ACCESS, MOUNT_TYPES         | cli guests   |
| ranges (settings)               | SETTINGS_BAD                                | cli guests   |
| paths / mount points            | MOUNTS_BAD, MOUNTS_GOOD, round-trip property | cli, model   |
| duplicates                      | DUPLICATES, ADDRESS_KEYS (1B0/01B0/0x1b0)   | cli guests   |
| addresses                       | ADDRESSES_BAD/GOOD, ADDRESS_KEYS, property  | model, cli   |
| sizes                           | SIZES_BAD, SIZES_GOOD, parse_size property  | model, cli   |
| guest names                     | GUESTS_BAD, GUEST_ROLES_BAD, property       | model, cli   |
| Unicode that upper-cases or     | GUESTS_BAD, SIZES_BAD, ADDRESSES_BAD (ß, ﬀ, | model, cli   |
| case-folds onto ASCII           | Kelvin sign), case-folding property         |              |
| host names                      | HOSTNAMES_BAD, control-character property   | cli define   |
| IPs, netmasks, gateways, DNS    | IPS_BAD, NETMASKS_BAD/GOOD, GATEWAYS_BAD,   | cli define   |
|                                 | NAMESERVERS_BAD, IDENTITIES_BAD             | model        |
| parm files edited by hand       | PARMS_HOSTILE, PARMS_GOOD, parm property    | model        |
| fs types                        | FS_BAD (xfs refused with its reason)        | cli guests   |
| writers (defence in depth)      | CORRUPT_IDENTITY x WRITERS, INTERFACES_BAD, | guestos      |
|                                 | FSTAB_CORRUPT, FSTAB_EXTRA_BAD              |              |
| Layout built in code            | LAYOUTS_BAD                                 | model        |

Through the command line, each refusal must exit 2 with exactly one stderr line that
names the file and key (or the option), no traceback, and leave the store as it was.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import subprocess
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from conftest import PAPER_SAMPLE, Ran, tree_hashes
from sharedroot.errors import InputError
from sharedroot.guestos import network
from sharedroot.guestos.fstab import write_fstab
from sharedroot.model.layout import (
    PAPER_LAYOUT,
    RESERVED_MOUNTS,
    Layout,
    check_mount,
)
from sharedroot.model.parm import (
    Identity,
    check_hostname,
    check_netmask,
    format_parm,
    identity_from_parm,
)
from sharedroot.model.types import MAX_SIZE, address, guest_name, parse_size
from sharedroot.store.config import SITE_FILE, SiteConfig, load_config, make_config, render_config

FAST = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

# --- a site shared by the module: refused commands must leave it as it was ---------


@dataclass
class Store:
    home: Path
    path: Path  # its site.toml
    good: str  # the site.toml `init` wrote


def stat_snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """Size, mtime and inode of every file: any write or replace changes one of them.

    Cheap enough for each of hundreds of cases; the module also compares tree_hashes
    at its start and end.
    """
    snap = {}
    for p in sorted(root.rglob("*")):
        if not p.name.endswith(".lock"):
            st_ = p.lstat()
            snap[str(p.relative_to(root))] = (st_.st_size, st_.st_mtime_ns, st_.st_ino)
    return snap


@pytest.fixture(scope="module")
def store(site_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    home = tmp_path_factory.mktemp("badinput") / "site"
    subprocess.run(["cp", "-a", "--sparse=always", site_template, home], check=True)
    path = home / SITE_FILE
    store = Store(home, path, path.read_text())
    before = tree_hashes(home)
    yield store
    path.write_text(store.good)
    assert tree_hashes(home) == before, "a refused command changed the store"


@pytest.fixture
def shared(store: Store) -> Iterator[Store]:
    store.path.write_text(store.good)
    yield store
    store.path.write_text(store.good)


def refused(ran: Ran, *words: str) -> str:
    """The one error line of a refused command, checked for exit code 2 and `words`."""
    assert "Traceback" not in ran.out + ran.err, ran.err
    assert ran.code == 2, (ran.code, ran.out, ran.err)
    lines = ran.err.split("\n")
    assert lines[-1] == "" and len(lines) == 2, f"not one line: {ran.err!r}"
    for w in words:
        assert w in lines[0], f"{w!r} not in {lines[0]!r}"
    return lines[0]


def refused_unchanged(
    shared: Store, cli: Callable[..., Ran], args: tuple[str, ...], *words: str
) -> str:
    before = stat_snapshot(shared.home)
    line = refused(cli(*args, home_dir=shared.home), *words)
    assert stat_snapshot(shared.home) == before
    return line


# --- TOML written from a dict, so any key or value can be put anywhere -------------


def toml_str(value: str) -> str:
    # A JSON string is a TOML basic string, but for DEL, which TOML wants escaped.
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007F")


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return toml_str(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_str(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def dump_toml(raw: dict[str, Any]) -> str:
    out: list[str] = []

    def table(path: list[str], d: dict[str, Any]) -> None:
        if path:
            out.append("[" + ".".join(toml_str(p) for p in path) + "]")
        out.extend(f"{toml_str(k)} = {toml_value(v)}" for k, v in d.items() if not isdict(v))
        for k, v in d.items():
            if isdict(v):
                table([*path, k], v)

    table([], raw)
    return "\n".join(out) + "\n"


def isdict(value: Any) -> bool:
    return isinstance(value, dict)


Mutation = Callable[[dict[str, Any]], None]


def put(*path: str, value: Any) -> Mutation:
    def mutate(raw: dict[str, Any]) -> None:
        d = raw
        for p in path[:-1]:
            d = d[p]
        d[path[-1]] = value

    return mutate


def drop(*path: str) -> Mutation:
    def mutate(raw: dict[str, Any]) -> None:
        d = raw
        for p in path[:-1]:
            d = d[p]
        del d[path[-1]]

    return mutate


def both(*mutations: Mutation) -> Mutation:
    def mutate(raw: dict[str, Any]) -> None:
        for m in mutations:
            m(raw)

    return mutate


def new_disk(key: str, **fields: Any) -> Mutation:
    disk = {"kind": "fs", "mount": "/srv2", "fs": "ext2", "access": "rw", "size": "8M"}
    return put("disks", key, value={**disk, **fields})


# --- tables ------------------------------------------------------------------------

# Mount points a layout disk must never have (set on [disks.01B8], the /opt disk).
MOUNTS_BAD = [
    "/../../tmp/x",
    "/opt/..",
    "/opt/../usr",
    "/opt/.",
    "/./opt",
    "/.",
    "/..",
    "//opt",
    "///",
    "/opt/",
    "/opt//x",
    "opt",
    "./opt",
    "~/opt",
    "",
    " /opt",
    "/opt ",
    "/o pt",
    "/opt\n",
    "/opt\n/x",
    "\n/opt",
    "/opt\t",
    "/opt\r",
    "/opt\x00",
    "/opt\x7f",
    "/opt\x1b[0m",
    "/opt\u2028",
    "/opt\x85",
    "/opt#x",
    "/opt;rm -rf",
    "/$(reboot)",
    "/`id`",
    "/opt*",
    "/opt?",
    "/opt=x",
    "/opt,ro",
    "/öpt",
    "/opt\\x",
    '/opt"x',
    "/opt'x",
    "/" + "a" * 256,
    "/a" * 600,
    "/tmp",
    "/tmp/x",
    "/proc",
    "/sys/x",
    "/dev",
    "/run/x",
]
MOUNTS_GOOD = [
    "/",
    "/opt",
    "/srv/data",
    "/a.b",
    "/x_y-z+1",
    "/..a",
    "/a..",
    "/.hidden",
    "/" + "a" * 255,
]

MOUNT_TYPES = [5, True, 1.5, ["/opt"], {"path": "/opt"}]

FS_BAD: list[Any] = [
    "btrfs",
    "EXT4",
    "ext4 ",
    "ext4\n",
    "",
    "swap",
    "tmpfs",
    "vfat",
    "ext4;",
    4,
    True,
    ["ext4"],
    {"type": "ext4"},
]

SIZES_BAD: list[Any] = [
    "0",
    "-4K",
    "-4096",
    "1.5G",
    "12Q",
    "4097",
    "17T",
    "16385G",
    "9" * 40,
    "9" * 5000,
    " 64M",
    "64M ",
    "64M\n",
    "\n64M",
    "064M",
    "64  M",
    "\u0666\u0664M",  # Arabic-Indic digits: \d matches them, int() takes them
    "\u00b2M",  # superscript two: isdigit() is true, int() refuses it
    "4\u212a",  # Kelvin sign: re.IGNORECASE matches it as K
    "64\u212aB",
    "0x40M",
    "64MiBB",
    "M",
    "",
    "64M64M",
    "+64M",
    "6_4M",
    1.5,
    64.0,
    True,
    False,
    0,
    -4096,
    4097,
    1 << 45,
    (1 << 63) - 1,
    -(1 << 63),
    [64],
    {"v": 64},
    math.inf,
    math.nan,
]
SIZES_GOOD: list[tuple[Any, int]] = [
    ("64M", 64 << 20),
    ("65536K", 64 << 20),
    ("64MiB", 64 << 20),
    ("64MB", 64 << 20),
    ("64 M", 64 << 20),
    ("64m", 64 << 20),
    ("1G", 1 << 30),
    ("16T", 16 << 40),
    (67108864, 64 << 20),
    ("4096", 4096),
]

# (key of a new [disks.KEY] table, words): duplicates written differently, and bad keys.
ADDRESS_KEYS = [
    ("1B0", "overlaps [disks.01B0]"),
    ("01b0", "overlaps [disks.01B0]"),
    ("0x1b0", "overlaps [disks.01B0]"),
    ("0X01B0", "overlaps [disks.01B0]"),
    ("1b1", "overlaps [disks.01B1]"),
    ("01B0 ", 'disks."01B0 "] address'),
    (" 1B0", "address"),
    ("1B0\n", "address"),
    ("FFFFF", "0000-FFFF"),
    ("G1B0", "0000-FFFF"),
    ("-1", "0000-FFFF"),
    ("", "0000-FFFF"),
    ("0x", "0000-FFFF"),
    ("1B0x", "0000-FFFF"),
    ("\uff11B0", "0000-FFFF"),  # fullwidth digit one
    ("1\ufb00", "0000-FFFF"),  # ligature ff: upper-cased it would read 01FF
    ("11B0", "gold sets"),
    ("21B0", "gold sets"),
    ("FFFF", "0000-0FFF"),
    ("0191", "admin disk"),
    ("0192", "admin disk"),
    ("192", "admin disk"),
]

KIND_ACCESS: list[tuple[str, Mutation, str]] = [
    ("kind-disk", put("disks", "01B8", "kind", value="disk"), "[disks.01B8] kind"),
    ("kind-upper", put("disks", "01B8", "kind", value="FS"), "[disks.01B8] kind"),
    ("kind-empty", put("disks", "01B8", "kind", value=""), "[disks.01B8] kind"),
    ("kind-int", put("disks", "01B8", "kind", value=1), "[disks.01B8] kind"),
    ("kind-array", put("disks", "01B8", "kind", value=["fs"]), "[disks.01B8] kind"),
    ("access-upper", put("disks", "01B8", "access", value="RO"), "[disks.01B8] access"),
    ("access-r", put("disks", "01B8", "access", value="r"), "[disks.01B8] access"),
    ("access-bool", put("disks", "01B8", "access", value=True), "[disks.01B8] access"),
    ("vdisk-mount", put("disks", "01B2", "mount", value="/x"), "[disks.01B2]: kind vdisk"),
    ("vdisk-fs", put("disks", "01B2", "fs", value="ext2"), "[disks.01B2]: kind vdisk"),
    ("swap-mount", put("disks", "01B4", "mount", value="/x"), "[disks.01B4]: kind swap"),
    ("fs-no-mount", drop("disks", "01B8", "mount"), "[disks.01B8]: a filesystem disk"),
    ("fs-no-fs", drop("disks", "01B8", "fs"), "[disks.01B8]: a filesystem disk"),
    ("no-size", drop("disks", "01B8", "size"), "[disks.01B8]: size is required"),
    ("unknown", put("disks", "01B8", "colour", value="red"), "unknown key 'colour'"),
    ("case-key", put("disks", "01B8", "Mount", value="/opt"), "unknown key 'Mount'"),
    ("disk-int", put("disks", "01B8", value=5), "[disks.01B8]: must be a table"),
    ("disk-array", put("disks", "01B8", value=["x"]), "[disks.01B8]: must be a table"),
    ("disk-str", put("disks", "01B8", value="x"), "[disks.01B8]: must be a table"),
    ("disk-empty", put("disks", "01B8", value={}), "[disks.01B8]: size is required"),
]

STRUCTURE: list[tuple[str, Mutation, str]] = [
    ("disks-array", put("disks", value=[1]), "[disks]: must be a table"),
    ("disks-int", put("disks", value=5), "[disks]: must be a table"),
    ("disks-empty", put("disks", value={}), "[disks]: the layout has no disks"),
    ("site-int", put("site", value=5), "[site]: must be a table"),
    ("site-array", put("site", value=[1]), "[site]: must be a table"),
    ("guests-str", put("guests", value="x"), "[guests]: must be a table"),
    ("extra-top", put("extra", value=1), "top level: unknown key 'extra'"),
    ("case-top", put("Site", value={}), "top level: unknown key 'Site'"),
    ("site-unknown", put("site", "flavour", value=1), "[site]: unknown key 'flavour'"),
    ("site-newline-key", put("site", "back\nend", value="local"), r"unknown key 'back\nend'"),
    ("site-digit-key", put("site", "1", value=2), "[site]: unknown key '1'"),
    ("guests-unknown", put("guests", "spare", value="X"), "[guests]: unknown key 'spare'"),
    ("no-root", drop("disks", "01B1"), "no disk is mounted at /"),
]


def _setting(key: str, value: Any) -> tuple[str, Mutation, str]:
    return (f"{key}={value!r}"[:40], put("site", key, value=value), f"[site] {key}")


SETTINGS_BAD = [
    *(
        _setting("gold_slots", v)
        for v in ["two", 2.0, True, 0, 10, -1, "02", "\u00b2", " 2", "2\n", [2], {"n": 2}]
    ),
    *(_setting("gold_slots", v) for v in ["9" * 5000, 1 << 62]),
    *(_setting("memory_mb", v) for v in [127, 65537, "512MB", 512.0, "512 ", False]),
    *(_setting("prefix", v) for v in ["S10X", "S-1", "S1\n", " S1", "S1 ", 5, "\u00c4", ["S"]]),
    *(_setting("backend", v) for v in ["LOCAL", "local\n", " local", ["local"], {"a": 1}, ""]),
    *(_setting("distro", v) for v in ["debian", "debian-bookworm\n", 12]),
    *(_setting("ksm", v) for v in ["ON", "yes", "on\n", True, 1, ["on"]]),
]

GUESTS_BAD: list[Any] = [
    "S10RWMNT\n",
    " S10RWMNT",
    "S10RWMNT ",
    "S10RW MNT",
    "S10RWMNT9",
    "",
    "S10-MNT",
    "\u00c4BC",
    "S10\x00",
    "S10RWMNT\r",
    "S10\tMNT",
    "S10.MNT",
    "S10/MNT",
    "\u00df",  # upper-cases to SS
    "S10\ufb00",  # the ff ligature upper-cases to FF
    7,
    True,
    ["S10RWMNT"],
    {"x": 1},
]

GUEST_ROLES_BAD: list[tuple[str, Mutation, tuple[str, ...]]] = [
    ("gold-str", put("guests", "gold", value="S10GOLD"), ("[guests] gold", "list of 2")),
    ("gold-short", put("guests", "gold", value=["S10GOLD"]), ("[guests] gold", "list of 2")),
    (
        "gold-long",
        put("guests", "gold", value=["S10GOLD", "S10GOLD2", "S10GOLD3"]),
        ("[guests] gold", "list of 2"),
    ),
    ("gold-ints", put("guests", "gold", value=[1, 2]), ("[guests] gold[1]",)),
    ("gold-nested", put("guests", "gold", value=[["A"], "B"]), ("[guests] gold[1]",)),
    ("gold-bad-name", put("guests", "gold", value=["S10GOLD", "S10 G"]), ("[guests] gold[2]",)),
]

DUPLICATES: list[tuple[str, Mutation, tuple[str, ...]]] = [
    (
        "role-case",
        put("guests", "test", value="s10rwmnt"),
        ("[guests] test", "two roles", "maintenance"),
    ),
    ("role-same", put("guests", "staging", value="LNXCLONE"), ("two roles", "worker")),
    (
        "worker-is-gold",
        put("guests", "worker", value="S10GOLD"),
        ("[guests] gold[1]", "two roles", "worker"),
    ),
    (
        "gold-case",
        put("guests", "gold", value=["S10GOLD", "s10gold"]),
        ("[guests] gold[2]", "two roles"),
    ),
    (
        "admin-case",
        put("guests", "admin", value="s10rwtst"),
        ("[guests] admin", "two roles", "test"),
    ),
    (
        "mount-twice",
        put("disks", "01B8", "mount", value="/usr"),
        ("[disks.01B8] mount", "twice", "[disks.01B7]"),
    ),
    ("mount-root-twice", put("disks", "01B8", "mount", value="/"), ("twice", "[disks.01B1]")),
    (
        "mount-new-disk",
        new_disk("0200", mount="/boot"),
        ("[disks.0200] mount", "twice", "[disks.01B0]"),
    ),
    ("mount-unnormalized", put("disks", "01B8", "mount", value="/usr/"), ("[disks.01B8] mount",)),
    ("mount-dot", put("disks", "01B8", "mount", value="/usr/."), ("[disks.01B8] mount",)),
]

RAW_FILES: list[tuple[str, Callable[[str], str | bytes], str]] = [
    ("open-header", lambda t: t + "\n[site\n", "malformed TOML"),
    ("dup-key", lambda t: t.replace('mount = "/opt"', 'mount = "/opt"\nmount = "/x"'), "malformed"),
    ("dup-table", lambda t: t + "\n[disks.01B0]\nsize = 1\n", "malformed TOML"),
    ("raw-newline", lambda t: t.replace('mount = "/opt"', 'mount = "/opt\n/x"'), "malformed"),
    ("not-utf8", lambda t: t.encode() + b"\n# \xff\xfe\n", "cannot read"),
    ("nul-byte", lambda t: t + "\x00", "malformed TOML"),
    ("empty", lambda t: "", "[disks]: the layout has no disks"),
    ("only-site", lambda t: t.split("[guests]")[0], "[disks]: the layout has no disks"),
]


def _mutations() -> list[Any]:
    cases: list[Any] = []
    for m in MOUNTS_BAD:
        cases.append(
            pytest.param(
                put("disks", "01B8", "mount", value=m),
                ("[disks.01B8] mount",),
                id=f"mount-{m!r}"[:50],
            )
        )
    for m in MOUNT_TYPES:
        cases.append(
            pytest.param(
                put("disks", "01B8", "mount", value=m),
                ("[disks.01B8] mount",),
                id=f"mount-type-{m!r}",
            )
        )
    cases.append(
        pytest.param(
            put("disks", "01B5", "fs", value="xfs"),
            ("[disks.01B5] fs 'xfs'", "not supported", "mke2fs -d", "ext2, ext3 or ext4"),
            id="fs-xfs",
        )
    )
    for fs in FS_BAD:
        cases.append(
            pytest.param(
                put("disks", "01B5", "fs", value=fs), ("[disks.01B5] fs",), id=f"fs-{fs!r}"
            )
        )
    for s in SIZES_BAD:
        cases.append(
            pytest.param(
                put("disks", "01B8", "size", value=s), ("[disks.01B8] size",), id=f"size-{s!r}"[:50]
            )
        )
    for key, words in ADDRESS_KEYS:
        cases.append(pytest.param(new_disk(key), ("[disks.", words), id=f"address-{key!r}"))
    for name, mutate, words in [*KIND_ACCESS, *STRUCTURE, *SETTINGS_BAD]:
        cases.append(pytest.param(mutate, (words,), id=name))
    for g in GUESTS_BAD:
        cases.append(
            pytest.param(
                put("guests", "maintenance", value=g), ("[guests] maintenance",), id=f"guest-{g!r}"
            )
        )
    for name, mutate, words_t in [*GUEST_ROLES_BAD, *DUPLICATES]:
        cases.append(pytest.param(mutate, words_t, id=name))
    return cases


# --- site.toml through the command line --------------------------------------------


def test_dumped_toml_is_the_same_site(shared: Store) -> None:
    raw = tomllib.loads(shared.good)
    assert tomllib.loads(dump_toml(raw)) == raw


@pytest.mark.parametrize(("mutate", "words"), _mutations())
def test_bad_site_value_is_refused(
    shared: Store, cli: Callable[..., Ran], mutate: Mutation, words: tuple[str, ...]
) -> None:
    raw = tomllib.loads(shared.good)
    mutate(raw)
    shared.path.write_text(dump_toml(raw))
    refused_unchanged(shared, cli, ("guests",), str(shared.path), *words)


@pytest.mark.parametrize(("name", "mutate", "words"), RAW_FILES, ids=[r[0] for r in RAW_FILES])
def test_bad_site_file_is_refused(
    shared: Store,
    cli: Callable[..., Ran],
    name: str,
    mutate: Callable[[str], str | bytes],
    words: str,
) -> None:
    text = mutate(shared.good)
    if isinstance(text, bytes):
        shared.path.write_bytes(text)
    else:
        shared.path.write_text(text)
    refused_unchanged(shared, cli, ("guests",), str(shared.path), words)


def test_bad_site_is_refused_by_every_command(shared: Store, cli: Callable[..., Ran]) -> None:
    raw = tomllib.loads(shared.good)
    raw["disks"]["01B8"]["mount"] = "/opt\n/etc"
    shared.path.write_text(dump_toml(raw))
    before = tree_hashes(shared.home)
    for args in (("guests",), ("define", "LNX9", "--rw"), ("mnt2tst", "--yes"), ("linked",)):
        refused(cli(*args, home_dir=shared.home), str(shared.path), "[disks.01B8] mount")
    assert tree_hashes(shared.home) == before


@pytest.mark.parametrize(("value", "size"), SIZES_GOOD, ids=[repr(v) for v, _ in SIZES_GOOD])
def test_good_sizes_load(tmp_path: Path, value: Any, size: int) -> None:
    raw = tomllib.loads(render_config(make_config({})))
    raw["disks"]["01B8"]["size"] = value
    path = tmp_path / SITE_FILE
    path.write_text(dump_toml(raw))
    assert load_config(path).layout.get("01B8").size == size


@pytest.mark.parametrize("mount", MOUNTS_GOOD)
def test_good_mount_points_load(tmp_path: Path, mount: str) -> None:
    raw = tomllib.loads(render_config(make_config({})))
    if mount == "/":  # the root disk moves to make room
        raw["disks"]["01B1"]["mount"] = "/srv"
    raw["disks"]["01B8"]["mount"] = mount
    path = tmp_path / SITE_FILE
    path.write_text(dump_toml(raw))
    assert load_config(path).layout.get("01B8").mount == mount


# --- the command line's own values ------------------------------------------------

HOSTNAMES_BAD = [
    "lnx1\n.evil",
    "lnx1\n",
    "\nlnx1",
    "lnx1\r",
    "lnx 1",
    "lnx1\t",
    "lnx1\x00",
    "lnx1\x1b[31m",
    "lnx1\u2028",
    "lnx1\x85",
    "a;reboot",
    "$(reboot)",
    "`id`",
    "../../etc/passwd",
    "lnx1/x",
    "-lnx1",
    "lnx1-",
    "lnx1.",
    ".lnx1",
    "lnx..1",
    "lnx_1",
    "lnx1.-a",
    "a" * 64,
    ".".join(["a" * 63] * 4),
    "\u00fcnx1",
    "lnx1#",
    "lnx1=x",
    "lnx1,x",
    "lnx1\\x",
]
IPS_BAD = [
    "300.1.1.1",
    "10.0.0",
    "10.0.0.5.1",
    "10.0.0.05",
    "010.0.0.5",
    " 10.0.0.5",
    "10.0.0.5 ",
    "10.0.0.5\n",
    "10.0.0.5\x00",
    "0.0.0.0",
    "255.255.255.255",
    "224.0.0.1",
    "127.0.0.1",
    "240.0.0.1",
    "10.0.0.0",
    "10.0.0.255",
    "::1",
    "10.0.0.5/24",
    "ten.0.0.5",
    "\u0661\u0660.0.0.5",
    "10.0.0.5;reboot",
    "0x0a.0.0.5",
]
NETMASKS_BAD = [
    "0",
    "0.0.0.0",
    "33",
    "-1",
    "024",
    "24 ",
    " 24",
    "24\n",
    "255.0.255.0",
    "255.255.255.1",
    "0.255.255.255",
    "0.0.0.255",
    "255.255.255.0\n",
    "255.255.255.00",
    "255.255.255.256",
    "255.255.255",
    "1.2.3.4",
    "\u0662\u0664",
    "0x18",
    "+24",
    "24.0",
    "",
]
NETMASKS_GOOD = [
    ("24", 24),
    ("1", 1),
    ("32", 32),
    ("8", 8),
    ("255.255.255.0", 24),
    ("255.255.255.255", 32),
    ("255.255.255.254", 31),
    ("128.0.0.0", 1),
    ("255.255.240.0", 20),
    ("255.0.0.0", 8),
]
GATEWAYS_BAD = [
    "10.0.1.1",
    "10.0.0.5",
    "10.0.0.0",
    "10.0.0.255",
    "0.0.0.0",
    "10.0.0.1\n",
    "10.0.0.01",
    "router",
    "127.0.0.1",
]
NAMESERVERS_BAD = [
    "0.0.0.0",
    "224.0.0.1",
    "1.1.1.1\n",
    "1.1.1",
    "dns.example.com",
    "1.1.1.1 8.8.8.8",
    "255.255.255.255",
    "1.1.1.1;x",
]


def _define(**opts: str) -> tuple[str, ...]:
    values = {"hostname": "lnx9", "ip": "10.0.0.5", **opts}
    # OPTION=VALUE keeps a value that starts with '-' a value.
    return ("define", "LNX9", "--ro", *(f"--{k}={v}" for k, v in values.items()))


DEFINES_BAD = [
    *(
        pytest.param(_define(hostname=h), "hostname", id=f"hostname-{h!r}"[:40])
        for h in HOSTNAMES_BAD
    ),
    *(pytest.param(_define(ip=ip), "ip", id=f"ip-{ip!r}") for ip in IPS_BAD),
    *(pytest.param(_define(netmask=m), "netmask", id=f"netmask-{m!r}") for m in NETMASKS_BAD),
    *(pytest.param(_define(gateway=g), "gateway", id=f"gateway-{g!r}") for g in GATEWAYS_BAD),
    *(pytest.param(_define(nameserver=n), "nameserver", id=f"dns-{n!r}") for n in NAMESERVERS_BAD),
]


@pytest.mark.parametrize(("args", "option"), DEFINES_BAD)
def test_bad_define_value_is_refused(
    shared: Store, cli: Callable[..., Ran], args: tuple[str, ...], option: str
) -> None:
    line = refused_unchanged(shared, cli, args)
    assert option in line.lower(), line


# --- model: the rules themselves ---------------------------------------------------


@pytest.mark.parametrize("text", [*GUESTS_BAD, "LNX1\n\n", "\nLNX1"])
def test_bad_guest_name(text: Any) -> None:
    with pytest.raises(InputError, match="guest name"):
        guest_name(text)


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("lnx227", "LNX227"),
        ("S10RWMNT", "S10RWMNT"),
        ("@#$", "@#$"),
        ("a", "A"),
        ("12345678", "12345678"),
    ],
)
def test_good_guest_name(text: str, name: str) -> None:
    assert guest_name(text) == name


ADDRESSES_BAD: list[Any] = [
    "",
    " 1B0",
    "1B0 ",
    "1B0\n",
    "01B00",
    "G1B0",
    "0x",
    "0x0x1",
    "-1",
    "+1",
    "\uff11B0",
    "1_B0",
    "\ufb00",  # the ff ligature upper-cases to FF, two hex digits
    "0\u212a1",
    -1,
    0x10000,
    True,
    None,
    1.0,
    ["1B0"],
]


@pytest.mark.parametrize("value", ADDRESSES_BAD, ids=repr)
def test_bad_address(value: Any) -> None:
    with pytest.raises(InputError, match="address"):
        address(value)


@pytest.mark.parametrize("value", ["1B0", "01B0", "01b0", "1b0", "0x1b0", "0X1B0", "0x01B0", 0x1B0])
def test_address_forms_are_one_address(value: Any) -> None:
    assert address(value) == "01B0"


@pytest.mark.parametrize("value", SIZES_BAD, ids=lambda v: repr(v)[:40])
def test_bad_size(value: Any) -> None:
    with pytest.raises(InputError, match="size"):
        parse_size(value)


@pytest.mark.parametrize("mount", MOUNTS_BAD, ids=lambda v: repr(v)[:40])
def test_bad_mount_point(mount: str) -> None:
    with pytest.raises(InputError, match="mount"):
        check_mount(mount, "mount")


@pytest.mark.parametrize("name", HOSTNAMES_BAD, ids=lambda v: repr(v)[:40])
def test_bad_hostname(name: str) -> None:
    with pytest.raises(InputError, match="hostname"):
        check_hostname(name)


@pytest.mark.parametrize(("text", "prefix"), NETMASKS_GOOD)
def test_good_netmask(text: str, prefix: int) -> None:
    assert check_netmask(text) == prefix


@pytest.mark.parametrize("text", NETMASKS_BAD, ids=repr)
def test_bad_netmask(text: str) -> None:
    with pytest.raises(InputError, match="netmask"):
        check_netmask(text)


IDENTITIES_BAD: list[dict[str, Any]] = [
    {"prefix": 0},
    {"prefix": 33},
    {"prefix": -1},
    {"prefix": True},
    {"prefix": "24"},
    {"prefix": 24.0},
    {"hostname": "LNX\n"},
    {"hostname": ""},
    {"ip": "10.0.0.05"},
    {"ip": "10.0.0.5\n"},
    {"gateway": "10.0.0.5"},
    {"gateway": "10.0.0.0"},
    {"gateway": ""},
    {"nameserver": "x"},
    {"nameserver": "1.1.1.1\n"},
]


@pytest.mark.parametrize("fields", IDENTITIES_BAD, ids=repr)
def test_bad_identity(fields: dict[str, Any]) -> None:
    values: dict[str, Any] = {"hostname": "lnx9", "ip": "10.0.0.5", "prefix": 24, **fields}
    with pytest.raises(InputError):
        Identity(**values)


GOOD_ID = "HostIP=10.0.0.5 Hostname=lnx9 Gateway=10.0.0.1"

PARMS_HOSTILE = [
    "HostIP=10.0.0.5 Hostname=lnx1\x00evil",
    "HostIP=10.0.0.5 Hostname=lnx1;reboot",
    "HostIP=10.0.0.5 Hostname=$(reboot)",
    "HostIP=10.0.0.5 Hostname=`reboot`",
    "HostIP=10.0.0.5 Hostname=a|b",
    "HostIP=10.0.0.5 Hostname=a&b",
    "HostIP=10.0.0.5 Hostname=a>b",
    "HostIP=10.0.0.5 Hostname=a'b",
    'HostIP=10.0.0.5 Hostname=a"b',
    "HostIP=10.0.0.5 Hostname=a\\b",
    "HostIP=10.0.0.5 Hostname=a*b",
    "HostIP=10.0.0.5 Hostname=a{b}",
    "HostIP=10.0.0.5 Hostname=lnx\uff11",
    "HostIP=10.0.0.5 Hostname=lnx1\x1b[2J",
    "HostIP=10.0.0.5 Hostname=../../etc/passwd",
    "HostIP=10.0.0.5 Hostname=" + "a" * 64,
    "HostIP=10.0.0.5 Hostname=" + "a" * 2000,
    GOOD_ID + " Install=" + "x" * 1025,
    GOOD_ID + " " + "word " * 14000,
    "Hostname=ok",
    "HostIP=10.0.0.5",
    "",
    "\n\n",
    "HostIP= Hostname=ok",
    "HostIP=10.0.0.5 Hostname=",
    "HostIP=10.0.0.5 Host\x07name=ok",
    "$(x)=1 " + GOOD_ID,
    "Host;IP=1 " + GOOD_ID,
    GOOD_ID + " Netmask=0.0.0.0",
    GOOD_ID + " Netmask=0",
    GOOD_ID + " Netmask=33",
    GOOD_ID + " Netmask=255.0.255.0",
    GOOD_ID + " Netmask=024",
    GOOD_ID + " Netmask=0.0.0.255",
    "HostIP=10.0.0.5 Hostname=ok Gateway=10.0.1.1",
    "HostIP=10.0.0.5 Hostname=ok Gateway=10.0.0.5",
    GOOD_ID + " Nameserver=224.0.0.1",
    GOOD_ID + " Nameserver=1.1.1",
    "HostIP=0.0.0.0 Hostname=ok",
    "HostIP=127.0.0.1 Hostname=ok",
    "HostIP=10.0.0.05 Hostname=ok",
    "HostIP=10.0.0.5\x00 Hostname=ok",
]


@pytest.mark.parametrize("text", PARMS_HOSTILE, ids=lambda t: repr(t)[:50])
def test_hostile_parm_is_refused(text: str) -> None:
    with pytest.raises(InputError) as err:
        identity_from_parm(text)
    assert "\n" not in str(err.value)


PARMS_GOOD = [
    (PAPER_SAMPLE, "ntc227.pbm.ihost.com"),
    ("hostip=10.0.0.5 HOSTNAME=LNX9", "lnx9"),
    ("HostIP=10.0.0.5\r\nHostname=lnx9\r\n", "lnx9"),
    ("Hostname=old HostIP=10.0.0.5 Hostname=lnx9", "lnx9"),
    ("ro quiet HostIP=10.0.0.5\n\tHostname=lnx9 Netmask=16", "lnx9"),
]


@pytest.mark.parametrize(("text", "hostname"), PARMS_GOOD)
def test_parm_edited_by_hand_still_reads(text: str, hostname: str) -> None:
    ident = identity_from_parm(text)
    assert ident.hostname == hostname
    assert identity_from_parm(format_parm(ident)) == ident


# --- writers check again right before writing (defence in depth) -------------------

WRITERS: dict[str, Callable[[Identity], object]] = {
    "parm": format_parm,
    "networkd": network.networkd_text,
    "ifupdown": lambda i: network.ifupdown_text(i, "eth0"),
    "resolv": network.resolv_conf_text,
    "hosts": network.hosts_text,
}
CORRUPT_IDENTITY: list[tuple[str, Any]] = [
    ("hostname", "lnx1\nevil"),
    ("hostname", "lnx1 evil"),
    ("ip", "10.0.0.5\nDNS=6.6.6.6"),
    ("prefix", 0),
    ("prefix", "24\n"),
    ("gateway", "10.0.0.1\n[Route]"),
    ("nameserver", "1.1.1.1\nnameserver 6.6.6.6"),
]


@pytest.mark.parametrize("writer", list(WRITERS), ids=str)
@pytest.mark.parametrize(("field", "value"), CORRUPT_IDENTITY, ids=repr)
def test_writer_refuses_a_corrupted_identity(writer: str, field: str, value: Any) -> None:
    ident = Identity("lnx9", "10.0.0.5", 24, "10.0.0.1", "10.0.0.2")
    object.__setattr__(ident, field, value)  # past the constructor's checks
    with pytest.raises(InputError):
        WRITERS[writer](ident)


INTERFACES_BAD = [
    "eth0\nauto evil",
    "eth0 x",
    "",
    "-eth0",
    "a" * 16,
    "eth0/x",
    "eth0#",
    "eth0\x00",
    "\u00ebth0",
    "..",
]


@pytest.mark.parametrize("name", INTERFACES_BAD, ids=repr)
def test_ifupdown_refuses_a_bad_interface(name: str) -> None:
    with pytest.raises(InputError, match="interface"):
        network.ifupdown_text(Identity("lnx9", "10.0.0.5", 24), name)


@pytest.mark.parametrize("name", ["eth0", "enp1s0", "eth0.100", "eth0:1", "a" * 15])
def test_ifupdown_takes_real_interface_names(name: str) -> None:
    text = network.ifupdown_text(Identity("lnx9", "10.0.0.5", 24), name)
    assert f"auto {name}\n" in text


def test_ifupdown_interface_passes_over_hostile_names(tmp_path: Path) -> None:
    (tmp_path / "etc/network").mkdir(parents=True)
    (tmp_path / "etc/network/interfaces").write_text(
        "iface lo inet loopback\niface e;x inet dhcp\n"
    )
    dev = tmp_path / "sys/class/net/bad name"
    dev.mkdir(parents=True)
    (dev / "type").write_text("1\n")
    (dev / "device").mkdir()
    assert network.ifupdown_interface(tmp_path) == "eth0"


def _fresh_layout() -> Layout:
    return Layout(tuple(dataclasses.replace(d) for d in PAPER_LAYOUT))


FSTAB_CORRUPT: list[tuple[str, str, Any]] = [
    ("01B8", "mount", "/opt\n/x"),
    ("01B8", "mount", "/opt x"),
    ("01B8", "mount", "/../x"),
    ("01B8", "mount", "/opt#"),
    ("01B8", "mount", "/tmp"),
    ("01B8", "mount", ""),
    ("01B8", "fs", "xfs"),
    ("01B8", "fs", "ext4\n"),
    ("01B8", "address", "01B8\n"),
    ("01B4", "address", "1B4 x"),
]


@pytest.mark.parametrize(("addr", "field", "value"), FSTAB_CORRUPT, ids=repr)
def test_fstab_refuses_a_corrupted_layout(
    tmp_path: Path, addr: str, field: str, value: Any
) -> None:
    layout = _fresh_layout()
    object.__setattr__(layout.get(addr), field, value)  # past Layout's checks
    with pytest.raises(InputError):
        write_fstab(tmp_path, layout)
    assert not (tmp_path / "etc/fstab").exists()


FSTAB_EXTRA_BAD = [
    "/a\t/b\tnone\tbind,ro",
    "/a\t/b\nx\tnone\tbind\t0 0",
    "/a b\t/b\tnone\tbind\t0 0",
    "/a\t/b\tnone\tbind ro\t0 0",
    "/a\t/b\tnone\tbind,ro\t0 0 0",
    "../a\t/b\tnone\tbind\t0 0",
    "/a\t/b/../c\tnone\tbind\t0 0",
    "/a\t/b\tno ne\tbind\t0 0",
]


@pytest.mark.parametrize("line", FSTAB_EXTRA_BAD, ids=repr)
def test_fstab_refuses_a_bad_extra_line(tmp_path: Path, line: str) -> None:
    with pytest.raises(InputError):
        write_fstab(tmp_path, PAPER_LAYOUT, extra=[line])
    assert not (tmp_path / "etc/fstab").exists()


def test_fstab_lines_have_five_plain_fields(tmp_path: Path) -> None:
    write_fstab(tmp_path, PAPER_LAYOUT, readonly=True, extra=["/a\t/var/lib/x\tnone\tbind,ro\t0 0"])
    lines = (tmp_path / "etc/fstab").read_text().splitlines()[1:]
    assert len(lines) == len(PAPER_LAYOUT.disks) + 2
    for line in lines:
        assert len(line.split("\t")) == 5 and " " not in line.replace("\t0 ", "\t0_"), line


M = 1 << 20
LAYOUTS_BAD: list[tuple[str, dict[str, Any]]] = [
    ("01B8", {"mount": "/usr/"}),
    ("01B8", {"mount": "/../x"}),
    ("01B8", {"mount": "/opt\n"}),
    ("01B8", {"fs": "xfs"}),
    ("01B8", {"fs": None}),
    ("01B8", {"size": 0}),
    ("01B8", {"size": 4097}),
    ("01B8", {"size": MAX_SIZE + 4096}),
    ("01B8", {"size": True}),
    ("01B8", {"address": "1B8"}),
    ("01B8", {"address": "1000"}),
    ("01B8", {"address": "0191"}),
    ("01B8", {"kind": "fs"}),
    ("01B8", {"access": "ro"}),
    ("01B4", {"mount": "/swap"}),
    ("01B1", {"mount": "/root2"}),
]


@pytest.mark.parametrize(("addr", "fields"), LAYOUTS_BAD, ids=repr)
def test_layout_built_in_code_is_checked(addr: str, fields: dict[str, Any]) -> None:
    disks = [dataclasses.replace(d, **fields) if d.address == addr else d for d in PAPER_LAYOUT]
    with pytest.raises(InputError):
        Layout(tuple(disks))


def test_xfs_is_refused_with_its_reason() -> None:
    disks = [dataclasses.replace(d, fs="xfs") if d.mount == "/var" else d for d in PAPER_LAYOUT]
    with pytest.raises(InputError, match=r"fs 'xfs': not supported .* mke2fs -d; use ext2"):
        Layout(tuple(disks))


# --- properties --------------------------------------------------------------------

CONTROL = st.characters(categories=["Cc", "Zl", "Zp"]) | st.sampled_from(["\x85", "\u2028"])


@st.composite
def with_control(draw: st.DrawFn) -> str:
    head = draw(st.text(max_size=10))
    tail = draw(st.text(max_size=10))
    return head + draw(CONTROL) + tail


@FAST
@given(with_control())
def test_control_characters_never_pass(text: str) -> None:
    for check in (check_hostname, lambda t: check_mount(t, "mount")):
        with pytest.raises(InputError):
            check(text)
    with pytest.raises(InputError):
        guest_name(text)


COMPONENT = st.from_regex(r"[A-Za-z0-9._+-]{1,20}", fullmatch=True).filter(
    lambda c: c not in (".", "..")
)


@FAST
@given(st.lists(COMPONENT, min_size=1, max_size=4))
def test_valid_mount_points_round_trip(tmp_path: Path, parts: list[str]) -> None:
    mount = "/" + "/".join(parts)
    taken = {d.mount for d in PAPER_LAYOUT if d.mount}
    assume(mount not in taken)
    assume(not any(mount == r or mount.startswith(r + "/") for r in RESERVED_MOUNTS))
    base = make_config({})
    disks = tuple(
        dataclasses.replace(d, mount=mount) if d.address == "01B8" else d for d in base.layout
    )
    config = dataclasses.replace(base, layout=Layout(disks))
    path = tmp_path / SITE_FILE
    path.write_text(render_config(config))
    assert load_config(path) == config


SIZE_LIKE = st.from_regex(r"\s?[0-9+-]{0,20}\s?[KMGTkmgtiIbB]{0,3}\s?", fullmatch=True)
# Letters that case-fold or upper-case onto the unit letters.
SIZE_TRICKS = st.text(alphabet="0123456789 KMGTkmgtiIbB\u212a\u017f\u0130\u0131", max_size=8)


@FAST
@given(
    st.one_of(
        SIZE_LIKE,
        SIZE_TRICKS,
        st.text(max_size=40),
        st.integers(),
        st.floats(),
        st.booleans(),
        st.none(),
        st.lists(st.integers(), max_size=2),
    )
)
def test_parse_size_gives_a_size_or_input_error(value: Any) -> None:
    try:
        size = parse_size(value)
    except InputError:
        return
    assert isinstance(size, int) and 0 < size <= MAX_SIZE and size % 4096 == 0


@FAST
@given(st.integers(min_value=1, max_value=32))
def test_every_prefix_has_one_dotted_mask(prefix: int) -> None:
    mask = (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF
    dotted = ".".join(str((mask >> s) & 0xFF) for s in (24, 16, 8, 0))
    assert check_netmask(dotted) == prefix == check_netmask(str(prefix))


@FAST
@given(st.text(max_size=20) | st.from_regex(r"[0-9.]{1,16}", fullmatch=True))
def test_netmask_gives_a_prefix_or_input_error(text: str) -> None:
    try:
        prefix = check_netmask(text)
    except InputError:
        return
    assert 1 <= prefix <= 32


@FAST
@given(st.text(max_size=80))
def test_parm_text_gives_a_sane_identity_or_input_error(tail: str) -> None:
    for text in (tail, "HostIP=10.0.0.5 Hostname=" + tail, GOOD_ID + " " + tail):
        try:
            ident = identity_from_parm(text)
        except InputError as exc:
            assert "\n" not in str(exc)
            continue
        assert identity_from_parm(format_parm(ident)) == ident


# Letters whose upper case is ASCII, or that case-fold onto ASCII letters.
FOLDING = st.sampled_from(["\u00df", "\ufb00", "\ufb01", "\u212a", "\u017f", "\u0131", "\u0130"])


@FAST
@given(st.lists(st.text(max_size=3) | FOLDING, max_size=4).map("".join))
def test_names_and_addresses_are_checked_as_given(text: str) -> None:
    for check, rule in ((guest_name, r"[A-Z0-9@#$]{1,8}"), (address, r"[0-9A-F]{4}")):
        try:
            value = check(text)
        except InputError:
            continue
        assert re.fullmatch(rule, value)
        assert text.isascii(), f"{text!r} became {value!r}"


@FAST
@given(st.integers(min_value=0, max_value=0xFFFF), st.booleans(), st.booleans())
def test_address_forms_agree(value: int, upper: bool, prefixed: bool) -> None:
    text = f"{value:x}"
    text = text.upper() if upper else text
    text = f"0x{text}" if prefixed else text
    assert address(text) == address(value) == f"{value:04X}"


@FAST
@given(st.text(max_size=8))
def test_address_text_gives_four_hex_digits_or_input_error(text: str) -> None:
    try:
        addr = address(text)
    except InputError:
        return
    assert len(addr) == 4 and all(c in "0123456789ABCDEF" for c in addr)


TOML_VALUES = st.recursive(
    st.booleans()
    | st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1)
    | st.floats()
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=2)
    ),
    max_leaves=4,
)
SITE_PATHS = [
    ("site", "backend"),
    ("site", "prefix"),
    ("site", "gold_slots"),
    ("site", "memory_mb"),
    ("site", "ksm"),
    ("guests", "maintenance"),
    ("guests", "gold"),
    ("disks", "01B8"),
    ("disks", "01B8", "mount"),
    ("disks", "01B8", "size"),
    ("disks", "01B8", "kind"),
    ("disks", "01B5", "fs"),
    ("disks", "01B2", "access"),
    ("disks",),
    ("site",),
]


@FAST
@given(st.sampled_from(SITE_PATHS), TOML_VALUES)
def test_any_value_anywhere_loads_or_is_one_clear_error(
    tmp_path: Path, where: tuple[str, ...], value: Any
) -> None:
    raw = tomllib.loads(render_config(make_config({})))
    put(*where, value=value)(raw)
    path = tmp_path / SITE_FILE
    path.write_text(dump_toml(raw))
    try:
        config = load_config(path)
    except InputError as exc:
        msg = str(exc)
        assert msg.startswith(str(path)) and "\n" not in msg
        return
    assert isinstance(config, SiteConfig)
    Layout(config.layout.disks)  # still valid when checked again
    assert load_config(path) == config
