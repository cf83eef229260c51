"""LOGON/IPL, LOGOFF, the console and commands in a running guest."""

from __future__ import annotations

import time
from collections.abc import Iterator

from sharedroot.errors import InputError, OperationError, RefusedError
from sharedroot.hypervisor.base import StartRequest
from sharedroot.model.hosturi import host_uri
from sharedroot.model.types import DiskKind, GuestState, Role, Switch
from sharedroot.workflows import guards
from sharedroot.workflows.context import UI, Options, Outcome, Site, Step, perform
from sharedroot.workflows.relink import recover

NEVER_LOGGED_ON = {
    Role.GOLD: "a gold holder is never logged on (its directory password is NOLOG)",
    Role.ADMIN: "the admin guest only holds disks here",
    Role.WORKER: "the worker is the machine that runs sharedroot",
}


def start_request(site: Site) -> StartRequest:
    layout = site.config.layout
    boot = next((d for d in layout if d.mount == "/boot"), layout.root)
    vdisks = tuple((d.address, d.size) for d in layout if d.kind is DiskKind.VDISK)
    ksm = site.config.ksm is Switch.ON
    dax = site.config.dax is Switch.ON
    return StartRequest(boot.address, vdisks, site.config.memory_mb, dax=dax, ksm=ksm)


def start(
    site: Site, ui: UI, opts: Options, guest: str, *, wait: bool = False, timeout: float = 300
) -> Outcome:
    role = guards.exists(site, guest)
    if role in NEVER_LOGGED_ON:
        raise RefusedError(f"{guest} cannot be started: {NEVER_LOGGED_ON[role]}")
    request = start_request(site)
    with site.locked(ui, writes=not opts.dry_run):  # not while a copy is writing this guest's disks
        if site.hv.query(guest) is GuestState.LOGGED_ON:
            raise RefusedError(f"{guest} is already logged on")
        if not opts.dry_run:
            recover(site, ui, guest)  # a migrate killed half-way is finished first
        guards.complete(site, guest, "a guest to start")
        guards.cloned(site, guest)
        guards.devices_present(site, guest)

        def logon() -> dict[str, object]:
            site.hv.start(guest, request)
            memory = site.hv.memory_map(guest)
            if memory:
                ui.step(
                    "gold as memory: "
                    + "; ".join(
                        f"{a} {'mapped (DAX)' if h == 'dax' else h}" for a, h in memory.items()
                    )
                )
            return {"guest": guest, "started": True, "memory_map": memory}

        step = Step(f"LOGON {guest} and IPL {request.boot_address}", logon)
        outcome = perform(site, ui, opts, "start", {"guest": guest}, [step])
    if wait and not opts.dry_run:
        outcome.results.append(wait_ready(site, ui, guest, timeout))
    return outcome


def wait_ready(site: Site, ui: UI, guest: str, timeout: float) -> dict[str, object]:
    """Until the agent answers and systemd has finished booting (network configured)."""
    ui.step(f"waiting until {guest} is ready (it answers, then the end of its boot)")
    deadline = time.monotonic() + timeout
    site.hv.wait_ready(guest, timeout)
    left = max(5.0, deadline - time.monotonic())
    _, out, _ = site.hv.execute(guest, ["systemctl", "is-system-running", "--wait"], left)
    state = out.decode().strip()
    if state not in ("running", "degraded"):
        raise OperationError(f"{guest}: systemd says {state!r} after booting")
    return {"guest": guest, "ready": True, "system": state}


def stop(site: Site, ui: UI, opts: Options, guest: str, *, timeout: float = 60) -> Outcome:
    guards.exists(site, guest)
    if site.hv.query(guest) is not GuestState.LOGGED_ON:
        raise RefusedError(f"{guest} is not logged on")
    step = Step(
        f"shut {guest} down (forced after {timeout:.0f}s)",
        lambda: {"guest": guest, "shutdown": site.hv.stop(guest, timeout)},
    )
    return perform(site, ui, opts, "stop", {"guest": guest}, [step])


def execute(site: Site, guest: str, argv: list[str], timeout: float) -> tuple[int, bytes, bytes]:
    guards.exists(site, guest)
    if site.hv.query(guest) is not GuestState.LOGGED_ON:
        raise RefusedError(f"{guest} is not logged on")
    return site.hv.execute(guest, argv, timeout)


def console(site: Site, guest: str, *, follow: bool = False) -> Iterator[bytes]:
    """What the guest wrote to its console; with `follow`, on until it logs off."""
    guards.exists(site, guest)
    return site.hv.console(guest, follow=follow)


def running(site: Site, guest: str) -> bool:
    return site.hv.query(guest) is GuestState.LOGGED_ON


def site_host(site: Site, value: str, what: str = "--host") -> str:
    """One of the site's hosts, as its normalised URI (InputError naming them if not)."""
    hosts = site.hv.hosts()
    if not hosts:
        raise InputError(
            f"{what}: the {site.config.backend} backend runs every guest on one system;"
            " hosts are the libvirt backend's"
        )
    uri = host_uri(value, what).uri
    if uri not in hosts:
        raise InputError(f"{what} {uri}: not a host of this site; its hosts: {', '.join(hosts)}")
    return uri


def move(
    site: Site, ui: UI, opts: Options, guest: str, host: str, *, timeout: float = 300
) -> Outcome:
    """Run a guest on another host: stopped, it starts there next time; running, it is
    shut down, started there and waited for (its disks are in the pool every host sees)."""
    role = guards.exists(site, guest)
    uri = site_host(site, host, "--to-host")
    if role in NEVER_LOGGED_ON:
        raise RefusedError(f"{guest} does not run on a host: {NEVER_LOGGED_ON[role]}")
    request = start_request(site)
    with site.locked(ui, writes=not opts.dry_run):
        was = site.hv.placement().get(guest)
        running = site.hv.query(guest) is GuestState.LOGGED_ON  # every host answers
        if was == uri:
            raise RefusedError(f"{guest} already runs on {uri}")

        def place() -> dict[str, object]:
            site.hv.place(guest, uri)
            return {"guest": guest, "host": uri, "was": was}

        def logon() -> dict[str, object]:
            site.hv.start(guest, request)
            return {"guest": guest, "started": True, "host": uri}

        steps = []
        if running:
            steps.append(
                Step(
                    f"shut {guest} down on {was} (forced after 60s)",
                    lambda: {"guest": guest, "shutdown": site.hv.stop(guest, 60)},
                )
            )
        steps.append(Step(f"place {guest} on {uri}", place))
        if running:
            steps.append(Step(f"LOGON {guest} on {uri} and IPL {request.boot_address}", logon))
        outcome = perform(site, ui, opts, "move", {"guest": guest, "host": uri}, steps)
    if running and not opts.dry_run:
        outcome.results.append(wait_ready(site, ui, guest, timeout))
    return outcome
