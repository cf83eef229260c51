"""site.toml: reading with strict validation, and writing."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sharedroot.errors import InputError, StoreError
from sharedroot.files import regular_file
from sharedroot.model.layout import (
    PAPER_LAYOUT,
    DiskSpec,
    Layout,
    check_address_plan,
    check_fs,
    check_layout,
    check_layout_address,
    check_mount,
)
from sharedroot.model.types import (
    Access,
    DiskKind,
    Switch,
    address,
    format_size,
    guest_name,
    parse_size,
    shown,
)
from sharedroot.model.volumes import Volume, check_lv_name, check_vg_name
from sharedroot.model.writable import WritablePath, parse_table, render_table
from sharedroot.store.settings import (
    LIBVIRT_SETTINGS,
    LIBVIRT_SETTINGS_BY_KEY,
    SETTINGS,
    SETTINGS_BY_KEY,
    ZVM_SETTINGS,
    ZVM_SETTINGS_BY_KEY,
)

SITE_FILE = "site.toml"
ROLE_KEYS = ("maintenance", "test", "staging", "worker", "admin")
DISK_KEYS = ("kind", "mount", "fs", "access", "size", "vg", "volumes")
VOLUME_KEYS = ("mount", "fs", "size")
PAPER = "paper"  # `init --layout paper`: Table 1-1
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class PipelineGuests:
    """The guests of the paper's §1.4 by role."""

    maintenance: str  # S10RWMNT
    test: str  # S10RWTST
    staging: str  # S10ROGLD
    worker: str  # LNXCLONE
    admin: str  # CMSCLONE
    gold: tuple[str, ...]  # S10GOLD, S10GOLD2, ...: slot n is gold[n-1]

    def all(self) -> tuple[str, ...]:
        return (self.maintenance, self.test, *self.gold, self.staging, self.worker, self.admin)


@dataclass(frozen=True)
class ZvmSettings:
    """[zvm]: how the z/VM backend reaches CP, the directory and the worker's devices."""

    directory: str = "smcli"
    smcli: str = "smcli"
    link_range: str = "F000-F0FF"
    device_type: str = "3390"
    allocation_group: str = "POOL1"
    signal_within: int = 60
    manual_wait: int = 3600

    def link_addresses(self) -> range:
        first, last = self.link_range.split("-")
        return range(int(first, 16), int(last, 16) + 1)


@dataclass(frozen=True)
class LibvirtSettings:
    """[libvirt]: the hosts whose libvirtd runs the guests, the pool every host sees."""

    hosts: tuple[str, ...] = ()  # normalised URIs (model.hosturi)
    pool: str = ""


@dataclass(frozen=True)
class SiteConfig:
    backend: str
    prefix: str
    gold_slots: int
    distro: str
    memory_mb: int
    dax: Switch
    ksm: Switch
    guests: PipelineGuests
    layout: Layout
    zvm: ZvmSettings = ZvmSettings()
    libvirt: LibvirtSettings = LibvirtSettings()
    writable: tuple[WritablePath, ...] = ()  # [writable]: paths picky software writes

    def slot_holder(self, slot: int) -> str:
        if not 1 <= slot <= self.gold_slots:
            raise InputError(f"slot {slot}: this site has gold slots 1 to {self.gold_slots}")
        return self.guests.gold[slot - 1]


def default_guests(prefix: str, slots: int) -> PipelineGuests:
    gold = tuple(f"{prefix}GOLD" if n == 1 else f"{prefix}GOLD{n}" for n in range(1, slots + 1))
    return PipelineGuests(
        maintenance=f"{prefix}RWMNT",
        test=f"{prefix}RWTST",
        staging=f"{prefix}ROGLD",
        worker="LNXCLONE",
        admin="CMSCLONE",
        gold=gold,
    )


def make_config(
    values: Mapping[str, Any],
    sizes: Mapping[str, int] | None = None,
    layout: Layout = PAPER_LAYOUT,
) -> SiteConfig:
    """A config from setting values (as `init` gets them), a layout and size overrides
    (by mount point, a logical volume's too, or by address)."""
    parsed = {s.key: s.parse(values.get(s.key, s.default), s.key) for s in SETTINGS}
    zvm = ZvmSettings(
        **{s.key: s.parse(values.get(s.option, s.default), s.option) for s in ZVM_SETTINGS}
    )
    libvirt = LibvirtSettings(
        **{s.key: s.parse(values.get(s.option, s.default), s.flag) for s in LIBVIRT_SETTINGS}
    )
    _check_libvirt(parsed["backend"], libvirt, {s.key: s.flag for s in LIBVIRT_SETTINGS})
    disks = []
    by_mount = dict(sizes or {})
    for d in layout:
        key = d.mount or d.address
        size = by_mount.pop(key, None) or by_mount.pop(d.address, None) or d.size
        volumes = tuple(replace(v, size=by_mount.pop(v.mount, v.size)) for v in d.volumes)
        disks.append(replace(d, size=size, volumes=volumes))
    if by_mount:
        raise InputError(f"--size {next(iter(by_mount))}: no such mount point or address")
    guests = default_guests(parsed["prefix"], parsed["gold_slots"])
    config = SiteConfig(
        guests=guests, layout=Layout(tuple(disks)), zvm=zvm, libvirt=libvirt, **parsed
    )
    _check_guests(config.guests, "settings")
    return config


