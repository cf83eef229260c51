"""INSTALL: Linux onto the maintenance guest (paper §1.5.4), from a cached golden tree."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import sharedroot
from sharedroot.errors import InputError, RefusedError
from sharedroot.guestos import debian, findself, importsys, zipl
from sharedroot.guestos.lvmdisk import write_lvm_disk
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


def install(
    site: Site,
    ui: UI,
    opts: Options,
    distro: Distro | None = None,
    tree_dir: Path | None = None,
    arch: str | None = None,
    initramfs: Initramfs | None = None,
    network: Network | None = None,
    image: Path | None = None,
) -> Outcome:
    """Build Debian (or reuse the cached tree), or import the system in `tree_dir` or
    `image` (see guestos.importsys), and lay it onto the maintenance guest's disks."""
    distro = distro or Distro(site.config.distro)
    if (tree_dir or image) and (initramfs or network):
        option = "--from-tree" if tree_dir else "--from-image"
        raise InputError(
            f"--initramfs and --network shape a tree sharedroot builds; {option} brings its own"
        )
    given = importsys.source(tree_dir, image, site.home)
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
    with site.locked(ui, writes=not opts.dry_run), contextlib.ExitStack() as stack:
        guards.logged_off(site, guest)
        guards.has_disks(site, guest, [d.address for d in disks])
        guards.not_linked(site, guest, [d.address for d in disks])
        tree: list[Path] = []
        # An imported system is checked (and an image mounted read-only) before any write.
        imported = None
        if given is not None:
            opened = importsys.opened(
                given, site.home / "tmp", ui.step, arch=platform.arch, dry_run=opts.dry_run
            )
            imported = stack.enter_context(opened)

        def build() -> dict[str, object]:
            if given is not None:
                assert imported is not None
                tree.append(imported)
                return {given.option.removeprefix("--from-"): str(given.path)}
            tree.append(debian.build_tree(cache_dir(), recipe, log=ui.step))
            return {"tree": str(tree[0]), "recipe": recipe_key(recipe)}

        def lay_out() -> None:
            # A system of the user's is staged in the store, never beside it.
            under = site.home / "tmp" if given is not None else None
            real_copy = given is not None and given.is_image
            with staged_tree(tree[0], under, real_copy=real_copy) as stage:
                access = site.hv.access_files()
                files = {**guest_files(platform.bus), **access}
                modes = dict.fromkeys(access, 0o600)
                install_extra(stage, files, [findself.UNIT_NAME], modes=modes)
                sources = split_tree(stage, layout, platform=platform)
                for d in disks:
                    if d.kind is DiskKind.LVM:  # the volume group, then each volume's fs
                        with site.hv.attach(guest, d.address, write=True) as device:
                            write_lvm_disk(device, d, sources)
                    elif d.kind is not DiskKind.VDISK:
                        site.hv.fill_disk(guest, d.address, d.kind, d.fs, sources.get(d.address))

        where = ", ".join(f"{d.address} {d.mount or d.vg or 'swap'}" for d in disks)
        steps = [
            Step(
                f"import the system of {given.option} {given.path}"
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
            {"guest": guest}
            | (
                {"source": f"{given.option} {given.path}"}
                if given
                else {
                    "distro": distro.value,
                    "initramfs": recipe.initramfs.value,
                    "network": recipe.network.value,
                }
            ),
            steps,
            f"Do you want to install {given.path if given else what} onto {guest},"
            " overwriting its disks? y/n",
            targets=[guest],
        )
