"""Layout files (`init --layout FILE`): the paper's address plan, middleware disks nested
under /opt, and LVM disks (§1.8's rwVG) built on the worker without device-mapper."""

from __future__ import annotations

import json
import os
import re
import tempfile
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import Ran, tree_hashes
from sharedroot.guestos import zipl
from sharedroot.guestos.fstab import write_fstab
from sharedroot.guestos.lvmdisk import volume_ranges, write_lvm_disk
from sharedroot.guestos.lvmmeta import parse_metadata, read_pv
from sharedroot.guestos.mount import mounted_tree
from sharedroot.guestos.platform import VIRTIO
from sharedroot.guestos.recipe import LVM_PACKAGES, recipe_for, recipe_key
from sharedroot.guestos.tree import populate_disks, split_tree
from sharedroot.model.layout import PAPER_LAYOUT, Layout, pmem_slots
from sharedroot.model.types import DiskKind
from sharedroot.model.volumes import device_path
from sharedroot.run import run
from sharedroot.store.config import load_layout
from sharedroot.workflows.context import Site

LAYOUTS = Path(__file__).parent.parent / "layouts"
LVM = LAYOUTS / "lvm.toml"
MIDDLEWARE = LAYOUTS / "middleware.toml"
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="loop devices and mounts need root")


def both_text() -> str:
    """The boot test's layout file: lvm.toml plus middleware.toml's disk at 01C0."""
    raw = tomllib.loads(LVM.read_text())
    raw["disks"]["01C0"] = tomllib.loads(MIDDLEWARE.read_text())["disks"]["01C0"]
    return dump_layout(raw)


def both() -> Layout:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "both.toml"
        path.write_text(both_text())
        return load_layout(path)


def dump_layout(raw: dict[str, Any]) -> str:
    """A [disks] table as TOML (values are strings, so json quoting is TOML quoting)."""
    out: list[str] = []

    def table(name: str, t: dict[str, Any]) -> None:
        out.append(f"[{name}]")
        subs = {k: v for k, v in t.items() if isinstance(v, dict)}
        out.extend(f"{k} = {json.dumps(v)}" for k, v in t.items() if k not in subs)
        for k, v in subs.items():
            table(f"{name}.{json.dumps(k) if not re.fullmatch(r'[A-Za-z0-9_-]+', k) else k}", v)

    for key, value in raw.items():
        table(key, value)
    return "\n".join(out) + "\n"


def test_the_example_layouts_load() -> None:
    lvm = load_layout(LVM)
    disk = lvm.get("02B0")
    assert disk.kind is DiskKind.LVM and disk.vg == "rwVG"
    assert [(v.name, v.mount) for v in disk.volumes] == [("varLV", "/var"), ("srvLV", "/srv")]
    assert all(d.mount != "/var" for d in lvm)  # 01B6 gave way to the volume group
    mw = load_layout(MIDDLEWARE).get("01C0")
    assert (mw.mount, mw.access.value) == ("/opt/mw", "ro")
    assert [m.mount for m in both().filesystems][:3] == ["/", "/boot", "/local"]


def test_init_with_a_layout_file_defines_its_disks_everywhere(
    tmp_path: Path, cli: Callable[..., Ran], home: Path
) -> None:
    layout = tmp_path / "both.toml"
    layout.write_text(both_text())
    assert cli("init", "--layout", str(layout)).code == 0
    site = Site.open(home)
    assert site.config.layout == both()
    owned = {(d.owner, d.address) for d in site.state.disks()}
    for guest, addresses in (
        ("S10RWMNT", ("01C0", "02B0")),
        ("S10ROGLD", ("01C0", "02B0")),
        ("S10GOLD", ("11C0", "12B0", "21C0", "22B0")),  # read-write set and slot 1
        ("S10GOLD2", ("21C0", "22B0")),
    ):
        assert {(guest, a) for a in addresses} <= owned
    # A read-only clone owns its volume group's disk and links the middleware RR.
    assert cli("define", "LNX227", "--ro").code == 0
    assert {d.address for d in site.state.disks("LNX227")} == {"01B4", "01B5", "02B0"}
    # site.toml keeps the layout whole: read back, it is the same.
    assert Site.open(home).config.layout.get("02B0").volumes == both().get("02B0").volumes


# (what to change in lvm.toml's [disks], words of the one error line)
Change = Callable[[dict[str, Any]], None]


def _put(*keys: str, value: Any) -> Change:
    def change(disks: dict[str, Any]) -> None:
        t = disks
        for k in keys[:-1]:
            t = t.setdefault(k, {})
        t[keys[-1]] = value

    return change


