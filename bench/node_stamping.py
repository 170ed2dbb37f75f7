"""Per-node work with the base cached: picluster's stamping versus a plain copy and a loop mount.

Run as root (the loop-mount peer needs it) after one `make images`, so the base is cached:

    sudo .venv/bin/python bench/node_stamping.py

For N = 1, 4 and 16 nodes it prints seconds and MiB written per node for:
  picluster   what build does: copy, write the node's files into the filesystems, sha256 + bmap,
              two nodes at a time on this 2-core machine
  stamp only  copy and write the files, one node after another, no checksums
  plain cp    `cp --reflink=never --sparse=always base.img node.img` alone: the floor without reflink
  loop mount  copy, `losetup -P`, mount both partitions, write the same files, unmount
each beside plain cp, and beside plain cp plus the SHA-256 of the image held in memory (the floor
of any build that writes a `.sha256`); first in the cache's own filesystem, then again on XFS (a
loop device), where copies are reflinks; and the time of a no-op `picluster build` of the
bundled 3-node cluster. Each figure is the median of three runs.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml

from builder.image.base import ensure_base, load_base
from builder.image.bmap import digest_image
from builder.image.build import build_images
from builder.image.context import BuildContext, default_cache
from builder.image.layout import BaseImage
from builder.image.stamp import stamp
from builder.progress import Reporter
from builder.render.node import render_cluster
from builder.render.plan import NodePlan
from builder.run import Runner
from builder.secrets import store
from builder.secrets.pki import ClusterSecrets
from builder.spec.load import load_cluster
from builder.spec.model import Cluster

REPO = Path(__file__).resolve().parent.parent
COUNTS = (1, 4, 16)
METHODS = ("picluster", "stamp only", "plain cp", "loop mount")
REPEATS = 3
"""Each figure is the median of this many runs: one run moves by tenths of a second with the
disk's writeback."""


def cluster_of(count: int, folder: Path) -> Cluster:
    data = yaml.safe_load((REPO / "cluster.yaml").read_text())
    workers = [
        {"name": f"w{i}", "role": "worker", "model": "pi4", "address": f"192.168.50.{20 + i}/24"}
        for i in range(1, count)
    ]
    data["nodes"] = [data["nodes"][0], *workers]
    path = folder / f"cluster-{count}.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_cluster(path)


def used_bytes(folder: Path) -> int:
    """Space in use on folder's filesystem: what a method adds to it is what it wrote, blocks a
    reflink copy shares with the base not counted."""
    stats = os.statvfs(folder)
    return (stats.f_blocks - stats.f_bfree) * stats.f_frsize


def plain_copy(base: BaseImage, plans: list[NodePlan], out: Path) -> None:
    for plan in plans:
        target = out / f"{plan.node}.img"
        subprocess.run(["cp", "--reflink=never", "--sparse=always", str(base.image), str(target)], check=True)


def loop_mount(base: BaseImage, plans: list[NodePlan], out: Path) -> None:
    """The usual way: copy, attach a loop device, mount, write the files, unmount.

    The root partition is mounted by offset (`mount -o loop,offset=`, what `losetup -P` gives
    where udev makes partition devices; this machine has none). Its kernel has no vfat either, so
    the two boot files go in with mtools: the peer is, if anything, faster than the real thing.
    """
    mount = out / "mnt-root"
    mount.mkdir()
    for plan in plans:
        target = out / f"{plan.node}.img"
        subprocess.run(["cp", "--sparse=always", str(base.image), str(target)], check=True)
        subprocess.run(["mount", "-o", f"loop,offset={base.layout.root_offset}", str(target), str(mount)],
                       check=True)  # fmt: skip
        try:
            for entry in plan.files:
                if entry.partition == "boot":
                    staged = out / entry.path.name
                    staged.write_bytes(entry.data)
                    subprocess.run(["mcopy", "-o", "-i", base.layout.boot_target(target), str(staged), "::/"],
                                   check=True, env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})  # fmt: skip
                    continue
                path = mount / entry.path
                path.parent.mkdir(parents=True, exist_ok=True)
                if entry.link is not None:
                    path.unlink(missing_ok=True)
                    path.symlink_to(entry.link)
                else:
                    path.write_bytes(entry.data)
                    os.chmod(path, entry.mode)
        finally:
            subprocess.run(["umount", str(mount)], check=True)


def measure(name: str, base: BaseImage, cluster: Cluster, secrets: ClusterSecrets, cache: Path,
            plans: list[NodePlan], scratch: Path) -> tuple[float, float]:  # fmt: skip
    """Seconds and MiB written per node for one method."""
    out = scratch / name.replace(" ", "-")
    out.mkdir(parents=True)
    subprocess.run(["sync"], check=True)  # each method starts with no earlier writes pending
    used_before = used_bytes(out)
    start = time.monotonic()
    if name == "picluster":
        build_images(cluster, secrets, {}, BuildContext(out, cache, Reporter(stream=None), Runner()))
    elif name == "stamp only":
        for plan in plans:
            stamp(base, plan, out / f"{plan.node}.img", base.built_at, Runner())
    elif name == "plain cp":
        plain_copy(base, plans, out)
    else:
        loop_mount(base, plans, out)
    seconds = time.monotonic() - start
    mib = max(0, used_bytes(out) - used_before) / 2**20  # a reflink copy can round below zero
    shutil.rmtree(out)
    return seconds / len(plans), mib / len(plans)


