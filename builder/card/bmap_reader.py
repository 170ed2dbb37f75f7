"""Reading a block map (bmaptool's format 2.0, as builder.image.bmap writes it) back: the image's size
and the ranges that hold data, each with its SHA-256."""

from __future__ import annotations

import hashlib
import re
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass

from builder.errors import UserError


@dataclass(frozen=True)
class MappedRange:
    start: int  # byte offsets, end exclusive
    end: int
    sha256: str


@dataclass(frozen=True)
class BlockMap:
    image_size: int
    ranges: tuple[MappedRange, ...]

    @property
    def mapped_bytes(self) -> int:
        return sum(r.end - r.start for r in self.ranges)


def parse_bmap(text: str, source: str) -> BlockMap:
    """Parse and check a block map; its own checksum guards against a damaged or edited file."""
    stored = re.search(r"<BmapFileChecksum>\s*([0-9a-f]{64})\s*</BmapFileChecksum>", text)
    zeroed = text.replace(stored.group(1), "0" * 64) if stored else ""
    if not stored or hashlib.sha256(zeroed.encode()).hexdigest() != stored.group(1):
        raise UserError(
            f"{source} is damaged (its checksum does not match)", "rebuild the image: make images"
        )
    root = ElementTree.fromstring(text)
    block = int(root.findtext("BlockSize", "0"))
    size = int(root.findtext("ImageSize", "0"))
    ranges = []
    for element in root.iter("Range"):
        first, _, last = (element.text or "").strip().partition("-")
        start, end = int(first) * block, (int(last or first) + 1) * block
        ranges.append(MappedRange(start, min(end, size), element.attrib["chksum"]))
    return BlockMap(size, tuple(ranges))
