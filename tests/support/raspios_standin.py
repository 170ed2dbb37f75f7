"""A STAND-IN for Raspberry Pi OS Lite (arm64, trixie): no real image can be downloaded here.

It is Debian trixie arm64 from mmdebstrap (built the quick way the Debian base is, with the same
hooks), given the shape of Raspberry Pi OS where picluster meets it, with Debian's kernel instead
of the Raspberry Pi one so that QEMU's `virt` machine can boot it. Facts are from the RPi-Distro
repositories that build Raspberry Pi OS (pi-gen master, 2026-06; userconf-pi 0.9;
raspberrypi-sys-mods):

- the disk: an MBR whose disk id names both partitions (`PARTUUID=<id>-01`, `-02`); a FAT32
  "bootfs" from 8 MiB, 512 MiB long, and an ext4 "rootfs" right after it (pi-gen
  export-image/prerun.sh: ALIGN and BOOT_SIZE, `mkdosfs -n bootfs -F 32 -s 1`, `mkfs.ext4 -L
  rootfs`; export-image/04-set-partuuid/00-run.sh writes the disk id into fstab and cmdline.txt);
- the boot partition: the kernel as kernel8.img, its initramfs as initramfs8 (config.txt's
  `auto_initramfs=1` loads it), config.txt and cmdline.txt as CONFIG_TXT and CMDLINE below;
- the network: NetworkManager (pi-gen stage2/02-net-tweaks/00-packages), systemd-networkd off;
- SSH: openssh-server installed but disabled (pi-gen build.sh ENABLE_SSH defaults to 0, and
  stage2/01-sys-tweaks/01-run.sh then runs `systemctl disable ssh`);
- swap: trixie's rpi-swap package is a systemd generator, rpi-swap-generator (its manual page,
  rpi-swap-generator(8)), which sets up zram and/or a swap file early in boot. It stands in here
  as a generator of that name that makes and enables a 64 MiB swap file, /var/swap, so that
  masking the generator by name is what a test of "swap is off" exercises. (Bookworm used
  dphys-swapfile.service instead.)
- the first user `pi` (pi-gen build.sh FIRST_USER_NAME), without a password; /etc/machine-id
  "uninitialized" (pi-gen export-image/05-finalise/01-run.sh);
- no containerd, no CNI plugins; python3 is there (Raspberry Pi OS carries it).

Not stood in: the user wizard (userconf-pi's userconfig.service, enabled by `rename-user -f -s`
in pi-gen export-image/01-user-rename, which also disables getty@tty1), rpi-resize.service
(the `resize` on the command line), cloud-init (pi-gen ENABLE_CLOUD_INIT defaults to 1 and puts
NoCloud user-data, meta-data and network-config on the boot partition), the Raspberry Pi
kernel, firmware and device trees, and rpi-swap's zram: the real package depends on
systemd-zram-generator (ktremain/rpi-swap README: "systemd-zram-generator package (automatically
installed as dependency)") and swaps to compressed RAM by default, which this stand-in's swap
file does not model. Where the stand-in is kinder than the real image, the tests prove less: that
the wizard's and cloud-init's units are masked, not that the real ones stay off; that the
generator named rpi-swap-generator is masked, not that zram swap stays off.

The image is cached under ~/.cache/picluster/standins/<hash of its inputs>/, so only the first run
on a machine pays for mmdebstrap (minutes under qemu-user); `raspios_standin_server` in conftest.py
serves it on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from builder.files import exclusive, remove_tree
from builder.image import debian
from builder.image.context import default_cache
from builder.image.layout import MIB, SECTOR, Layout, tool_env
from builder.image.mmdebstrap_progress import MmdebstrapProgress
from builder.image.stamp import pin_mtimes, tree_size
from builder.progress import Reporter
from builder.run import Runner
from builder.spec.model import ImageSource
from tests.support.host import TOOLS, require_tools, serve_folder

NAME = "raspios-standin-lite-arm64.img.xz"
SUITE = "trixie"
ARCH = "arm64"
PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "udev", "kmod", "initramfs-tools", "zstd", "e2fsprogs",
    "dosfstools", "sudo", "iproute2", "systemd-timesyncd", "ca-certificates", "python3",
    "network-manager", "openssh-server",
    # the Debian base's hooks copy this package's firmware blobs to the boot partition
    "raspi-firmware",
    debian.KERNEL,
)  # fmt: skip
DISK_ID = "9c3f51d2"
"""Any id will do: pi-gen takes the one parted picks at random. Not picluster's own (5049434c), so
a card that kept it would show."""
BOOT_OFFSET = 8 * MIB
BOOT_SIZE = 512 * MIB
ROOT_OFFSET = BOOT_OFFSET + BOOT_SIZE
ROOT_MARGIN_MIB = 200
"""pi-gen's margin: the root filesystem holds its content * 1.2 + 200 MiB."""
SWAP_FILE_MIB = 64
"""Small: the stand-in's root is not grown on first boot as Raspberry Pi OS's is (rpi-resize), and
a swap file that filled it would fail every service that writes to /var."""
EPOCH = 1_767_225_600
"""2026-01-01: fixed, so the stand-in's bytes depend only on its inputs."""