def breakdown(base: BaseImage, plan: NodePlan, work: Path) -> None:
    """Where one node's time goes: the copy, writing its files, hashing (sha256 and bmap)."""
    image = work / "one.img"
    start = time.monotonic()
    subprocess.run(["cp", "--sparse=always", str(base.image), str(image)], check=True)
    copied = time.monotonic()
    stamp(base, plan, image, base.built_at, Runner())  # copies again, then writes the files
    stamped = time.monotonic()
    digest_image(image)
    hashed = time.monotonic()
    hash_only = _hash_seconds(image.stat().st_size)
    files = (stamped - copied) - (copied - start)
    print(f"one node, step by step: copy {copied - start:.2f} s, write files ~{max(files, 0):.2f} s, "
          f"sha256 + bmap {hashed - stamped:.2f} s")  # fmt: skip
    print(
        f"SHA-256 of the image's {image.stat().st_size / 2**30:.2f} GiB alone, no reading: {hash_only:.2f} s"
    )
    image.unlink()


def _hash_seconds(size: int) -> float:
    """SHA-256 over `size` bytes already in memory: the floor of any image checksum."""
    block = bytes(64 * 2**20)
    digest = hashlib.sha256()
    start = time.monotonic()
    for _ in range(size // len(block)):
        digest.update(block)
    digest.update(block[: size % len(block)])
    return time.monotonic() - start


def table(base: BaseImage, cache: Path, secrets: ClusterSecrets, work: Path) -> None:
    """Per-node seconds and MiB of each method for N = 1, 4, 16, the base and outputs in `work`'s
    filesystem; each figure the median of REPEATS runs."""
    hashed = _hash_seconds(base.image.stat().st_size)
    print(f"{'nodes':>5}  {'method':<11} {'s/node':>7} {'MiB/node':>9}  {'vs plain cp':>11}"
          f"  {'vs cp + SHA-256':>15}")  # fmt: skip
    for count in COUNTS:
        cluster = cluster_of(count, work)
        plans = render_cluster(cluster, secrets)
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in METHODS}
        for attempt in range(REPEATS):  # the methods take turns, so drift hits them alike
            for name in METHODS:
                scratch_dir = work / f"n{count}-{attempt}"
                runs[name].append(measure(name, base, cluster, secrets, cache, plans, scratch_dir))
        results = {name: (statistics.median(seconds for seconds, _ in times), times[0][1])
                   for name, times in runs.items()}  # fmt: skip
        floor = results["plain cp"][0]
        for name, (per_node, mib) in results.items():
            print(f"{count:>5}  {name:<11} {per_node:>7.2f} {mib:>9.0f}  {per_node / floor:>10.2f}x"
                  f"  {per_node / (floor + hashed):>14.2f}x")  # fmt: skip


@contextmanager
def reflink_filesystem(folder: Path) -> Iterator[Path | None]:
    """A 24 GiB XFS filesystem (sparse, on a loop device) in `folder`, or None where this
    machine cannot make or mount one."""
    backing = folder / "xfs.bin"
    with backing.open("wb") as handle:
        handle.truncate(24 * 2**30)
    mountpoint = folder / "xfs"
    mountpoint.mkdir()
    made = subprocess.run(["mkfs.xfs", "-q", str(backing)], capture_output=True)
    if (
        made.returncode != 0
        or subprocess.run(["mount", "-o", "loop", str(backing), str(mountpoint)]).returncode
    ):
        yield None
        return
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)


def main() -> None:
    cache = default_cache()
    bundled = load_cluster(REPO / "cluster.yaml")
    base = ensure_base(bundled, BuildContext(cache, cache, Reporter(), Runner()))
    allocated = base.image.stat().st_blocks * 512 / 2**30
    print(f"base image: {base.image.stat().st_size / 2**30:.2f} GiB, {allocated:.2f} GiB allocated")
    with tempfile.TemporaryDirectory(prefix="picluster-bench-", dir=cache) as scratch:
        work = Path(scratch)
        secrets = store.load_or_create(work / ".picluster")
        print(f"in {cache}'s filesystem:")
        table(base, cache, secrets, work)
        with reflink_filesystem(work) as xfs:
            if xfs is None:
                print("XFS: not available here, so no reflink figures")
            else:
                print("on XFS (reflink copies; a loop device over a file in the cache's filesystem):")
                xfs_cache = xfs / "cache"
                folder = xfs_cache / "base" / base.image.parent.name
                folder.mkdir(parents=True)
                shutil.copy(base.image.parent / "base.json", folder)
                subprocess.run(["cp", "--sparse=always", str(base.image), str(folder)], check=True)
                # and the flannel image every card carries, so no Go build runs there
                shutil.copytree(cache / "flannel-image", xfs_cache / "flannel-image",
                                ignore=shutil.ignore_patterns("*.lock"))  # fmt: skip
                table(load_base(folder), xfs_cache, secrets, xfs)
        breakdown(base, render_cluster(cluster_of(1, work), secrets)[0], work)
        images = work / "noop"
        example = work / "cluster.yaml"
        shutil.copy(REPO / "cluster.yaml", example)
        build = [
            sys.executable,
            "-m",
            "builder",
            "build",
            "-f",
            str(example),
            "-o",
            str(images),
            "--cache",
            str(cache),
        ]
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        subprocess.run(build, check=True, cwd=REPO, **quiet)  # the first build, which records tokens too
        subprocess.run(["sync"], check=True)  # so the no-op does not wait for that build's writes
        start = time.monotonic()
        subprocess.run(build, check=True, cwd=REPO, **quiet)
        print(f"no-op rebuild of the 3-node example (whole command): {time.monotonic() - start:.2f} s")


if __name__ == "__main__":
    main()
