"""findself on real directory trees that look like a Debian root (no mocks)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import PAPER_SAMPLE
from sharedroot.errors import InputError
from sharedroot.guestos import findself as fs
from sharedroot.guestos import network
from sharedroot.model.parm import Identity, format_parm
from sharedroot.model.types import DeviceBus, Network
from sharedroot.run import have, run

SRC = Path(__file__).resolve().parents[1] / "src"
GOLD_MACHINE_ID = "0123456789abcdef0123456789abcdef"


LNX226 = Identity("lnx226.example.com", "10.0.2.26", 24, "10.0.2.2", "10.0.2.3")
LNX227 = Identity("lnx227.example.com", "10.0.2.27", 24, "10.0.2.2", "10.0.2.3")


@pytest.fixture(scope="module")
def gold(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A maintenance system's root as it would be copied: real SSH keys, a real ID."""
    root = tmp_path_factory.mktemp("gold") / "root"
    files = {
        "etc/hostname": "s10rwmnt\n",
        "etc/hosts": "127.0.0.1\tlocalhost\n127.0.1.1\ts10rwmnt\n",
        "etc/machine-id": GOLD_MACHINE_ID + "\n",
        "var/lib/dbus/machine-id": GOLD_MACHINE_ID + "\n",
        "etc/resolv.conf": "nameserver 192.0.2.53\n",
        "etc/systemd/network/80-sharedroot-default.network": "[Match]\nName=en*\n",
        "usr/sbin/sshd": "",
        "lib/systemd/system/systemd-networkd.service": "[Unit]\n",
        "sys/class/dmi/id/product_serial": "LNX226\n",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "etc/machine-id").chmod(0o444)
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True)
    (wants / "systemd-networkd.service").symlink_to("/lib/systemd/system/systemd-networkd.service")
    (root / "etc/ssh").mkdir()
    run(["ssh-keygen", "-A", "-f", root])
    assert list((root / "etc/ssh").glob("ssh_host_*_key"))
    return root


@pytest.fixture
def tree(gold: Path, tmp_path: Path) -> Path:
    root = tmp_path / "root"
    shutil.copytree(gold, root, symlinks=True)
    return root


def parm_dir(tmp_path: Path, parms: dict[str, str]) -> Path:
    d = tmp_path / "admin"
    d.mkdir(exist_ok=True)
    for name, text in parms.items():
        (d / f"{name}.PARM-S10").write_text(text)
    return d


@pytest.fixture
def admin(tmp_path: Path) -> Path:
    return parm_dir(tmp_path, {"LNX226": format_parm(LNX226), "LNX227": format_parm(LNX227)})


def key_hashes(root: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((root / "etc/ssh").glob("ssh_host_*"))
    }


def tree_state(root: Path) -> dict[str, tuple[str, int]]:
    """Every entry by content (or link target) and mtime: what 'nothing written' means."""
    state = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        if p.is_symlink():
            what = "->" + os.readlink(p)
        elif p.is_file():
            what = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            what = "dir"
        state[str(p.relative_to(root))] = (what, st.st_mtime_ns)
    return state


def run_findself(
    root: Path, admin: Path | None, guest_name: str | None = None
) -> tuple[fs.Result, list[str]]:
    lines: list[str] = []
    result = fs.findself(root, guest_name=guest_name, parm_dir=admin, log=lines.append)
    return result, lines


def test_first_run_takes_identity_second_changes_nothing(tree: Path, admin: Path) -> None:
    keys_before = key_hashes(tree)
    result, lines = run_findself(tree, admin)

    assert result.guest == "LNX226" and result.identity == LNX226 and result.problem is None
    kinds = [c.split(":")[0].split(" ")[0] for c in result.changes]
    assert kinds == ["hostname", "hosts", "network", "resolv.conf", "machine-id", "ssh"]
    assert "hostname s10rwmnt -> lnx226" in result.changes
    assert all(line.startswith("findself: ") for line in lines)
    assert "findself: hostname s10rwmnt -> lnx226" in lines

    assert (tree / "etc/hostname").read_text() == "lnx226\n"
    hosts = (tree / "etc/hosts").read_text()
    assert "10.0.2.26\tlnx226.example.com lnx226\n" in hosts
    assert "127.0.0.1\tlocalhost\n" in hosts and "s10rwmnt" not in hosts
    net = (tree / network.NETWORKD_FILE).read_text()
    assert "Address=10.0.2.26/24\nGateway=10.0.2.2\nDNS=10.0.2.3\n" in net
    assert "Name=en* eth*" in net
    assert (tree / "etc/resolv.conf").read_text().endswith("nameserver 10.0.2.3\n")

    machine_id = (tree / "etc/machine-id").read_text()
    assert re.fullmatch(r"[0-9a-f]{32}\n", machine_id)
    assert machine_id.strip() != GOLD_MACHINE_ID
    assert (tree / "etc/machine-id").stat().st_mode & 0o777 == 0o444
    assert not (tree / "var/lib/dbus/machine-id").exists()

    keys_after = key_hashes(tree)
    assert set(keys_after) == set(keys_before)
    assert not set(keys_after.values()) & set(keys_before.values())
    assert (tree / "etc/sharedroot/identity").is_file()

    state = tree_state(tree)
    again, lines2 = run_findself(tree, admin)
    assert again.changes == [] and again.problem is None
    assert tree_state(tree) == state
    assert lines2 == [
        "findself: LNX226 is lnx226.example.com 10.0.2.26/24 as recorded; nothing to do"
    ]


