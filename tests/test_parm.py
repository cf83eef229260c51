"""The paper's PARM-S10 format, read as is."""

from __future__ import annotations

import pytest

from sharedroot.errors import InputError
from sharedroot.model.parm import Identity, format_parm, identity_from_parm, parse_parm

# The paper's own sample (§1.6.4), as it stands in the paper.
PAPER_SAMPLE = """ramdisk_size=65536 root=/dev/ram1 ro init=/linuxrc TERM=dumb
HostIP=129.40.179.227 Hostname=ntc227.pbm.ihost.com
Gateway=129.40.179.254 Netmask=255.255.255.0
Broadcast=129.40.179.255 Layer2=0
ReadChannel=0.0.0600 WriteChannel=0.0.0601 DataChannel=0.0.0602
Nameserver=129.40.106.1 Portname=dontcare
Install=nfs://129.40.179.200/nfs/sles10/SLES-10-CD-s390x-GMC-CD1
"""


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
