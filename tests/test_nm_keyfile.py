"""findself on a NetworkManager system: the keyfile it writes, on real directory trees."""

from __future__ import annotations

import configparser
import copy
import hashlib
import os
from pathlib import Path

import pytest

from sharedroot.errors import InputError
from sharedroot.guestos import debian, network
from sharedroot.guestos import findself as fs
from sharedroot.guestos.findself_apply import write_network
from sharedroot.guestos.platform import VIRTIO
from sharedroot.guestos.recipe import recipe_for
from sharedroot.model.layout import PAPER_LAYOUT
from sharedroot.model.parm import Identity, format_parm
from sharedroot.model.types import DeviceBus, Distro, Network
from sharedroot.run import have, run

LNX226 = Identity("lnx226.example.com", "10.0.2.26", 24, "10.0.2.2", "10.0.2.3")
NM_UNIT = "lib/systemd/system/NetworkManager.service"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A NetworkManager golden root as install leaves it: NM enabled, networkd installed
    but not enabled, an /etc/network/interfaces left behind, resolv.conf a file."""
    root = tmp_path / "root"
    files = {
        "etc/hostname": "s10rwmnt\n",
        "etc/hosts": "127.0.0.1\tlocalhost\n",
        "etc/machine-id": "uninitialized\n",
        "etc/resolv.conf": "nameserver 192.0.2.53\n",
        "etc/network/interfaces": "auto lo\niface lo inet loopback\n",
        NM_UNIT: "[Unit]\n",
        "lib/systemd/system/systemd-networkd.service": "[Unit]\n",
        "sys/class/dmi/id/product_serial": "LNX226\n",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True)
    (wants / "NetworkManager.service").symlink_to(f"/{NM_UNIT}")
    return root


def admin(tmp_path: Path, text: str) -> Path:
    d = tmp_path / "admin"
    d.mkdir(exist_ok=True)
    (d / "LNX226.PARM-S10").write_text(text)
    return d


def keyfile(text: str) -> configparser.ConfigParser:
    """The keyfile read as an INI file (GLib's key file format is one): whole groups."""
    parser = configparser.ConfigParser(interpolation=None, comment_prefixes=("#",))
    parser.read_string(text)
    return parser


def snapshot(root: Path) -> dict[str, tuple[str, int, int]]:
    return {
        str(p.relative_to(root)): (
            hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "-",
            p.lstat().st_mtime_ns,
            p.lstat().st_ino,
        )
        for p in sorted(root.rglob("*"))
    }


def test_keyfile_text() -> None:
    parsed = keyfile(network.nm_keyfile_text(LNX226))
    assert dict(parsed["connection"]) == {
        "id": "sharedroot",
        "uuid": network.NM_UUID,
        "type": "ethernet",
        "autoconnect": "true",
        "autoconnect-priority": "100",
    }
    assert dict(parsed["ipv4"]) == {
        "method": "manual",
        "address1": "10.0.2.26/24,10.0.2.2",
        "dns": "10.0.2.3;",
    }
    assert dict(parsed["ipv6"]) == {"method": "ignore"}
    # bound to the parm file's card where findself knows it
    bound = keyfile(network.nm_keyfile_text(LNX226, "encf500"))
    assert bound["connection"]["interface-name"] == "encf500"
    # no gateway, no nameserver: only the address
    bare = keyfile(network.nm_keyfile_text(Identity("lnx9", "10.1.0.9", 16)))
    assert dict(bare["ipv4"]) == {"method": "manual", "address1": "10.1.0.9/16"}


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("hostname", "lnx226\n[ipv4]"),
        ("ip", "10.0.2.26/8"),
        ("gateway", "10.0.2.2,10.0.2.9"),
        ("nameserver", "10.0.2.3;1.1.1.1"),
        ("nameserver", "10.0.2.3\nmethod=auto"),
        ("prefix", 33),
    ],
)
def test_hostile_identity_refused(key: str, value: object) -> None:
    with pytest.raises(InputError):
        Identity(**{**LNX226.__dict__, key: value})
    # and by the writer itself, should an identity be altered after it was checked
    hostile = copy.copy(LNX226)
    object.__setattr__(hostile, key, value)
    with pytest.raises(InputError):
        network.nm_keyfile_text(hostile)


@pytest.mark.parametrize(
    "name", ["", "eth0\nuuid=x", "eth0;eth1", "a=b", "../x", "-eth0", "e" * 16, "eth 0"]
)
def test_hostile_interface_refused(name: str) -> None:
    with pytest.raises(InputError):
        network.nm_keyfile_text(LNX226, name)


def test_detect_prefers_an_enabled_networkmanager(tree: Path) -> None:
    assert network.detect(tree) is Network.NETWORKMANAGER
    (tree / "etc/systemd/system/multi-user.target.wants/NetworkManager.service").unlink()
    assert network.detect(tree) is Network.IFUPDOWN
    (tree / "etc/network/interfaces").unlink()
    assert network.detect(tree) is Network.NETWORKD
    (tree / "lib/systemd/system/systemd-networkd.service").unlink()
    assert network.detect(tree) is None


