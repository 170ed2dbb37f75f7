"""An image's SHA-256 and its block map (bmaptool's format 2.0), from one read of the image.

The block map lists the ranges that hold data, each with its own SHA-256; between them (the holes
of the sparse image) the image holds zeros, which a flasher must zero on the card rather than
skip: a used card holds other bytes there. Both digests are computed in parallel threads
(hashlib releases the GIL on large buffers).
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

BLOCK = 4096
CHUNK = 4 * 1024 * 1024
_ZEROS = bytes(CHUNK)


@dataclass(frozen=True)
class Digests:
    sha256: str
    bmap: str


def data_ranges(handle: int, size: int) -> Iterator[tuple[int, int]]:
    """(start, end) byte ranges holding data, block-aligned, from SEEK_DATA/SEEK_HOLE."""
    offset = 0
    while offset < size:
        try:
            start = os.lseek(handle, offset, os.SEEK_DATA)
        except OSError:  # ENXIO: only a hole remains
            return
        end = os.lseek(handle, start, os.SEEK_HOLE)
        start, end = start // BLOCK * BLOCK, min(size, -(-end // BLOCK) * BLOCK)
        yield start, end
        offset = end


def digest_image(image: Path) -> Digests:
    size = image.stat().st_size
    whole = hashlib.sha256()
    feed: queue.Queue[bytes | None] = queue.Queue(maxsize=8)

    def hash_whole() -> None:
        while (chunk := feed.get()) is not None:
            whole.update(chunk)

    worker = threading.Thread(target=hash_whole)
    worker.start()
    ranges: list[tuple[int, int, str]] = []
    try:
        with image.open("rb") as handle:
            position = 0
            for start, end in list(data_ranges(handle.fileno(), size)):
                _feed_zeros(feed, start - position)
                handle.seek(start)
                part = hashlib.sha256()
                remaining = end - start
                while remaining:
                    chunk = handle.read(min(CHUNK, remaining))
                    part.update(chunk)
                    feed.put(chunk)
                    remaining -= len(chunk)
                ranges.append((start // BLOCK, end // BLOCK - 1, part.hexdigest()))
                position = end
            _feed_zeros(feed, size - position)
    finally:
        feed.put(None)
        worker.join()
    return Digests(whole.hexdigest(), bmap_text(size, ranges))


def _feed_zeros(feed: queue.Queue[bytes | None], length: int) -> None:
    while length > 0:
        step = min(CHUNK, length)
        feed.put(_ZEROS[:step])
        length -= step


def bmap_text(size: int, ranges: list[tuple[int, int, str]]) -> str:
    """The bmap XML; its own checksum is computed with the checksum field set to zeros."""
    blocks = -(-size // BLOCK)
    mapped = sum(last - first + 1 for first, last, _ in ranges)
    lines = [
        '<?xml version="1.0" ?>',
        '<bmap version="2.0">',
        f"    <ImageSize> {size} </ImageSize>",
        f"    <BlockSize> {BLOCK} </BlockSize>",
        f"    <BlocksCount> {blocks} </BlocksCount>",
        f"    <MappedBlocksCount> {mapped} </MappedBlocksCount>",
        "    <ChecksumType> sha256 </ChecksumType>",
        "    <BmapFileChecksum> {checksum} </BmapFileChecksum>",
        "    <BlockMap>",
        *(
            f'        <Range chksum="{digest}"> {first}-{last} </Range>'
            if first != last
            else f'        <Range chksum="{digest}"> {first} </Range>'
            for first, last, digest in ranges
        ),
        "    </BlockMap>",
        "</bmap>",
        "",
    ]
    template = "\n".join(lines)
    checksum = hashlib.sha256(template.replace("{checksum}", "0" * 64).encode()).hexdigest()
    return template.replace("{checksum}", checksum)
