"""The Debian golden image and QEMU guests: real images, a real boot, no mocks.

The fast tests build tiny images with mke2fs. The `boot` tests build (once per
machine, cached in $SHAREDROOT_CACHE or /var/cache/sharedroot) the Debian tree and
boot a guest of the paper layout under the acceleration probe_accel() finds.
"""

from __future__ import annotations

import fcntl
import gzip
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from sharedroot.errors import OperationError
from sharedroot.guestos import debian, fstab, vmlinux
from sharedroot.guestos.platform import VIRTIO
from sharedroot.guestos.recipe import DEFAULT_RECIPE, recipe_for, recipe_key
from sharedroot.guestos.tree import install_extra, populate_disks, staged_tree
from sharedroot.hypervisor import ipl
from sharedroot.hypervisor.qemu import accel, cmdline, control, process
from sharedroot.model.layout import PAPER_LAYOUT, DiskSpec, Layout
from sharedroot.model.types import Access, DiskKind
from sharedroot.run import run

M = 1 << 20
CACHE = Path(os.environ.get("SHAREDROOT_CACHE", "/var/cache/sharedroot"))
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (debootstrap, chroot)")
needs_qemu = pytest.mark.skipif(shutil.which(accel.QEMU) is None, reason="no qemu-system-x86_64")

SMALL = Layout(
    (
        DiskSpec("01B0", DiskKind.FS, 4 * M, Access.RO, "/boot", "ext2"),
        DiskSpec("01B1", DiskKind.FS, 8 * M, Access.RO, "/", "ext2"),
        DiskSpec("01B2", DiskKind.VDISK, 4 * M, Access.RW),
        DiskSpec("01B4", DiskKind.SWAP, 4 * M, Access.RW),
        DiskSpec("01B5", DiskKind.FS, 4 * M, Access.RW, "/local", "ext4"),
        DiskSpec("01B7", DiskKind.FS, 8 * M, Access.RO, "/usr", "ext2"),
    )
)


def debugfs(image: Path, request: str) -> str:
    return run(["debugfs", "-R", request, image]).stdout


def ls(image: Path, path: str) -> set[str]:
    """Names in a directory of an ext image (debugfs ls -l, last column)."""
    names = {line.split()[-1] for line in debugfs(image, f"ls -l {path}").splitlines() if line}
    return names - {".", ".."}


# ---------------------------------------------------------------- fast


def test_fstab_names_every_disk_by_address(tmp_path: Path) -> None:
    fstab.write_fstab(tmp_path, PAPER_LAYOUT)
    text = (tmp_path / "etc/fstab").read_text()
    assert "UUID=" not in text and "LABEL=" not in text
    lines = [ln.split() for ln in text.splitlines() if ln and not ln.startswith("#")]
    by_mount = {f[1]: f for f in lines}
    for disk in PAPER_LAYOUT:
        dev = f"/dev/disk/by-id/virtio-{disk.address}"
        assert any(f[0] == dev for f in lines), disk.address
    for f in lines:
        assert f[0].startswith("/dev/disk/by-id/virtio-") or f[1] == "/tmp"
    assert by_mount["/"][5] == "1"
    assert by_mount["/usr"][:3] == ["/dev/disk/by-id/virtio-01B7", "/usr", "ext2"]
    assert by_mount["/var"][5] == "2"
    assert by_mount["/tmp"][2] == "tmpfs"
    swaps = {f[0][-4:]: f[3] for f in lines if f[2] == "swap"}
    assert set(swaps) == {"01B2", "01B3", "01B4"}
    assert all("nofail" in opts for opts in swaps.values())
    assert [f[1] for f in lines].index("/") < [f[1] for f in lines].index("/usr")


def test_fstab_readonly_view(tmp_path: Path) -> None:
    fstab.write_fstab(tmp_path, PAPER_LAYOUT, readonly=True)
    lines = [ln.split() for ln in (tmp_path / "etc/fstab").read_text().splitlines()[1:]]
    by_mount = {f[1]: f for f in lines}
    assert by_mount["/"][3:] == ["ro", "0", "0"]
    assert by_mount["/usr"][3:] == ["ro", "0", "0"]
    assert by_mount["/var"][3:] == ["defaults", "0", "2"]


