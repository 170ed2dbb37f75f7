"""`picluster build`: cluster.yaml -> images/<node>.img (+ .sha256, .bmap) for every node.

A node is rebuilt only when what its card would carry changed: each image has a build record
(`<node>.img.json`: the base image's key, the digest of the node's rendered files, the clock
seed, the compression) and a node whose record matches is left untouched. Every output is written
under a temporary name and renamed into place, the record last, so an interrupted build leaves the
previous images intact and is finished by the next run.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from pathlib import Path

from builder.epoch import source_date_epoch
from builder.files import exclusive, write_atomic
from builder.image.base import ensure_base
from builder.image.bmap import digest_image
from builder.image.container_images import CarriedImage, card_files, fetch_images
from builder.image.context import BuildContext
from builder.image.flannel_image import build_flannel_image
from builder.image.layout import BaseImage
from builder.image.outputs import IMAGE_SUFFIXES, NodeOutputs, build_record, is_current
from builder.image.stamp import remove_staged, stamp
from builder.render.images import node_images
from builder.render.node import CLOCK_FILE, render_cluster
from builder.render.plan import NodePlan
from builder.run import Runner
from builder.secrets.pki import ClusterSecrets
from builder.secrets.tokens import Tokens
from builder.spec.model import Cluster

COMPRESSORS: dict[str, list[str]] = {
    "zst": ["zstd", "-q", "-T0", "-10", "--rm"],
    "xz": ["xz", "-q", "-T0", "-6"],
}
LOCK = ".picluster.lock"
"""In the images folder: one build writes there at a time (a second one would clear the
first's unfinished images as a killed build's leftovers)."""


def build_images(cluster: Cluster, secrets: ClusterSecrets, tokens: Tokens, context: BuildContext,
                 etcd_snapshot: bytes | None = None) -> list[str]:  # fmt: skip
    """Build every node whose card changed; return the names of the nodes built. `tokens`: the
    bootstrap token each node's card carries (builder.secrets.tokens); `etcd_snapshot`: what the
    first control plane's card restores (builder.secrets.snapshot)."""
    # the base first: a downloaded image picluster refuses is refused in seconds, not after the
    # minutes flannel's image takes to build on an empty cache
    base = ensure_base(cluster, context)
    flannel, carried = carried_images(cluster, context)
    plans = render_cluster(cluster, secrets, tokens, flannel.digest, etcd_snapshot)
    images = context.images
    with exclusive(images / LOCK, f"images into {images}", context.reporter.say):
        epoch = clock_epoch(base)
        return _build_stale(plans, carried, base, context, epoch, clock_seed(epoch, secrets))


def carried_images(
    cluster: Cluster, context: BuildContext
) -> tuple[CarriedImage, dict[str, tuple[CarriedImage, ...]]]:
    """flannel's image, and the container images each node's card carries: flannel's always; with
    images: card, every other one it runs too, fetched first."""
    made = build_flannel_image(context.cache, context.runner, context.reporter, context.rebuild_base)
    flannel = CarriedImage(made.reference, made.digest, made.archive)
    wanted = {node.name: node_images(cluster, node).references for node in cluster.nodes}
    available = {flannel.reference: flannel}
    if cluster.cluster.images == "card":
        others = {reference for references in wanted.values() for reference in references} - available.keys()
        available |= fetch_images(others, cluster.cluster.image_mirror, context)
    carried = {
        node: tuple(available[ref] for ref in references if ref in available)
        for node, references in wanted.items()
    }
    for node, images in carried.items():
        size = sum(image.archive.stat().st_size for image in images) / 2**20
        count = f"{len(images)} container image{'s' if len(images) != 1 else ''}"
        context.reporter.say(f"    {node} carries {count}, {size:.1f} MiB")
    return flannel, carried