CMDLINE = (
    f"console=serial0,115200 console=tty1 root=PARTUUID={DISK_ID}-02 rootfstype=ext4 fsck.repair=yes "
    "rootwait resize\n"
)
"""pi-gen stage1/00-boot-files/files/cmdline.txt with export-image/04-set-partuuid's PARTUUID. Since
trixie (pi-gen 23e7af35, 2025-08) it ends in `resize` for rpi-resize.service; bookworm's ended in
`quiet init=/usr/lib/raspberrypi-sys-mods/firstboot` (stage2 patch 07-resize-init.diff), a script
that gave the disk a random id on first boot and rewrote it in fstab and cmdline.txt."""
CONFIG_TXT = """\
# Stand-in for Raspberry Pi OS's config.txt: its settings, from pi-gen
# stage1/00-boot-files/files/config.txt (2026-06).
dtparam=audio=on
camera_auto_detect=1
display_auto_detect=1
auto_initramfs=1
dtoverlay=vc4-kms-v3d
max_framebuffers=2
disable_fw_kms_setup=1
disable_overscan=1
arm_boost=1

[cm4]
otg_mode=1

[cm5]
dtoverlay=dwc2,dr_mode=host

[pi5]
dtoverlay=nospi10

[all]
"""
FSTAB = f"""\
proc            /proc           proc    defaults          0       0
PARTUUID={DISK_ID}-01  /boot/firmware  vfat    defaults          0       2
PARTUUID={DISK_ID}-02  /               ext4    defaults,noatime  0       1
"""
"""pi-gen stage1/01-sys-tweaks/files/fstab, with the PARTUUIDs written in."""
SWAP_GENERATOR = f"""\
#!/bin/sh
# STAND-IN for Raspberry Pi OS's rpi-swap-generator (package rpi-swap): enables a swap file.
# Generated units go to the first argument, systemd's normal generator folder.
set -eu
units=$1
cat > "$units/rpi-swap-file.service" <<'EOF'
[Unit]
Description=Stand-in for rpi-swap: make the swap file
DefaultDependencies=no
RequiresMountsFor=/var
After=systemd-remount-fs.service
ConditionPathExists=!/var/swap
[Service]
Type=oneshot
ExecStart=/bin/sh -c 'fallocate -l {SWAP_FILE_MIB}M /var/swap && chmod 600 /var/swap && mkswap /var/swap'
EOF
cat > "$units/var-swap.swap" <<'EOF'
[Unit]
Description=Stand-in for rpi-swap: the swap file
Requires=rpi-swap-file.service
After=rpi-swap-file.service
[Swap]
What=/var/swap
EOF
mkdir -p "$units/swap.target.wants"
ln -sf ../var-swap.swap "$units/swap.target.wants/var-swap.swap"
"""


