"""Read-only clones of a NetworkManager gold take their address from the parm file (real boots).

The maintenance system is Debian 13 with dracut and NetworkManager (the boot and network
paths of today's SUSE and Red Hat systems); two read-only clones of its gold
boot side by side, and each has the parm file's address on its NIC through findself's
keyfile (connection "sharedroot"), not NM's automatic DHCP profile.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator

import pytest

from conftest import BootSite

pytestmark = [
    pytest.mark.boot,
    pytest.mark.skipif(os.geteuid() != 0, reason="guests need root (loop mounts, QEMU)"),
]

# The maintenance system's recipe, in one place: dracut's 90sharedroot binds /etc early.
INSTALL_ARGS = ("--distro", "debian-trixie", "--initramfs", "dracut", "--network", "networkmanager")
CLONES = {"LNX227": "10.0.2.27", "LNX242": "10.0.2.42"}
KEYFILE = "/etc/NetworkManager/system-connections/sharedroot.nmconnection"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BootSite]:
    s = BootSite.installed(tmp_path_factory, "nm", *INSTALL_ARGS)
    s.run("mnt2rogld", "--yes")
    s.run("ro2gold", "--yes")
    for name, ip in CLONES.items():
        s.run("define", name, "--ro", "--hostname", name.lower(), "--ip", ip,
              "--gateway", "10.0.2.2", "--nameserver", "10.0.2.3")  # fmt: skip
        s.run("clonero", name, "--yes")
    yield s
    for g in CLONES:
        s.run("stop", g, "--timeout", "30", check=False)


def active(site: BootSite, guest: str) -> list[str]:
    """NM's active connections as NAME:DEVICE:TYPE, once NM has activated one.

    NetworkManager-wait-online is off, so the boot may finish before the activation.
    """
    deadline = time.monotonic() + 120
    while True:
        lines = site.sh(guest, "nmcli -t -f NAME,DEVICE,TYPE connection show --active")
        rows = [r for r in lines.splitlines() if not r.startswith("lo:")]
        if rows or time.monotonic() > deadline:
            return rows
        time.sleep(2)


def test_clones_get_the_parm_files_address_through_networkmanager(site: BootSite) -> None:
    site.start(*CLONES)
    machine_ids = set()
    for guest, ip in CLONES.items():
        report = json.loads(site.run("verify", guest, "--json", check=False).stdout)
        assert report["ok"], f"{guest}: {[c for c in report['checks'] if not c['ok']]}"

        rows = active(site, guest)
        assert len(rows) == 1 and rows[0].startswith("sharedroot:"), rows
        _, device, kind = rows[0].split(":")
        assert kind == "802-3-ethernet", rows
        assert site.sh(guest, f"nmcli -g IP4.ADDRESS device show {device}") == f"{ip}/24\n"
        assert f"inet {ip}/24 " in site.sh(guest, f"ip -4 -o addr show dev {device}")
        route = site.sh(guest, "ip -4 route show default")
        assert route.startswith(f"default via 10.0.2.2 dev {device}"), route
        # NM's automatic DHCP profile was never made: the keyfile fits the NIC
        names = site.sh(guest, "nmcli -t -f NAME connection show").split()
        assert names == ["sharedroot"] or sorted(names) == ["lo", "sharedroot"], names
        # NM wrote resolv.conf from the keyfile's dns=
        assert "nameserver 10.0.2.3" in site.sh(guest, "cat /etc/resolv.conf")
        assert site.sh(guest, f"stat -c '%a %U' {KEYFILE}") == "600 root\n"
        # the first boot's preset-all left networkd and the wait-online units off
        units = "systemd-networkd systemd-networkd-wait-online NetworkManager-wait-online"
        states = site.sh(guest, f"systemctl is-enabled {units} || true").split()
        assert states == ["disabled", "disabled", "masked"], states
        # dracut's 90sharedroot bound the clone's own /etc from /local before PID 1
        assert site.sh(guest, "findmnt -no SOURCE /etc").strip().endswith("[/etc]")
        hostname, machine_id = site.sh(guest, "hostname; cat /etc/machine-id").split()
        assert hostname == guest.lower()
        machine_ids.add(machine_id)
    assert len(machine_ids) == len(CLONES)