def fake_tree(base: Path) -> Path:
    root = base / "entry" / "root"
    for rel, text in {
        "etc/hostname": "fake\n",
        "usr/bin/hello": "#!/bin/sh\necho hello\n",
        "usr/lib/x/y": "y\n",
        "boot/sharedroot.conf": "kernel=vmlinux-1\ninitrd=initrd-1\ncmdline=root=x ro\n",
        "boot/vmlinux-1": "KERNEL",
        "boot/initrd-1": "INITRD",
        "local/etc/marker": "m\n",
    }.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "bin").symlink_to("usr/bin")
    return root


def test_populate_disks_splits_the_tree_by_mount_point(tmp_path: Path) -> None:
    tree = fake_tree(tmp_path)
    out = tmp_path / "disks"
    images = {d.address: out / f"{d.address}.img" for d in SMALL.copied}
    (out).mkdir()
    images["01B1"].write_bytes(b"old content, rebuilt at the layout size")
    populate_disks(tree, SMALL, images)

    root_img = images["01B1"]
    assert root_img.stat().st_size == 8 * M
    top = ls(root_img, "/")
    assert {"etc", "usr", "boot", "local", "bin"} <= top
    assert ls(root_img, "/usr") == set()  # an empty mount point only
    assert ls(root_img, "/boot") == set()
    assert "fstab" in ls(root_img, "/etc")
    assert ls(images["01B7"], "/") >= {"bin", "lib"}
    assert "hello" in ls(images["01B7"], "/bin")
    assert "sharedroot.conf" in ls(images["01B0"], "/")
    assert "etc" in ls(images["01B5"], "/")
    assert "swap" in run(["blkid", "-o", "value", "-s", "TYPE", images["01B4"]]).stdout
    assert "01B2" not in images and not (out / "01B2.img").exists()
    # The cached tree is untouched: no fstab was written into it, nothing moved.
    assert not (tree / "etc/fstab").exists()
    assert (tree / "usr/bin/hello").exists()
    assert not list(tree.parent.glob(".stage-*"))


def test_install_extra_on_a_staged_copy_leaves_the_cache_alone(tmp_path: Path) -> None:
    tree = fake_tree(tmp_path)
    (tree / "etc/systemd/system").mkdir(parents=True)
    unit = (
        "[Unit]\nDescription=x\n[Service]\nExecStart=/bin/true\n"
        "[Install]\nWantedBy=multi-user.target\n"
    )
    with staged_tree(tree) as stage:
        install_extra(
            stage,
            {
                "/etc/hostname": "changed\n",
                "/usr/lib/sharedroot/findself": "#!/bin/sh\n",
                "/etc/systemd/system/findself.service": unit,
            },
            ["findself.service"],
        )
        assert (stage / "etc/hostname").read_text() == "changed\n"
        assert os.access(stage / "usr/lib/sharedroot/findself", os.X_OK)
        link = stage / "etc/systemd/system/multi-user.target.wants/findself.service"
        assert os.readlink(link) == "/etc/systemd/system/findself.service"
    assert (tree / "etc/hostname").read_text() == "fake\n"