def _disk(key: str, **fields: Any) -> Change:
    return _put(key, value={"kind": "fs", "fs": "ext2", "access": "ro", "size": "8M", **fields})


def _lv(name: str, **fields: Any) -> Change:
    """A logical volume of rwVG, /x by default; a field given as None is left out."""
    volume = {"mount": "/x", "fs": "ext4", "size": "4M", **fields}
    return _put("02B0", "volumes", name, value={k: v for k, v in volume.items() if v is not None})


def _set_lv(name: str, key: str, value: Any) -> Change:
    return _put("02B0", "volumes", name, key, value=value)


SECOND_VG = {
    "kind": "lvm",
    "vg": "rwVG",
    "access": "rw",
    "size": "64M",
    "volumes": {"a": {"mount": "/a", "fs": "ext4", "size": "4M"}},
}

HOSTILE: list[tuple[str, Change, tuple[str, ...]]] = [
    ("overlap", _disk("1b5", mount="/x"), ("[disks.1b5]", "overlaps [disks.01B5]")),
    ("overlap-hex", _disk("0x1b8", mount="/x"), ("overlaps [disks.01B8]",)),
    ("future-growth", _disk("0320", mount="/x"), ("0320", "future growth", "02B0-02BF")),
    ("future-growth-end", _disk("032F", mount="/x"), ("future growth",)),
    ("nic", _disk("0601", mount="/x"), ("0601", "NICDEF 0600")),
    ("console", _disk("0009", mount="/x"), ("CONSOLE 009",)),
    ("spool", _disk("000D", mount="/x"), ("SPOOL",)),
    ("cms-disk", _disk("019E", mount="/x"), ("MAINT",)),
    ("tcpip-disk", _disk("0592", mount="/x"), ("TCPMAINT",)),
    ("admin", _disk("0192", mount="/x"), ("admin disk",)),
    ("gold-set", _disk("21C0", mount="/x"), ("gold sets",)),
    ("plain-in-lvm-range", _disk("02B1", mount="/x"), ("02B0-02BF are for LVM",)),
    ("under-private-srv", _disk("01B9", mount="/srv/data", access="rw"), ("under /srv",)),
    ("under-private-local", _disk("01B9", mount="/local/x"), ("/local/x", "under /local")),
    ("ro-under-private", _disk("01B9", mount="/var/opt"), ("under /var", "private")),
    ("etc", _disk("01B9", mount="/etc"), ("binds its own /etc",)),
    ("mount-twice", _disk("01B9", mount="/srv"), ("/srv", "twice", "srvLV")),
    ("bad-size", _put("01B8", "size", value="12Q"), ("[disks.01B8] size",)),
    ("unaligned-size", _put("01B8", "size", value="1000"), ("multiple of 4 KiB",)),
    ("lv-too-big", _set_lv("varLV", "size", "900M"), ("do not fit",)),
    ("lv-not-extents", _set_lv("srvLV", "size", "6M"), ("4M",)),
    ("lv-bad-size", _set_lv("srvLV", "size", "lots"), ("srvLV] size",)),
    ("lv-no-size", _lv("x", size=None), ("size is required",)),
    ("lv-unknown-key", _set_lv("srvLV", "uuid", "x"), ("unknown key",)),
    ("lv-mount-reserved", _set_lv("srvLV", "mount", "/run/x"), ("/run",)),
    ("lv-mount-hostile", _set_lv("srvLV", "mount", "/srv\n/x"), ("srvLV] mount",)),
    ("lv-fs", _set_lv("srvLV", "fs", "xfs"), ("mke2fs -d",)),
    ("lv-name-dash", _lv("-x"), ("logical volume name",)),
    ("lv-name-reserved", _lv("data_tmeta"), ("_tmeta",)),
    ("lv-name-snapshot", _lv("snapshot1"), ("snapshot",)),
    ("vg-name-blank", _put("02B0", "vg", value="rw VG"), ("volume group name",)),
    ("vg-name-dots", _put("02B0", "vg", value=".."), ("volume group name",)),
    ("vg-missing", lambda d: d["02B0"].pop("vg"), ("needs vg",)),
    ("vg-not-str", _put("02B0", "vg", value=5), ("[disks.02B0] vg",)),
    ("lvm-ro", _put("02B0", "access", value="ro"), ("private read-write",)),
    ("lvm-mount", _put("02B0", "mount", value="/data"), ("kind lvm takes no mount",)),
    ("lvm-no-volumes", lambda d: d["02B0"].pop("volumes"), ("at least one volume",)),
    ("volumes-on-fs", _put("01B8", "vg", value="x"), ("takes no vg",)),
    ("same-vg-twice", _put("02B1", value=SECOND_VG), ("volume group rwVG", "two lvm disks")),
]


