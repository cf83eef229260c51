"""INSTALL: Linux onto the maintenance guest (paper §1.5.4), from a cached golden tree."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import sharedroot
from sharedroot.errors import InputError
from sharedroot.guestos import debian, findself
from sharedroot.hypervisor import cache_dir
from sharedroot.model.parm import check_hostname
from sharedroot.workflows import guards
from sharedroot.workflows.context import UI, Options, Outcome, Site, Step, perform

# Where the guest finds sharedroot's own Python code (findself runs from there).
GUEST_PYTHONPATH = "/usr/local/lib/sharedroot-py"


def guest_files() -> dict[str, bytes | str]:
    """sharedroot's Python package and the findself unit, as files inside the guest."""
    package = Path(sharedroot.__file__).parent
    files: dict[str, bytes | str] = {
        f"{GUEST_PYTHONPATH}/sharedroot/{p.relative_to(package)}": p.read_bytes()
        for p in sorted(package.rglob("*.py"))
    }
    files[f"/etc/systemd/system/{findself.UNIT_NAME}"] = findself.unit_text(GUEST_PYTHONPATH)
    return files


def install(site: Site, ui: UI, opts: Options, distro: str | None = None) -> Outcome:
    distro = distro or site.config.distro
    if distro != "debian-bookworm":
        raise InputError(f"--distro {distro!r}: only debian-bookworm can be installed so far")
    guest = site.config.guests.maintenance
    layout = site.config.layout
    # A user ID may hold @ # $, which a host name may not: those become '-'.
    hostname = check_hostname(re.sub(r"[^a-z0-9]", "-", guest.lower()).strip("-") or "linux")
    recipe = debian.Recipe(layout=layout, hostname=hostname)
    disks = layout.copied
    work = site.home / "tmp" / f"install-{guest}"
    with site.locked(ui, writes=not opts.dry_run):
        guards.logged_off(site, guest)
        guards.has_disks(site, guest, [d.address for d in disks])
        guards.not_linked(site, guest, [d.address for d in disks])
        tree: list[Path] = []

        def build() -> dict[str, object]:
            tree.append(debian.build_tree(cache_dir(), recipe, log=ui.step))
            return {"tree": str(tree[0]), "recipe": debian.recipe_key(recipe)}

        def lay_out() -> None:
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            images = {d.address: work / f"{d.address}.img" for d in disks}
            with debian.staged_tree(tree[0]) as stage:
                debian.install_extra(stage, guest_files(), [findself.UNIT_NAME])
                debian.populate_disks(stage, layout, images, staged=True)
            for d in disks:
                site.hv.replace_disk(guest, d.address, images[d.address])

        where = ", ".join(f"{d.address} {d.mount or 'swap'}" for d in disks)
        steps = [
            Step(f"build or reuse the {distro} golden tree ({debian.recipe_key(recipe)})", build),
            Step(f"lay the tree onto {guest}'s disks ({where})", lay_out),
        ]
        try:
            return perform(
                site,
                ui,
                opts,
                "install",
                {"guest": guest, "distro": distro},
                steps,
                f"Do you want to install {distro} onto {guest}, overwriting its disks? y/n",
                targets=[guest],
            )
        finally:
            shutil.rmtree(work, ignore_errors=True)
