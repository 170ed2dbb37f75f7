"""Reading a block map (bmaptool's format 2.0, as builder.image.bmap writes it) back: the image's size
and the ranges that hold data, each with its SHA-256; between them the image holds zeros."""

from __future__ import annotations

import hashlib
import re
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from dataclasses import dataclass

from builder.errors import UserError

SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Span:
    start: int  # byte offsets, end exclusive
    end: int
    sha256: str | None  # None: a stretch of zeros between the mapped ranges


@dataclass(frozen=True)
class BlockMap:
    image_size: int
    ranges: tuple[Span, ...]  # the mapped ones, in order, apart

    @property
    def mapped_bytes(self) -> int:
        return sum(r.end - r.start for r in self.ranges)

    def spans(self) -> Iterator[Span]:
        """The whole image, in order: each mapped range, and the zeros before and after it."""
        position = 0
        for mapped in self.ranges:
            if mapped.start > position:
                yield Span(position, mapped.start, None)
            yield mapped
            position = mapped.end
        if position < self.image_size:
            yield Span(position, self.image_size, None)


def parse_bmap(text: str, source: str) -> BlockMap:
    """Parse and check a block map; its own checksum guards against a damaged file, and the checks
    after it against one edited with its checksum made anew."""
    stored = re.search(r"<BmapFileChecksum>\s*([0-9a-f]{64})\s*</BmapFileChecksum>", text)
    zeroed = text.replace(stored.group(1), "0" * 64) if stored else ""
    if not stored or hashlib.sha256(zeroed.encode()).hexdigest() != stored.group(1):
        raise UserError(
            f"{source} is damaged (its checksum is missing or does not match)",
            "rebuild the image: make images",
        )
    try:
        return _block_map(ElementTree.fromstring(text))
    except (ElementTree.ParseError, ValueError) as error:
        raise UserError(f"{source} is damaged ({error})", "rebuild the image: make images") from None


def _block_map(root: ElementTree.Element) -> BlockMap:
    block = int(root.findtext("BlockSize", "0"))
    size = int(root.findtext("ImageSize", "-1"))
    if block <= 0 or size < 0:
        raise ValueError(f"BlockSize {block}, ImageSize {size}")
    if root.findtext("ChecksumType", "").strip() != "sha256":
        raise ValueError("its ChecksumType is not sha256")
    ranges: list[Span] = []
    for element in root.iter("Range"):
        text = (element.text or "").strip()
        first, _, last = text.partition("-")
        start, end = int(first) * block, min((int(last or first) + 1) * block, size)
        if start >= end or (ranges and start < ranges[-1].end):
            raise ValueError(f"range {text} is empty, out of order or past ImageSize {size}")
        digest = element.get("chksum", "")
        if not SHA256.fullmatch(digest):
            raise ValueError(f"range {text} has no SHA-256")
        ranges.append(Span(start, end, digest))
    return BlockMap(size, tuple(ranges))
