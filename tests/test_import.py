"""install --from-tree / --from-image: a shop's own system as the gold (real images).

The images are made here the way an installer makes them: a partition table (sfdisk),
filesystems (mke2fs), an LVM volume group made by LVM's own tools (placed without
device-mapper, which this kernel lacks), qcow2 by qemu-img. Their content is the
cached Debian golden tree with a marker file in each filesystem. One imported tree goes
all the way to a read-only clone that boots and passes verify.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest

from conftest import SHAREDROOT, BootSite, sha256, tree_hashes
from sharedroot.guestos import debian
from sharedroot.guestos.recipe import DEFAULT_RECIPE
from sharedroot.guestos.tree import replace_file, split_tree, staged_tree
from sharedroot.hypervisor import cache_dir
from sharedroot.hypervisor.images import make_filesystem
from sharedroot.model.layout import PAPER_LAYOUT, DiskSpec, Layout
from sharedroot.model.types import Access, DiskKind
from sharedroot.run import run

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (loop mounts)")

M = 1 << 20
MAINT = "S10RWMNT"
# Where each mount point lands on the maintenance guest (the paper layout).
DISK_OF = {d.mount: d.address for d in PAPER_LAYOUT if d.mount is not None}
MARKERS = {
    "/": "etc/import-marker",
    "/boot": "boot/import-marker",
    "/usr": "usr/share/import-marker",
    "/var": "var/lib/import-marker",
    "/opt": "opt/import-marker",
}
LVM_QUIET = {**os.environ, "LVM_SUPPRESS_FD_WARNINGS": "1"}


@pytest.fixture(scope="module")
def golden() -> Path:
    return debian.build_tree(cache_dir(), DEFAULT_RECIPE, log=lambda _: None)


def marked(stage: Path, fstab: str, label: str) -> None:
    """Give a staged tree its own fstab and a marker in each of the layout's filesystems."""
    replace_file(stage / "etc/fstab", fstab)
    for mount, rel in MARKERS.items():
        replace_file(stage / rel, f"{label} {mount}\n")


def partitioned(path: Path, size: int, script: str) -> list[tuple[int, int]]:
    """A raw disk of `size` with the sfdisk `script`'s table; each partition's bytes."""
    path.unlink(missing_ok=True)
    run(["truncate", "-s", str(size), path])
    run(["sfdisk", "--quiet", path], input=script)
    table = json.loads(run(["sfdisk", "--json", path]).stdout)["partitiontable"]
    return [(p["start"] * 512, p["size"] * 512) for p in table["partitions"]]


def place(image: Path, at: int, fs_image: Path) -> None:
    """Write a filesystem image into a disk image at a byte offset (holes kept)."""
    run(["dd", f"if={fs_image}", f"of={image}", "bs=1M", f"seek={at}", "oflag=seek_bytes",
         "conv=notrunc,sparse", "status=none"])  # fmt: skip
    fs_image.unlink()


