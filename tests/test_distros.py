"""The distributions registry and the recipe options: defaults, cache keys, refusals."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from conftest import Ran
from sharedroot.errors import RefusedError
from sharedroot.guestos import distros
from sharedroot.guestos.platform import CCW, VIRTIO
from sharedroot.guestos.recipe import DEFAULT_RECIPE, recipe_for, recipe_key
from sharedroot.model.layout import PAPER_LAYOUT
from sharedroot.model.types import DEFAULT_DISTRO, Distro, Initramfs, Network


def recipe(platform=VIRTIO, **options):  # type: ignore[no-untyped-def]
    return recipe_for(platform, layout=PAPER_LAYOUT, hostname="s10rwmnt", **options)


@pytest.mark.parametrize("distro", list(Distro))
def test_every_distro_has_its_module(distro: Distro) -> None:
    dist = distros.get(distro)
    assert dist.distro is distro and distro.value == f"debian-{dist.suite}"
    r = recipe(distro=distro)
    assert r.suite == dist.suite and recipe_key(r).startswith(f"{distro}-")
    assert (r.initramfs, r.network) == (dist.initramfs[0], dist.networks[0])


def test_the_default_recipe_is_the_default_distros() -> None:
    assert DEFAULT_RECIPE.distro is DEFAULT_DISTRO
    assert recipe() == DEFAULT_RECIPE


def test_every_option_is_in_the_cache_key() -> None:
    keys = {
        recipe_key(recipe(distro=d, network=n)) for d in Distro for n in distros.get(d).networks
    }
    assert len(keys) == sum(len(distros.get(d).networks) for d in Distro)
    ifupdown = recipe(network=Network.IFUPDOWN)
    assert "ifupdown" in ifupdown.packages and "ifupdown" not in DEFAULT_RECIPE.packages


def test_a_combination_the_distribution_lacks_is_refused_by_name() -> None:
    dist = distros.get(DEFAULT_DISTRO)
    missing = [i for i in Initramfs if i not in dist.s390x_initramfs]
    for boot in missing:
        with pytest.raises(RefusedError, match=f"no {boot} boot path on s390x"):
            recipe(CCW, initramfs=boot)


@pytest.mark.usefixtures("site")
def test_install_refuses_options_with_a_tree_of_its_own(cli: Callable[..., Ran]) -> None:
    ran = cli("install", "--from-tree", "/usr", "--network", "ifupdown", "--yes")
    assert ran.code == 2, ran.err
    assert "--from-tree brings its own" in ran.err


def test_install_refuses_bad_option_values(cli: Callable[..., Ran]) -> None:
    for option in ("--initramfs", "--network", "--distro"):
        ran = cli("install", option, "mkinitcpio", "--yes")
        assert ran.code == 2 and f"{option}: invalid choice: 'mkinitcpio'" in ran.err
