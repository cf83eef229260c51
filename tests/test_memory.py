"""Memory given back and shared: the balloon, KSM, and the host memory view of `guests`.

The fast tests read real processes, real files and a real (paused) QEMU; one real boot
checks that memory a guest frees goes back to the host.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import BootSite, Ran, guest_spec
from sharedroot.errors import OperationError
from sharedroot.hypervisor import ksm
from sharedroot.hypervisor.qemu import cmdline, memory
from sharedroot.model.types import Switch
from sharedroot.workflows.context import Site
from sharedroot.workflows.guest import start_request

M = 1 << 20
needs_qemu = pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="no QEMU")


def test_every_guest_has_a_reporting_balloon_and_mem_merge_follows_ksm(tmp_path: Path) -> None:
    def machine(argv: list[str]) -> list[str]:
        return [argv[i + 1] for i, a in enumerate(argv) if a == "-machine"]

    argv = cmdline.qemu_argv(guest_spec(tmp_path))
    assert machine(argv) == ["pc", "mem-merge=off"]
    assert "virtio-balloon-pci,id=balloon,free-page-reporting=on" in argv
    merged = cmdline.qemu_argv(guest_spec(tmp_path, mem_merge=True))
    assert machine(merged) == ["pc", "mem-merge=on"]
    s390x = cmdline.qemu_argv(guest_spec(tmp_path, arch="s390x", mem_merge=True))
    assert machine(s390x) == ["s390-ccw-virtio", "mem-merge=on"]
    assert "virtio-balloon-ccw,id=balloon,free-page-reporting=on" in s390x


@pytest.fixture
def holder() -> Iterator[subprocess.Popen[str]]:
    """A process holding 64 MiB it has written to (resident, private)."""
    code = "import sys; b = bytearray(b'x') * (64 << 20); print('ready', flush=True); input()"
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    yield proc
    proc.kill()
    proc.wait()


def test_rollup_of_a_real_process(holder: subprocess.Popen[str]) -> None:
    found = memory.rollup(holder.pid)
    assert found is not None
    assert found["Rss"] >= 64 * M and 64 * M <= found["Pss"] <= found["Rss"]
    holder.kill()
    holder.wait()
    assert memory.rollup(holder.pid) is None  # gone: nothing, not zeros


def test_page_cache_of_real_files(tmp_path: Path) -> None:
    image = tmp_path / "a,b 21B1.img"  # a comma and a space reach fincore unharmed
    image.write_bytes(os.urandom(8 * M))
    sparse = tmp_path / "21B7.img"
    with open(sparse, "wb") as f:
        f.truncate(64 * M)
    with open(image, "rb") as f:
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    assert memory.page_cache([image])[image] < M
    image.read_bytes()
    found = memory.page_cache([image, sparse, tmp_path / "missing.img"])
    assert found == {image: 8 * M, sparse: 0}  # a file that is not there is left out
    assert memory.page_cache([]) == {}


@needs_qemu
def test_balloon_through_qmp(tmp_path: Path) -> None:
    """A paused QEMU answers query-balloon: nothing held back; without the device, None."""
    for with_balloon in (True, False):
        sock = tmp_path / f"qmp-{with_balloon}.sock"
        qmp = f"unix:{sock},server=on,wait=off"
        argv = ["qemu-system-x86_64", "-machine", "pc", "-accel", "tcg", "-m", "128", "-S",
                "-nodefaults", "-display", "none", "-qmp", qmp]  # fmt: skip
        if with_balloon:
            argv += ["-device", "virtio-balloon-pci,free-page-reporting=on"]
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 15
            while not sock.exists():
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.05)
            assert memory.balloon(sock) == (0 if with_balloon else None)
            held = memory.guest_memory(proc.pid, sock)
            assert held is not None and held.rss > 0 and held.pss > 0
        finally:
            proc.kill()
            proc.wait()


def test_ksm_is_turned_on_never_off(tmp_path: Path) -> None:
    (tmp_path / "run").write_text("0\n")
    (tmp_path / "pages_sharing").write_text("1234\n")
    ksm.ensure_running(tmp_path)
    assert (tmp_path / "run").read_text() == "1\n"
    ksm.ensure_running(tmp_path)  # already running: left as it is
    assert ksm.pages_sharing(tmp_path) == 1234
    with pytest.raises(OperationError, match=r"ksm = on.*set ksm = off"):
        ksm.ensure_running(tmp_path / "no-ksm")
    (tmp_path / "pages_sharing").write_text("-1\n")
    with pytest.raises(OperationError, match="not a count"):
        ksm.pages_sharing(tmp_path)


def test_ksm_setting(site: Site, cli: Callable[..., Ran], tmp_path: Path) -> None:
    assert site.config.ksm is Switch.OFF and not start_request(site).ksm
    on = tmp_path / "on"
    assert cli("init", "--ksm", "on", home_dir=on).code == 0
    assert 'ksm = "on"' in (on / "site.toml").read_text()
    assert start_request(Site.open(on)).ksm
    bad = cli("init", "--ksm", "yes", home_dir=tmp_path / "bad")
    assert bad.code == 2 and "ksm = 'yes': must be one of on, off" in bad.err


def test_guests_memory_view_without_running_qemu(
    site: Site, cli: Callable[..., Ran], logged_on: Callable[[str], None]
) -> None:
    logged_on("S10RWTST")  # a run lock, but no QEMU to read
    rows = {g["name"]: g for g in cli("guests", "--json").json()}  # type: ignore[union-attr]
    assert all(g["memory"] is None for g in rows.values())  # logged off: nothing, not zeros
    # The admin disk is linked by every guest: its page cache shows once, on its owner.
    assert isinstance(rows["CMSCLONE"]["cached"], int)
    assert rows["S10RWMNT"]["cached"] is None
    table = cli("guests").out
    line = next(x for x in table.splitlines() if "S10RWTST" in x)
    assert "not visible" in line
    assert "(shared)" in next(x for x in table.splitlines() if "CMSCLONE" in x)


def test_guests_does_not_wait_on_a_fifo_in_place_of_a_linked_image(
    site: Site, cli: Callable[..., Ran]
) -> None:
    image = site.home / "disks/CMSCLONE/0192.img"
    image.unlink()
    os.mkfifo(image)
    ran = cli("guests", "--json")
    assert ran.code == 0
    rows = {g["name"]: g for g in ran.json()}  # type: ignore[union-attr]
    assert rows["CMSCLONE"]["cached"] is None


# ---------------------------------------------------------------- boot

ALLOC = 256 * M
# Allocate and write ALLOC bytes (resident in the guest, so in QEMU too), then exit.
ALLOCATE = f"b = bytearray(b'x') * {ALLOC}; print(len(b))"


def rss(pid: int) -> int:
    found = memory.rollup(pid)
    assert found is not None
    return found["Rss"]


class Sampler(threading.Thread):
    """QEMU's RSS every 50 ms, with the time it was taken."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.samples: list[tuple[float, int]] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.samples.append((time.monotonic(), rss(self.pid)))
            time.sleep(0.05)