def test_boot_config_read_from_the_image_without_mounting(tmp_path: Path) -> None:
    src = tmp_path / "boot"
    debian.write_boot_config(tmp_path, "vmlinux-6.1", "initrd.img-6.1", "root=/dev/x ro quiet")
    (src / "vmlinux-6.1").write_bytes(b"\x7fELF kernel")
    (src / "initrd.img-6.1").write_bytes(b"initrd")
    image = tmp_path / "01B0.img"
    run(["mke2fs", "-F", "-q", "-t", "ext2", "-d", src, image, "4m"])
    conf = ipl.read_boot_config(image)
    assert (conf.kernel, conf.initrd, conf.cmdline) == (
        "vmlinux-6.1",
        "initrd.img-6.1",
        "root=/dev/x ro quiet",
    )
    kernel, initrd, conf = ipl.extract_boot_files(image, tmp_path / "out")
    assert kernel.read_bytes() == b"\x7fELF kernel"
    assert initrd.read_bytes() == b"initrd"
    assert (conf.cmdline, conf.arch) == ("root=/dev/x ro quiet", "amd64")
    # the kernel's architecture: absent in files written before it was recorded
    text = ipl.render_boot_config(ipl.BootConfig("vmlinuz-6.1", "initrd.img-6.1", "ro", "s390x"))
    assert ipl.parse_boot_config(text).arch == "s390x"
    assert ipl.parse_boot_config("kernel=k\ninitrd=i\ncmdline=ro\n").arch == "amd64"
    with pytest.raises(OperationError, match="unknown architecture"):
        ipl.parse_boot_config("kernel=k\ninitrd=i\ncmdline=ro\narch=s390x,x\n")
    with pytest.raises(OperationError, match="unknown architecture"):
        ipl.render_boot_config(ipl.BootConfig("k", "i", "ro", "ppc64el"))
    # the disks mapped as persistent memory: ADDRESS:SLOT, nothing else
    dax = ipl.BootConfig("k", "i", "ro", dax="01B1:18,01B7:19")
    assert ipl.parse_boot_config(ipl.render_boot_config(dax)).pmem_slots == {
        "01B1": 0x18,
        "01B7": 0x19,
    }
    for bad in ("01B1:17", "01b1:18", "01B1:18,", "01B1:18;reboot", "01B1:20"):
        with pytest.raises(OperationError, match="persistent-memory"):
            ipl.parse_boot_config(f"kernel=k\ninitrd=i\ncmdline=ro\ndax={bad}\n")


def test_boot_config_missing_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    image = tmp_path / "01B0.img"
    run(["mke2fs", "-F", "-q", "-t", "ext2", "-d", tmp_path / "empty", image, "4m"])
    with pytest.raises(OperationError, match=r"sharedroot\.conf"):
        ipl.read_boot_config(image)


def test_extract_vmlinux_finds_the_compressed_elf() -> None:
    elf = b"\x7fELF" + bytes(range(256)) * 64
    image = b"MZ boot stub \x1f\x8b\x08 not really gzip " + gzip.compress(elf) + b"trailer"
    assert vmlinux.extract_vmlinux(image) == elf
    with pytest.raises(OperationError):
        vmlinux.extract_vmlinux(b"no kernel in here")


def test_extract_vmlinux_takes_the_payload_the_header_names(tmp_path: Path) -> None:
    """A zstd kernel (Debian 13's): the payload cut where the boot protocol says, without
    the size the build appends and what follows (the zstd program refuses trailing data)."""
    elf = b"\x7fELF" + bytes(range(256)) * 64
    (tmp_path / "elf").write_bytes(elf)
    run(["zstd", "-q", "-19", "-o", tmp_path / "elf.zst", tmp_path / "elf"])
    payload = (tmp_path / "elf.zst").read_bytes() + len(elf).to_bytes(4, "little")
    header = bytearray(2 * 512)  # setup_sects = 1: protected-mode code at 1024
    header[0x1F1] = 1
    header[0x202:0x208] = b"HdrS" + (0x20F).to_bytes(2, "little")
    header[0x248:0x250] = (16).to_bytes(4, "little") + len(payload).to_bytes(4, "little")
    image = bytes(header) + b"\x28\xb5\x2f\xfd decoy bytes" + payload + b"\x28\xb5\x2f\xfdtrailer"
    assert vmlinux.extract_vmlinux(image) == elf


def test_recipe_key_changes_with_the_recipe() -> None:
    a = recipe_key(DEFAULT_RECIPE)
    b = recipe_key(replace(DEFAULT_RECIPE, hostname="other"))
    assert a != b and a == recipe_key(recipe_for(VIRTIO, layout=PAPER_LAYOUT, hostname="s10rwmnt"))


def spec_for(run_dir: Path, drives: tuple[cmdline.Drive, ...], kernel: Path) -> cmdline.GuestSpec:
    return cmdline.GuestSpec(
        name="LNX227",
        kernel=kernel,
        initrd=kernel,
        cmdline="root=/dev/disk/by-id/virtio-01B1 ro",
        drives=drives,
        run_dir=run_dir,
        accel="tcg",
    )