def test_findself_writes_the_keyfile_once(tree: Path, tmp_path: Path) -> None:
    parm = admin(tmp_path, format_parm(LNX226))
    result = fs.findself(tree, parm_dir=parm, log=lambda _: None)
    assert "network (NetworkManager): 10.0.2.26/24 gateway 10.0.2.2" in result.changes
    path = tree / network.NM_FILE
    st = path.stat()
    assert st.st_mode & 0o7777 == 0o600 and st.st_uid == os.geteuid()
    assert keyfile(path.read_text())["ipv4"]["address1"] == "10.0.2.26/24,10.0.2.2"
    # NM writes resolv.conf from the keyfile's dns=; no other stack's file appears
    assert (tree / "etc/resolv.conf").read_text() == "nameserver 192.0.2.53\n"
    assert not (tree / network.NETWORKD_FILE).exists()
    assert not (tree / network.IFUPDOWN_FILE).exists()

    # the same identity again: not a byte, not an mtime changes
    before = snapshot(tree)
    changes: list[str] = []
    write_network(tree, LNX226, changes.append, changes.append)
    assert changes == [] and snapshot(tree) == before

    # a keyfile NM would ignore (another mode) is written anew, whole
    path.chmod(0o644)
    write_network(tree, LNX226, changes.append, changes.append)
    assert changes == ["network (NetworkManager): 10.0.2.26/24 gateway 10.0.2.2"]
    assert path.stat().st_mode & 0o7777 == 0o600 and path.stat().st_ino != st.st_ino

    # a new address replaces the file (a new inode: never edited in place)
    moved = Identity("lnx226.example.com", "10.0.3.26", 24, "10.0.3.1")
    inode = path.stat().st_ino
    write_network(tree, moved, changes.append, changes.append, "ens3")
    parsed = keyfile(path.read_text())
    assert parsed["ipv4"]["address1"] == "10.0.3.26/24,10.0.3.1" and "dns" not in parsed["ipv4"]
    assert parsed["connection"]["interface-name"] == "ens3"
    assert path.stat().st_ino != inode and path.stat().st_mode & 0o7777 == 0o600
    assert not list(path.parent.glob(".*"))  # no temporary file left behind


@pytest.mark.parametrize(
    "text",
    [
        "HostIP=10.0.2.26 Hostname=lnx226 Nameserver=10.0.2.3;8.8.8.8",
        "HostIP=10.0.2.26 Hostname=lnx226 Gateway=10.0.2.2,10.0.2.9",
        "HostIP=10.0.2.26/8 Hostname=lnx226",
        "HostIP=10.0.2.26 Hostname=lnx226\\n[ipv4]",
    ],
)
def test_hostile_parm_writes_no_keyfile(tree: Path, tmp_path: Path, text: str) -> None:
    before = snapshot(tree)
    result = fs.findself(tree, parm_dir=admin(tmp_path, text), log=lambda _: None)
    assert result.problem and result.changes == []
    assert snapshot(tree) == before


def test_unit_runs_before_networkmanager() -> None:
    text = fs.unit_text("/usr/local/lib/sharedroot-py", DeviceBus.VIRTIO)
    assert "\nBefore=NetworkManager.service\n" in text


@pytest.mark.parametrize("distro", list(Distro))
def test_both_distributions_offer_networkmanager(distro: Distro) -> None:
    r = recipe_for(
        VIRTIO, layout=PAPER_LAYOUT, hostname="s10rwmnt", distro=distro,
        network=Network.NETWORKMANAGER,
    )  # fmt: skip
    assert r.network is Network.NETWORKMANAGER and "network-manager" in r.packages
    assert "systemd-networkd" not in r.packages


def test_first_boot_presets_keep_the_golds_disabled_units_off(tmp_path: Path) -> None:
    """PID 1's first-boot `preset-all` (enable only), done by systemctl on a tree."""
    if not have("systemctl"):
        pytest.skip("no systemctl")
    units = tmp_path / "usr/lib/systemd/system"
    units.mkdir(parents=True)
    for unit in ("systemd-networkd.service", "NetworkManager-wait-online.service", "x.service"):
        (units / unit).write_text(
            "[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n"
        )
    presets = tmp_path / "usr/lib/systemd/system-preset"
    presets.mkdir(parents=True)
    # Debian's own: networkd named, everything else enabled by default
    (presets / "90-systemd.preset").write_text("enable systemd-networkd.service\n")
    debian._write_presets(tmp_path, ["systemd-networkd.service", "NetworkManager-wait-online"])
    run(["systemctl", f"--root={tmp_path}", "preset-all", "--preset-mode=enable-only"])
    wants = tmp_path / "etc/systemd/system/multi-user.target.wants"
    assert sorted(p.name for p in wants.iterdir()) == ["x.service"]
