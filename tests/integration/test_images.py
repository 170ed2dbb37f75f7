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
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from builder.cli import main
from builder.cluster.status import image_status
from builder.files import exclusive
from builder.image import base
from builder.image.build import LOCK, build_images
from builder.image.context import BuildContext, Compression
from builder.image.layout import BOOT_OFFSET, ROOT_OFFSET, SECTOR, layout_for
from builder.progress import silent
from builder.render.node import render_cluster
from builder.run import Runner
from builder.secrets import settings, store
from builder.spec.load import load_cluster
from builder.spec.model import Cluster
from tests.support.host import (
    TINY_EPOCH,
    mounted,
    publish_flannel_image,
    publish_tiny_base,
    require_tools,
)
from tests.support.project import BUNDLED, REPO, fixed_secrets

pytestmark = pytest.mark.integration


@pytest.fixture
def cache(tmp_path: Path, cluster: Cluster) -> Path:
    folder = tmp_path / "cache"
    publish_tiny_base(cluster, folder)
    return folder


@pytest.fixture(autouse=True)
def _pinned_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(TINY_EPOCH))


def build(cluster: Cluster, images: Path, cache: Path, compress: Compression | None = None) -> list[str]:
    return build_images(
        cluster, fixed_secrets(), {}, BuildContext(images, cache, silent(), Runner(), compress)
    )


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
    for plan in render_cluster(cluster, secrets, None, publish_flannel_image(cache).digest):
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
    outputs = lambda: {p.name: p.stat().st_mtime_ns for p in images.iterdir() if p.name != LOCK}  # noqa: E731
    before = outputs()
    assert build(cluster, images, cache) == []
    assert outputs() == before


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
# Stand-in for debugfs that stalls, so the test can kill a build in the middle of a node. It
# execs sleep, so the stalled program is the build's own child, as cp and debugfs are.
echo $$ > "$STALL_MARKER"
exec sleep 60
"""


def start_build(
    tmp_path: Path, images: Path, cache: Path, stall: Path | None = None
) -> subprocess.Popen[str]:
    """`picluster build` in its own process, for a cluster.yaml whose pod subnet differs from the
    bundled one (so every node is rebuilt); with `stall`, debugfs stalls and writes its pid there."""
    workdir = tmp_path / "work"
    workdir.mkdir(exist_ok=True)
    (workdir / "cluster.yaml").write_text(BUNDLED.read_text().replace("10.244.0.0/16", "10.45.0.0/16"))
    if not (workdir / ".picluster").exists():
        _save_fixed_secrets(workdir / "cluster.yaml")
    env = dict(os.environ)
    if stall is not None:
        stand_ins = tmp_path / "bin"
        stand_ins.mkdir(exist_ok=True)
        (stand_ins / "debugfs").write_text(STALL_DEBUGFS)
        (stand_ins / "debugfs").chmod(0o755)
        env.update(PATH=f"{stand_ins}:{os.environ['PATH']}", STALL_MARKER=str(stall))
    return subprocess.Popen(
        [sys.executable, "-m", "builder", "build", "-f", str(workdir / "cluster.yaml"),
         "-o", str(images), "--cache", str(cache)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip


def wait_for(condition: Callable[[], bool], what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


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
    with mounted(tmp_path / "xfs", "-o", "loop", str(backing)) as folder:
        yield folder


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
    before = {p.name: sha256(p) for p in images.iterdir() if not p.name.startswith(".")}
    marker = tmp_path / "stalled"
    process = start_build(tmp_path, images, cache, stall=marker)
    wait_for(marker.exists, "the build never reached a node")
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert {p.name: sha256(p) for p in images.iterdir() if not p.name.startswith(".")} == before
    build(cluster, images, cache)
    leftovers = [p.name for p in images.iterdir() if p.name.startswith(".") and p.name != LOCK]
    assert leftovers == [], "leftovers cleared"


def test_the_programs_a_build_started_die_with_it(tmp_path: Path, cache: Path) -> None:
    """`kill -9` of the build alone (not its process group) left cp finishing hidden 1.2 GiB
    files: every program picluster starts dies with it."""
    marker = tmp_path / "stalled"
    process = start_build(tmp_path, tmp_path / "images", cache, stall=marker)
    wait_for(lambda: marker.exists() and marker.read_text().strip() != "", "the build never reached a node")
    child = int(marker.read_text())
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    wait_for(lambda: not _alive(child), f"pid {child}, started by the killed build, is still running", 10)


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status


def test_a_second_build_into_the_same_folder_waits_for_the_first(
    tmp_path: Path, cluster: Cluster, cache: Path
) -> None:
    """The second build cleared the first's unfinished images as leftovers, and the first failed."""
    images = tmp_path / "images"
    images.mkdir()
    unfinished = images / ".cp1.x1y2z3.img.partial"
    with exclusive(images / LOCK, "images", lambda text: None):
        unfinished.write_bytes(b"the first build's image, half written")
        second = start_build(tmp_path, images, cache)
        assert second.stdout is not None
        waiting = ""
        while "waiting:" not in waiting and len(waiting.splitlines()) < 10:  # after the images it carries
            waiting += second.stdout.readline()
        assert f"waiting: picluster (pid {os.getpid()}) is writing images into {images}" in waiting, waiting
        time.sleep(0.5)
        assert unfinished.exists(), "the second build left the first's work alone"
    output, _ = second.communicate(timeout=120)
    assert second.returncode == 0, output
    assert sorted(p.name for p in images.glob("*.img")) == ["cp1.img", "w1.img", "w2.img"]


