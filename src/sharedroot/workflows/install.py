"""INSTALL: Linux onto the maintenance guest (paper §1.5.4), from a cached golden tree."""

from __future__ import annotations

import os
import re
from pathlib import Path

import sharedroot
from sharedroot.errors import InputError, RefusedError
from sharedroot.guestos import debian, findself, zipl
from sharedroot.guestos.platform import BootLoader, find
from sharedroot.guestos.recipe import recipe_for, recipe_key
from sharedroot.guestos.tree import install_extra, split_tree, staged_tree
from sharedroot.hypervisor import cache_dir
from sharedroot.model.parm import check_hostname
from sharedroot.model.types import DeviceBus, DiskKind, Distro, Initramfs, Network
from sharedroot.workflows import guards
from sharedroot.workflows.attach import guest_tree
from sharedroot.workflows.context import UI, Options, Outcome, Site, Step, perform

# Where the guest finds sharedroot's own Python code (findself runs from there).
GUEST_PYTHONPATH = "/usr/local/lib/sharedroot-py"


def guest_files(bus: DeviceBus) -> dict[str, bytes | str]:
    """sharedroot's Python package and the findself unit, as files inside the guest."""
    package = Path(sharedroot.__file__).parent
    files: dict[str, bytes | str] = {
        f"{GUEST_PYTHONPATH}/sharedroot/{p.relative_to(package)}": p.read_bytes()
        for p in sorted(package.rglob("*.py"))
    }
    files[f"/etc/systemd/system/{findself.UNIT_NAME}"] = findself.unit_text(GUEST_PYTHONPATH, bus)
    return files


def own_tree(path: Path) -> Path:
    """A root tree the user gives: an existing directory that looks like a Linux system."""
    tree = Path(os.path.normpath(path.absolute()))
    if not tree.is_dir() or tree.is_symlink():
        raise InputError(f"--tree {str(path)!r}: not a directory")
    if tree == Path("/"):
        raise InputError("--tree /: the worker's own root cannot be installed onto a guest")
    if not (tree / "etc").is_dir() or not (tree / "usr").is_dir():
        raise InputError(f"--tree {str(path)!r}: holds no Linux system (no etc/ and usr/)")
    return tree


def install(
    site: Site,
    ui: UI,
    opts: Options,
    distro: Distro | None = None,
    tree_dir: Path | None = None,
    arch: str | None = None,
    initramfs: Initramfs | None = None,
    network: Network | None = None,
) -> Outcome:
    distro = distro or Distro(site.config.distro)
    if tree_dir is not None and (initramfs or network):
        raise InputError(
            "--initramfs and --network shape a tree sharedroot builds; --tree brings its own"
        )
    given = own_tree(tree_dir) if tree_dir is not None else None
    try:
        platform = find(site.hv.bus, arch)
    except InputError as exc:
        raise RefusedError(f"--arch {arch}: the {site.hv.name} backend cannot: {exc}") from None
    guest = site.config.guests.maintenance
    layout = site.config.layout
    # A user ID may hold @ # $, which a host name may not: those become '-'.
    hostname = check_hostname(re.sub(r"[^a-z0-9]", "-", guest.lower()).strip("-") or "linux")
    # A combination the distribution lacks is refused here, before anything is written.
    recipe = recipe_for(
        platform,
        layout=layout,
        hostname=hostname,
        distro=distro,
        initramfs=initramfs,
        network=network,
    )
    what = f"{distro} ({recipe.initramfs}, {recipe.network})"
    disks = layout.copied
    with site.locked(ui, writes=not opts.dry_run):
        guards.logged_off(site, guest)
        guards.has_disks(site, guest, [d.address for d in disks])
        guards.not_linked(site, guest, [d.address for d in disks])
        tree: list[Path] = []

        def build() -> dict[str, object]:
            if given is not None:
                tree.append(given)
                return {"tree": str(given)}
            tree.append(debian.build_tree(cache_dir(), recipe, log=ui.step))
            return {"tree": str(tree[0]), "recipe": recipe_key(recipe)}

        def lay_out() -> None:
            # A tree of the user's is staged in the store, never beside it.
            under = site.home / "tmp" if given is not None else None
            with staged_tree(tree[0], under) as stage:
                access = site.hv.access_files()
                files = {**guest_files(platform.bus), **access}
                modes = dict.fromkeys(access, 0o600)
                install_extra(stage, files, [findself.UNIT_NAME], modes=modes)
                sources = split_tree(stage, layout, platform=platform)
                for d in disks:
                    if d.kind is not DiskKind.VDISK:
                        site.hv.fill_disk(guest, d.address, d.kind, d.fs, sources.get(d.address))

        where = ", ".join(f"{d.address} {d.mount or 'swap'}" for d in disks)
        steps = [
            Step(
                f"use the tree {given}"
                if given is not None
                else f"build or reuse the {what} golden tree ({recipe_key(recipe)})",
                build,
            ),
            Step(f"lay the tree onto {guest}'s disks ({where})", lay_out),
        ]
        if platform.boot_loader is BootLoader.ZIPL:
            boot_disks = [layout.root, *(d for d in layout.copied if d.mount == "/boot")]

            def ipl_record() -> None:
                with guest_tree(site, guest, boot_disks, write=True) as root:
                    zipl.write_ipl_record(root, ui.step)

            steps.append(Step(f"write {guest}'s IPL record (zipl, on a real DASD)", ipl_record))
        return perform(
            site,
            ui,
            opts,
            "install",
            {"guest": guest, "distro": distro.value}
            | (
                {}
                if given
                else {"initramfs": recipe.initramfs.value, "network": recipe.network.value}
            ),
            steps,
            f"Do you want to install {given or what} onto {guest}, overwriting its disks? y/n",
            targets=[guest],
        )