def inputs() -> dict[str, object]:
    """Everything that changes the stand-in's bytes, for its cache key: its packages, files and
    layout, the code that shapes and lays it out, and the Debian base's hooks it is built with."""
    hooks = sorted([*debian.HOOKS, debian.INITRAMFS_MODULES])
    return {
        "suite": SUITE,
        "arch": ARCH,
        "sources": debian.apt_sources(SUITE),
        "packages": sorted(PACKAGES),
        "dpkg_options": list(debian.DPKG_OPTIONS),
        "files": [CMDLINE, CONFIG_TXT, FSTAB, SWAP_GENERATOR],
        "layout": [DISK_ID, BOOT_OFFSET, BOOT_SIZE, ROOT_MARGIN_MIB, EPOCH],
        "code": [inspect.getsource(shape_tree), inspect.getsource(lay_out)],
        "hooks": {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in hooks},
    }


def cache_folder(cache: Path) -> Path:
    key = hashlib.sha256(json.dumps(inputs(), sort_keys=True).encode()).hexdigest()
    return cache / "standins" / key[:16]


def ensure_standin(cache: Path, reporter: Reporter) -> Path:
    """The stand-in's .img.xz, built first if this machine has none for these inputs."""
    folder = cache_folder(cache)
    image = folder / NAME
    if image.exists():
        return image
    with exclusive(
        folder.with_name(f"{folder.name}.lock"), f"the Raspberry Pi OS stand-in {folder}", reporter.say
    ):
        if not image.exists():
            build_standin(folder, reporter)
    return image


def build_standin(folder: Path, reporter: Reporter) -> None:
    """mmdebstrap a tree, give it Raspberry Pi OS's shape, lay it out and compress it; the folder
    appears whole, with the image's SHA-256 beside it."""
    runner = Runner()
    work = folder.with_name(f".{folder.name}.building")
    remove_tree(work)
    work.mkdir(parents=True)
    debian.require_host_tools()
    debian.ensure_binfmt(runner)
    root = work / "root"
    with reporter.step("mmdebstrap: the Raspberry Pi OS stand-in's packages (several minutes)"):
        command = [*debian.mmdebstrap_options(ARCH, sorted(PACKAGES)), SUITE, str(root),
                   *debian.apt_sources(SUITE)]  # fmt: skip
        runner.stream(command, work / "mmdebstrap.log", follow=MmdebstrapProgress().feed,
                      show=reporter.say)  # fmt: skip
    boot = work / "boot"
    shape_tree(root, boot, runner)
    image = work / NAME.removesuffix(".xz")
    with reporter.step("partitions and filesystems"):
        lay_out(root, boot, image, runner)
    with reporter.step("xz"):
        runner.run(["xz", "-T0", "-2", "--keep", str(image)])
    staging = work / "out"
    staging.mkdir()
    packed = image.with_name(NAME)
    packed.rename(staging / NAME)
    with (staging / NAME).open("rb") as packed_file:
        digest = hashlib.file_digest(packed_file, "sha256").hexdigest()
    (staging / f"{NAME}.sha256").write_text(f"{digest}  {NAME}\n")
    remove_tree(folder)
    staging.rename(folder)
    remove_tree(work)