@pytest.mark.parametrize(("change", "words"), [(c, w) for _, c, w in HOSTILE],
                         ids=[n for n, _, _ in HOSTILE])  # fmt: skip
def test_a_hostile_layout_file_is_refused_and_nothing_written(
    tmp_path: Path, cli: Callable[..., Ran], home: Path, change: Change, words: tuple[str, ...]
) -> None:
    raw = tomllib.loads(LVM.read_text())
    change(raw["disks"])
    layout = tmp_path / "hostile.toml"
    layout.write_text(dump_layout(raw))
    home.mkdir()
    before = tree_hashes(home)
    ran = cli("init", "--layout", str(layout))
    assert ran.code == 2, (ran.code, ran.err)
    lines = ran.err.splitlines()
    assert len(lines) == 1 and "Traceback" not in ran.err, ran.err
    assert str(layout) in lines[0]
    for w in words:
        assert w in lines[0], lines[0]
    assert tree_hashes(home) == before and not (home / "site.toml").exists()


def test_a_layout_file_must_hold_only_disks(tmp_path: Path, cli: Callable[..., Ran]) -> None:
    layout = tmp_path / "x.toml"
    layout.write_text("[site]\nprefix = 'S10'\n" + LVM.read_text())
    ran = cli("init", "--layout", str(layout))
    assert ran.code == 2 and "unknown key 'site'" in ran.err
    ran = cli("init", "--layout", str(tmp_path / "absent.toml"))
    assert ran.code == 2 and "is not paper and no such file" in ran.err


def test_help_explains_the_address_plan(cli: Callable[..., Ran]) -> None:
    text = " ".join(cli("init", "--help").out.split())
    for words in ("02B0-02BF: LVM physical volumes only", "0320-032F (future growth)",
                  "01B9-01BF are free"):  # fmt: skip
        assert words in text


def test_split_nested_mounts_and_fstab(tmp_path: Path) -> None:
    tree = tmp_path / "stage" / "root"
    for rel in ("opt/tool/bin", "opt/mw/lib", "var/log", "srv/www", "etc", "usr/bin"):
        (tree / rel).mkdir(parents=True)
    (tree / "opt/mw/lib/mw.so").write_text("mw 1\n")
    (tree / "opt/tool/bin/t").write_text("t\n")
    (tree / "var/log/x").write_text("log\n")
    layout = both()
    sources = split_tree(tree, layout)
    # The middleware left /opt with its mount point behind, empty; /opt kept the rest.
    assert (sources["01C0"] / "lib/mw.so").read_text() == "mw 1\n"
    assert sorted(p.name for p in sources["01B8"].iterdir()) == ["mw", "tool"]
    assert list((sources["01B8"] / "mw").iterdir()) == []
    assert (sources["02B0:varLV"] / "log/x").read_text() == "log\n"
    assert (sources["02B0:srvLV"] / "www").is_dir()
    assert (tree / "var").is_dir() and list((tree / "var").iterdir()) == []
    fstab = (tree / "etc/fstab").read_text().splitlines()
    mounts = [line.split("\t")[1] for line in fstab[1:]]
    assert mounts.index("/opt") < mounts.index("/opt/mw")  # the parent first
    lines = {line.split("\t")[1]: line for line in fstab[1:]}
    assert lines["/var"] == "/dev/mapper/rwVG-varLV\t/var\text4\tdefaults\t0 2"
    assert lines["/srv"].startswith(f"{device_path('rwVG', 'srvLV')}\t/srv\t")
    assert lines["/opt/mw"].startswith("/dev/disk/by-id/virtio-01C0\t")
    assert "UUID" not in "\n".join(fstab[1:]) and "02B0" not in "\n".join(fstab)
    write_fstab(tree, layout, readonly=True)
    ro_lines = (tree / "etc/fstab").read_text().splitlines()[1:]
    ro = {line.split("\t")[1]: line for line in ro_lines}
    assert ro["/opt/mw"].endswith("\tro\t0 0") and ro["/var"].endswith("\tdefaults\t0 2")


def test_dash_in_names_is_doubled_in_the_mapper_path() -> None:
    assert device_path("rw-VG", "var-LV") == "/dev/mapper/rw--VG-var--LV"


