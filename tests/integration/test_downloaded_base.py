"""base.image: a downloaded Raspberry Pi OS image becomes the base the nodes are stamped onto.

Raspberry Pi OS cannot be downloaded here, so the test serves a stand-in on 127.0.0.1: an .img.xz
laid out as Raspberry Pi OS publishes it (MBR; FAT "bootfs" from 4 MiB holding kernel8.img; ext4
"rootfs" after it), with a handful of files instead of the OS.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from builder.errors import UserError
from builder.image.base import ensure_base
from builder.image.build import build_images
from builder.image.context import BuildContext, default_cache
from builder.image.layout import DISK_ID, tool_env
from builder.image.raspios import read_layout
from builder.progress import Reporter, silent
from builder.run import Runner
from builder.spec.load import load_cluster
from builder.spec.model import Cluster, ImageSource
from tests.support.host import TOOLS, require_tools, serve_folder
from tests.support.project import BUNDLED, fixed_secrets

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
BOOT_START, BOOT_SIZE, ROOT_START = 4 * MIB, 256 * MIB, 260 * MIB
EPOCH = 1_700_000_000


ELF_ARM64, ELF_ARMHF = 183, 40
"""ELF e_machine of arm64 and 32-bit ARM programs."""


def elf_header(machine: int) -> bytes:
    """The start of an ELF program for `machine`: as much as adopt reads to tell the architecture."""
    return b"\x7fELF\x02\x01\x01" + bytes(9) + (2).to_bytes(2, "little") + machine.to_bytes(2, "little")


def make_raspios_like(folder: Path, boot_files: dict[str, bytes], machine: int = ELF_ARM64) -> Path:
    image = folder / "raspios-lite.img"
    with image.open("wb") as handle:
        handle.truncate(ROOT_START + 200 * MIB)
    table = (f"label: dos\nlabel-id: 0x1234abcd\nunit: sectors\n\nstart={BOOT_START // 512}, "
             f"size={BOOT_SIZE // 512}, type=c\nstart={ROOT_START // 512}, type=83\n")  # fmt: skip
    env = {**os.environ, **tool_env(EPOCH)}
    subprocess.run(["sfdisk", "-q", str(image)], input=table.encode(), check=True)
    subprocess.run(["mkfs.vfat", "-F", "32", "-s", "2", "-n", "bootfs", "--offset", str(BOOT_START // 512),
                    str(image), str(BOOT_SIZE // 1024)], check=True, capture_output=True)  # fmt: skip
    staged = folder / "boot"
    staged.mkdir()
    for name, data in boot_files.items():
        (staged / name).write_bytes(data)
    subprocess.run(["mcopy", "-i", f"{image}@@{BOOT_START}", *map(str, staged.iterdir()), "::/"],
                   check=True, env=env)  # fmt: skip
    root = folder / "rootfs"
    for sub in ("etc/systemd/system", "usr/lib/systemd/system", "usr/bin", "var/lib", "home/pi"):
        (root / sub).mkdir(parents=True)
    (root / "usr/bin/dpkg").write_bytes(elf_header(machine))
    (root / "etc/hostname").write_text("raspberrypi\n")
    (root / "etc/fstab").write_text("PARTUUID=1234abcd-02 / ext4 defaults,noatime 0 1\n")
    subprocess.run(["mke2fs", "-q", "-t", "ext4", "-L", "rootfs", "-E", f"offset={ROOT_START}", "-d",
                    str(root), str(image), "200M"], check=True, env=env)  # fmt: skip
    packed = folder / "raspios-lite.img.xz"
    packed.write_bytes(lzma.compress(image.read_bytes()))
    image.unlink()
    return packed


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    folder = tmp_path / "www"
    folder.mkdir()
    with serve_folder(folder) as url:
        yield folder, url


def cluster_on(packed: Path, url: str, tmp_path: Path) -> Any:
    data = yaml.safe_load(BUNDLED.read_text())
    data["base"]["image"] = {
        "url": f"{url}/{packed.name}",
        "sha256": hashlib.sha256(packed.read_bytes()).hexdigest(),
    }
    data["nodes"] = data["nodes"][:1]
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_cluster(path)


def standin_cluster(source: ImageSource, tmp_path: Path) -> Cluster:
    """The bundled cluster with cp1 a Pi 5, on the Raspberry Pi OS stand-in."""
    data = yaml.safe_load(BUNDLED.read_text())
    data["base"]["image"] = source.model_dump()
    data["nodes"] = data["nodes"][:1]
    data["nodes"][0]["model"] = "pi5"
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_cluster(path)


def test_the_downloaded_image_gets_what_a_kubernetes_node_needs_and_picluster_s_layout(
    raspios_standin_source: ImageSource, tmp_path: Path
) -> None:
    require_tools(*TOOLS, "mlabel", "dumpe2fs")
    cluster = standin_cluster(raspios_standin_source, tmp_path)
    base = ensure_base(cluster, BuildContext(tmp_path, default_cache(), Reporter(), Runner()))
    root = f"{base.image}?offset={base.layout.root_offset}"
    installed = ("usr/bin/containerd", "usr/lib/cni/bridge", "usr/lib/cni/host-local", "usr/sbin/conntrack",
                 "usr/sbin/ebtables", "usr/sbin/ethtool", "usr/bin/socat",
                 "usr/lib/python3/dist-packages/yaml", "usr/lib/python3/dist-packages/requests")  # fmt: skip
    for path in installed:
        assert path in base.others or path in base.dirs, f"{path} is not in the customised base"
    assert "etc/systemd/system/multi-user.target.wants/NetworkManager.service" in base.others
    assert not any(path.startswith("etc/ssh/ssh_host_") for path in base.others)
    sudo = subprocess.run(
        ["debugfs", "-R", "stat /usr/bin/sudo", root], capture_output=True, text=True
    ).stdout
    assert "Mode:  04755" in sudo and "User:     0" in sudo, "setuid kept through the unpacking"
    assert "usr/sbin/policy-rc.d" not in base.others, "the chroot's guard against starting services is gone"
    table = json.loads(subprocess.run(["sfdisk", "--json", str(base.image)], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]  # fmt: skip
    assert table["id"] == "0x5049434c"  # picluster's disk id: root=PARTUUID=5049434c-02 on every card
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    boot = f"{base.image}@@{base.layout.boot_offset}"
    listing = subprocess.run(
        ["mdir", "-b", "-i", boot, "::/"], capture_output=True, text=True, env=env
    ).stdout
    assert "::/kernel8.img" in listing.split() and "::/initramfs8" in listing.split()
    superblock = subprocess.run(["dumpe2fs", "-h", root], capture_output=True, text=True, check=True).stdout
    assert "Filesystem volume name:   RASPIROOT" in superblock

    again = ensure_base(cluster, BuildContext(tmp_path, default_cache(), silent(), Runner()))
    assert again == base  # cached by its inputs


def test_an_image_that_is_not_raspberry_pi_os_is_refused(serve: tuple[Path, str], tmp_path: Path) -> None:
    require_tools(*TOOLS, "mlabel", "tune2fs")
    folder, url = serve
    packed = make_raspios_like(folder, {"vmlinuz": b"something else"})
    cluster = cluster_on(packed, url, tmp_path)
    with pytest.raises(UserError, match="does not look like Raspberry Pi OS"):
        build_images(
            cluster,
            fixed_secrets(),
            {},
            BuildContext(tmp_path / "images", tmp_path / "cache", silent(), Runner()),
        )
    assert not (tmp_path / "cache" / "flannel-image").exists(), "refused before flannel's image is built"


def test_a_card_on_the_raspberry_pi_os_stand_in_follows_its_conventions(
    raspios_standin_source: ImageSource, tmp_path: Path
) -> None:
    """Render, adopt and stamp together on an image with Raspberry Pi OS's real layout (pi-gen's
    8 MiB boot offset, its own disk id), not picluster's."""
    data = yaml.safe_load(BUNDLED.read_text())
    data["base"]["image"] = raspios_standin_source.model_dump()
    data["nodes"] = [{**data["nodes"][0], "model": "pi5"}]
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump(data))
    cluster = load_cluster(tmp_path / "cluster.yaml")
    images = tmp_path / "images"
    context = BuildContext(images, default_cache(), silent(), Runner())  # the customised base, cached
    assert build_images(cluster, fixed_secrets(), {}, context) == ["cp1"]

    image = images / "cp1.img"
    layout = read_layout(image, Runner())
    table = json.loads(subprocess.run(["sfdisk", "--json", str(image)], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]  # fmt: skip
    assert table["id"] == DISK_ID
    cmdline = subprocess.run(
        ["mtype", "-i", layout.boot_target(image), "::/cmdline.txt"],
        capture_output=True, text=True, check=True, env={**os.environ, "MTOOLS_SKIP_CHECK": "1"},
    ).stdout  # fmt: skip
    assert f"root=PARTUUID={DISK_ID.removeprefix('0x')}-02" in cmdline.split()

    def debugfs(request: str) -> str:
        return subprocess.run(["debugfs", "-R", request, layout.root_target(image)], capture_output=True,
                              text=True, check=True).stdout  # fmt: skip

    keyfile = debugfs("stat /etc/NetworkManager/system-connections/picluster-cluster.nmconnection")
    assert "Mode:  0600" in keyfile and "User:     0" in keyfile
    assert 'Fast link dest: "/dev/null"' in debugfs("stat /etc/systemd/system-generators/rpi-swap-generator")
    assert 'Fast link dest: "/dev/null"' in debugfs("stat /etc/systemd/system/userconfig.service")
    fsck = subprocess.run(["e2fsck", "-fn", layout.root_target(image)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout


def test_a_32_bit_raspberry_pi_os_is_refused(serve: tuple[Path, str], tmp_path: Path) -> None:
    """32-bit Raspberry Pi OS carries kernel8.img too (a 64-bit kernel under a 32-bit system), so
    its programs tell."""
    require_tools(*TOOLS, "mlabel", "tune2fs")
    folder, url = serve
    packed = make_raspios_like(folder, {"kernel8.img": b"stand-in kernel"}, machine=ELF_ARMHF)
    context = BuildContext(tmp_path / "images", tmp_path / "cache", silent(), Runner())
    with pytest.raises(UserError, match="is built for armhf, not arm64") as refused:
        build_images(cluster_on(packed, url, tmp_path), fixed_secrets(), {}, context)
    assert "Raspberry Pi OS Lite (64-bit)" in refused.value.hint
    assert not (tmp_path / "cache" / "flannel-image").exists(), "refused before flannel's image is built"