def _build_stale(plans: list[NodePlan], carried: dict[str, tuple[CarriedImage, ...]], base: BaseImage,
                 context: BuildContext, epoch: int, seed: int) -> list[str]:  # fmt: skip
    """With the images folder to ourselves: clear a killed build's leftovers, then build every
    node whose card changed."""
    images, reporter = context.images, context.reporter
    for leftover in images.glob(".*.img.partial*"):  # from a build that was killed
        leftover.unlink()
    remove_staged(images)  # a killed build's staged copies of the cards' files, keys among them
    reporter.say(f"==> node images in {images}")
    stale: list[tuple[NodePlan, NodeOutputs, dict[str, object]]] = []
    done = 0
    for plan in plans:
        NodeOutputs(images, plan.node, context.compress).check_writable()
    for plan in plans:
        outputs = NodeOutputs(images, plan.node, context.compress)
        images_carried = carried[plan.node]
        record = build_record(
            plan,
            base.key,
            epoch,
            context.compress,
            {image.reference: image.digest for image in images_carried},
        )
        if is_current(outputs, record):
            done += 1
            reporter.item(done, len(plans), f"{plan.node}: unchanged")
        else:
            stale.append(
                (plan.with_mtime(CLOCK_FILE, seed).with_files(card_files(images_carried)), outputs, record)
            )
    # Nodes are independent and their work is copying and hashing, which run outside the GIL:
    # one node per core.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        futures = {
            pool.submit(_timed_build, plan, base, epoch, outputs, record, context.runner): (plan, outputs)
            for plan, outputs, record in stale
        }
        for future in as_completed(futures):
            plan, outputs = futures[future]
            seconds = future.result()
            done += 1
            size = outputs.image.stat().st_size / 2**20
            reporter.item(
                done, len(plans), f"{plan.node}: {outputs.image.name} ({size:.0f} MiB) in {seconds:.1f}s"
            )
    return [plan.node for plan, _, _ in stale]


def _timed_build(plan: NodePlan, base: BaseImage, epoch: int, outputs: NodeOutputs,
                 record: dict[str, object], runner: Runner) -> float:  # fmt: skip
    start = time.monotonic()
    build_node(plan, base, epoch, outputs, record, runner)
    return time.monotonic() - start


def clock_epoch(base: BaseImage) -> int:
    """The time stamped on every file: SOURCE_DATE_EPOCH, or else when the base was built."""
    pinned = source_date_epoch()
    return base.built_at if pinned is None else pinned


def clock_seed(epoch: int, secrets: ClusterSecrets) -> int:
    """Where a Pi's clock starts (it has no real-time clock): systemd-timesyncd never sets it
    earlier than its clock file's mtime. The latest of the build's time stamp, the start of the
    cluster's CAs (they may be newer than a cached base) and the time the card is stamped
    (SOURCE_DATE_EPOCH pins that too, so the same inputs still give the same bytes). A node
    without NTP then starts inside the certificates' validity, not before it."""
    pinned = source_date_epoch()
    stamped = int(time.time()) if pinned is None else pinned
    return max(epoch, int(secrets.ca_not_before.timestamp()), stamped)


def build_node(plan: NodePlan, base: BaseImage, epoch: int, outputs: NodeOutputs,
               record: dict[str, object], runner: Runner) -> None:  # fmt: skip
    with _scratch_image(outputs.folder, plan.node) as partial:
        stamp(base, plan, partial, epoch, runner)
        digests = digest_image(partial)
        if outputs.compress:
            runner.run([*COMPRESSORS[outputs.compress], str(partial)])
            partial.unlink(missing_ok=True)
            partial = partial.with_name(f"{partial.name}.{outputs.compress}")
        write_atomic(outputs.bmap, digests.bmap.encode(), durable=False)
        write_atomic(outputs.checksum, f"{digests.sha256}  {plan.node}.img\n".encode(), durable=False)
        for stale in outputs.all_images():
            if stale != outputs.image:
                stale.unlink(missing_ok=True)
        os.replace(partial, outputs.image)
        bmap_sha256 = hashlib.sha256(digests.bmap.encode()).hexdigest()
        record_text = json.dumps({**record, "sha256": digests.sha256, "bmap_sha256": bmap_sha256}, indent=2)
        write_atomic(outputs.record, record_text.encode(), durable=False)


@contextmanager
def _scratch_image(folder: Path, node: str) -> Iterator[Path]:
    """A temporary image path beside the outputs (same filesystem, so the rename is atomic)."""
    fd, name = tempfile.mkstemp(dir=folder, prefix=f".{node}.", suffix=".img.partial")
    os.close(fd)
    path = Path(name)
    try:
        yield path
    finally:
        for suffix in IMAGE_SUFFIXES:
            path.with_name(path.name + suffix).unlink(missing_ok=True)