def test_the_z_vm_parameters_and_memory_slots_cover_the_added_disks() -> None:
    layout = both()
    dasd = zipl.dasd_parameter(layout, readonly=True)
    # dasd=1b0(ro),...,1c0(ro),1c1-2bf: the middleware read-only, the LVM disk read-write
    assert "1c0(ro)" in dasd.split(",") and dasd.endswith(",1c1-2bf")
    assert "01C0" in pmem_slots(layout) and "02B0" not in pmem_slots(layout)


def test_only_an_lvm_layout_adds_lvm2_to_the_tree() -> None:
    plain = recipe_for(VIRTIO, layout=load_layout(MIDDLEWARE), hostname="s10rwmnt")
    lvm = recipe_for(VIRTIO, layout=load_layout(LVM), hostname="s10rwmnt")
    assert not set(LVM_PACKAGES) & set(plain.packages)
    assert set(LVM_PACKAGES) <= set(lvm.packages)
    paper = recipe_for(VIRTIO, layout=PAPER_LAYOUT, hostname="s10rwmnt")
    assert recipe_key(paper) == recipe_key()  # the paper's tree is the one cached before
    assert recipe_key(lvm) != recipe_key(paper)


@root_only
def test_an_lvm_disk_is_real_lvm_and_the_worker_reads_its_volumes(tmp_path: Path) -> None:
    layout = both()
    disk = layout.get("02B0")
    src = tmp_path / "var"
    (src / "log").mkdir(parents=True)
    (src / "log/boot.log").write_text("booted\n")
    image = tmp_path / "02B0.img"
    with open(image, "wb") as f:
        f.truncate(disk.size)
    backups = set(Path("/etc/lvm/backup").glob("*")) if Path("/etc/lvm/backup").is_dir() else set()
    write_lvm_disk(image, disk, {"02B0:varLV": src})
    ranges = volume_ranges(image, disk)
    assert ranges["varLV"][1] == 512 << 20 and ranges["srvLV"][1] == 256 << 20
    with open(image, "rb") as f:
        pv = read_pv(f, 0)
    assert pv is not None
    group = parse_metadata(pv.metadata)["rwVG"]
    assert isinstance(group, dict) and not group.get("system_id")  # no clone calls it foreign
    # LVM's own tools see the volume group (read-only look, nothing activated).
    loop = run(["losetup", "--find", "--show", "--read-only", image]).stdout.strip()
    try:
        seen = run(["lvm", "lvs", "--driverloaded", "n", "--devices", loop, "--noheadings",
                    "-o", "vg_name,lv_name,lv_size", "--units", "m"],
                   env={**os.environ, "LVM_SUPPRESS_FD_WARNINGS": "1"}).stdout  # fmt: skip
    finally:
        run(["losetup", "--detach", loop])
    assert sorted(line.split() for line in seen.splitlines()) == [
        ["rwVG", "srvLV", "256.00m"],
        ["rwVG", "varLV", "512.00m"],
    ]
    # The worker's mount of the volumes (what cloneprep and mnt2rogld do).
    mounts = [("/", image, "ext4")]
    at = {"/": ranges["varLV"]}
    with mounted_tree(mounts, readonly=True, ranges=at) as root:
        assert (root / "log/boot.log").read_text() == "booted\n"
    for name, (offset, _) in ranges.items():
        fsck = run(["e2fsck", "-fn", f"{image}?offset={offset}"], check=False)
        assert fsck.returncode == 0, (name, fsck.stdout)
    # Nothing of the guest's group is left in the worker's own LVM backups.
    now = set(Path("/etc/lvm/backup").glob("*")) if Path("/etc/lvm/backup").is_dir() else set()
    assert now == backups


@root_only
def test_populate_disks_builds_the_volume_group_and_the_middleware(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    for rel in ("opt/mw", "var/lib", "srv", "etc", "usr"):
        (tree / rel).mkdir(parents=True)
    (tree / "opt/mw/VERSION").write_text("1\n")
    (tree / "var/lib/state").write_text("var\n")
    layout = both()
    images = {a: tmp_path / f"{a}.img" for a in ("02B0", "01C0", "01B8")}
    populate_disks(tree, layout, images)
    assert not (tree / "etc/fstab").exists()  # the cached tree itself is left alone
    ranges = volume_ranges(images["02B0"], layout.get("02B0"))
    var = run(["debugfs", "-R", "cat /lib/state", f"{images['02B0']}?offset={ranges['varLV'][0]}"])
    assert var.stdout == "var\n"
    assert run(["debugfs", "-R", "cat /VERSION", images["01C0"]]).stdout == "1\n"
    listing = run(["debugfs", "-R", "ls -p /", images["01B8"]]).stdout
    assert "/mw/" in listing  # the middleware's mount point, empty, on /opt's disk
