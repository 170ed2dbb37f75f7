"""The base image every node's card starts from: Debian built with mmdebstrap, or a downloaded
Raspberry Pi OS image customised (base.image), cached by its inputs.

The cache key is the SHA-256 of a sorted JSON manifest of every input that changes the base (suite,
architecture, mirror, packages, the build hooks and module list, the builder's version); a hit
skips mmdebstrap entirely. Per-node files are not in the base: they are stamped onto copies.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from builder import __version__
from builder.epoch import source_date_epoch
from builder.errors import UserError
from builder.files import exclusive, remove_tree, write_atomic
from builder.image import container_images, debian, raspios
from builder.image.context import BuildContext
from builder.image.layout import BaseImage, Layout
from builder.image.stamp import assemble, list_tree
from builder.run import Runner
from builder.spec.model import Cluster

FLAVOURS = {"debian": debian, "raspios": raspios}
"""Each base flavour's module: its cache inputs and how its root tree is made."""


def manifest(cluster: Cluster) -> dict[str, Any]:
    """Every input that changes the base image's bytes."""
    room = {"room_for_images_mib": container_images.ROOM_MIB} if cluster.cluster.images == "card" else {}
    return {"builder": __version__, **FLAVOURS[cluster.flavour].inputs(cluster), **room}


def room_for_images(inputs: dict[str, Any]) -> int:
    """The bytes a base keeps free for the container images its cards carry, besides its usual
    headroom."""
    return int(inputs.get("room_for_images_mib", 0)) * 2**20


def cache_key(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def ensure_base(cluster: Cluster, context: BuildContext) -> BaseImage:
    """The cached base for this cluster, built first if it is missing or a rebuild was asked for."""
    inputs = manifest(cluster)
    folder = context.cache / "base" / cache_key(inputs)[:16]
    say = context.reporter.say
    if (folder / "base.json").exists() and not context.rebuild_base:
        say(f"==> base image: cached ({folder})")
        return load_base(folder)
    # one build of a base at a time; whoever waited finds it built
    with exclusive(folder.with_name(f"{folder.name}.lock"), f"the base image {folder}", say):
        if (folder / "base.json").exists() and not context.rebuild_base:
            say(f"==> base image: cached ({folder}), built while this build waited")
            return load_base(folder)
        records = (context.cache / "base").glob("*/base.json")
        say(f"==> base image: building ({why_rebuild(records, inputs, context.rebuild_base)})")
        build_base(cluster, inputs, folder, context)
    return load_base(folder)


def load_base(folder: Path) -> BaseImage:
    record = folder / "base.json"
    try:
        meta = json.loads(record.read_bytes())
        return BaseImage(
            image=folder / "base.img",
            key=meta["key"],
            built_at=meta["built_at"],
            layout=Layout(**meta["layout"]),
            dirs=frozenset(meta["dirs"]),
            others=frozenset(meta["others"]),
        )
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserError(
            f"the cached base image's record {record} is damaged ({type(error).__name__}: {error})",
            f"build the base again with picluster build --rebuild-base, or delete {folder}",
        ) from None


def build_base(cluster: Cluster, inputs: dict[str, Any], folder: Path, context: BuildContext) -> None:
    """Make the base's tree in a scratch folder (mmdebstrap, or the downloaded image customised),
    then publish it into the cache."""
    work = folder.with_name(f".{folder.name}.building")
    remove_tree(work)
    work.mkdir(parents=True)
    epoch = source_date_epoch() or int(time.time())
    root = FLAVOURS[cluster.flavour].build_root(cluster, work, context)
    with context.reporter.step("partitions and filesystems"):
        publish_base(root, inputs, folder, epoch, context.runner, room_for_images(inputs))
    remove_tree(work)


def publish_base(root: Path, inputs: dict[str, Any], folder: Path, epoch: int, runner: Runner,
                 room: int) -> None:  # fmt: skip
    """Turn a root tree (boot partition files under boot/firmware) into the cached base image, its
    root filesystem with `room` bytes free besides the usual headroom.

    The image is made beside the cache entry and renamed into place whole.
    """
    staging = _staging(folder)
    boot = staging / "boot"
    (root / "boot" / "firmware").rename(boot)
    (root / "boot" / "firmware").mkdir()
    layout = assemble(root, boot, staging / "base.img", epoch, runner, room)
    dirs, others = list_tree(root)
    remove_tree(boot)
    _publish(staging, folder, inputs, epoch, layout, dirs, others)


def _staging(folder: Path) -> Path:
    staging = folder.with_name(f".{folder.name}.staging")
    remove_tree(staging)
    staging.mkdir(parents=True)
    return staging


def _publish(staging: Path, folder: Path, inputs: dict[str, Any], epoch: int, layout: Layout,
             dirs: list[str], others: list[str]) -> None:  # fmt: skip
    """Record what the base holds beside it, then move it into the cache whole."""
    meta = {"key": cache_key(inputs), "inputs": inputs, "built_at": epoch,
            "layout": dataclasses.asdict(layout), "dirs": dirs, "others": others}  # fmt: skip
    write_atomic(staging / "base.json", json.dumps(meta, indent=1, sort_keys=True).encode())
    remove_tree(folder)
    staging.rename(folder)


def why_rebuild(records: Iterable[Path], inputs: dict[str, Any], rebuild: bool) -> str:
    """Which input differs from the newest cached build's (records: their JSON records, each with
    its "inputs"), so a cache miss is never a mystery."""
    if rebuild:
        return "--rebuild-base"
    cached = sorted(records, key=lambda p: p.stat().st_mtime)
    if not cached:
        return "nothing cached yet"
    try:
        previous = json.loads(cached[-1].read_bytes())["inputs"]
    except (ValueError, KeyError, TypeError):
        return f"no readable cached build ({cached[-1]} is damaged)"
    changed = sorted(key for key in inputs.keys() | previous.keys() if inputs.get(key) != previous.get(key))
    return "changed since the last build: " + ", ".join(changed)