@pytest.fixture(scope="module")
def booted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BootSite]:
    site = BootSite.installed(tmp_path_factory, "memory")
    site.start("S10RWMNT")
    yield site
    site.run("stop", "S10RWMNT", check=False)


@pytest.mark.boot
@pytest.mark.skipif(os.geteuid() != 0, reason="guests need root (loop mounts, QEMU)")
def test_freed_guest_memory_goes_back_to_the_host(booted: BootSite) -> None:
    argv = json.loads((booted.home / "run/S10RWMNT/qemu.argv").read_text())
    assert "mem-merge=off" in argv  # ksm = off, the default
    # The golden tree's kernel has virtio_balloon as a module: udev loads it and binds it.
    assert "virtio_balloon" in booted.sh("S10RWMNT", "cat /proc/modules")
    bound = booted.sh("S10RWMNT", "ls /sys/bus/virtio/drivers/virtio_balloon").split()
    assert any(name.startswith("virtio") for name in bound), bound
    pid = int((booted.home / "run/S10RWMNT/qemu.pid").read_text())
    time.sleep(3)  # what the boot freed has been reported
    before = rss(pid)
    sampler = Sampler(pid)
    sampler.start()
    ran = booted.run("exec", "S10RWMNT", "--", "python3", "-c", ALLOCATE)
    assert ran.stdout.strip() == str(ALLOC)
    exited = time.monotonic()
    # Most of it goes back: free page reporting returns whole 2 MiB blocks only, so what
    # the guest left fragmented stays. How much and how fast (the goal: 90 % within
    # 10 s) is bench_balloon's figure; a test with a deadline would measure host load.
    while time.monotonic() - exited < 30 and not (
        sampler.samples
        and max(n for _, n in sampler.samples) - sampler.samples[-1][1] >= 0.75 * ALLOC
    ):
        time.sleep(0.5)
    sampler.done.set()
    sampler.join()
    peak = max(n for _, n in sampler.samples)
    assert peak - before >= ALLOC * 0.9, (before, peak)  # the allocation was resident
    back = [t - exited for t, n in sampler.samples if t >= exited and peak - n >= 0.75 * ALLOC]
    assert back, f"RSS before {before >> 20} MiB, peak {peak >> 20}, end {rss(pid) >> 20}"
    rows = {g["name"]: g for g in json.loads(booted.run("guests", "--json").stdout)}
    held = rows["S10RWMNT"]["memory"]
    assert held["rss"] > 0 and 0 < held["pss"] <= held["rss"] and held["balloon"] == 0
    assert rows["S10RWTST"]["memory"] is None  # logged off: nothing, not zeros
