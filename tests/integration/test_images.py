"""`picluster build` against a stand-in base: real images, read back with the real tools."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from builder.build import build_images
from builder.config_file import load_cluster
from builder.image import BOOT_OFFSET, ROOT_OFFSET, SECTOR, layout_for
from builder.model import Cluster
from builder.pki import ClusterSecrets
from builder.progress import silent
from builder.render import render_cluster
from tests.conftest import BUNDLED, REPO, fixed_secrets
from tests.integration.conftest import TINY_EPOCH, publish_tiny_base, require_tools

pytestmark = pytest.mark.integration


@pytest.fixture
def cache(tmp_path: Path, cluster: Cluster) -> Path:
    folder = tmp_path / "cache"
    publish_tiny_base(cluster, folder)
    return folder


@pytest.fixture(autouse=True)
def _pinned_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(TINY_EPOCH))


def build(cluster: Cluster, images: Path, cache: Path, **options: object) -> list[str]:
    return build_images(cluster, fixed_secrets(), images, cache, silent(), **options)  # type: ignore[arg-type]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


LAYOUT = layout_for(0)  # only the offsets are used, and they do not depend on the size


def boot_target(image: Path) -> str:
    return LAYOUT.boot_target(image)


def root_target(image: Path) -> str:
    return LAYOUT.root_target(image)


def debugfs(image: Path, request: str) -> str:
    return subprocess.run(
        ["debugfs", "-R", request, root_target(image)], capture_output=True, check=True, text=True
    ).stdout


def test_images_have_partitions_filesystems_and_the_nodes_files(
    tmp_path: Path, cluster: Cluster, cache: Path
) -> None:
    images = tmp_path / "images"
    assert build(cluster, images, cache) == ["cp1", "w1", "w2"]
    secrets = fixed_secrets()
    for plan in render_cluster(cluster, secrets):
        image = images / f"{plan.node}.img"
        table = json.loads(subprocess.run(["sfdisk", "--json", str(image)], capture_output=True,
                                          check=True).stdout)["partitiontable"]  # fmt: skip
        assert table["label"] == "dos"
        boot, root = table["partitions"]
        assert (boot["type"], boot["start"] * SECTOR) == ("c", BOOT_OFFSET)
        assert (root["type"], root["start"] * SECTOR) == ("83", ROOT_OFFSET)
        fsck = subprocess.run(["e2fsck", "-fn", root_target(image)], capture_output=True, text=True)
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
        for entry in plan.files:
            if entry.partition == "boot":
                data = subprocess.run(["mtype", "-i", boot_target(image), f"::/{entry.path}"],
                                      capture_output=True, check=True,
                                      env={**os.environ, "MTOOLS_SKIP_CHECK": "1"}).stdout  # fmt: skip
                assert data == entry.data, f"{plan.node} boot:{entry.path}"
                continue
            stat = debugfs(image, f"stat /{entry.path}")
            assert "User:     0   Group:     0" in stat, f"{plan.node}:{entry.path} owner"
            if entry.link is not None:
                assert f'Fast link dest: "{entry.link}"' in stat, f"{plan.node}:{entry.path}"
                continue
            assert f"Mode:  {entry.mode:04o}" in stat, f"{plan.node}:{entry.path} mode"
            with subprocess.Popen(["debugfs", "-R", f"cat /{entry.path}", root_target(image)],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as cat:  # fmt: skip
                assert cat.stdout is not None
                assert cat.stdout.read() == entry.data, f"{plan.node}:{entry.path}"
        clock = debugfs(image, "stat /var/lib/systemd/timesync/clock")
        assert f"mtime: 0x{TINY_EPOCH:08x}" in clock, "the clock seed carries the build time"
        assert (images / f"{plan.node}.img.sha256").read_text() == f"{sha256(image)}  {plan.node}.img\n"


def test_the_clock_seed_is_never_before_the_clusters_ca(
    tmp_path: Path, cluster: Cluster, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A base cached (or a SOURCE_DATE_EPOCH pinned) before the cluster's CAs were made must not
    start a Pi's clock before them: every TLS handshake would fail until NTP answered."""
    ca_start = int(fixed_secrets().ca_not_before.timestamp())
    earlier = ca_start - 90 * 86400
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(earlier))
    images = tmp_path / "images"
    build(cluster, images, cache)
    clock = debugfs(images / "w1.img", "stat /var/lib/systemd/timesync/clock")
    assert f"mtime: 0x{ca_start:08x}" in clock, "the clock starts when the CAs do"
    hostname = debugfs(images / "w1.img", "stat /etc/hostname")
    assert f"mtime: 0x{earlier:08x}" in hostname, "every other file keeps the pinned time"


def test_bmap_lets_bmaptool_write_an_identical_copy(tmp_path: Path, cluster: Cluster, cache: Path) -> None:
    require_tools("bmaptool")
    images = tmp_path / "images"
    build(cluster, images, cache)
    target = tmp_path / "card.img"
    target.touch()
    subprocess.run(["bmaptool", "copy", "--bmap", str(images / "w1.img.bmap"), str(images / "w1.img"),
                    str(target)], check=True, capture_output=True)  # fmt: skip
    assert sha256(target) == (images / "w1.img.sha256").read_text().split()[0]


def test_nothing_changed_rewrites_nothing(tmp_path: Path, cluster: Cluster, cache: Path) -> None:
    images = tmp_path / "images"
    build(cluster, images, cache)
    before = {p.name: p.stat().st_mtime_ns for p in images.iterdir()}
    assert build(cluster, images, cache) == []
    assert {p.name: p.stat().st_mtime_ns for p in images.iterdir()} == before


