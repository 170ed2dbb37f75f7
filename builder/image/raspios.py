"""A downloaded image (`base.image`: Raspberry Pi OS Lite, arm64) made into a cached base.

The file is fetched (resumable, checked against its SHA-256) and unpacked if .xz. Nothing is
mounted or loop-attached: its root filesystem is read out with debugfs `rdump` (owners, modes and
links kept; a hard link becomes a copy and extended attributes are dropped), its boot partition
with mtools into the tree's /boot/firmware, where Raspberry Pi OS mounts it. hooks/raspios.sh then
installs what a Kubernetes node needs from the image's own Debian repositories, in a chroot under
qemu-user, and the tree is assembled like the Debian base: picluster's layout, labels and disk id
(so its root is root=PARTUUID=5049434c-02 on every card).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from builder.download import fetch_file, unpack_image
from builder.errors import UserError
from builder.image import debian
from builder.image.context import BuildContext
from builder.image.layout import Layout, tool_env
from builder.image.mmdebstrap_progress import MmdebstrapProgress
from builder.run import Runner
from builder.spec.model import Cluster, ImageSource

FAT_TYPES = {"b", "c", "e"}
LINUX_TYPE = "83"
KERNELS = ("kernel8.img", "kernel_2712.img")
"""What a Raspberry Pi OS boot partition holds for 64-bit Pis; picluster's firmware templates for
this kind of base rely on the firmware choosing among them."""
ARCH_WITNESS = "usr/bin/dpkg"
"""A program every Debian-based image has, built for the architecture of its packages. The boot
partition cannot tell: 32-bit Raspberry Pi OS carries kernel8.img too, a 64-bit kernel under a
32-bit system."""
ELF_MACHINES = {183: "arm64", 40: "armhf", 62: "amd64", 3: "i386"}
"""ELF e_machine values (EM_AARCH64, EM_ARM, EM_X86_64, EM_386) and the Debian architecture of each."""
HOOK = debian.HOOKS_DIR / "raspios.sh"
PACKAGES = (
    # the Kubernetes node prerequisites the Debian base carries (kubeadm's preflight checks for
    # several of these); Raspberry Pi OS Lite has none of them but iptables
    "containerd", "containernetworking-plugins", "iptables", "conntrack", "ebtables", "ethtool", "socat",
    # the first-boot agent; growpart for picluster-grow-root (Raspberry Pi OS grows its root with
    # its own rpi-resize, which picluster's cmdline.txt does not call)
    "python3", "python3-yaml", "python3-requests", "cloud-guest-utils",
    *debian.ETCD_TOOLS,
)  # fmt: skip


def packages(cluster: Cluster) -> list[str]:
    return sorted({*PACKAGES, *debian.cluster_packages(cluster)})


def inputs(cluster: Cluster) -> dict[str, Any]:
    """Every input of a Raspberry Pi OS base that changes its bytes, for its cache key."""
    assert cluster.base.image is not None
    return {
        # by its SHA-256 only: the same image from another mirror is the same base
        "image_sha256": cluster.base.image.sha256,
        "packages": packages(cluster),
        "kubernetes": debian.kubernetes_inputs(cluster),
        "files": {f"hooks/{HOOK.name}": debian.sha256_file(HOOK)},
    }


def build_root(cluster: Cluster, work: Path, context: BuildContext) -> Path:
    """The downloaded image's trees, customised, in `work`; return the root (boot files in
    boot/firmware)."""
    source = cluster.base.image
    assert source is not None
    debian.require_root()
    debian.ensure_binfmt(context.runner)
    with context.reporter.step(f"download {source.url}"):
        raw = fetch_image(source, context.cache / "downloads")
    root = work / "root"
    with context.reporter.step("unpack its root and boot partitions (debugfs, mtools)"):
        unpack(raw, root, context.runner)
    kubernetes = "-"
    if cluster.cluster.packages == "image":
        kubernetes = str(debian.write_kubernetes_sources(cluster, work / "kubernetes"))
    with context.reporter.step(f"install {len(packages(cluster))} packages in it (apt under emulation)"):
        context.runner.stream(
            ["unshare", "--mount", "--fork", "--", "sh", HOOK, root, kubernetes, *packages(cluster)],
            work / "customise.log",
            follow=_follow_customisation(),
            show=context.reporter.say,
        )
    return root


def fetch_image(source: ImageSource, downloads: Path) -> Path:
    folder = downloads / source.sha256[:16]
    name = PurePosixPath(source.url.split("?")[0]).name or "image.img"
    downloaded = fetch_file(source.url, folder / name, source.sha256)
    return unpack_image(downloaded, folder / name.removesuffix(".xz"))


def unpack(raw: Path, root: Path, runner: Runner) -> None:
    """The image's root filesystem into `root`, its boot partition into root/boot/firmware."""
    layout = read_layout(raw, runner)
    env = tool_env(0)
    listing = runner.run(["mdir", "-b", "-i", layout.boot_target(raw), "::/"], env=env)
    if not any(f"::/{kernel}" in listing.split() for kernel in KERNELS):
        raise UserError(
            f"{raw.name} does not look like Raspberry Pi OS: its boot partition has no {KERNELS[0]}",
            "use a Raspberry Pi OS (Lite, 64-bit) image, or remove base.image to build Debian",
        )
    root.mkdir(parents=True)
    output = runner.run(["debugfs", "-R", f"rdump / {root}", layout.root_target(raw)], merge_stderr=True)
    problems = [line for line in output.splitlines() if line.strip() and not line.startswith("debugfs ")]
    if problems:
        raise UserError(
            f"debugfs could not read {raw.name}'s root filesystem: {problems[0]}",
            "its SHA-256 matched, so the image itself is damaged: choose another release",
        )
    arch = system_arch(root)
    if arch != "arm64":
        raise UserError(
            f"{raw.name} is built for {arch}, not arm64: picluster takes Raspberry Pi OS Lite arm64 "
            "(Kubernetes has published no 32-bit ARM kubelet since 1.27)",
            "download Raspberry Pi OS Lite (64-bit) and set base.image's url and sha256 to it",
        )
    restore_special_modes(raw, layout, root, runner)
    shutil.rmtree(root / "lost+found", ignore_errors=True)
    boot = root / "boot" / "firmware"
    if any(path.is_symlink() for path in (boot.parent, boot)):
        # the boot files are copied there from this machine's side: never through a link
        raise UserError(f"{raw.name}: /boot/firmware is a link, not Raspberry Pi OS's boot folder",
                        "use a Raspberry Pi OS (Lite, 64-bit) image as published")  # fmt: skip
    boot.mkdir(parents=True, exist_ok=True)
    runner.run(["mcopy", "-s", "-m", "-n", "-i", layout.boot_target(raw), "::/*", str(boot)], env=env)


