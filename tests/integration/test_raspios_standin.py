"""The Raspberry Pi OS stand-in has the shape its docstring claims, read from the bytes served on
127.0.0.1 (as base.image downloads them) with mtools and debugfs, nothing mounted."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from builder.image.layout import Layout
from builder.image.raspios import fetch_image, read_layout
from builder.run import Runner
from builder.spec.model import ImageSource
from tests.support import raspios_standin

pytestmark = pytest.mark.integration

WANTS = "etc/systemd/system/multi-user.target.wants"


@pytest.fixture(scope="module")
def standin(raspios_standin_source: ImageSource, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fetch_image(raspios_standin_source, tmp_path_factory.mktemp("downloads"))


@pytest.fixture(scope="module")
def layout(standin: Path) -> Layout:
    return read_layout(standin, Runner())


def mtools(program: str, standin: Path, layout: Layout, *args: str) -> str:
    return subprocess.run(
        [program, "-i", layout.boot_target(standin), *args],
        capture_output=True, text=True, check=True, env={**os.environ, "MTOOLS_SKIP_CHECK": "1"},
    ).stdout  # fmt: skip


def boot_file(standin: Path, layout: Layout, name: str) -> str:
    return mtools("mtype", standin, layout, f"::/{name}")


def debugfs(standin: Path, layout: Layout, request: str) -> str:
    return subprocess.run(
        ["debugfs", "-R", request, layout.root_target(standin)], capture_output=True, text=True, check=True
    ).stdout


def exists(standin: Path, layout: Layout, path: str) -> bool:
    """debugfs prints the inode for a path that exists, and only an error otherwise."""
    return debugfs(standin, layout, f"stat /{path}").startswith("Inode:")


def test_layout_is_raspberry_pi_os_s(standin: Path, layout: Layout) -> None:
    assert (layout.boot_offset, layout.root_offset) == (8 << 20, 520 << 20)
    assert "bootfs" in mtools("mlabel", standin, layout, "-s", "::")
    assert (
        "Filesystem volume name:   rootfs"
        in subprocess.run(
            ["dumpe2fs", "-h", layout.root_target(standin)], capture_output=True, text=True, check=True
        ).stdout
    )


def test_cmdline_finds_the_root_by_the_disk_id_in_the_mbr(standin: Path, layout: Layout) -> None:
    disk_id = json.loads(subprocess.run(["sfdisk", "--json", str(standin)], capture_output=True,
                                        text=True, check=True).stdout)["partitiontable"]["id"]  # fmt: skip
    partuuid = f"{disk_id.removeprefix('0x')}-02"
    args = boot_file(standin, layout, "cmdline.txt").split()
    assert f"root=PARTUUID={partuuid}" in args
    assert "rootfstype=ext4" in args and "resize" in args
    assert f"PARTUUID={partuuid}" in debugfs(standin, layout, "cat /etc/fstab")


def test_boot_partition_holds_what_the_firmware_loads(standin: Path, layout: Layout) -> None:
    names = {line.removeprefix("::/") for line in mtools("mdir", standin, layout, "-b", "::/").split()}
    assert {"kernel8.img", "initramfs8", "config.txt", "cmdline.txt", "start4.elf"} <= names
    assert "auto_initramfs=1" in boot_file(standin, layout, "config.txt").splitlines()


def test_networkmanager_runs_the_network_and_networkd_does_not(standin: Path, layout: Layout) -> None:
    assert exists(standin, layout, f"{WANTS}/NetworkManager.service")
    assert not exists(standin, layout, f"{WANTS}/systemd-networkd.service")


def test_what_raspberry_pi_os_lite_has_and_lacks(standin: Path, layout: Layout) -> None:
    packages = {
        line.removeprefix("Package: ")
        for line in debugfs(standin, layout, "cat /var/lib/dpkg/status").splitlines()
        if line.startswith("Package: ")
    }
    assert {"network-manager", "openssh-server", "python3", "linux-image-arm64"} <= packages
    assert not packages & {"containerd", "containernetworking-plugins", "systemd-resolved"}
    assert not exists(standin, layout, "usr/bin/containerd")
    assert not exists(standin, layout, f"{WANTS}/ssh.service"), "published images ship SSH off"
    assert "pi:" in debugfs(standin, layout, "cat /etc/passwd")
    assert debugfs(standin, layout, "cat /etc/machine-id") == "uninitialized\n"


def test_swap_comes_from_a_generator_named_as_raspberry_pi_os_s(standin: Path, layout: Layout) -> None:
    generator = "usr/lib/systemd/system-generators/rpi-swap-generator"
    assert "Mode:  0755" in debugfs(standin, layout, f"stat /{generator}")
    assert debugfs(standin, layout, f"cat /{generator}") == raspios_standin.SWAP_GENERATOR
