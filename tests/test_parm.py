"""The paper's PARM-S10 format, read as is."""

from __future__ import annotations

import pytest

from conftest import PAPER_SAMPLE
from sharedroot.errors import InputError
from sharedroot.model.parm import (
    Identity,
    check_hostname,
    check_netmask,
    format_parm,
    identity_from_parm,
    parse_parm,
)


def test_paper_sample_reads_as_is() -> None:
    ident = identity_from_parm(PAPER_SAMPLE)
    assert ident == Identity(
        "ntc227.pbm.ihost.com", "129.40.179.227", 24, "129.40.179.254", "129.40.106.1"
    )
    assert parse_parm(PAPER_SAMPLE)["readchannel"] == "0.0.0600"


def test_written_parm_reads_back() -> None:
    ident = Identity("lnx226", "10.0.2.26", 24, "10.0.2.2", "10.0.2.3")
    text = format_parm(ident)
    assert "HostIP=10.0.2.26 Hostname=lnx226" in text
    assert identity_from_parm(text) == ident


@pytest.mark.parametrize(
    "text",
    [
        "HostIP=10.0.0.5 Hostname=x;reboot",
        "HostIP=10.0.0.5 Hostname=$(reboot)",
        "HostIP=10.0.0.5 Hostname=../../etc/passwd",
        "HostIP=300.1.1.1 Hostname=ok",
        "HostIP=10.0.0.5 Hostname=ok Netmask=255.0.255.0",
        "HostIP=10.0.0.0 Hostname=ok Netmask=255.255.255.0",
        "HostIP=10.0.0.5 Hostname=ok Gateway=10.1.0.1",
        "Hostname=ok",
        "HostIP=10.0.0.5 Hostname=-bad-",
    ],
)
def test_hostile_or_wrong_values_are_rejected(text: str) -> None:
    with pytest.raises(InputError):
        identity_from_parm(text)


@pytest.mark.parametrize("value", ["lnx1\n", "lnx1\n.evil", "lnx1\r"])
def test_hostname_with_a_line_end_is_rejected(value: str) -> None:
    # re.match with `$` let a final newline through; the rule is a full match.
    with pytest.raises(InputError, match="hostname"):
        check_hostname(value)


@pytest.mark.parametrize("value", ["0", "0.0.0.0", "33", "024", "0.0.0.255", "24\n"])
def test_netmask_is_a_prefix_from_1_to_32(value: str) -> None:
    with pytest.raises(InputError, match="netmask"):
        check_netmask(value)


def test_format_parm_checks_again_before_writing() -> None:
    ident = Identity("lnx226", "10.0.2.26", 24)
    object.__setattr__(ident, "hostname", "lnx226\nHostIP=6.6.6.6")
    with pytest.raises(InputError):
        format_parm(ident)