def test_qemu_argv(tmp_path: Path) -> None:
    drives = (
        cmdline.Drive(tmp_path / "01B0.img", "01B0", readonly=True),
        cmdline.Drive(tmp_path / "a,b/01B5.img", "01B5"),
    )
    argv = cmdline.qemu_argv(spec_for(tmp_path / "run", drives, tmp_path / "k"))
    text = " ".join(argv)
    assert argv[0] == "qemu-system-x86_64"
    assert f"file={tmp_path}/01B0.img,format=raw,readonly=on" in text
    assert "a,,b/01B5.img,format=raw,readonly=off" in text  # commas escaped
    assert "virtio-blk-pci,drive=d01B0,serial=01B0" in text
    assert "virtio-blk-pci,drive=d01B5,serial=01B5" in text
    assert "type=1,serial=LNX227" in argv
    assert f"path={tmp_path}/run/qmp.sock" in text
    assert "name=org.qemu.guest_agent.0" in text
    assert f"logfile={tmp_path}/run/console.log" in text
    assert "-no-reboot" in argv and "-daemonize" not in argv
    assert argv[argv.index("-smp") + 1] == "1"
    assert argv[argv.index("-accel") + 1] == "tcg"
    assert "user,id=net0" in argv


def test_qemu_argv_s390x(tmp_path: Path) -> None:
    # s390x (KVM on IBM Z, or TCG): ccw devices at the paper's device numbers, the guest
    # name through -name (/proc/sysinfo), no SMBIOS
    drives = (cmdline.Drive(tmp_path / "01B1.img", "01B1", readonly=True),)
    spec = replace(spec_for(tmp_path / "run", drives, tmp_path / "k"), arch="s390x")
    argv = cmdline.qemu_argv(spec)
    text = " ".join(argv)
    assert argv[0] == "qemu-system-s390x"
    assert argv[argv.index("-machine") + 1] == "s390-ccw-virtio"
    assert "virtio-blk-ccw,drive=d01B1,serial=01B1,devno=fe.0.01b1" in text
    assert "virtio-serial-ccw,id=vser" in argv and "virtio-rng-ccw" in argv
    assert "-smbios" not in argv and "guest=LNX227,process=sharedroot-LNX227" in argv
    assert any(a.startswith("virtio-net-ccw,netdev=net0") for a in argv)
    assert "pci" not in text
    with pytest.raises(OperationError, match="no QEMU machine"):
        cmdline.qemu_argv(replace(spec, arch="ppc64el"))
    # another architecture than the host's never runs under KVM
    assert accel.probe_accel(None, arch="s390x") == "tcg"


def test_probe_kernel_is_x86(tmp_path: Path) -> None:
    elf = tmp_path / "vmlinux"
    elf.write_bytes(b"\x7fELF\x02\x01\x01" + bytes(11) + b"\x3e\x00" + bytes(64))
    s390 = tmp_path / "vmlinuz-s390x"
    s390.write_bytes(b"\x7fELF\x02\x02\x01" + bytes(11) + b"\x00\x16" + bytes(64))
    bz = tmp_path / "bzImage"
    bz.write_bytes(bytes(0x202) + b"HdrS" + bytes(16))
    assert accel.is_x86_kernel(elf) and accel.is_x86_kernel(bz)
    assert not accel.is_x86_kernel(s390) and not accel.is_x86_kernel(tmp_path / "none")


@needs_qemu
def test_launch_failure_reports_qemu_stderr(tmp_path: Path) -> None:
    image = tmp_path / "01B1.img"
    image.write_bytes(bytes(M))
    spec = spec_for(tmp_path / "run", (cmdline.Drive(image, "01B1"),), tmp_path / "no-kernel")
    with pytest.raises(OperationError, match=r"(?s)exited at once.*no-kernel"):
        process.launch(spec)


def test_make_vdisk(tmp_path: Path) -> None:
    path = process.make_vdisk(tmp_path / "01B2.swap", 4 * M)
    assert path.stat().st_size == 4 * M
    assert path.stat().st_blocks * 512 < 4 * M  # sparse
    assert run(["blkid", "-o", "value", "-s", "TYPE", path]).stdout.strip() == "swap"


# ---------------------------------------------------------------- boot