def test_two_clones_of_one_gold_differ(gold: Path, tmp_path: Path, admin: Path) -> None:
    ids, keys = [], []
    for guest in ("LNX226", "LNX227"):
        root = tmp_path / guest
        shutil.copytree(gold, root, symlinks=True)
        (root / fs.SERIAL_FILE).write_text(f"{guest}\n")
        result, _ = run_findself(root, admin)
        assert result.guest == guest
        ids.append((root / "etc/machine-id").read_text())
        keys.append(key_hashes(root))
        assert (root / "etc/hostname").read_text() == guest.lower() + "\n"
    assert ids[0] != ids[1]
    assert not set(keys[0].values()) & set(keys[1].values())


def test_paper_sample_parm_file(tree: Path, tmp_path: Path) -> None:
    admin = parm_dir(tmp_path, {"LNX227": PAPER_SAMPLE})
    result, _ = run_findself(tree, admin, guest_name="lnx227")
    assert result.guest == "LNX227"
    assert (tree / "etc/hostname").read_text() == "ntc227\n"
    assert "129.40.179.227\tntc227.pbm.ihost.com ntc227\n" in (tree / "etc/hosts").read_text()
    net = (tree / network.NETWORKD_FILE).read_text()
    assert "Address=129.40.179.227/24\nGateway=129.40.179.254\nDNS=129.40.106.1\n" in net


def test_new_parm_for_same_guest_keeps_machine_id_and_keys(tree: Path, admin: Path) -> None:
    run_findself(tree, admin)
    machine_id, keys = (tree / "etc/machine-id").read_text(), key_hashes(tree)
    moved = Identity("lnx226.example.com", "10.0.3.26", 24, "10.0.3.1")
    (admin / "LNX226.PARM-S10").write_text(format_parm(moved))
    result, _ = run_findself(tree, admin)
    assert [c.split(":")[0] for c in result.changes] == ["hosts", "network (systemd-networkd)"]
    assert "Address=10.0.3.26/24\nGateway=10.0.3.1\n" in (tree / network.NETWORKD_FILE).read_text()
    assert (tree / "etc/machine-id").read_text() == machine_id
    assert key_hashes(tree) == keys


def test_uninitialized_machine_id_is_left_to_systemd(tree: Path, admin: Path) -> None:
    (tree / "etc/machine-id").chmod(0o644)
    (tree / "etc/machine-id").write_text("uninitialized\n")
    result, _ = run_findself(tree, admin)
    assert not any(c.startswith("machine-id") for c in result.changes)
    assert (tree / "etc/machine-id").read_text() == "uninitialized\n"


def test_resolved_owned_resolv_conf_untouched(tree: Path, admin: Path) -> None:
    (tree / "etc/resolv.conf").unlink()
    (tree / "etc/resolv.conf").symlink_to("../run/systemd/resolve/stub-resolv.conf")
    result, _ = run_findself(tree, admin)
    assert not any(c.startswith("resolv.conf") for c in result.changes)
    assert os.readlink(tree / "etc/resolv.conf") == "../run/systemd/resolve/stub-resolv.conf"


