"""Flashing the bundled worker's image onto a used card: picluster flash against the other ways.

Run as root (loop devices) after one `make images`, so the base is cached:

    sudo .venv/bin/python bench/flash_card.py

The card is a 32 GiB loop device over a sparse file in /var/tmp whose first image-length bytes
are 0xA5 before each run, as on a used card. For each method it prints seconds to check the
image, to write and sync, to read back, and whether the card then holds the image byte for byte:
  picluster      what flash does: check the image against its .sha256 and .bmap; write the
                 mapped ranges and BLKZEROOUT between them; read the image's whole length back
  zeros by hand  the same with the zeros written from a buffer, what BLKZEROOUT costs where the
                 device has no write-zeroes command (the kernel then writes zero pages); a loop
                 device has one (it punches the backing file), so only this row shows that cost
  mapped only    what flash did before it zeroed: the mapped ranges, read back against theirs
  bmaptool copy  the mapped ranges, checked on the way, no read-back
  dd             the whole image, `dd bs=4M conv=fsync`, no check
Each figure is the median of three runs, the methods taking turns.
"""

from __future__ import annotations

import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stderr
from io import StringIO
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from builder.card.bmap_reader import BlockMap
from builder.card.flash import CHUNK, check_image, load_bmap, load_checksum, read_back, write_image
from builder.image.build import build_images
from builder.image.context import BuildContext, default_cache
from builder.progress import Reporter
from builder.run import Runner
from builder.secrets import store
from builder.spec.load import load_cluster

REPO = Path(__file__).resolve().parent.parent
CARD = 32 * 2**30
OLD = b"\xa5"
REPEATS = 3
Times = tuple[float | None, float, float | None]  # check, write and sync, read back