def test_editing_one_node_rebuilds_only_that_node(
    tmp_path: Path, cluster: Cluster, cache: Path, bundled_data: dict[str, object]
) -> None:
    images = tmp_path / "images"
    build(cluster, images, cache)
    before = {p.name: (p.stat().st_mtime_ns, sha256(p)) for p in images.glob("*.img")}
    nodes = bundled_data["nodes"]
    assert isinstance(nodes, list)
    nodes[2]["address"] = "192.168.50.42/24"
    edited = tmp_path / "cluster.yaml"
    edited.write_text(yaml.safe_dump(bundled_data))
    assert build(load_cluster(edited), images, cache) == ["w2"]
    after = {p.name: (p.stat().st_mtime_ns, sha256(p)) for p in images.glob("*.img")}
    assert after["cp1.img"] == before["cp1.img"] and after["w1.img"] == before["w1.img"]
    assert after["w2.img"][1] != before["w2.img"][1]


def test_same_inputs_give_the_same_bytes(tmp_path: Path, cluster: Cluster, cache: Path) -> None:
    build(cluster, tmp_path / "a", cache)
    time.sleep(1.1)  # a clock leaking into the image would now show
    build(cluster, tmp_path / "b", cache)
    for image in sorted((tmp_path / "a").glob("*.img")):
        assert sha256(image) == sha256(tmp_path / "b" / image.name), image.name


def test_compressed_images_decompress_to_the_checksummed_image(
    tmp_path: Path, cluster: Cluster, cache: Path
) -> None:
    require_tools("zstd")
    images = tmp_path / "images"
    build(cluster, images, cache)
    assert build(cluster, images, cache, compress="zst") == ["cp1", "w1", "w2"]
    assert not (images / "cp1.img").exists(), "the uncompressed image is replaced"
    raw = subprocess.run(["zstd", "-dc", str(images / "cp1.img.zst")], capture_output=True, check=True).stdout
    assert hashlib.sha256(raw).hexdigest() == (images / "cp1.img.sha256").read_text().split()[0]


STALL_DEBUGFS = """#!/bin/sh
# Stand-in for debugfs that stalls, so the test can kill a build in the middle of a node.
touch "$STALL_MARKER"
sleep 60
"""


@pytest.fixture
def reflink_folder(tmp_path: Path) -> Iterator[Path]:
    """An XFS filesystem on a loop device: where the filesystem can share blocks between files,
    a node's image is a reflink copy of the base."""
    if os.geteuid() != 0:
        pytest.skip("mounting a filesystem needs root (make test runs as root)")
    require_tools("mkfs.xfs", "filefrag")
    backing = tmp_path / "xfs.bin"
    with backing.open("wb") as handle:
        handle.truncate(2**30)
    subprocess.run(["mkfs.xfs", "-q", str(backing)], check=True)
    folder = tmp_path / "xfs"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-o", "loop", str(backing), str(folder)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount XFS here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def extent_flags(image: Path) -> list[str]:
    """The flags of each of a file's extents, as filefrag reports them ("shared", "last", ...)."""
    lines = subprocess.run(["filefrag", "-v", str(image)], capture_output=True, check=True, text=True).stdout
    return [line.rsplit(":", 1)[1] for line in lines.splitlines() if line.strip()[:1].isdigit()]


def test_on_a_reflink_filesystem_nodes_share_the_bases_blocks_and_never_change_it(
    reflink_folder: Path, cluster: Cluster
) -> None:
    cache = reflink_folder / "cache"
    base_image = publish_tiny_base(cluster, cache) / "base.img"
    before = sha256(base_image)
    images = reflink_folder / "images"
    build(cluster, images, cache)
    flags = extent_flags(images / "w1.img")
    assert sum("shared" in flag for flag in flags) >= len(flags) // 2, f"a reflink copy: {flags}"
    assert any("shared" not in flag for flag in flags), f"the node's own writes are its own: {flags}"
    assert sha256(base_image) == before, "copy-on-write: no node's write reaches the base"
    assert debugfs(images / "w1.img", "cat /etc/hostname") == "w1\n"


def test_a_build_killed_mid_node_leaves_the_previous_images(
    tmp_path: Path, cluster: Cluster, cache: Path
) -> None:
    images = tmp_path / "images"
    build(cluster, images, cache)
    before = {p.name: sha256(p) for p in images.iterdir()}
    workdir = tmp_path / "work"
    workdir.mkdir()
    shutil.copy(BUNDLED, workdir / "cluster.yaml")
    state = workdir / ".picluster"
    state.mkdir()
    (workdir / "cluster.yaml").write_text(BUNDLED.read_text().replace("10.244.0.0/16", "10.45.0.0/16"))
    stand_ins = tmp_path / "bin"
    stand_ins.mkdir()
    (stand_ins / "debugfs").write_text(STALL_DEBUGFS)
    (stand_ins / "debugfs").chmod(0o755)
    marker = tmp_path / "stalled"
    _save_fixed_secrets(state)
    process = subprocess.Popen(
        [sys.executable, "-m", "builder", "build", "-f", str(workdir / "cluster.yaml"),
         "-o", str(images), "--cache", str(cache)],
        cwd=REPO, env={**os.environ, "PATH": f"{stand_ins}:{os.environ['PATH']}",
                       "STALL_MARKER": str(marker)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), "the build never reached a node"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert {p.name: sha256(p) for p in images.iterdir() if not p.name.startswith(".")} == before
    build(cluster, images, cache)
    assert sorted(p.name for p in images.iterdir() if p.name.startswith(".")) == [], "leftovers cleared"


def _save_fixed_secrets(state: Path) -> None:
    from builder import state as state_module

    secrets: ClusterSecrets = fixed_secrets()
    state_module.save(state, secrets)
