"""A guest's disks on the worker for the length of a `with` block (LINK, mount, DETACH)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

from sharedroot.guestos.lvmdisk import volume_ranges
from sharedroot.guestos.mount import mounted_tree
from sharedroot.hypervisor.copyengine import content_hash
from sharedroot.model.layout import DiskSpec
from sharedroot.model.types import DiskKind
from sharedroot.workflows.context import Site


@contextmanager
def guest_tree(
    site: Site,
    guest: str,
    disks: Sequence[DiskSpec],
    *,
    write: bool = False,
    at: Path | None = None,
    addresses: Sequence[str] | None = None,
) -> Iterator[Path]:
    """The guest's filesystem disks mounted as one tree (read-only unless `write`); an
    LVM disk's logical volumes are mounted where the layout puts them.

    `addresses` names the guest's own addresses of the disks when they differ from the
    layout's (a gold slot keeps /local at 21B5). Every disk is attached first and
    detached last, however the body ends.
    """
    where = addresses or [d.address for d in disks]
    with ExitStack() as stack:
        mounts: list[tuple[str, Path, str]] = []
        ranges: dict[str, tuple[int, int]] = {}
        for d, addr in zip(disks, where, strict=True):
            device = stack.enter_context(site.hv.attach(guest, addr, write=write))
            if d.kind is DiskKind.LVM:  # each logical volume at its byte range
                at_range = volume_ranges(device, d)
                for v in d.volumes:
                    mounts.append((v.mount, device, v.fs))
                    ranges[v.mount] = at_range[v.name]
            else:
                mounts.append((str(d.mount), device, str(d.fs)))
        with mounted_tree(mounts, readonly=not write, at=at, ranges=ranges) as root:
            yield root


def disk_hash(site: Site, guest: str, address: str) -> str:
    """The content hash of a guest's disk, read through an attach."""
    with site.hv.attach(guest, address) as device:
        return content_hash(device)
