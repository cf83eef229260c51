"""inventory and metrics: the fleet read by the real ansible-inventory and by
prometheus_client's parser; verify's outcome remembered, shown, and forgotten."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import SHAREDROOT, Ran
from sharedroot.errors import StoreError
from sharedroot.model.types import Mode
from sharedroot.store.state import STATE_FILE
from sharedroot.workflows import facts
from sharedroot.workflows.context import Site
from sharedroot.workflows.inventory import GROUP
from sharedroot.workflows.metrics import Family, Gauge, Sample, exposition, metrics_text

WEB = "LNX$1"  # z/VM user IDs may hold $ # @
DB = "LNX#2"
RW = "A@B"


@pytest.fixture
def fleet(site: Site, cli: Callable[..., Ran], logged_on: Callable[[str], None]) -> Site:
    """Two read-only clones linking gold slot 1 (current, generation 1), one read-write
    clone without a parm file; WEB logged on; WEB passed its last verify, DB failed."""
    for args in (
        [WEB, "--ro", "--hostname", "web1.example.com", "--ip", "10.0.0.11"],
        [DB, "--ro", "--hostname", "db1", "--ip", "10.0.0.12"],
        [RW, "--rw"],
    ):
        assert cli("define", *args).code == 0
    for guest in (WEB, DB):  # what clonero's relink leaves, without copying the gold
        site.hv.link(guest, "01B1", "S10GOLD", "21B1", Mode.RR)
    with site.state.transaction():
        site.state.add_generation(1, "S10ROGLD", {}, {})
        site.state.set_current_slot(1)
    facts.record_verify(site, WEB, 12, [])
    facts.record_verify(site, DB, 12, ["touch /etc/foo", "systemctl --failed is empty"])
    logged_on(WEB)
    return site


def _json(ran: Ran) -> Any:
    assert ran.code == 0, ran.err
    return json.loads(ran.out)


def test_inventory_list_groups_and_hostvars(fleet: Site, cli: Callable[..., Ran]) -> None:
    inv = _json(cli("inventory", "--list"))
    assert _json(cli("--json", "inventory", "--list")) == inv
    groups = {k: v for k, v in inv.items() if k not in ("_meta", "all")}
    assert inv["all"] == {"children": sorted(groups)}
    assert all(GROUP.fullmatch(g) for g in groups)
    assert groups["role_ro_clone"] == {"hosts": sorted([WEB, DB])}
    assert groups["role_rw_clone"] == {"hosts": [RW]}
    assert groups["role_gold"] == {"hosts": ["S10GOLD", "S10GOLD2"]}
    assert groups["slot_1"] == {"hosts": sorted([WEB, DB])}
    assert groups["slot_2"] == {"hosts": []}  # every slot's group, empty or not
    assert groups["state_logged_on"] == {"hosts": [WEB]}
    assert WEB not in groups["state_logged_off"]["hosts"]
    assert groups["verify_ok"] == {"hosts": [WEB]}
    assert groups["verify_failed"] == {"hosts": [DB]}
    assert RW in groups["verify_never"]["hosts"]
    hostvars = inv["_meta"]["hostvars"]
    assert set(hostvars) == {g.name for g in fleet.state.guests()}
    assert hostvars[WEB] == {
        "ansible_host": "10.0.0.11",
        "sharedroot_hostname": "web1.example.com",
        "sharedroot_role": "ro",
        "sharedroot_state": "logged_on",
        "sharedroot_slot": 1,
        "sharedroot_generation": 1,
        "sharedroot_host": None,
        "sharedroot_verify_ok": True,
        "sharedroot_verify_at": hostvars[WEB]["sharedroot_verify_at"],
    }
    assert hostvars[DB]["sharedroot_verify_ok"] is False
    assert "ansible_host" not in hostvars[RW]  # no parm file: Ansible uses the name
    assert hostvars[RW]["sharedroot_slot"] is None


def test_inventory_host(fleet: Site, cli: Callable[..., Ran]) -> None:
    listed = _json(cli("inventory", "--list"))["_meta"]["hostvars"]
    assert _json(cli("inventory", "--host", DB.lower())) == listed[DB]
    assert _json(cli("inventory", "--host", "NOSUCH")) == {}  # Ansible's rule
    assert cli("inventory").code == 2  # --list or --host
    assert cli("inventory", "--list", "--host", DB).code == 2
    assert cli("inventory", "--host", "A;B").code == 2


def test_ansible_inventory_reads_the_script(fleet: Site, tmp_path: Path) -> None:
    script = tmp_path / "sharedroot-inventory"
    script.write_text(f'#!/bin/sh\nexec {SHAREDROOT} inventory "$@"\n')
    script.chmod(0o755)
    env = os.environ | {
        "SHAREDROOT_HOME": str(fleet.home),
        "HOME": str(tmp_path),  # ansible's own temporary files
        "ANSIBLE_INVENTORY_UNPARSED_FAILED": "true",  # a script it cannot read: a failure
    }
    ran = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-inventory"), "-i", str(script), "--list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 0, ran.stderr
    seen = json.loads(ran.stdout)
    assert set(seen["slot_1"]["hosts"]) == {WEB, DB}
    assert seen["verify_failed"]["hosts"] == [DB]
    assert seen["role_rw_clone"]["hosts"] == [RW]
    assert "role_ro_clone" in seen["all"]["children"]
    web = seen["_meta"]["hostvars"][WEB]
    assert web["ansible_host"] == "10.0.0.11"
    assert web["sharedroot_slot"] == 1 and web["sharedroot_role"] == "ro"


def _families(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    return {
        f.name: {tuple(sorted(s.labels.items())): s.value for s in f.samples}
        for f in text_string_to_metric_families(text)
    }


def test_metrics_parse_as_prometheus_reads_them(fleet: Site, cli: Callable[..., Ran]) -> None:
    ran = cli("metrics")
    assert ran.code == 0, ran.err
    for name in ("sharedroot_guest_up", "sharedroot_verify_ok"):
        assert f"# HELP {name} " in ran.out and f"# TYPE {name} gauge" in ran.out
    m = _families(ran.out)
    assert m["sharedroot_guest_up"][(("guest", WEB),)] == 1
    assert m["sharedroot_guest_up"][(("guest", DB),)] == 0
    info = m["sharedroot_guest_info"]
    assert info[(("guest", WEB), ("role", "ro"), ("slot", "1"))] == 1
    assert info[(("guest", RW), ("role", "rw"), ("slot", ""))] == 1
    assert m["sharedroot_slot_generation"] == {
        (("holder", "S10GOLD"), ("slot", "1")): 1,
        (("holder", "S10GOLD2"), ("slot", "2")): 0,
    }
    assert m["sharedroot_slot_current"] == {(("slot", "1"),): 1, (("slot", "2"),): 0}
    assert m["sharedroot_slot_clones"] == {(("slot", "1"),): 2, (("slot", "2"),): 0}
    assert m["sharedroot_verify_ok"] == {(("guest", WEB),): 1, (("guest", DB),): 0}
    web = facts.verify_record(fleet.state, WEB)
    assert web is not None and web.last_success is not None
    last = m["sharedroot_verify_last_success_timestamp_seconds"]
    assert last == {(("guest", WEB),): facts.seconds(web.last_success)}  # DB never passed
    assert m["sharedroot_guests"][(("role", "ro"),)] == 2
    assert m["sharedroot_guests"][(("role", "gold"),)] == 2
    samples = cli("--json", "metrics").json()
    assert {"metric": "sharedroot_guest_up", "labels": {"guest": WEB}, "value": 1.0} in samples  # type: ignore[operator]


def test_metrics_output_file_and_extra_gauges(fleet: Site, cli: Callable[..., Ran]) -> None:
    target = fleet.home.parent / "textfile" / "sharedroot.prom"
    assert cli("metrics", "--output", str(target)).code == 2  # no such directory
    target.parent.mkdir()
    ran = cli("metrics", "--output", str(target))
    assert ran.code == 0 and ran.out == ""
    assert list(target.parent.iterdir()) == [target]  # nothing left beside it
    assert "sharedroot_guest_up" in _families(target.read_text())
    text = metrics_text(fleet, {"sharedroot_jobs_running": Gauge("Jobs running now.", 3)})
    assert _families(text)["sharedroot_jobs_running"] == {(): 3}
    with pytest.raises(ValueError, match="already"):
        metrics_text(fleet, {"sharedroot_guest_up": Gauge("again", 1)})
    with pytest.raises(ValueError, match="metric name"):
        metrics_text(fleet, {"jobs-running": Gauge("bad name", 1)})


def test_label_values_are_escaped() -> None:
    odd = 'a"b\\c\nd $#@'
    text = exposition(
        [Family("x_info", "help with \\ and\na newline", (Sample((("v", odd),), 1.5),))]
    )
    assert 'v="a\\"b\\\\c\\nd $#@"' in text
    (family,) = text_string_to_metric_families(text)
    assert family.documentation == "help with \\ and\na newline"
    assert family.samples[0].labels == {"v": odd} and family.samples[0].value == 1.5
    with pytest.raises(ValueError, match="label name"):
        Family("x", "h", (Sample((("__name", "v"),), 1),))


def test_verify_outcome_kept_with_its_last_success(site: Site, cli: Callable[..., Ran]) -> None:
    assert cli("define", WEB, "--ro", "--hostname", "web1", "--ip", "10.0.0.11").code == 0
    rows = {g["name"]: g for g in _json(cli("guests", "--json"))}
    assert rows[WEB]["verify"] is None
    assert rows[WEB]["identity"] == {"hostname": "web1", "ip": "10.0.0.11"}
    passed = facts.record_verify(site, WEB, 12, [])
    failed = facts.record_verify(site, WEB, 12, ["touch /etc/foo"])
    assert failed.last_success == passed.at and not failed.ok
    shown = {g["name"]: g for g in _json(cli("guests", "--json"))}[WEB]["verify"]
    assert shown == {
        "at": failed.at,
        "ok": False,
        "checks": 12,
        "failed": ["touch /etc/foo"],
        "last_success": passed.at,
    }
    assert cli("guests").out == cli("guests").out  # the table renders with the new fields
    with site.state.transaction():  # clonero: a new clone forgets its verify, not its identity
        facts.forget_learnt(site.state, WEB)
    rows = {g["name"]: g for g in _json(cli("guests", "--json"))}
    assert rows[WEB]["verify"] is None and rows[WEB]["identity"] is not None
    facts.record_verify(site, WEB, 12, [])
    assert cli("delete", WEB, "--yes").code == 0
    assert site.state.facts("verify:") == {} and site.state.facts("identity:") == {}
    with pytest.raises(Exception, match="failed of"):
        facts.record_verify(site, WEB, 1, ["a", "b"])


def test_identity_of_a_clone_defined_before_it_was_recorded(
    site: Site, cli: Callable[..., Ran]
) -> None:
    batch = site.home.parent / "fleet.txt"
    batch.write_text("LNX1 ro lnx1 10.0.0.21\nLNX2 rw - -\n")
    assert cli("define", "--from", str(batch)).code == 0
    with site.state.transaction():  # as an earlier sharedroot left them
        for key in site.state.facts("identity:"):
            site.state.forget_fact(key)
    rows = {g["name"]: g for g in _json(cli("guests", "--json"))}
    assert rows["LNX1"]["identity"] == {"hostname": "lnx1", "ip": "10.0.0.21"}  # from the journal
    assert rows["LNX2"]["identity"] is None


def test_a_guest_without_a_parm_file_is_recorded_so(site: Site, cli: Callable[..., Ran]) -> None:
    assert cli("define", RW, "--rw").code == 0
    assert site.state.facts("identity:") == {f"identity:{RW}": "null"}  # no journal to read
    assert {g["name"]: g for g in _json(cli("guests", "--json"))}[RW]["identity"] is None


def test_a_damaged_verify_fact_is_a_store_error(site: Site, cli: Callable[..., Ran]) -> None:
    assert cli("define", WEB, "--ro").code == 0
    site.state.close()
    db = sqlite3.connect(site.home / STATE_FILE)
    with db:
        db.execute("INSERT INTO meta VALUES (?, ?)", (f"fact:verify:{WEB}", '{"ok": "yes"}'))
    db.close()
    for args in (["guests"], ["inventory", "--list"], ["metrics"]):
        ran = cli(*args)
        assert ran.code == 1 and f"fact verify:{WEB}: not what sharedroot writes" in ran.err
    with pytest.raises(StoreError):
        facts.verify_records(Site.open(site.home, readonly=True).state)