INTERRUPTED = "its .sha256 and .bmap are not the ones its build record names (a build was interrupted)"


def test_a_set_left_mismatched_by_a_kill_is_rebuilt_and_named(
    tmp_path: Path, cluster: Cluster, cache: Path
) -> None:
    """A kill between the renames left the old image and record beside a new .sha256."""
    images = tmp_path / "images"
    build(cluster, images, cache)
    checksum = images / "w1.img.sha256"
    checksum.write_text(f"{'0' * 64}  w1.img\n")
    statuses = image_status(
        render_cluster(cluster, fixed_secrets(), None, publish_flannel_image(cache).digest),
        images,
        base.cache_key(base.manifest(cluster)),
    )
    (w1,) = [status for status in statuses if status.name == "w1"]
    assert w1.image == "stale"
    assert w1.why == [INTERRUPTED]
    assert build(cluster, images, cache) == ["w1"]
    assert checksum.read_text() == f"{sha256(images / 'w1.img')}  w1.img\n"


def test_flashing_an_image_older_than_cluster_yaml_warns(
    tmp_path: Path, cluster: Cluster, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    workdir = tmp_path / "site"
    workdir.mkdir()
    shutil.copy(BUNDLED, workdir / "cluster.yaml")
    _save_fixed_secrets(workdir / "cluster.yaml")
    images = tmp_path / "images"
    build(cluster, images, cache)
    edited = BUNDLED.read_text().replace("192.168.50.11/24", "192.168.50.41/24")
    (workdir / "cluster.yaml").write_text(edited)
    assert main(["flash", "w1", "-i", str(images), "-f", str(workdir / "cluster.yaml")]) == 2  # no --device
    err = capsys.readouterr().err
    assert "warning: w1.img is stale against" in err and "root/etc/picluster/node.json" in err
    assert "picluster build -f" in err


def _save_fixed_secrets(cluster_file: Path) -> None:
    """The state folder a first build of cluster_file would have made, with fixed secrets."""
    record = {settings.SETTINGS_FILE: settings.encoded(load_cluster(cluster_file))}
    store.save(cluster_file.parent / ".picluster", fixed_secrets(), record)


def test_a_damaged_base_record_is_an_error_that_names_it(
    tmp_path: Path, cluster: Cluster, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (record,) = (cache / "base").glob("*/base.json")
    record.write_text('{"key": "trunc')
    (tmp_path / "site").mkdir()
    cluster_file = tmp_path / "site" / "cluster.yaml"
    shutil.copy(BUNDLED, cluster_file)
    assert (
        main(["build", "-f", str(cluster_file), "-o", str(tmp_path / "images"), "--cache", str(cache)]) == 2
    )
    error = capsys.readouterr().err
    assert f"the cached base image's record {record} is damaged" in error
    assert "--rebuild-base" in error and "Traceback" not in error