@pytest.fixture(scope="module")
def golden_tree() -> Path:
    lines: list[str] = []
    tree = debian.build_tree(CACHE, log=lines.append)
    t0 = time.monotonic()
    assert debian.build_tree(CACHE, log=lines.append) == tree
    assert time.monotonic() - t0 < 1, "the second call must come from the cache"
    return tree


@pytest.fixture
def guest_disks(
    golden_tree: Path, tmp_path: Path
) -> Iterator[tuple[Path, tuple[cmdline.Drive, ...]]]:
    """The paper layout for one guest, all read-write, plus two fresh VDISKs."""
    disks = tmp_path / "disks"
    images = {d.address: disks / f"{d.address}.img" for d in PAPER_LAYOUT.copied}
    populate_disks(golden_tree, PAPER_LAYOUT, images)
    drives = []
    shm = []
    for d in PAPER_LAYOUT:
        if d.kind is DiskKind.VDISK:
            path = Path(f"/dev/shm/sharedroot-test-{os.getpid()}-{d.address}.swap")
            shm.append(path)
            drives.append(
                cmdline.Drive(process.make_vdisk(path, d.size), d.address, ephemeral=True)
            )
        else:
            drives.append(cmdline.Drive(images[d.address], d.address))
    yield disks, tuple(drives)
    for path in shm:
        path.unlink(missing_ok=True)


def lock_held(path: Path) -> bool:
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


@pytest.mark.boot
@needs_root
@needs_qemu
def test_guest_boots_answers_and_powers_off(
    guest_disks: tuple[Path, tuple[cmdline.Drive, ...]], tmp_path: Path
) -> None:
    disks, drives = guest_disks
    kernel, initrd, conf = ipl.extract_boot_files(disks / "01B0.img", tmp_path / "boot")
    assert kernel.name.startswith(("vmlinux-", "vmlinuz-"))
    spec = cmdline.GuestSpec(
        name="S10RWMNT",
        kernel=kernel,
        initrd=initrd,
        cmdline=conf.cmdline,
        drives=drives,
        run_dir=tmp_path / "run",
        accel=accel.probe_accel(CACHE),
    )
    lock_path = tmp_path / "S10RWMNT.lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        pid = process.launch(spec, lock_fd=fd)
    finally:
        os.close(fd)  # from here on only QEMU holds the lock
    try:
        assert lock_held(lock_path)
        assert not any(d.path.exists() for d in drives if d.ephemeral)  # RAM freed on exit
        process.wait_ready(spec.run_dir, timeout=300)

        def sh(*argv: str) -> str:
            code, out, err = control.agent_exec(spec.run_dir, list(argv))
            assert code == 0, (argv, err)
            return out.decode().strip()

        assert sh("hostname") == "s10rwmnt"
        assert sh("cat", "/sys/class/dmi/id/product_serial") == "S10RWMNT"
        assert sh("findmnt", "-n", "-o", "SOURCE", "/usr") == "/dev/disk/by-id/virtio-01B7"
        assert sh("findmnt", "-n", "-o", "SOURCE", "/") == "/dev/disk/by-id/virtio-01B1"
        # The initramfs mounts /usr (merged /usr needs it before init); fstab makes it rw.
        assert sh("findmnt", "-n", "-o", "OPTIONS", "/usr").startswith("rw")
        swaps = sh("swapon", "--show=NAME,SIZE", "--noheadings", "--bytes").splitlines()
        # swapon counts the size less the one-page swap header
        assert sorted(round(int(s.split()[1]) / M) for s in swaps) == [64, 64, 128]
        # Units may still be starting right after the agent answers; wait for the end.
        deadline = time.monotonic() + 120
        while control.agent_exec(spec.run_dir, ["systemctl", "is-system-running"])[1].strip() in (
            b"starting",
            b"initializing",
        ):
            assert time.monotonic() < deadline
            time.sleep(1)
        assert sh("systemctl", "--failed", "--no-legend") == ""
        code, _, _ = control.agent_exec(spec.run_dir, ["sh", "-c", "exit 7"])
        assert code == 7
    finally:
        result = process.shutdown(spec.run_dir, pid, timeout=90)
    assert result == "clean"
    assert not process.pid_alive(pid)
    assert not lock_held(lock_path)