def test_ifupdown_image(tree: Path, admin: Path) -> None:
    shutil.rmtree(tree / "etc/systemd/system")
    (tree / "lib/systemd/system/systemd-networkd.service").unlink()
    (tree / "etc/network/interfaces.d").mkdir(parents=True)
    (tree / "etc/network/interfaces").write_text(
        "source /etc/network/interfaces.d/*\nauto lo\niface lo inet loopback\n"
    )
    nic = tree / "sys/class/net/ens3"
    (nic / "device").mkdir(parents=True)
    (nic / "type").write_text("1\n")
    (tree / "sys/class/net/lo").mkdir()
    (tree / "sys/class/net/lo/type").write_text("772\n")
    assert network.detect(tree) is Network.IFUPDOWN
    result, _ = run_findself(tree, admin)
    assert "network (ifupdown, ens3): 10.0.2.26/24 gateway 10.0.2.2" in result.changes
    text = (tree / network.IFUPDOWN_FILE).read_text()
    assert (
        "auto ens3\niface ens3 inet static\n    address 10.0.2.26/24\n    gateway 10.0.2.2\n"
        in text
    )
    assert not (tree / network.NETWORKD_FILE).exists()


HOSTILE = [
    "HostIP=10.0.2.26 Hostname=x;reboot",
    "HostIP=10.0.2.26 Hostname=$(rm -rf /)",
    "HostIP=10.0.2.26 Hostname=`reboot`",
    "HostIP=10.0.2.26 Hostname=../../etc/passwd",
    "HostIP=10.0.2.26 Hostname=lnx226\x00evil",
    "HostIP=10.0.2.26 Hostname=lnx226\\nevil",
    "HostIP=300.1.1.1 Hostname=lnx226",
    "HostIP=10.0.2.26 Hostname=lnx226 Gateway=10.9.9.9",
    "HostIP=10.0.2.26 Hostname=lnx226 Netmask=255.0.255.0",
    "HostIP=10.0.2.26 Hostname=lnx226 Nameserver=1.2.3.4;reboot",
    "Hostname=lnx226",
    "",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_parm_writes_nothing(
    tree: Path, tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    admin = parm_dir(tmp_path, {"LNX226": text})
    before = tree_state(tree)
    assert fs.main(["--root", str(tree), "--parm-dir", str(admin)]) == 0
    assert tree_state(tree) == before
    out = capsys.readouterr().out
    assert out.startswith("findself: LNX226: ") and "keeping the current identity" in out


def test_hostile_guest_name_writes_nothing(
    tree: Path, admin: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tree / fs.SERIAL_FILE).write_text("LNX226\n../x\n")
    before = tree_state(tree)
    assert fs.main(["--root", str(tree), "--parm-dir", str(admin)]) == 0
    assert tree_state(tree) == before
    assert "findself: guest name in /sys/class/dmi/id/product_serial" in capsys.readouterr().out


def test_symlinked_parm_file_refused(tree: Path, tmp_path: Path) -> None:
    admin = tmp_path / "admin"
    admin.mkdir()
    secret = tmp_path / "secret"
    secret.write_text("HostIP=10.0.2.26 Hostname=stolen\n")
    (admin / "LNX226.PARM-S10").symlink_to(secret)
    before = tree_state(tree)
    result, _ = run_findself(tree, admin)
    assert result.problem and "LNX226.PARM-S10" in result.problem
    assert tree_state(tree) == before


def test_missing_parm_or_admin_disk_changes_nothing(tree: Path, tmp_path: Path) -> None:
    before = tree_state(tree)
    result, lines = run_findself(tree, parm_dir(tmp_path, {"LNX999": format_parm(LNX226)}))
    assert result.problem == "LNX226: no parm file LNX226.PARM-S10 on the admin disk"
    result, lines = run_findself(tree, None)
    assert result.problem == "no admin disk (0191) for LNX226"
    assert lines == ["findself: no admin disk (0191) for LNX226; keeping the current identity"]
    assert tree_state(tree) == before


def test_lower_case_parm_name_found(tree: Path, tmp_path: Path) -> None:
    admin = tmp_path / "admin"
    admin.mkdir()
    (admin / "lnx226.parm-s10").write_text(format_parm(LNX226))
    result, _ = run_findself(tree, admin)
    assert result.identity == LNX226


def test_main_without_admin_disk_exits_0(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = tree_state(tree)
    code = fs.main(["--root", str(tree), "--device", "/nonexistent/virtio-0191", "--wait", "0"])
    assert code == 0
    assert tree_state(tree) == before
    out = capsys.readouterr().out
    assert "findself: no admin disk: /nonexistent/virtio-0191 did not appear" in out


def test_main_mounts_the_admin_disk_read_only(
    tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The unit's path: an ext2 admin disk (here an image file) mounted ro, then unmounted."""
    src = parm_dir(tmp_path, {"LNX226": format_parm(LNX226)})
    image = tmp_path / "admin.img"
    run(["mke2fs", "-q", "-F", "-t", "ext2", "-d", src, image, "4M"])
    before = Path("/proc/self/mounts").read_text()
    code = fs.main(["--root", str(tree), "--device", str(image), "--wait", "0"])
    out = capsys.readouterr().out
    if "cannot mount the admin disk" in out:
        pytest.skip("mount not permitted here")
    assert code == 0
    assert "findself: hostname s10rwmnt -> lnx226" in out
    assert Path("/proc/self/mounts").read_text() == before
    assert not list(Path("/run").glob("sharedroot-findself-*"))


def test_platform_virtio_option_keeps_the_smbios_way(
    tree: Path, admin: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--platform virtio on any machine: SMBIOS serial, no OSA handling, today's record."""
    monkeypatch.setattr(fs.os, "uname", lambda: SimpleNamespace(machine="s390x"))
    assert fs.main(["--root", str(tree), "--platform", "virtio", "--parm-dir", str(admin)]) == 0
    assert "findself: hostname s10rwmnt -> lnx226" in capsys.readouterr().out
    record = json.loads((tree / fs.RECORD_FILE).read_text())
    assert sorted(record) == ["gateway", "guest", "hostname", "ip", "nameserver", "prefix"]


def test_runs_with_the_guest_python_alone(tree: Path, admin: Path) -> None:
    """Inside the guest there is only Debian's python3 and this package: no rich."""
    python = "/usr/bin/python3"
    if not os.access(python, os.X_OK):
        pytest.skip("no system python3")
    code = "import sys, sharedroot.guestos.findself as f; sys.exit(f.main(sys.argv[1:]))"
    env = {"PYTHONPATH": str(SRC), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    argv: list[str | Path] = [python, "-c", code, "--root", tree, "--parm-dir", admin]
    proc = run(argv, env=env)
    assert "findself: hostname s10rwmnt -> lnx226" in proc.stdout
    loaded = run(
        [python, "-c", "import sys, sharedroot.guestos.findself; print(sorted(sys.modules))"],
        env=env,
    )
    assert "rich" not in loaded.stdout


def test_guest_name_from_sysinfo_without_smbios(tmp_path: Path) -> None:
    # an s390x guest of the local backend: QEMU's -name shows in /proc/sysinfo
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/sysinfo").write_text("Manufacturer: QEMU\nVM00 Name:           LNX227\n")
    assert fs.read_guest_name(tmp_path) == "LNX227"
    (tmp_path / "proc/sysinfo").write_text("VM00 Name:           ../x\n")
    with pytest.raises(InputError):
        fs.read_guest_name(tmp_path)
    serial = tmp_path / fs.SERIAL_FILE  # SMBIOS, where there is one, comes first
    serial.parent.mkdir(parents=True)
    serial.write_text("LNX242\n")
    assert fs.read_guest_name(tmp_path) == "LNX242"


def test_unit_text(tmp_path: Path) -> None:
    text = fs.unit_text("/usr/local/lib/sharedroot-py", DeviceBus.VIRTIO)
    assert "Environment=PYTHONPATH=/usr/local/lib/sharedroot-py\n" in text
    assert "DefaultDependencies=no" in text and "WantedBy=sysinit.target" in text
    # the backend's platform, not the machine's: local s390x guests have an ext admin disk
    assert "ExecStart=/usr/bin/python3 -m sharedroot.guestos.findself --platform virtio\n" in text
    for unit in ("systemd-networkd.service", "ssh.service", "network-pre.target", "sysinit.target"):
        assert re.search(rf"^Before=.*\b{re.escape(unit)}", text, re.M)
    with pytest.raises(InputError):
        fs.unit_text("/x\nExecStart=/bin/sh", DeviceBus.VIRTIO)
    if not have("systemd-analyze"):
        pytest.skip("no systemd-analyze")
    unit_file = tmp_path / fs.UNIT_NAME
    unit_file.write_text(text)
    proc = run(["systemd-analyze", "verify", unit_file], check=False)
    assert proc.returncode == 0, proc.stderr
    assert fs.UNIT_NAME not in proc.stderr, proc.stderr


def test_network_writers_are_pure() -> None:
    ident = Identity("lnx9", "10.1.0.9", 16)
    assert network.networkd_text(ident).endswith("[Network]\nAddress=10.1.0.9/16\n")
    assert network.resolv_conf_text(ident) is None
    assert "10.1.0.9\tlnx9\n" in network.hosts_text(ident)
    assert network.ifupdown_text(ident, "eth0").endswith("    address 10.1.0.9/16\n")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