def used_card(device: Path, backing: Path, length: int) -> None:
    """0xA5 over the card's first `length` bytes, written to the file behind it, on disk; the
    device's cached pages of the last run dropped."""
    block = OLD * CHUNK
    with backing.open("r+b") as handle:
        for offset in range(0, length, CHUNK):
            handle.write(block[: min(CHUNK, length - offset)])
        handle.flush()
        os.fsync(handle.fileno())
    with device.open("rb") as card:
        os.posix_fadvise(card.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


@contextmanager
def loop_card(folder: Path) -> Iterator[tuple[Path, Path]]:
    backing = folder / "card.bin"
    with backing.open("wb") as handle:
        handle.truncate(CARD)
    device = Path(subprocess.run(["losetup", "-f", "--show", str(backing)], capture_output=True, text=True,
                                 check=True).stdout.strip())  # fmt: skip
    try:
        yield device, backing
    finally:
        subprocess.run(["losetup", "-d", str(device)], check=True)


@contextmanager
def card_open(device: Path) -> Iterator[int]:
    target = os.open(device, os.O_WRONLY | os.O_EXCL)
    try:
        yield target
    finally:
        os.close(target)


def picluster(image: Path, bmap: BlockMap, device: Path) -> Times:
    start = time.monotonic()
    check_image(image, bmap, load_checksum(image), Runner())
    checked = time.monotonic()
    with card_open(device) as target, image.open("rb") as stream, redirect_stderr(StringIO()):
        write_image(stream, bmap, target, lambda done: None)
    written = time.monotonic()
    read_back(device, bmap, load_checksum(image))
    return checked - start, written - checked, time.monotonic() - written


def zeros_by_hand(image: Path, bmap: BlockMap, device: Path) -> Times:
    """As picluster, the zeros written from a buffer."""
    zeros = bytes(CHUNK)
    start = time.monotonic()
    check_image(image, bmap, load_checksum(image), Runner())
    checked = time.monotonic()
    with card_open(device) as target, image.open("rb") as stream:
        for span in bmap.spans():
            for offset in range(span.start, span.end, CHUNK):
                length = min(CHUNK, span.end - offset)
                stream.seek(offset)
                os.pwrite(target, stream.read(length) if span.sha256 else zeros[:length], offset)
        os.fsync(target)
    written = time.monotonic()
    read_back(device, bmap, load_checksum(image))
    return checked - start, written - checked, time.monotonic() - written


def mapped_only(image: Path, bmap: BlockMap, device: Path) -> Times:
    """flash before it zeroed: the image's SHA-256, the mapped ranges, each read back against its own."""
    start = time.monotonic()
    with image.open("rb") as stream:
        hashlib.file_digest(stream, "sha256")
    checked = time.monotonic()
    with card_open(device) as target, image.open("rb") as stream:
        for mapped in bmap.ranges:
            stream.seek(mapped.start)
            for offset in range(mapped.start, mapped.end, CHUNK):
                os.pwrite(target, stream.read(min(CHUNK, mapped.end - offset)), offset)
        os.fsync(target)
    written = time.monotonic()
    with device.open("rb") as card:
        os.posix_fadvise(card.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        for mapped in bmap.ranges:
            card.seek(mapped.start)
            digest = hashlib.sha256()
            for offset in range(mapped.start, mapped.end, CHUNK):
                digest.update(card.read(min(CHUNK, mapped.end - offset)))
    return checked - start, written - checked, time.monotonic() - written


def bmaptool_copy(image: Path, bmap: BlockMap, device: Path) -> Times:
    start = time.monotonic()
    bmap_file = image.with_name(image.name + ".bmap")
    subprocess.run(["bmaptool", "-q", "copy", "--bmap", str(bmap_file), str(image), str(device)], check=True)
    return None, time.monotonic() - start, None


def dd(image: Path, bmap: BlockMap, device: Path) -> Times:
    start = time.monotonic()
    subprocess.run(["dd", f"if={image}", f"of={device}", "bs=4M", "conv=fsync", "status=none"], check=True)
    return None, time.monotonic() - start, None


METHODS: dict[str, Callable[[Path, BlockMap, Path], Times]] = {
    "picluster": picluster,
    "zeros by hand": zeros_by_hand,
    "mapped only": mapped_only,
    "bmaptool copy": bmaptool_copy,
    "dd": dd,
}


def worker_image(work: Path) -> Path:
    """w1's image of the bundled cluster, built on the cached base with fresh secrets."""
    cluster = load_cluster(REPO / "cluster.yaml")
    secrets = store.load_or_create(work / ".picluster")
    images = work / "images"
    build_images(cluster, secrets, {}, BuildContext(images, default_cache(), Reporter(stream=None), Runner()))
    return images / "w1.img"


def seconds(values: list[float | None]) -> str:
    known = [value for value in values if value is not None]
    return f"{statistics.median(known):7.2f}" if known else f"{'-':>7}"


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="picluster-bench-", dir="/var/tmp") as scratch:
        work = Path(scratch)
        image = worker_image(work)
        bmap, expected = load_bmap(image), load_checksum(image)
        print(f"w1.img: {bmap.image_size / 2**30:.2f} GiB, {bmap.mapped_bytes / 2**30:.2f} GiB mapped; "
              f"card: {CARD / 2**30:.0f} GiB loop device, 0xA5 over the image's length")  # fmt: skip
        runs: dict[str, list[Times]] = {name: [] for name in METHODS}
        exact: dict[str, bool] = {}
        with loop_card(work) as (device, backing):
            for _ in range(REPEATS):  # the methods take turns, so drift hits them alike
                for name, method in METHODS.items():
                    used_card(device, backing, bmap.image_size)
                    subprocess.run(["sync"], check=True)  # each method starts with no earlier writes pending
                    runs[name].append(method(image, bmap, device))
                    exact[name] = read_back(device, bmap, expected) == []
        print(f"{'method':<14} {'check':>7} {'write':>7} {'read':>7} {'total':>7}  card = image")
        for name, times in runs.items():
            check, write, read = (seconds([run[i] for run in times]) for i in range(3))
            total = seconds([sum(part or 0 for part in run) for run in times])
            print(f"{name:<14} {check} {write} {read} {total}  {'yes' if exact[name] else 'no'}")


if __name__ == "__main__":
    main()
