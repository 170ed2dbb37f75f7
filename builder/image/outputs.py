"""The images folder's contract: what `build` leaves there for each node (<node>.img, or
.img.zst / .img.xz, its .sha256, .bmap and the build record <node>.img.json), and how a reader
(`build` itself, `flash`, `status`) tells whether a node's image is whole and current.

The record holds what the image was built from (the base image's key, the digest of the node's
rendered files, the clock seed, the compression) and the SHA-256s of the .sha256 and .bmap written
with it; the four files are renamed into place one by one, the record last.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from builder.errors import UserError
from builder.files import open_regular
from builder.image.context import Compression
from builder.render.plan import NodePlan

IMAGE_SUFFIXES = ("", *(f".{name}" for name in get_args(Compression)))
"""What an image file's name may end in after `.img`: raw or one of the compressions."""


@dataclass(frozen=True)
class NodeOutputs:
    """The files one node's build leaves in the images folder."""

    folder: Path
    node: str
    compress: Compression | None

    @property
    def image(self) -> Path:
        suffix = f".{self.compress}" if self.compress else ""
        return self.folder / f"{self.node}.img{suffix}"

    @property
    def checksum(self) -> Path:
        return self.folder / f"{self.node}.img.sha256"

    @property
    def bmap(self) -> Path:
        return self.folder / f"{self.node}.img.bmap"

    @property
    def record(self) -> Path:
        return self.folder / f"{self.node}.img.json"

    def all_images(self) -> list[Path]:
        return [self.folder / f"{self.node}.img{suffix}" for suffix in IMAGE_SUFFIXES]

    def check_writable(self) -> None:
        """Refuse, before anything is built, a name the build would replace that holds no file:
        a folder, a FIFO or a device there is the user's, and no image."""
        for path in [*self.all_images(), self.checksum, self.bmap, self.record]:
            if path.exists() and not path.is_file():
                kind = "a folder" if path.is_dir() else "not a regular file"
                what = "image" if path in self.all_images() else "record of its image"
                raise UserError(
                    f"{path} is {kind}; the build writes {self.node}'s {what} there, and nothing was built",
                    "move it away, or build into another folder (-o DIR)",
                )


def build_record(
    plan: NodePlan, base_key: str, epoch: int | None, compress: Compression | None, images: dict[str, str]
) -> dict[str, object]:
    """What a node's image was built from; `epoch` is None when only telling whether an image
    is current (picluster status). `images`: each container image the card carries, by digest."""
    return {
        "node": plan.node,
        "base": base_key,
        "files": plan.digest(),
        "file_digests": plan.file_digests(),
        "images": images,
        "epoch": epoch,
        "compress": compress,
    }


def recorded_images(outputs: NodeOutputs) -> dict[str, str]:
    """The container images a node's built card carries, by digest, as its record says; none
    when there is no readable record."""
    stored = read_record(outputs) or {}
    images = stored.get("images")
    return images if isinstance(images, dict) else {}


def stale_reasons(stored: dict[str, object], wanted: dict[str, object]) -> list[str]:
    """Why an image built from `stored` is not the one `wanted` would give, for people."""
    reasons = []
    if stored.get("base") != wanted["base"]:
        reasons.append("the base image changed")
    if stored.get("files") != wanted["files"]:
        old, new = stored.get("file_digests") or {}, wanted["file_digests"]
        assert isinstance(old, dict) and isinstance(new, dict)
        changed = sorted(path for path in old.keys() | new.keys() if old.get(path) != new.get(path))
        shown = ", ".join(changed[:4]) + (f" and {len(changed) - 4} more" if len(changed) > 4 else "")
        reasons.append(f"files changed: {shown}" if changed else "its files changed")
    if stored.get("images") != wanted["images"]:
        old_images, new_images = stored.get("images") or {}, wanted["images"]
        assert isinstance(old_images, dict) and isinstance(new_images, dict)
        changed = sorted(
            ref for ref in old_images.keys() | new_images.keys() if old_images.get(ref) != new_images.get(ref)
        )
        reasons.append("container images changed: " + ", ".join(changed))
    if wanted["epoch"] is not None and stored.get("epoch") != wanted["epoch"]:
        reasons.append("SOURCE_DATE_EPOCH changed")
    if stored.get("compress") != wanted["compress"]:
        reasons.append("the compression changed")
    return reasons


def is_current(outputs: NodeOutputs, record: dict[str, object]) -> bool:
    if not all(path.exists() for path in (outputs.image, outputs.checksum, outputs.bmap)):
        return False
    stored = read_record(outputs)
    if stored is None or mismatched_set(outputs, stored):
        return False  # a damaged record or an interrupted set: the image is built again
    return {key: value for key, value in stored.items() if key not in WRITTEN} == record


def read_record(outputs: NodeOutputs) -> dict[str, Any] | None:
    """A node's build record, or None when there is none or it is damaged."""
    try:
        stored = json.loads(_read_output(outputs.record) or b"")
    except ValueError:
        return None
    return stored if isinstance(stored, dict) else None


def _read_output(path: Path) -> bytes | None:
    """One of a node's files in the images folder; None when it is missing or not a regular file
    (a FIFO there would block the reader, a link to /dev/zero never end)."""
    try:
        with open_regular(path) as handle:
            return handle.read()
    except OSError:
        return None


WRITTEN = ("sha256", "bmap_sha256")
"""What the record says of the files written with the image, beside the inputs it came from."""


def mismatched_set(outputs: NodeOutputs, stored: dict[str, object]) -> str | None:
    """Why an image's .sha256 and .bmap are not the ones its record was written with, or None.

    The four files are renamed into place one by one, the record last; a build killed between
    two renames leaves a set whose record names other checksums than the files hold."""
    said = (_read_output(outputs.checksum) or b"").decode(errors="replace").split()
    checksum = said[0] if said else None
    bmap_data = _read_output(outputs.bmap)
    bmap = hashlib.sha256(bmap_data).hexdigest() if bmap_data is not None else None
    if (checksum, bmap) == (stored.get("sha256"), stored.get("bmap_sha256")):
        return None
    return "its .sha256 and .bmap are not the ones its build record names (a build was interrupted)"
