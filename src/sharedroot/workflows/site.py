"""INIT: a new site with the paper's guests (§1.4) and disks (Table 1-1)."""

from __future__ import annotations

from pathlib import Path

from sharedroot.model.layout import (
    ADMIN_LINK_ADDRESS,
    ADMIN_OWN_ADDRESS,
    gold_ro_address,
    gold_rw_address,
)
from sharedroot.model.types import DiskKind, Mode, Role
from sharedroot.store.config import SiteConfig
from sharedroot.workflows.context import UI, Site

ADMIN_EXEC_DISK_SIZE = 4 << 20  # CMSCLONE 191: the EXECs' own small disk
ADMIN_DISK_SIZE = 16 << 20  # CMSCLONE 192: every guest's parm file


def init_site(home: Path, config: SiteConfig, ui: UI, layout_name: str = "paper") -> Site:
    def populate(site: Site) -> None:
        g = config.guests
        hv = site.hv
        layout = config.layout.copied
        with site.state.transaction():
            args = {"layout": layout_name, "prefix": config.prefix}
            op = site.state.journal_start("init", args, [])

            def step(text: str) -> None:
                ui.step(text)
                site.state.journal_step(op, text)

            step(f"define {g.admin} with disks 0191 and {ADMIN_OWN_ADDRESS} (parm files)")
            hv.define_guest(g.admin, Role.ADMIN, adopt=True)
            hv.add_disk(g.admin, "0191", DiskKind.FS, ADMIN_EXEC_DISK_SIZE, "ext2")
            hv.add_disk(g.admin, ADMIN_OWN_ADDRESS, DiskKind.FS, ADMIN_DISK_SIZE, "ext2")
            step(f"define {g.worker} (the machine that runs sharedroot)")
            hv.define_guest(g.worker, Role.WORKER, adopt=True)
            for name, role in (
                (g.maintenance, Role.MAINTENANCE),
                (g.test, Role.TEST),
                (g.staging, Role.STAGING),
            ):
                step(f"define {name} ({role.value}) with {len(layout)} disks")
                hv.define_guest(name, role, adopt=True)
                for d in layout:
                    hv.add_disk(name, d.address, d.kind, d.size, d.fs)
            for slot, holder in enumerate(g.gold, start=1):
                sets = "11Bx and 21Bx" if slot == 1 else "21Bx"
                step(f"define {holder} (gold slot {slot}, disk sets {sets})")
                hv.define_guest(holder, Role.GOLD, adopt=True)
                for d in layout:
                    if slot == 1:  # only the first gold keeps a read-write system (11Bx)
                        hv.add_disk(holder, gold_rw_address(d.address), d.kind, d.size, d.fs)
                    hv.add_disk(holder, gold_ro_address(d.address), d.kind, d.size, d.fs)
                site.state.set_slot(slot, holder)
            for name in (g.maintenance, g.test, g.staging, g.worker):
                hv.link(name, ADMIN_LINK_ADDRESS, g.admin, ADMIN_OWN_ADDRESS, Mode.RR)
            site.state.journal_end(op, "ok")

    return Site.create(home, config, populate)
