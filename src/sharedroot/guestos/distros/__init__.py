"""The distributions `install` builds golden trees of: one small module per entry.

As mkosi's distributions: a registry from name to a lazily imported module, each holding
one `Distribution` that says what it is built from and which boot and network paths it
supports. Adding a distribution is adding a file here and a name to `Distro`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from sharedroot.errors import RefusedError
from sharedroot.model.types import Distro, Initramfs, Network

_MODULES = {Distro.DEBIAN_TRIXIE: "trixie", Distro.DEBIAN_BOOKWORM: "bookworm"}


@dataclass(frozen=True)
class Distribution:
    distro: Distro
    suite: str  # debootstrap's name for it
    initramfs: tuple[Initramfs, ...]  # what it can boot with; the first is the default
    networks: tuple[Network, ...]  # what can configure its NIC; the first is the default
    # What each choice installs (apt, without recommends): the tool and what it needs.
    initramfs_packages: tuple[tuple[Initramfs, tuple[str, ...]], ...]
    network_packages: tuple[tuple[Network, tuple[str, ...]], ...]
    # s390x guests boot through zipl from an initramfs-tools initramfs only, so far.
    s390x_initramfs: tuple[Initramfs, ...] = (Initramfs.INITRAMFS_TOOLS,)

    def choose(
        self, arch: str, initramfs: Initramfs | None, network: Network | None
    ) -> tuple[Initramfs, Network]:
        """The options of a build, defaults filled in; a combination it lacks is refused
        with what is missing."""
        boots = self.s390x_initramfs if arch == "s390x" else self.initramfs
        chosen = initramfs or boots[0]
        if chosen not in boots:
            where = f" on {arch}" if arch == "s390x" else ""
            raise RefusedError(
                f"{self.distro}: no {chosen} boot path{where} in sharedroot"
                f" (it has: {', '.join(boots)})"
            )
        net = network or self.networks[0]
        if net not in self.networks:
            raise RefusedError(
                f"{self.distro}: sharedroot cannot configure {net} there"
                f" (it can: {', '.join(self.networks)})"
            )
        return chosen, net

    def packages(self, initramfs: Initramfs, network: Network) -> tuple[str, ...]:
        return dict(self.initramfs_packages)[initramfs] + dict(self.network_packages)[network]


def get(distro: Distro) -> Distribution:
    module = importlib.import_module(f"{__name__}.{_MODULES[distro]}")
    found = module.DISTRIBUTION
    assert isinstance(found, Distribution) and found.distro is distro
    return found


def debian(distro: Distro, suite: str, dhcp_client: str) -> Distribution:
    """A Debian release: every choice of initramfs tool and network stack, ifupdown with
    the release's DHCP client."""
    return Distribution(
        distro=distro,
        suite=suite,
        initramfs=(Initramfs.INITRAMFS_TOOLS, Initramfs.DRACUT),
        networks=(Network.NETWORKD, Network.IFUPDOWN, Network.NETWORKMANAGER),
        initramfs_packages=(
            (Initramfs.INITRAMFS_TOOLS, ("initramfs-tools", "zstd")),
            (Initramfs.DRACUT, ("dracut", "zstd")),
        ),
        network_packages=(
            (Network.NETWORKD, ()),
            (Network.IFUPDOWN, ("ifupdown", dhcp_client)),
            (Network.NETWORKMANAGER, ("network-manager",)),
        ),
    )