def shape_tree(root: Path, boot: Path, runner: Runner) -> None:
    """Turn the Debian tree into Raspberry Pi OS's shape; its boot partition's files go to `boot`."""
    # the Debian base's hooks enable systemd-networkd; Raspberry Pi OS runs NetworkManager alone
    runner.run(["systemctl", f"--root={root}", "disable", "systemd-networkd.service"])
    runner.run(["systemctl", f"--root={root}", "enable", "NetworkManager.service"])
    runner.run(["systemctl", f"--root={root}", "disable", "ssh.service"])
    runner.run(["chroot", str(root), "useradd", "--create-home", "--shell", "/bin/bash", "pi"])
    (root / "etc/fstab").write_text(FSTAB)
    # pi-gen export-image/05-finalise: systemd makes the machine id on first boot
    (root / "etc/machine-id").write_text("uninitialized\n")
    (root / "etc/hostname").write_text("raspberrypi\n")
    with (root / "etc/hosts").open("a") as hosts:
        hosts.write("127.0.1.1\t\traspberrypi\n")
    generator = root / "usr/lib/systemd/system-generators/rpi-swap-generator"
    generator.write_text(SWAP_GENERATOR)
    generator.chmod(0o755)

    # the boot partition as Raspberry Pi OS names it: the Pi firmware the hooks put there, the
    # kernel and initramfs under its names, its config.txt and cmdline.txt
    (version,) = [path.name for path in (root / "lib/modules").iterdir()]
    (root / "boot/firmware").rename(boot)
    (root / "boot/firmware").mkdir()
    for debian_name in ("vmlinuz", "initrd.img"):
        (boot / debian_name).unlink()
    shutil.copyfile(root / f"boot/vmlinuz-{version}", boot / "kernel8.img")
    shutil.copyfile(root / f"boot/initrd.img-{version}", boot / "initramfs8")
    (boot / "config.txt").write_text(CONFIG_TXT)
    (boot / "cmdline.txt").write_text(CMDLINE)


def lay_out(root: Path, boot: Path, image: Path, runner: Runner) -> Layout:
    """pi-gen's layout, made without mounting: MBR, FAT32 bootfs, ext4 rootfs."""
    content = tree_size(root)
    root_size = -(-(int(content * 1.2) + ROOT_MARGIN_MIB * MIB) // (8 * MIB)) * 8 * MIB
    layout = Layout(BOOT_OFFSET, ROOT_OFFSET, ROOT_OFFSET + root_size)
    env = tool_env(EPOCH)
    pin_mtimes(root, EPOCH)
    pin_mtimes(boot, EPOCH)
    with image.open("wb") as handle:
        handle.truncate(layout.image_size)
    table = (f"label: dos\nlabel-id: 0x{DISK_ID}\nunit: sectors\n\n"
             f"start={BOOT_OFFSET // SECTOR}, size={BOOT_SIZE // SECTOR}, type=c\n"
             f"start={ROOT_OFFSET // SECTOR}, size={root_size // SECTOR}, type=83\n")  # fmt: skip
    runner.run(["sfdisk", "--quiet", str(image)], input=table.encode())
    runner.run(["mkfs.vfat", "-F", "32", "-s", "1", "-n", "bootfs", "-i", DISK_ID, "--offset",
                str(BOOT_OFFSET // SECTOR), str(image), str(BOOT_SIZE // 1024)], env=env)  # fmt: skip
    boot_files = sorted(str(path) for path in boot.iterdir())
    runner.run(["mcopy", "-s", "-m", "-i", layout.boot_target(image), *boot_files, "::/"], env=env)
    runner.run(["mke2fs", "-q", "-t", "ext4", "-L", "rootfs", "-E", f"offset={ROOT_OFFSET},root_owner=0:0",
                "-d", str(root), str(image), f"{root_size // 1024}k"], env=env)  # fmt: skip
    return layout


@pytest.fixture(scope="session")
def raspios_standin_source() -> Iterator[ImageSource]:
    """The Raspberry Pi OS stand-in (tests/support/raspios_standin.py) served on 127.0.0.1, as
    base.image names it. The first run on a machine builds it (minutes, as root); later runs reuse
    the cached one."""
    if os.geteuid() != 0:
        pytest.skip("building the Raspberry Pi OS stand-in needs root (mmdebstrap)")
    require_tools(*TOOLS, "mmdebstrap", "xz")
    with served(ensure_standin(default_cache(), Reporter())) as source:
        yield source


@contextmanager
def served(image: Path) -> Iterator[ImageSource]:
    """The stand-in's image served on 127.0.0.1, as base.image names it."""
    sha256 = (image.parent / f"{image.name}.sha256").read_text().split()[0]
    with serve_folder(image.parent) as url:
        yield ImageSource(url=f"{url}/{image.name}", sha256=sha256)
