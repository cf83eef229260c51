"""VERIFY: boot a read-only clone and run the paper's §1.6.3 checks, and a few more.

The outcome is remembered (facts.record_verify) for `guests --json`, inventories and
metrics; the last verify that passed is kept beside the last one.
"""

from __future__ import annotations

from dataclasses import dataclass

from sharedroot.errors import InputError
from sharedroot.guestos.platform import find
from sharedroot.guestos.writable import LISTED
from sharedroot.model.parm import identity_from_parm
from sharedroot.model.types import GuestState
from sharedroot.workflows import facts, guards
from sharedroot.workflows.context import UI, Options, Site
from sharedroot.workflows.guest import start, wait_ready

WRITABLE = ("/etc", "/var", "/root", "/srv", "/tmp")  # the paper's five that must work
READONLY = ("/", "/usr", "/opt", "/boot")  # and the shared ones that must fail


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def verify(site: Site, ui: UI, opts: Options, guest: str, timeout: float = 600) -> list[Check]:
    guards.exists(site, guest)
    if site.hv.query(guest) is not GuestState.LOGGED_ON:
        start(site, ui, opts, guest, wait=True, timeout=timeout)
    else:  # it may have been started a moment ago and still be booting
        wait_ready(site, ui, guest, timeout)

    def sh(script: str) -> tuple[int, str, str]:
        code, out, err = site.hv.execute(guest, ["sh", "-c", script], 120)
        return code, out.decode(errors="replace").strip(), err.decode(errors="replace").strip()

    checks: list[Check] = []
    ui.step(f"{guest}: the writable and read-only file systems (touch /etc/foo ...)")
    for d in WRITABLE:
        code, _, err = sh(f"touch {d}/foo && rm {d}/foo")
        checks.append(Check(f"touch {d}/foo", code == 0, "writable" if code == 0 else err))
    for d in READONLY:
        path = f"{d.rstrip('/')}/foo"
        code, _, err = sh(f"touch {path}")
        ok = code != 0 and "Read-only file system" in err
        checks.append(Check(f"touch {path} fails", ok, err or "it succeeded: the disk is writable"))

    ui.step(f"{guest}: the hostname from its parm file, its machine-id")
    parm = site.hv.get_parm(guest)
    _, hostname, _ = sh("hostname")
    if parm is None:
        checks.append(Check("hostname from the parm file", False, f"{guest} has no parm file"))
    else:
        try:
            want = identity_from_parm(parm).short_name
            checks.append(
                Check(
                    "hostname from the parm file",
                    hostname == want,
                    f"{hostname} (parm file: {want})",
                )
            )
        except InputError as exc:
            checks.append(Check("hostname from the parm file", False, str(exc)))

    _, machine_id, _ = sh("cat /etc/machine-id")
    seen = site.state.fact(f"machine-id:{guest}")
    others = {
        k.removeprefix("machine-id:")
        for k, v in site.state.facts("machine-id:").items()
        if v == machine_id and k != f"machine-id:{guest}"
    }
    own = len(machine_id) == 32 and not others
    stable = seen is None or seen == machine_id
    detail = machine_id + (f"; also {', '.join(sorted(others))}'s" if others else "")
    detail += "" if stable else f"; was {seen} at the last verify"
    checks.append(Check("machine-id is its own and stable", own and stable, detail))
    if own:
        with site.state.transaction():
            site.state.set_fact(f"machine-id:{guest}", machine_id)

    ui.step(f"{guest}: writable paths, failed units, fstab, read-only and mapped disks")
    # The gold's writable paths (site.toml [writable] when its slot was made), if any.
    code, seen, _ = sh(
        f"[ -f {LISTED} ] || exit 3; while read -r p; do"
        ' if findmnt -rn --mountpoint "$p" >/dev/null && [ -w "$p" ]; then echo "+$p";'
        f' else echo "-$p"; fi; done < {LISTED}'
    )
    if code != 3:
        bad = [ln[1:] for ln in seen.splitlines() if not ln.startswith("+")]
        good = len(seen.splitlines()) - len(bad)
        checks.append(
            Check(
                "writable paths bound and writable",
                code == 0 and not bad,
                f"not: {', '.join(bad)}" if bad else f"{good} of the gold's [writable] table",
            )
        )

    _, failed, _ = sh("systemctl --failed --no-legend --plain")
    checks.append(Check("systemctl --failed is empty", failed == "", failed or "none failed"))

    platform = find(site.hv.bus)
    _, fstab, _ = sh("cat /etc/fstab")
    sources = {f[1]: f[0] for f in (ln.split() for ln in fstab.splitlines()) if len(f) >= 2}
    # A logical volume by its device-mapper path (the same in every clone), never UUID.
    wrong = [
        f"{m.mount} on {sources.get(m.mount, 'nothing')}"
        for m in site.config.layout.filesystems
        if sources.get(m.mount) != m.device(platform.filesystem(m.address))
    ]
    checks.append(
        Check(
            "fstab names each disk by its address",
            not wrong,
            "; ".join(wrong) or f"e.g. {platform.filesystem(site.config.layout.root.address)} /",
        )
    )
    for disk in site.config.layout.shared:
        dev = platform.disk(disk.address)
        _, ro, _ = sh(f'cat /sys/class/block/$(basename "$(readlink -f {dev})")/ro')
        checks.append(
            Check(
                f"{disk.address} {disk.mount} attached read-only",
                ro == "1",
                "read-only" if ro == "1" else f"ro={ro or '?'}",
            )
        )
    for address in (a for a, how in site.hv.memory_map(guest).items() if how == "dax"):
        mount = site.config.layout.get(address).mount or "/"
        # the device under the mount is persistent memory the kernel can map (DAX), and
        # the gold's files carry the flag that makes ext4 use it (dax=inode)
        _, seen, _ = sh(
            f'n=$(basename "$(readlink -f "$(findmnt -no SOURCE {mount})")");'
            f' echo "$n $(cat /sys/block/$n/queue/dax) $(lsattr -d {mount} | cut -d" " -f1)"'
        )
        words = seen.split()
        ok = len(words) == 3 and words[0].startswith("pmem") and words[1] == "1"
        ok = ok and "x" in words[2]
        checks.append(
            Check(
                f"{address} {mount} mapped as memory with DAX",
                ok,
                f"{words[0]}, DAX, flagged" if ok else f"device, dax, flags: {seen or '?'}",
            )
        )
    facts.record_verify(site, guest, len(checks), [c.name for c in checks if not c.ok])
    return checks