def check_store_apart(config: SiteConfig, home: Path) -> None:
    """state.db stays with the controller: never in (or around) the pool the hosts share,
    where SQLite's locking is not to be trusted (NFS)."""
    if config.backend != "libvirt":
        return
    pool, store = Path(config.libvirt.pool), home.resolve()
    if store == pool or pool in store.parents or store in pool.parents:
        raise InputError(
            f"--pool {pool}: the store {store} must stay with the controller, apart from"
            " the pool the hosts share"
        )


def _check_libvirt(backend: str, libvirt: LibvirtSettings, names: Mapping[str, str]) -> None:
    """The libvirt backend needs its hosts and pool; other backends take neither."""
    needs = {"hosts": "at least one host URI", "pool": "the directory its hosts share"}
    for key, what in needs.items():
        given = bool(getattr(libvirt, key))
        if backend == "libvirt" and not given:
            raise InputError(f"{names[key]}: the libvirt backend needs {what}")
        if backend != "libvirt" and given:
            raise InputError(f"{names[key]}: only the libvirt backend takes it, not {backend}")


def load_layout(path: Path) -> Layout:
    """A layout file for `init --layout FILE`: a [disks] table as site.toml holds it."""
    raw = _read_toml(path)
    try:
        _reject_unknown(raw, ("disks",), "top level")
        return _layout(raw)
    except InputError as exc:
        msg = _one_line(str(exc))
        raise InputError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None


def _check_guests(guests: PipelineGuests, source: str) -> None:
    """Each role's name is a valid guest name, and no guest has two roles."""
    roles = [(k, getattr(guests, k)) for k in ROLE_KEYS]
    roles += [(f"gold[{n}]", g) for n, g in enumerate(guests.gold, start=1)]
    seen: dict[str, str] = {}
    for role, name in roles:
        if guest_name(name, f"{source} {role}") != name:
            raise InputError(f"{source} {role} = {shown(name)}: must be upper case")
        if name in seen:
            raise InputError(
                f"{source} {role} = {name!r}: guest {name} has two roles"
                f" ({seen[name]} and {role}; names are compared in upper case)"
            )
        seen[name] = role


def _key(key: str) -> str:
    """A TOML key as it would be written: bare when it can be, else quoted and escaped."""
    return key if _BARE_KEY.fullmatch(key) else _toml_str(key)


