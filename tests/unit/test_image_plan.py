"""Pure parts of the image pipeline: layout, the debugfs script, the block map, the cache key."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path, PurePosixPath

import pytest
import yaml

from builder.errors import UserError
from builder.image import base, container_images, debian
from builder.image.bmap import bmap_text
from builder.image.layout import BOOT_OFFSET, MIB, ROOT_OFFSET, debugfs_errors, debugfs_script, layout_for
from builder.render.plan import FileEntry, NodePlan
from builder.spec.load import load_cluster
from tests.support.project import BUNDLED, REPO

EPOCH = 1_700_000_000


def test_layout_fits_the_content_and_aligns() -> None:
    layout = layout_for(700 * MIB)
    root_size = layout.image_size - ROOT_OFFSET
    assert root_size % (4 * MIB) == 0
    assert root_size >= 700 * MIB * 1.15
    assert (layout.boot_offset, layout.root_offset) == (BOOT_OFFSET, ROOT_OFFSET)
    script = layout.sfdisk_script()
    assert f"start={BOOT_OFFSET // 512}," in script
    assert f"start={ROOT_OFFSET // 512}, size={root_size // 512}, type=83" in script
    assert layout.root_target(Path("x.img")) == f"x.img?offset={ROOT_OFFSET}"
    assert layout.boot_target(Path("x.img")) == f"x.img@@{BOOT_OFFSET}"


def test_debugfs_script_makes_only_missing_folders_and_replaces_only_existing_files() -> None:
    new = FileEntry("root", PurePosixPath("etc/picluster/node.json"), b"{}", 0o644)
    replaced = FileEntry("root", PurePosixPath("etc/hostname"), b"n1\n", 0o644)
    secret = FileEntry("root", PurePosixPath("etc/picluster/kubeadm.yaml"), b"t", 0o600)
    link = FileEntry("root", PurePosixPath("etc/systemd/system/swap.target"), mode=0o777, link="/dev/null")
    staged = {new: Path("/s/0"), replaced: Path("/s/1"), secret: Path("/s/2")}
    lines = debugfs_script(
        [new, replaced, secret, link], staged, {"etc", "etc/systemd"}, {"etc/hostname"}, EPOCH
    ).splitlines()
    assert [line for line in lines if line.startswith("mkdir")] == [
        "mkdir /etc/picluster",
        "mkdir /etc/systemd/system",
    ]
    assert [line for line in lines if line.startswith("rm")] == ["rm /etc/hostname"]
    assert "write /s/2 /etc/picluster/kubeadm.yaml" in lines
    assert "sif /etc/picluster/kubeadm.yaml mode 0100600" in lines
    assert "symlink /etc/systemd/system/swap.target /dev/null" in lines
    assert f"sif /etc/hostname mtime @{EPOCH}" in lines
    assert lines.index("mkdir /etc/picluster") < lines.index("write /s/0 /etc/picluster/node.json")


def test_debugfs_script_refuses_paths_it_cannot_quote() -> None:
    entry = FileEntry("root", PurePosixPath("etc/a b"), b"")
    with pytest.raises(ValueError, match="spaces or quotes"):
        debugfs_script([entry], {entry: Path("/s/0")}, set(), set(), EPOCH)


def test_debugfs_complaints_are_found() -> None:
    output = (
        "debugfs 1.47.0 (5-Feb-2023)\ndebugfs: write /s/0 /etc/x\nAllocated inode: 12\n"
        "debugfs: mkdir /etc\nmkdir: Ext2 directory already exists\n"
    )
    assert debugfs_errors(output) == ["mkdir: Ext2 directory already exists"]


def test_bmap_checksum_covers_the_file_with_the_field_zeroed() -> None:
    text = bmap_text(10 * 4096, [(0, 1, "a" * 64), (5, 5, "b" * 64)])
    checksum = re.search(r"<BmapFileChecksum> (\w+) </BmapFileChecksum>", text)
    assert checksum is not None
    zeroed = text.replace(checksum[1], "0" * 64)
    assert hashlib.sha256(zeroed.encode()).hexdigest() == checksum[1]
    assert "<MappedBlocksCount> 3 </MappedBlocksCount>" in text
    assert '<Range chksum="' + "b" * 64 + '"> 5 </Range>' in text


def test_base_key_follows_its_inputs(tmp_path: Path) -> None:
    cluster = load_cluster(BUNDLED)
    key = base.cache_key(base.manifest(cluster))
    assert key == base.cache_key(base.manifest(load_cluster(BUNDLED))), "stable"
    edited = tmp_path / "cluster.yaml"
    edited.write_text(BUNDLED.read_text().replace("packages: []", "packages: [htop]"))
    assert base.cache_key(base.manifest(load_cluster(edited))) != key
    edited.write_text(BUNDLED.read_text().replace("192.168.50.12/24", "192.168.50.13/24"))
    assert base.cache_key(base.manifest(load_cluster(edited))) == key, "node details are not in the base"


def test_a_raspberry_pi_os_base_is_keyed_by_the_images_sha256_packages_and_hook(tmp_path: Path) -> None:
    def key(url: str, sha256: str, packages: str = "[]", mode: str = "firstboot") -> str:
        data = yaml.safe_load(BUNDLED.read_text())
        data["base"]["image"] = {"url": url, "sha256": sha256}
        data["base"]["packages"] = yaml.safe_load(packages)
        data["cluster"]["packages"] = mode
        edited = tmp_path / "cluster.yaml"
        edited.write_text(yaml.safe_dump(data))
        return base.cache_key(base.manifest(load_cluster(edited)))

    first = key("http://127.0.0.1:1/raspios.img.xz", "a" * 64)
    assert key("https://mirror.example/raspios.img.xz", "a" * 64) == first, "the same image from elsewhere"
    assert key("http://127.0.0.1:1/raspios.img.xz", "b" * 64) != first
    assert key("http://127.0.0.1:1/raspios.img.xz", "a" * 64, "[htop]") != first
    assert key("http://127.0.0.1:1/raspios.img.xz", "a" * 64, mode="image") != first
    assert "hooks/raspios.sh" in base.manifest(load_cluster(tmp_path / "cluster.yaml"))["files"]


def test_mmdebstrap_command_carries_the_package_set() -> None:
    command = debian.mmdebstrap_command(load_cluster(BUNDLED), Path("/tmp/root"))
    include = next(word for word in command if word.startswith("--include="))
    packages = include.removeprefix("--include=").split(",")
    for package in ("linux-image-arm64", "raspi-firmware", "containerd", "python3-yaml", "openssh-server"):
        assert package in packages
    assert "--arch=arm64" in command
    assert command[-5:-3] == ["trixie", "/tmp/root"]
    assert command[-3:] == [
        "deb http://deb.debian.org/debian trixie main non-free-firmware",
        "deb http://deb.debian.org/debian trixie-updates main non-free-firmware",
        "deb http://deb.debian.org/debian-security trixie-security main non-free-firmware",
    ]
    assert not any("kubeadm" in word for word in command), "firstboot: the node installs them"


def test_a_trimmed_base_keeps_the_cni_plugins_the_card_links_and_base_trim_false_keeps_all(
    tmp_path: Path,
) -> None:
    command = debian.mmdebstrap_command(load_cluster(BUNDLED), Path("/tmp/root"))
    filters = [word.removeprefix("--dpkgopt=") for word in command if word.startswith("--dpkgopt=path-")]
    assert "path-exclude=/usr/lib/cni/*" in filters and "path-exclude=/usr/bin/etcd" in filters
    linked = yaml.safe_load((REPO / "overlays/links.yaml").read_text())["common"]
    plugins = {
        target.removeprefix("/usr/lib/cni/") for path, target in linked.items() if path.startswith("opt/cni/")
    }
    assert plugins == set(debian.CNI_PLUGINS)
    assert {f"path-include=/usr/lib/cni/{name}" for name in plugins} <= set(filters)
    assert filters.index("path-include=/usr/lib/linux-image-*/broadcom/*") > filters.index(
        "path-exclude=/usr/lib/linux-image-*/*"
    ), "dpkg applies its filters in order: the Pi's device trees come back after the others go"
    edited = tmp_path / "cluster.yaml"
    data = yaml.safe_load(BUNDLED.read_text())
    data["base"] = {"trim": False}
    edited.write_text(yaml.safe_dump(data))
    untrimmed = debian.mmdebstrap_command(load_cluster(edited), Path("/tmp/root"))
    kept = [word for word in untrimmed if word.startswith("--dpkgopt=")]
    assert not any("/usr/lib/cni" in word or "linux-image-" in word for word in kept)
    assert "--dpkgopt=path-exclude=/usr/bin/etcd" in untrimmed
    assert base.cache_key(base.manifest(load_cluster(edited))) != base.cache_key(
        base.manifest(load_cluster(BUNDLED))
    )


def test_image_mode_adds_the_pinned_kubernetes_repository(tmp_path: Path) -> None:
    edited = tmp_path / "cluster.yaml"
    edited.write_text(BUNDLED.read_text().replace("packages: firstboot", "packages: image"))
    cluster = load_cluster(edited)
    command = debian.mmdebstrap_command(cluster, Path("/tmp/root"), Path("/tmp/k8s"))
    include = next(word for word in command if word.startswith("--include="))
    assert {"kubeadm", "kubelet", "kubectl", "cri-tools"} <= set(include.split("=", 1)[1].split(","))
    assert command[-1] == "/tmp/k8s/kubernetes.sources"
    assert any("apt-mark hold kubeadm kubelet kubectl" in word for word in command)
    assert base.manifest(cluster)["kubernetes"] == {
        "version": "1.34.2",
        "repository": "https://pkgs.k8s.io/core:/stable:/v1.34/deb/",
    }


def test_kubernetes_source_carries_its_key_inline(tmp_path: Path) -> None:
    from builder.image import kubernetes_apt

    cluster = load_cluster(BUNDLED)
    key = "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmQINBF\n-----END PGP PUBLIC KEY BLOCK-----\n"
    entry = kubernetes_apt.sources_entry(cluster, key).splitlines()
    assert entry[:4] == [
        "Types: deb",
        "URIs: https://pkgs.k8s.io/core:/stable:/v1.34/deb/",
        "Suites: /",
        "Signed-By:",
    ]
    assert entry[4:] == [
        " -----BEGIN PGP PUBLIC KEY BLOCK-----",
        " .",
        " mQINBF",
        " -----END PGP PUBLIC KEY BLOCK-----",
    ]
    assert kubernetes_apt.key_url(cluster) == "https://pkgs.k8s.io/core:/stable:/v1.34/deb/Release.key"


def test_a_missing_host_tool_is_named_with_its_package_before_the_build(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(debian.shutil, "which", lambda tool: None if tool == "depmod" else f"/usr/bin/{tool}")
    with pytest.raises(UserError) as raised:
        debian.require_host_tools()
    assert "kmod" in raised.value.message and "apt-get install kmod" in raised.value.hint
    monkeypatch.setattr(debian.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    debian.require_host_tools()


@pytest.mark.parametrize("flavour", ["debian", "raspios"])
def test_a_virtual_ip_puts_keepalived_and_haproxy_in_the_base_of_that_cluster_only(
    tmp_path: Path, flavour: str
) -> None:
    data = yaml.safe_load(BUNDLED.read_text())
    if flavour == "raspios":
        data["base"]["image"] = {"url": "http://127.0.0.1:1/raspios.img.xz", "sha256": "a" * 64}
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump(data))
    data["cluster"]["control_plane_endpoint"] = "192.168.50.9:8443"
    served = tmp_path / "served.yaml"
    served.write_text(yaml.safe_dump(data))
    data["cluster"]["control_plane_endpoint"] = "kube.lab:6443"
    balancer = tmp_path / "balancer.yaml"
    balancer.write_text(yaml.safe_dump(data))

    def packages(path: Path) -> set[str]:
        return set(base.manifest(load_cluster(path))["packages"])

    assert packages(served) - packages(plain) == {"keepalived", "haproxy"}
    assert packages(balancer) == packages(plain), "a load balancer the user runs needs nothing on the cards"


def test_a_base_for_cards_carrying_images_has_room_for_them_and_a_key_of_its_own(tmp_path: Path) -> None:
    """The pull-mode base stays as it was (cached bases are reused); one for images: card keeps
    container_images.ROOM_MIB more free on its root."""
    pulling = base.manifest(load_cluster(BUNDLED))
    edited = tmp_path / "cluster.yaml"
    edited.write_text(
        BUNDLED.read_text().replace("  packages: firstboot", "  images: card\n  packages: firstboot")
    )
    carrying = base.manifest(load_cluster(edited))
    assert "room_for_images_mib" not in pulling
    assert carrying == {**pulling, "room_for_images_mib": container_images.ROOM_MIB}
    assert layout_for(700 * MIB, 512 * MIB).image_size - layout_for(700 * MIB).image_size == 512 * MIB


@pytest.mark.parametrize(
    ("mirror", "expected"),
    [
        (None, ("registry.k8s.io/coredns/coredns:v1.12.1", True)),
        ("http://192.168.50.2:5000", ("192.168.50.2:5000/coredns/coredns:v1.12.1", False)),
        ("https://mirror.lan/", ("mirror.lan/coredns/coredns:v1.12.1", True)),
    ],
)
def test_a_mirror_holds_each_image_under_the_same_path(
    mirror: str | None, expected: tuple[str, bool]
) -> None:
    assert container_images.source("registry.k8s.io/coredns/coredns:v1.12.1", mirror) == expected


def test_a_carried_archive_is_known_by_its_name_and_never_read_for_the_digest(tmp_path: Path) -> None:
    archive = tmp_path / "sha256-aa.tar"  # never created: reading it would fail
    plan = NodePlan(
        "cp1", (FileEntry("root", PurePosixPath("var/lib/picluster/images/a.tar"), source=archive),)
    )
    renamed = NodePlan("cp1", (FileEntry("root", PurePosixPath("var/lib/picluster/images/a.tar"),
                                         source=tmp_path / "sha256-bb.tar"),))  # fmt: skip
    assert plan.digest() != renamed.digest()
    assert plan.file_digests() != renamed.file_digests()