@pytest.fixture(scope="module")
def images(golden: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A qcow2 (GPT: ext4 root + swap) and a raw disk (MBR: ext4 /boot + LVM with root
    and usr LVs), each an installed Debian whose fstab names its own filesystems."""
    base = tmp_path_factory.mktemp("images")
    out: dict[str, Path] = {}

    # qcow2, GPT, one root partition; the file's name does not say qcow2
    raw = base / "gpt.raw"
    parts = partitioned(
        raw,
        1400 * M,
        "label: gpt\n size=1200MiB, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709\n type=S\n",
    )
    root_fs = base / "root.ext4"
    uuid = str(uuid4())
    with staged_tree(golden) as stage:
        fstab = f"UUID={uuid} / ext4 errors=remount-ro 0 1\nPARTLABEL=none none swap sw 0 0\n"
        marked(stage, fstab, "qcow2")
        make_filesystem(root_fs, DiskKind.FS, parts[0][1], "ext4", stage)
    run(["tune2fs", "-U", uuid, root_fs])
    place(raw, parts[0][0], root_fs)
    out["qcow2"] = base / "system.img"
    run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, out["qcow2"]])
    raw.unlink()

    # raw, MBR: /boot by LABEL, an LVM PV with root and usr LVs named by /dev/mapper paths
    disk = base / "lvm.raw"
    parts = partitioned(disk, 1600 * M, "label: dos\n size=128MiB, type=83\n type=8e\n")
    pv = run(["losetup", "--show", "--find", "--offset", str(parts[1][0]),
              "--sizelimit", str(parts[1][1]), disk]).stdout.strip()  # fmt: skip
    try:
        lvm = ["--devices", pv, "--driverloaded", "n"]
        run(["pvcreate", *lvm, pv], env=LVM_QUIET)
        run(["vgcreate", *lvm, "vgsys", pv], env=LVM_QUIET)
        for name, size in (("root", "256M"), ("usr", "1100M")):
            run(["lvcreate", *lvm, "-an", "-Zn", "-L", size, "-n", name, "vgsys"], env=LVM_QUIET)
        lvs = ["lvs", *lvm, "--reportformat", "json", "-o", "lv_name,seg_pe_ranges", "vgsys"]
        report = json.loads(run(lvs, env=LVM_QUIET).stdout)
        pe_start = int(run(["pvs", *lvm, "--noheadings", "--nosuffix", "--units", "b",
                            "-o", "pe_start", pv], env=LVM_QUIET).stdout)  # fmt: skip
        extent = int(run(["vgs", *lvm, "--noheadings", "--nosuffix", "--units", "b",
                          "-o", "vg_extent_size", "vgsys"], env=LVM_QUIET).stdout)  # fmt: skip
    finally:
        run(["losetup", "-d", pv])
    ranges = {}
    for lv in report["report"][0]["lv"]:
        first, last = lv["seg_pe_ranges"].split(":")[1].split("-")
        ranges[lv["lv_name"]] = (parts[1][0] + pe_start + int(first) * extent,
                                 (int(last) - int(first) + 1) * extent)  # fmt: skip
    fstab = (
        "/dev/mapper/vgsys-root / ext4 defaults 0 1\n"
        "LABEL=boot /boot ext4 defaults 0 2\n"
        "/dev/vgsys/usr /usr ext4 defaults 0 2\n"
        "/dev/vgsys/swap none swap sw,nofail 0 0\n"
    )
    lay = Layout((
        DiskSpec("0001", DiskKind.FS, ranges["root"][1], Access.RO, "/", "ext4"),
        DiskSpec("0002", DiskKind.FS, parts[0][1], Access.RO, "/boot", "ext4"),
        DiskSpec("0003", DiskKind.FS, ranges["usr"][1], Access.RO, "/usr", "ext4"),
    ))  # fmt: skip
    with staged_tree(golden) as stage:
        marked(stage, fstab, "lvm")
        sources = split_tree(stage, lay, guest_fstab=False)
        for d, at in (
            ("0001", ranges["root"][0]),
            ("0002", parts[0][0]),
            ("0003", ranges["usr"][0]),
        ):
            spec = next(s for s in lay if s.address == d)
            fs_image = base / f"{d}.ext4"
            make_filesystem(fs_image, DiskKind.FS, spec.size, "ext4", sources[d],
                            "boot" if d == "0002" else None)  # fmt: skip
            place(disk, at, fs_image)
    out["lvm"] = disk
    return out


def attached_loops(*files: Path) -> list[str]:
    """Loop devices backed by any of `files` (none may stay after a run)."""
    res = run(["losetup", "--json", "--list"], check=False)
    devices = json.loads(res.stdout or '{"loopdevices": []}')["loopdevices"]
    names = {str(f.resolve()) for f in files}
    return [d["name"] for d in devices if (d.get("back-file") or "").split(" ")[0] in names]


def mapper_devices() -> set[str]:
    return set(os.listdir("/dev/mapper")) if os.path.isdir("/dev/mapper") else set()


def fresh_site(tmp_path: Path) -> BootSite:
    site = BootSite(tmp_path / "site")
    site.run("init", "--layout", "paper")
    return site


def disk_file(site: BootSite, address: str) -> Path:
    return site.home / "disks" / MAINT / f"{address}.img"


def cat(image: Path, path: str) -> str:
    return run(["debugfs", "-R", f"cat /{path}", image]).stdout


def ls(image: Path, path: str) -> set[str]:
    out = run(["debugfs", "-R", f"ls -l /{path}", image]).stdout
    return {line.split()[-1] for line in out.splitlines() if line.strip()} - {".", ".."}


@pytest.fixture
def worker_vg(tmp_path: Path) -> Iterator[Path]:
    """A volume group of the worker's own named like the image's (vgsys), on a loop device."""
    disk = tmp_path / "worker-pv.raw"
    run(["truncate", "-s", str(16 * M), disk])
    pv = run(["losetup", "--show", "--find", disk]).stdout.strip()
    try:
        lvm = ["--devices", pv, "--driverloaded", "n"]
        run(["vgcreate", *lvm, "vgsys", pv], env=LVM_QUIET)
        run(["lvcreate", *lvm, "-an", "-Zn", "-L", "4M", "-n", "root", "vgsys"], env=LVM_QUIET)
        yield disk
    finally:
        run(["losetup", "-d", pv])


@pytest.mark.parametrize("kind", ["qcow2", "lvm"])
def test_an_image_is_imported_split_by_mount_point(
    kind: str, images: dict[str, Path], tmp_path: Path, worker_vg: Path
) -> None:
    image = images[kind]
    before = sha256(image)
    worker_vg_before = sha256(worker_vg)
    dm_before = mapper_devices()
    site = fresh_site(tmp_path)
    disks_before = tree_hashes(site.home / "disks")

    dry = site.run("install", "--from-image", str(image), "--dry-run")
    assert "would import the system of --from-image" in dry.stdout + dry.stderr
    assert tree_hashes(site.home / "disks") == disks_before

    ran = site.run("install", "--from-image", str(image), "--yes")
    told = ran.stdout + ran.stderr
    if kind == "lvm":
        assert "root: LV vgsys/root (ext4)" in told and "/usr: LV vgsys/usr (ext4)" in told, told
        assert "/boot: partition 1 (ext4)" in told, told
    else:
        assert "root: partition 1 (ext4)" in told and "convert the qcow2 image" in told, told
    # each filesystem's files on the disk of its mount point, and only there
    for mount, rel in MARKERS.items():
        image_disk = disk_file(site, DISK_OF[mount])
        inner = rel if mount == "/" else rel.removeprefix(mount.lstrip("/") + "/")
        assert cat(image_disk, inner) == f"{kind} {mount}\n", (mount, rel)
    root = disk_file(site, DISK_OF["/"])
    assert ls(root, "usr") == set() and ls(root, "boot") == set()
    assert "systemd" in ls(disk_file(site, DISK_OF["/usr"]), "lib")
    # the guest's fstab is the layout's, not the image's
    assert "by-id/virtio-01B7" in cat(root, "etc/fstab")
    assert sha256(image) == before  # read-only, really
    assert sha256(worker_vg) == worker_vg_before  # the worker's own vgsys, untouched
    assert attached_loops(image) == [] and mapper_devices() == dm_before
    assert list((site.home / "tmp").iterdir()) == []  # no converted image, no staging copy


def small_tree(base: Path, *files: str) -> Path:
    root = base / "tree"
    for rel in ("etc/hostname", "usr/bin/true", *files):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x\n")
    return root


def refused(site: BootSite, *args: str) -> str:
    before = tree_hashes(site.home / "disks")
    ran = site.run("install", *args, "--yes", check=False)
    assert ran.returncode in (1, 2), ran.stderr
    assert tree_hashes(site.home / "disks") == before  # nothing written
    journal = json.loads(site.run("journal", "--json").stdout)
    assert not [j for j in journal if j["operation"] == "install"], journal
    return ran.stderr


def test_what_cannot_be_a_read_only_root_is_refused(golden: Path, tmp_path: Path) -> None:
    site = fresh_site(tmp_path)
    no_systemd = small_tree(tmp_path / "a", "usr/sbin/update-initramfs")
    err = refused(site, "--from-tree", str(no_systemd))
    assert "cannot be made a read-only root: no systemd" in err, err
    no_generator = small_tree(tmp_path / "b", "usr/lib/systemd/systemd")
    err = refused(site, "--from-tree", str(no_generator))
    assert "no initramfs generator sharedroot knows (neither update-initramfs nor dracut" in err, (
        err
    )
    # /lib -> usr/lib as on merged-/usr systems; dracut instead of initramfs-tools
    merged = small_tree(tmp_path / "c", "usr/lib/systemd/systemd", "usr/bin/dracut")
    (merged / "lib").symlink_to("usr/lib")
    err = refused(site, "--from-tree", str(merged), "--network", "ifupdown")
    assert "--from-tree brings its own" in err
    assert site.run("install", "--from-tree", str(merged), "--dry-run").returncode == 0

    # the golden tree is an amd64 system: not for s390x guests
    err = refused(site, "--from-tree", str(golden), "--arch", "s390x")
    assert "its systemd is built for amd64, the guests are s390x" in err, err

    # an image of a system without systemd: found, mounted read-only, refused
    stage = small_tree(tmp_path / "d", "usr/sbin/update-initramfs")
    bare = tmp_path / "bare.img"
    make_filesystem(bare, DiskKind.FS, 16 * M, "ext4", stage)
    digest = sha256(bare)
    err = refused(site, "--from-image", str(bare))
    assert "cannot be made a read-only root: no systemd" in err, err
    assert sha256(bare) == digest and attached_loops(bare) == []


def test_what_is_no_system_image_is_refused(tmp_path: Path) -> None:
    site = fresh_site(tmp_path)
    empty = tmp_path / "empty.raw"
    run(["truncate", "-s", str(64 * M), empty])
    err = refused(site, "--from-image", str(empty))
    assert "no root filesystem found" in err, err
    table = tmp_path / "table-only.img"
    partitioned(table, 64 * M, "label: gpt\n type=L\n")
    err = refused(site, "--from-image", str(table))
    assert "no root filesystem found" in err, err
    text = tmp_path / "notes.qcow2"  # the name says qcow2; the content does not
    text.write_text("not a disk image\n")
    err = refused(site, "--from-image", str(text))
    assert "no root filesystem found" in err, err
    vmdk = tmp_path / "disk.vmdk"
    run(["qemu-img", "create", "-q", "-f", "vmdk", vmdk, "16M"])
    err = refused(site, "--from-image", str(vmdk))
    assert "a vmdk image; sharedroot imports raw and qcow2" in err, err
    # two systems on one disk: which one is meant is not guessed
    two = tmp_path / "two.img"
    parts = partitioned(two, 80 * M, "label: dos\n size=32MiB, type=83\n type=83\n")
    sys_tree = small_tree(tmp_path / "sys", "usr/lib/systemd/systemd", "usr/sbin/update-initramfs")
    for n, (at, size) in enumerate(parts):
        fs_image = tmp_path / f"p{n}.ext4"
        make_filesystem(fs_image, DiskKind.FS, size, "ext4", sys_tree)
        place(two, at, fs_image)
    err = refused(site, "--from-image", str(two))
    assert "several candidate roots: partition 1, partition 2" in err, err
    # an LV of two segments (extended after another LV was made) needs device-mapper
    lvm_disk = tmp_path / "pv.raw"
    run(["truncate", "-s", str(64 * M), lvm_disk])
    pv = run(["losetup", "--show", "--find", lvm_disk]).stdout.strip()
    try:
        lvm = ["--devices", pv, "--driverloaded", "n"]
        run(["vgcreate", *lvm, "vgtwo", pv], env=LVM_QUIET)
        for name in ("root", "other"):
            run(["lvcreate", *lvm, "-an", "-Zn", "-L", "8M", "-n", name, "vgtwo"], env=LVM_QUIET)
        run(["lvextend", *lvm, "-L", "+8M", "vgtwo/root"], env=LVM_QUIET)
    finally:
        run(["losetup", "-d", pv])
    err = refused(site, "--from-image", str(lvm_disk))
    assert "no root filesystem it can read: LV vgtwo/root has 2 segments" in err, err
    assert "without device-mapper" in err, err
    # paths that are not allowed
    for args, message in (
        (["--from-image", str(tmp_path)], "not a regular file"),
        (["--from-image", str(tmp_path / "nothing.img")], "no such file"),
        (["--from-image", str(disk_file(site, "01B1"))], "lies in the store"),
        (["--from-tree", str(tmp_path)], "holds no Linux system"),
        (["--from-tree", str(tmp_path / "sys"), "--from-image", str(two)], "not allowed with"),
    ):
        err = refused(site, *args)
        assert message in err, (args, err)
    images = [empty, table, text, vmdk, two, lvm_disk]
    assert attached_loops(*images) == []


# ---------------------------------------------------------------- boot


@pytest.fixture(scope="module")
def imported(golden: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BootSite]:
    """A site whose maintenance system is a shop's own tree (a copy of the golden one,
    outside sharedroot's cache), imported with --from-tree."""
    base = tmp_path_factory.mktemp("own-tree")
    tree = base / "system"
    run(["cp", "-a", golden, tree])
    listing = sorted(str(p) for p in tree.rglob("*"))
    site = BootSite.installed(tmp_path_factory, "import-boot", "--from-tree", str(tree))
    assert sorted(str(p) for p in tree.rglob("*")) == listing  # the tree is left as it was
    yield site
    site.run("stop", "LNX227", "--timeout", "30", check=False)
    shutil.rmtree(tree, ignore_errors=True)


@pytest.mark.boot
def test_an_imported_tree_becomes_a_read_only_clone_that_verifies(imported: BootSite) -> None:
    site = imported
    site.run("mnt2rogld", "--yes")
    site.run("ro2gold", "--yes")
    site.run("define", "LNX227", "--ro", "--hostname", "lnx227", "--ip", "10.0.2.27",
             "--gateway", "10.0.2.2")  # fmt: skip
    site.run("clonero", "LNX227", "--yes")
    site.start("LNX227")
    report = json.loads(site.run("verify", "LNX227", "--json", check=False).stdout)
    failed = [c for c in report["checks"] if not c["ok"]]
    assert report["ok"], failed
    assert site.sh("LNX227", "hostname").strip() == "lnx227"


def wait_for(path: Path, pattern: str, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 300
    while not list(path.glob(pattern)):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"no {pattern} in {path}"
        time.sleep(0.05)


def test_an_interrupted_import_leaves_nothing_behind(
    images: dict[str, Path], tmp_path: Path
) -> None:
    image = images["qcow2"]
    before = sha256(image)
    site = fresh_site(tmp_path)
    tmp = site.home / "tmp"
    argv = [SHAREDROOT, "--home", str(site.home), "install", "--from-image", str(image), "--yes"]
    # SIGTERM while the qcow2 is converted: unwound like ^C, its raw copy removed
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(tmp, ".import-*/image.raw", proc)
    proc.terminate()
    _, err = proc.communicate()
    assert proc.returncode == 130 and "interrupted" in err, err
    assert list(tmp.iterdir()) == [] and attached_loops(image) == []
    # SIGKILL while the mounted image is copied: its mounts die with its mount namespace
    # (once its cp, which holds the site lock, has ended too); the next run clears the
    # converted image and the half copy, and installs
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(tmp, ".stage-*/root/usr", proc)
    proc.kill()
    proc.communicate()
    left = sorted(p.name.split("-")[0] for p in tmp.iterdir())
    assert left == [".import", ".stage"], left
    BootSite(site.home).run("install", "--from-image", str(image), "--yes")
    assert list(tmp.iterdir()) == [] and attached_loops(image) == []
    assert sha256(image) == before
    rows = json.loads(BootSite(site.home).run("guests", "--json").stdout)
    assert next(g for g in rows if g["name"] == MAINT)["incomplete"] is None