def _reject_unknown(table: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    for key in table:
        if key not in allowed:
            raise InputError(f"{where}: unknown key {shown(key)} (allowed: {', '.join(allowed)})")


def _table(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise InputError(f"{where}: must be a table, not {_toml_type(value)}")
    return value


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise InputError(f"{where} = {shown(value)}: must be a string, not {_toml_type(value)}")
    return value


def _toml_type(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a float", str: "a string"}
    names |= {list: "an array", dict: "a table"}
    return names.get(type(value), "a date or time")


def _guest(value: Any, where: str) -> str:
    """A guest name as site.toml gives it: any case, nothing around it."""
    return guest_name(_str(value, where), where)


def load_config(path: Path) -> SiteConfig:
    """Read and validate site.toml; every error names the file, the key and the rule."""
    if not path.exists() and not path.is_symlink():
        raise InputError(f"{path}: no site here; run `sharedroot init` first")
    raw = _read_toml(path)
    try:
        return _parse(raw)
    except InputError as exc:
        msg = _one_line(str(exc))
        raise InputError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None


def _read_toml(path: Path) -> dict[str, Any]:
    if not path.exists() and not path.is_symlink():
        raise InputError(f"{path}: no such file")
    regular_file(path, StoreError)  # a FIFO would hang the read
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path}: malformed TOML: {_one_line(str(exc))}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read: {_one_line(str(exc))}") from None


def _one_line(text: str) -> str:
    # Error messages are one line: a newline in them would read as a second message.
    return " ".join(text.splitlines())


def _parse(raw: Mapping[str, Any]) -> SiteConfig:
    _reject_unknown(raw, ("site", "zvm", "libvirt", "guests", "disks", "writable"), "top level")
    site = _table(raw.get("site", {}), "[site]")
    _reject_unknown(site, tuple(SETTINGS_BY_KEY), "[site]")
    parsed = {s.key: s.parse(site.get(s.key, s.default), f"[site] {s.key}") for s in SETTINGS}
    ztab = _table(raw.get("zvm", {}), "[zvm]")
    _reject_unknown(ztab, tuple(ZVM_SETTINGS_BY_KEY), "[zvm]")
    zvm = ZvmSettings(
        **{s.key: s.parse(ztab.get(s.key, s.default), f"[zvm] {s.key}") for s in ZVM_SETTINGS}
    )
    ltab = _table(raw.get("libvirt", {}), "[libvirt]")
    _reject_unknown(ltab, tuple(LIBVIRT_SETTINGS_BY_KEY), "[libvirt]")
    where = {s.key: f"[libvirt] {s.key}" for s in LIBVIRT_SETTINGS}
    libvirt = LibvirtSettings(
        **{s.key: s.parse(ltab.get(s.key, s.default), where[s.key]) for s in LIBVIRT_SETTINGS}
    )
    _check_libvirt(parsed["backend"], libvirt, where)
    defaults = default_guests(parsed["prefix"], parsed["gold_slots"])
    gtab = _table(raw.get("guests", {}), "[guests]")
    _reject_unknown(gtab, (*ROLE_KEYS, "gold"), "[guests]")
    roles = {k: _guest(gtab.get(k, getattr(defaults, k)), f"[guests] {k}") for k in ROLE_KEYS}
    gold_raw = gtab.get("gold", list(defaults.gold))
    if not isinstance(gold_raw, list) or len(gold_raw) != parsed["gold_slots"]:
        raise InputError(
            f"[guests] gold = {shown(gold_raw)}: must be a list of {parsed['gold_slots']}"
            " names (one per gold slot)"
        )
    gold = tuple(_guest(g, f"[guests] gold[{n}]") for n, g in enumerate(gold_raw, start=1))
    guests = PipelineGuests(gold=gold, **roles)
    _check_guests(guests, "[guests]")
    layout = _layout(raw)
    writable = parse_table(raw.get("writable", {}), layout)
    return SiteConfig(
        guests=guests, layout=layout, zvm=zvm, libvirt=libvirt, writable=writable, **parsed
    )


def _layout(raw: Mapping[str, Any]) -> Layout:
    dtab = _table(raw.get("disks", {}), "[disks]")
    if not dtab:
        raise InputError("[disks]: the layout has no disks")
    disks: list[DiskSpec] = []
    by_address: dict[str, str] = {}
    by_mount: dict[str, str] = {}
    for key, value in dtab.items():
        d = _disk(key, value)
        where = f"[disks.{_key(key)}]"
        if d.address in by_address:
            raise InputError(
                f"{where}: address {d.address} overlaps [disks.{by_address[d.address]}]"
            )
        by_address[d.address] = _key(key)
        mounts = [(d.mount, where)] if d.mount is not None else []
        mounts += [(v.mount, f"{where[:-1]}.volumes.{_key(v.name)}]") for v in d.volumes]
        for mount, at in mounts:
            if mount in by_mount:
                raise InputError(
                    f"{at} mount {mount!r}: mount point is given twice (also {by_mount[mount]})"
                )
            by_mount[mount] = at
        disks.append(d)
    check_layout(disks, "[disks]")
    return Layout(tuple(disks))


def _disk(key: str, value: Any) -> DiskSpec:
    where = f"[disks.{_key(key)}]"
    table = _table(value, where)
    _reject_unknown(table, DISK_KEYS, where)
    addr = check_layout_address(address(key, f"{where} address"), f"{where} address")
    kind_raw = _str(table.get("kind", "fs"), f"{where} kind")
    try:
        kind = DiskKind(kind_raw)
    except ValueError:
        raise InputError(
            f"{where} kind = {shown(kind_raw)}:"
            f" must be one of {', '.join(k.value for k in DiskKind)}"
        ) from None
    access_raw = _str(table.get("access", "rw"), f"{where} access")
    try:
        access = Access(access_raw)
    except ValueError:
        raise InputError(f"{where} access = {shown(access_raw)}: must be ro or rw") from None
    if "size" not in table:
        raise InputError(f"{where}: size is required")
    size = parse_size(table["size"], f"{where} size")
    mount = table.get("mount")
    if mount is not None:
        mount = check_mount(_str(mount, f"{where} mount"), f"{where} mount")
    fs = table.get("fs")
    if fs is not None:
        fs = check_fs(_str(fs, f"{where} fs"), f"{where} fs")
    if kind is DiskKind.FS and (mount is None or fs is None):
        raise InputError(f"{where}: a filesystem disk needs mount and fs")
    if kind is not DiskKind.FS and (mount is not None or fs is not None):
        raise InputError(f"{where}: kind {kind.value} takes no mount or fs")
    check_address_plan(addr, kind, f"{where} address")
    if kind is not DiskKind.LVM:
        if "vg" in table or "volumes" in table:
            raise InputError(f"{where}: kind {kind.value} takes no vg or volumes (lvm does)")
        return DiskSpec(addr, kind, size, access, mount, fs)
    if "vg" not in table:
        raise InputError(f"{where}: an lvm disk needs vg (its volume group's name)")
    vg = check_vg_name(_str(table["vg"], f"{where} vg"), f"{where} vg")
    vtab = _table(table.get("volumes", {}), f"{where[:-1]}.volumes]")
    volumes = tuple(_volume(where, name, v) for name, v in vtab.items())
    return DiskSpec(addr, kind, size, access, vg=vg, volumes=volumes)


def _volume(disk: str, name: str, value: Any) -> Volume:
    where = f"{disk[:-1]}.volumes.{_key(name)}]"
    check_lv_name(name, f"{where} name")
    table = _table(value, where)
    _reject_unknown(table, VOLUME_KEYS, where)
    for key in VOLUME_KEYS:
        if key not in table:
            raise InputError(f"{where}: {key} is required")
    mount = check_mount(_str(table["mount"], f"{where} mount"), f"{where} mount")
    fs = check_fs(_str(table["fs"], f"{where} fs"), f"{where} fs")
    return Volume(name, mount, fs, parse_size(table["size"], f"{where} size"))


def _toml_str(value: str) -> str:
    """A TOML basic string; control characters escaped (TOML forbids them raw)."""
    out = []
    for ch in value:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def render_config(config: SiteConfig) -> str:
    """site.toml text for a config; loading it gives the same config back."""
    out = ["# sharedroot site: settings, the pipeline's guests, and the disk layout (Table 1-1)"]
    out.append("[site]")
    for s in SETTINGS:
        value = getattr(config, s.key)
        text = _toml_str(value) if isinstance(value, str) else str(value)
        out.append(f"{s.key} = {text}  # {s.help}")
    if config.backend == "zvm":
        out.append("\n[zvm]")
        for s in ZVM_SETTINGS:
            value = getattr(config.zvm, s.key)
            text = _toml_str(value) if isinstance(value, str) else str(value)
            out.append(f"{s.key} = {text}  # {s.help}")
    if config.backend == "libvirt":
        out.append("\n[libvirt]")
        hosts = ", ".join(_toml_str(h) for h in config.libvirt.hosts)
        out.append(f"hosts = [{hosts}]  # the libvirt hosts (their URIs) that run the guests")
        pool = _toml_str(config.libvirt.pool)
        out.append(f"pool = {pool}  # {LIBVIRT_SETTINGS_BY_KEY['pool'].help}")
    out.append("\n[guests]")
    for key in ROLE_KEYS:
        out.append(f"{key} = {_toml_str(getattr(config.guests, key))}")
    out.append("gold = [" + ", ".join(_toml_str(g) for g in config.guests.gold) + "]")
    for d in config.layout:
        out.append(f"\n[disks.{d.address}]")
        out.append(f"kind = {_toml_str(d.kind.value)}")
        if d.mount is not None and d.fs is not None:
            out.append(f"mount = {_toml_str(d.mount)}")
            out.append(f"fs = {_toml_str(d.fs)}")
        out.append(f"access = {_toml_str(d.access.value)}  # what a read-only clone gets")
        out.append(f"size = {_toml_str(format_size(d.size))}")
        if d.vg is not None:
            out.append(f"vg = {_toml_str(d.vg)}  # one LVM volume group on this disk")
        for v in d.volumes:
            out.append(f"\n[disks.{d.address}.volumes.{_key(v.name)}]")
            out.append(f"mount = {_toml_str(v.mount)}")
            out.append(f"fs = {_toml_str(v.fs)}")
            out.append(f"size = {_toml_str(format_size(v.size))}")
    out.extend(render_table(config.writable))
    return "\n".join(out) + "\n"


def write_config(path: Path, config: SiteConfig) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(render_config(config))
    os.replace(tmp, path)
