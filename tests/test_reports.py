"""guests, linked, doctor: for people and, with --json, for scripts."""

from __future__ import annotations

from collections.abc import Callable

from conftest import Ran
from sharedroot.model.types import Mode
from sharedroot.workflows.context import Site


def test_guests_json_before_or_after_the_command(
    site: Site, cli: Callable[..., Ran], logged_on: Callable[[str], None]
) -> None:
    logged_on("S10RWTST")
    before = cli("--json", "guests")
    after = cli("guests", "--json")
    assert before.code == after.code == 0
    assert before.json() == after.json()
    rows = {g["name"]: g for g in after.json()}  # type: ignore[union-attr]
    assert rows["S10RWTST"]["state"] == "logged_on"
    assert rows["S10RWMNT"]["state"] == "logged_off"
    assert rows["S10RWMNT"]["role"] == "maintenance"
    assert [d["address"] for d in rows["S10RWMNT"]["disks"]] == [
        "01B0",
        "01B1",
        "01B4",
        "01B5",
        "01B6",
        "01B7",
        "01B8",
    ]
    assert rows["S10RWMNT"]["links"] == [
        {"address": "0191", "owner": "CMSCLONE", "owner_address": "0192", "mode": "RR"}
    ]


def test_linked_in_the_papers_form(site: Site, cli: Callable[..., Ran]) -> None:
    assert cli("define", "LNX227", "--ro").code == 0
    site.hv.link("LNX227", "01B1", "S10GOLD", "21B1", Mode.RR)
    with site.state.transaction():
        site.state.set_current_slot(2)
    ran = cli("linked")
    assert ran.out.splitlines()[:3] == [
        "S10ROGLD LINKS: TEST",
        "S10GOLD LINKS: GOLD 1 LNX227",
        "S10GOLD2 LINKS: [[GOLD 2]]",
    ]
    facts = cli("linked", "--json").json()
    assert facts["current_slot"] == 2  # type: ignore[index]


def test_doctor_lists_programs_and_packages(cli: Callable[..., Ran]) -> None:
    ran = cli("doctor", "--json")
    assert ran.code == 0, ran.out
    programs = {p["program"]: p for p in ran.json()["programs"]}  # type: ignore[index]
    assert programs["mke2fs"]["package"] == "e2fsprogs" and programs["mke2fs"]["found"]
    assert programs["qemu-system-x86_64"]["package"] == "qemu-system-x86"


def test_undefined_site_is_a_clear_input_error(cli: Callable[..., Ran]) -> None:
    ran = cli("guests")
    assert ran.code == 2 and "sharedroot init" in ran.err
