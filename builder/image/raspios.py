"""A downloaded image (`base.image`, e.g. Raspberry Pi OS Lite) made into a cached base.

The file is fetched with requests (resumable, checked against its SHA-256), unpacked if .xz, and
copied sparse into the cache. Its partitions are found from its own partition table and relabelled
RASPIFIRM and RASPIROOT, so picluster's fstab mounts them by label on every base, and its disk id
is pinned to picluster's (builder.render.node.CARD_DISK_ID), so the rendered cmdline.txt's
`root=PARTUUID=` names the root partition as Raspberry Pi OS's own does. What its root filesystem
holds is listed with debugfs, so stamping knows which folders exist.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path, PurePosixPath

from builder.download import fetch_file, unpack_image
from builder.errors import UserError
from builder.image.layout import BOOT_LABEL, DISK_ID, ROOT_LABEL, Layout, tool_env
from builder.run import Runner
from builder.spec.model import ImageSource

FAT_TYPES = {"b", "c", "e"}
LINUX_TYPE = "83"
KERNELS = ("kernel8.img", "kernel_2712.img")
"""What a Raspberry Pi OS boot partition holds for 64-bit Pis; picluster's firmware templates for
this kind of base rely on the firmware choosing among them."""
ARCH_WITNESS = "/usr/bin/dpkg"
"""A program every Debian-based image has, built for the architecture of its packages. The boot
partition cannot tell: 32-bit Raspberry Pi OS carries kernel8.img too, a 64-bit kernel under a
32-bit system."""
ELF_MACHINES = {183: "arm64", 40: "armhf", 62: "amd64", 3: "i386"}
"""ELF e_machine values (EM_AARCH64, EM_ARM, EM_X86_64, EM_386) and the Debian architecture of each."""


def fetch_image(source: ImageSource, downloads: Path) -> Path:
    folder = downloads / source.sha256[:16]
    name = PurePosixPath(source.url.split("?")[0]).name or "image.img"
    downloaded = fetch_file(source.url, folder / name, source.sha256)
    return unpack_image(downloaded, folder / name.removesuffix(".xz"))


def adopt(raw: Path, image: Path, epoch: int, runner: Runner) -> tuple[Layout, list[str], list[str]]:
    """Copy a downloaded image to `image` and make it a base: its layout, folders and files."""
    runner.run(["cp", "--sparse=always", str(raw), str(image)])
    layout = read_layout(image, runner)
    env = tool_env(epoch)
    listing = runner.run(["mdir", "-b", "-i", layout.boot_target(image), "::/"], env=env)
    if not any(f"::/{kernel}" in listing.split() for kernel in KERNELS):
        raise UserError(
            f"{raw.name} does not look like Raspberry Pi OS: its boot partition has no {KERNELS[0]}",
            "use a Raspberry Pi OS (Lite, 64-bit) image, or remove base.image to build Debian",
        )
    arch = system_arch(image, layout, runner)
    if arch != "arm64":
        raise UserError(
            f"{raw.name} is built for {arch}, not arm64: picluster takes Raspberry Pi OS Lite arm64 "
            "(Kubernetes has published no 32-bit ARM kubelet since 1.27)",
            "download Raspberry Pi OS Lite (64-bit) and set base.image's url and sha256 to it",
        )
    runner.run(["mlabel", "-i", layout.boot_target(image), f"::{BOOT_LABEL}"], env=env)
    runner.run(["tune2fs", "-L", ROOT_LABEL, layout.root_target(image)], env=env)
    runner.run(["sfdisk", "--disk-id", str(image), DISK_ID])
    dirs, others = list_root(image, layout, runner)
    return layout, dirs, others


def system_arch(image: Path, layout: Layout, runner: Runner) -> str:
    """The Debian architecture of the image's programs, read from ARCH_WITNESS's ELF header."""
    with tempfile.TemporaryDirectory(prefix="picluster-arch-") as scratch:
        copy = Path(scratch) / "witness"
        runner.run(["debugfs", "-R", f"dump {ARCH_WITNESS} {copy}", layout.root_target(image)])
        header = copy.read_bytes()[:20] if copy.exists() else b""
    if header[:4] != b"\x7fELF":
        return f"an unknown architecture (its {ARCH_WITNESS} is not a program)"
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


LS_ENTRY = re.compile(r"^/(\d+)/(\d+)/\d+/\d+/(.*)/\d*/$")


def list_root(image: Path, layout: Layout, runner: Runner) -> tuple[list[str], list[str]]:
    """Every folder and every other entry of the root filesystem, one debugfs run per depth."""
    dirs: list[str] = []
    others: list[str] = []
    level = [""]
    with tempfile.TemporaryDirectory(prefix="picluster-ls-") as scratch:
        script = Path(scratch) / "ls.cmds"
        while level:
            script.write_text("".join(f'ls -p "/{folder}"\n' for folder in level))
            output = runner.run(["debugfs", "-f", str(script), layout.root_target(image)])
            level = []
            for folder, entries in _listings(output):
                for name, is_dir in entries:
                    path = f"{folder}/{name}".lstrip("/")
                    if is_dir:
                        dirs.append(path)
                        level.append(path)
                    else:
                        others.append(path)
    return sorted(dirs), sorted(others)


def _listings(output: str) -> list[tuple[str, list[tuple[str, bool]]]]:
    """Split debugfs output into (folder, [(name, is_folder)]) per `ls -p` command."""
    found: list[tuple[str, list[tuple[str, bool]]]] = []
    for line in output.splitlines():
        if line.startswith("debugfs: ls -p "):
            found.append((line.removeprefix("debugfs: ls -p ").strip('"').strip("/"), []))
            continue
        match = LS_ENTRY.match(line)
        if match and found and match[3] not in (".", ".."):
            mode = int(match[2], 8)
            found[-1][1].append((match[3], mode & 0o170000 == 0o040000))
    return found