LS_ENTRY = re.compile(r"^/(\d+)/(\d+)/\d+/\d+/(.*)/\d*/$")
"""A line of debugfs `ls -p`: /inode/mode (octal)/uid/gid/name/size/."""
SPECIAL_BITS = 0o6000
S_IFMT, S_IFLNK = 0o170000, 0o120000


def restore_special_modes(raw: Path, layout: Layout, root: Path, runner: Runner) -> int:
    """Put back the setuid and setgid bits rdump loses (it sets a file's owner after its mode, and
    changing the owner clears them: sudo would refuse to run), read from the image with one debugfs
    run listing every folder; return how many entries had them."""
    folders = [""]
    for folder, names, _ in os.walk(root):
        # real folders only: a link's target would be this machine's, not the image's
        paths = (os.path.join(folder, name) for name in names)
        folders += [os.path.relpath(path, root) for path in paths if not os.path.islink(path)]
    with tempfile.TemporaryDirectory(prefix="picluster-ls-") as scratch:
        script = Path(scratch) / "ls.cmds"
        script.write_text("".join(f'ls -p "/{folder}"\n' for folder in folders))
        output = runner.run(["debugfs", "-f", str(script), layout.root_target(raw)])
    restored, folder = 0, ""
    for line in output.splitlines():
        if line.startswith("debugfs: ls -p "):
            folder = line.removeprefix("debugfs: ls -p ").strip('"').strip("/")
        elif (entry := LS_ENTRY.match(line)) and entry[3] not in (".", ".."):
            mode = int(entry[2], 8)
            if mode & SPECIAL_BITS and mode & S_IFMT != S_IFLNK:
                os.chmod(root / folder / entry[3], mode & 0o7777)
                restored += 1
    return restored


def system_arch(root: Path) -> str:
    """The Debian architecture of the unpacked image's programs, read from ARCH_WITNESS's ELF header."""
    witness = root / ARCH_WITNESS
    header = witness.read_bytes()[:20] if witness.is_file() else b""
    if header[:4] != b"\x7fELF":
        return f"an unknown architecture (its /{ARCH_WITNESS} is not a program)"
    machine = int.from_bytes(header[18:20], "little")
    return ELF_MACHINES.get(machine, f"ELF machine {machine}")


def read_layout(image: Path, runner: Runner) -> Layout:
    table = json.loads(runner.run(["sfdisk", "--json", str(image)]))["partitiontable"]
    partitions = table.get("partitions", [])
    sector = table.get("sectorsize", 512)
    if (
        table.get("label") != "dos"
        or len(partitions) < 2
        or partitions[0]["type"] not in FAT_TYPES
        or partitions[1]["type"] != LINUX_TYPE
    ):
        raise UserError(
            f"{image.name}: expected an MBR with a FAT boot partition then a Linux root partition",
            "use a Raspberry Pi OS image as published",
        )
    boot, root = partitions[0], partitions[1]
    return Layout(boot["start"] * sector, root["start"] * sector, image.stat().st_size)


def _follow_customisation() -> Callable[[str, float], str | None]:
    """What to show of the customisation: the hook's steps, and the packages counted as apt
    unpacks and sets them up under emulation (as the Debian base build counts them)."""
    count = MmdebstrapProgress()

    def follow(line: str, elapsed: float) -> str | None:
        if line.startswith("picluster: "):
            return line.removeprefix("picluster: ")
        return count.feed(line, elapsed)

    return follow
