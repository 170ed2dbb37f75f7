"""`picluster flash`: write a node's image to an SD card, only to a card, and check it landed.

Refuses anything that is not a whole, removable, unused block device at least as large as the
image; checks the image against its .sha256 and its .bmap first; writes the block map's ranges
and zeroes the spans between them (a used card holds old bytes there, which would corrupt the
filesystems' tables); fsyncs; drops the cached pages and reads the image's whole length back
from the card against the image's SHA-256.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import stat
import struct
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO, TextIO

from builder.card.bmap_reader import SHA256, BlockMap, Span, parse_bmap
from builder.errors import UserError
from builder.files import NotRegularFile, open_regular
from builder.image.outputs import IMAGE_SUFFIXES
from builder.run import Runner

CHUNK = 4 * 1024 * 1024
_ZEROS = bytes(CHUNK)
BLKZEROOUT = 0x127F  # _IO(0x12, 127), linux/fs.h
ZERO_ALIGN = 4096
"""BLKZEROOUT takes whole logical blocks (512 or 4096 bytes); the bytes of a span outside such a
boundary, fewer than a page at either end, are written as zeros by hand."""
DECOMPRESSORS = {".zst": ["zstd", "-dcq"], ".xz": ["xz", "-dcq"]}
SYS_BLOCK = Path("/sys/class/block")


@dataclass(frozen=True)
class Disk:
    path: Path
    name: str
    size: int
    removable: bool
    model: str
    partitions: tuple[tuple[str, int], ...]  # (name, bytes)
    numbers: frozenset[str]  # "major:minor" of the disk and each partition

    def describe(self) -> str:
        parts = ", ".join(f"{name} ({_size(size)})" for name, size in self.partitions) or "none"
        return f"{self.path}: {self.model or 'unknown model'}, {_size(self.size)}, partitions: {parts}"


def _size(count: int) -> str:
    return f"{count / 2**30:.1f} GiB" if count >= 2**30 else f"{count / 2**20:.0f} MiB"


def _read(path: Path, default: str = "") -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return default


def inspect_disk(path: Path) -> Disk:
    """The whole block device at `path`; refuses anything else."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise UserError(f"{path} does not exist", "list the cards with: picluster flash NODE") from None
    if not stat.S_ISBLK(mode):
        raise UserError(
            f"{path} is not a block device", "give the card's device, e.g. /dev/sdb or /dev/mmcblk0"
        )
    rdev = path.stat().st_rdev
    sys_dir = Path(f"/sys/dev/block/{os.major(rdev)}:{os.minor(rdev)}").resolve()
    if (sys_dir / "partition").exists():
        whole = sys_dir.parent.name
        raise UserError(f"{path} is a partition, not a whole card", f"give the whole device: /dev/{whole}")
    partitions = sorted(p for p in sys_dir.iterdir() if (p / "partition").exists())
    return Disk(
        path=path,
        name=sys_dir.name,
        size=int(_read(sys_dir / "size", "0")) * 512,
        # card readers on USB often say they are not removable; the card in them is
        removable=_read(sys_dir / "removable") == "1" or "/usb" in str(sys_dir),
        model=" ".join(filter(None, (_read(sys_dir / "device/vendor"), _read(sys_dir / "device/model")))),
        partitions=tuple((p.name, int(_read(p / "size", "0")) * 512) for p in partitions),
        numbers=frozenset(_read(d / "dev") for d in (sys_dir, *partitions)),
    )


def uses(disk: Disk) -> list[str]:
    """What on this machine uses the disk: mounts (the running system's among them), swap,
    device-mapper or RAID holders."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[2] in disk.numbers:
            what = "the running system" if fields[4] == "/" else fields[4]
            found.append(f"mounted at {fields[4]}" + (f" ({what})" if what != fields[4] else ""))
    for line in Path("/proc/swaps").read_text().splitlines()[1:]:
        device = Path(line.split()[0])
        if device.exists() and stat.S_ISBLK(device.stat().st_mode):
            number = f"{os.major(device.stat().st_rdev)}:{os.minor(device.stat().st_rdev)}"
            if number in disk.numbers:
                found.append(f"swap on {device}")
    for folder in [SYS_BLOCK / disk.name, *(SYS_BLOCK / name for name, _ in disk.partitions)]:
        holders = sorted(p.name for p in (folder / "holders").glob("*"))
        found += [f"held by {holder}" for holder in holders]
    return found


def refusals(disk: Disk, image_size: int, in_use: list[str], force_non_removable: bool) -> list[str]:
    """Why not to write to this disk; empty when it is fine."""
    reasons = [f"{disk.path} is in use: {use}" for use in in_use]
    if not disk.removable and not force_non_removable:
        reasons.append(
            f"{disk.path} is not a removable device (an internal disk?); if it really is the card, "
            "add --force-non-removable"
        )
    if disk.size < image_size:
        reasons.append(f"{disk.path} holds {_size(disk.size)}, smaller than the image ({_size(image_size)})")
    return reasons


def removable_disks() -> list[Disk]:
    disks = []
    for entry in sorted(Path("/sys/block").iterdir()):
        device = Path("/dev") / entry.name
        if entry.name.startswith(("loop", "ram", "zram")) or not device.exists():
            continue
        disk = inspect_disk(device)
        if disk.removable and disk.size > 0:
            disks.append(disk)
    return disks


def find_image(images: Path, node: str) -> Path:
    for suffix in IMAGE_SUFFIXES:
        candidate = images / f"{node}.img{suffix}"
        if candidate.exists():
            _open(candidate).close()  # a FIFO or a link to /dev/zero would hang every reader after
            return candidate
    raise UserError(f"no image for {node} in {images}", "build it first: make images")


def _open(path: Path) -> BinaryIO:
    """One of the image's files, opened for reading; anything but a regular file is refused."""
    try:
        return open_regular(path)
    except FileNotFoundError:
        raise UserError(f"{path} is missing", "rebuild the image: make images") from None
    except NotRegularFile as error:
        raise UserError(str(error), "remove it and rebuild the image: make images") from None
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror}", "check its permissions") from None


def _read_text(path: Path) -> str:
    with _open(path) as handle:
        data = handle.read()
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise UserError(f"{path} is damaged (not text)", "rebuild the image: make images") from None


@contextmanager
def image_stream(image: Path, runner: Runner) -> Iterator[IO[bytes]]:
    """The raw image's bytes, read in order; a compressed image is decompressed on the way."""
    raw = _open(image)
    command = DECOMPRESSORS.get(image.suffix)
    if command is None:
        with raw:
            yield raw
        return
    raw.close()  # it is a regular file; the decompressor reads it by its name
    with runner.start([*command, image], output="pipe") as process:
        assert process.stdout is not None
        try:
            yield process.stdout
        finally:
            process.kill()


def _beside(image: Path, suffix: str) -> Path:
    """The file describing the raw image (`n1.img.sha256` for `n1.img` and `n1.img.zst` alike)."""
    raw_name = image.name.removesuffix(image.suffix) if image.suffix in DECOMPRESSORS else image.name
    return image.with_name(raw_name + suffix)


def load_bmap(image: Path) -> BlockMap:
    bmap_file = _beside(image, ".bmap")
    return parse_bmap(_read_text(bmap_file), str(bmap_file))


def load_checksum(image: Path) -> str:
    """The raw image's SHA-256, as its .sha256 gives it."""
    checksum_file = _beside(image, ".sha256")
    said = _read_text(checksum_file).split()
    if not said or not SHA256.fullmatch(said[0]):
        raise UserError(f"{checksum_file} is damaged (no SHA-256 in it)", "rebuild the image: make images")
    return said[0]


def _chunks(stream: IO[bytes], count: int) -> Iterator[bytes]:
    """The stream's next `count` bytes, a chunk at a time; fewer where it ends."""
    while count > 0 and (chunk := stream.read(min(CHUNK, count))):
        count -= len(chunk)
        yield chunk


@dataclass(frozen=True)
class Survey:
    """What one read along a block map found."""

    sha256: str  # of every byte read
    length: int
    not_zeros: tuple[Span, ...]  # spans between the mapped ranges that hold anything but zeros


def survey(stream: IO[bytes], bmap: BlockMap, *, to_end: bool) -> Survey:
    """Read `stream` once along the block map: the bytes' SHA-256 and count, and the spans between
    the mapped ranges that are not zeros. `to_end` reads on past the map's end, so an image longer
    than its map is told apart."""
    whole = hashlib.sha256()
    length = 0
    not_zeros = []
    for span in bmap.spans():
        zeros = True
        for chunk in _chunks(stream, span.end - span.start):
            whole.update(chunk)
            length += len(chunk)
            zeros = zeros and (span.sha256 is not None or chunk == _ZEROS[: len(chunk)])
        if not zeros:
            not_zeros.append(span)
    while to_end and (chunk := stream.read(CHUNK)):
        whole.update(chunk)
        length += len(chunk)
    return Survey(whole.hexdigest(), length, tuple(not_zeros))


def check_image(image: Path, bmap: BlockMap, expected: str, runner: Runner) -> None:
    """Refuse an image whose bytes do not match its .sha256 (a bad download, a full disk), or
    that its .bmap does not describe: another length, data where the map has none."""
    with image_stream(image, runner) as stream:
        found = survey(stream, bmap, to_end=True)
    checksum_file, bmap_file = _beside(image, ".sha256").name, _beside(image, ".bmap").name
    if found.sha256 != expected:
        raise UserError(
            f"{image} does not match {checksum_file} (damaged or changed since it was built)",
            "rebuild it: make images",
        )
    if found.length != bmap.image_size:
        raise UserError(
            f"{bmap_file} says the image is {bmap.image_size} bytes; it is {found.length}",
            "rebuild the image: make images",
        )
    if found.not_zeros:
        raise UserError(
            f"{bmap_file} leaves out data of {image.name}, in {_listed(found.not_zeros)}",
            "rebuild the image: make images",
        )


def _listed(spans: list[Span] | tuple[Span, ...]) -> str:
    shown = ", ".join(f"bytes {span.start}-{span.end}" for span in spans[:3])
    return shown + (f" and {len(spans) - 3} more" if len(spans) > 3 else "")


Progress = Callable[[int], None]


def write_image(stream: IO[bytes], bmap: BlockMap, target: int, progress: Progress) -> None:
    """Make the target's first image_size bytes the image's: copy the mapped ranges from the image
    stream, zero the spans between them (whatever the card held there before), then fsync."""
    for span in bmap.spans():
        if span.sha256 is None:
            _skip(stream, span.end - span.start)
            zero(target, span.start, span.end)
            progress(span.end)
        else:
            offset = span.start
            for chunk in _chunks(stream, span.end - span.start):
                os.pwrite(target, chunk, offset)
                offset += len(chunk)
                progress(offset)
            if offset < span.end:
                raise UserError("the image ended before its block map did", "rebuild it: make images")
    os.fsync(target)


def zero(target: int, start: int, end: int) -> None:
    """Zeros over bytes start-end of the target: the kernel's BLKZEROOUT, which uses the device's
    own way when it has one that guarantees zeros (write-zeroes, an unmap that reads back zeros)
    and writes zero pages otherwise; unaligned edges are written here."""
    head_end = min(end, -(-start // ZERO_ALIGN) * ZERO_ALIGN)
    tail_start = max(head_end, end // ZERO_ALIGN * ZERO_ALIGN)
    os.pwrite(target, bytes(head_end - start), start)
    if head_end < tail_start:
        fcntl.ioctl(target, BLKZEROOUT, struct.pack("QQ", head_end, tail_start - head_end))
    os.pwrite(target, bytes(end - tail_start), tail_start)


def _skip(stream: IO[bytes], count: int) -> None:
    if stream.seekable():
        stream.seek(count, os.SEEK_CUR)
        return
    for _ in _chunks(stream, count):
        pass


def read_back(target: Path, bmap: BlockMap, expected: str) -> list[Span]:
    """Where the target's first image_size bytes differ from the image: nowhere when their SHA-256
    is the image's. The page cache is dropped first, so the bytes come from the card, not from
    what was just written."""
    with target.open("rb") as card:
        os.posix_fadvise(card.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        found = survey(card, bmap, to_end=False)
        if found.sha256 == expected:
            return []
        changed = [mapped for mapped in bmap.ranges if _sha256(card, mapped) != mapped.sha256]
    return sorted([*changed, *found.not_zeros], key=lambda span: span.start) or [
        Span(0, bmap.image_size, None)
    ]


def _sha256(card: IO[bytes], span: Span) -> str:
    card.seek(span.start)
    digest = hashlib.sha256()
    for chunk in _chunks(card, span.end - span.start):
        digest.update(chunk)
    return digest.hexdigest()


def progress_printer(total: int, stream: TextIO | None = None) -> Progress:
    """A bar with throughput on a terminal; a line every tenth otherwise."""
    out = stream or sys.stderr
    start = time.monotonic()
    tty = out.isatty()
    shown = [-1]

    def show(done: int) -> None:
        step = (done * (40 if tty else 10)) // max(total, 1)
        if step == shown[0]:
            return
        shown[0] = step
        fraction = done / max(total, 1)
        rate = done / 2**20 / max(time.monotonic() - start, 1e-6)
        if tty:
            end = "\n" if done == total else ""
            print(
                f"\r    [{'#' * step:<40}] {int(fraction * 100):3d}% {rate:6.1f} MiB/s",
                end=end,
                file=out,
                flush=True,
            )
        else:
            print(f"    {int(fraction * 100):3d}% written, {rate:.1f} MiB/s", file=out, flush=True)

    return show


def flash(
    image: Path,
    device: Path,
    *,
    force_non_removable: bool,
    confirm: Callable[[Disk], bool],
    say: Callable[[str], None],
    runner: Runner,
) -> None:
    """Check the image, refuse a device that is not a free card, ask, write, read back."""
    bmap, expected = load_bmap(image), load_checksum(image)
    disk = inspect_disk(device)
    reasons = refusals(disk, bmap.image_size, uses(disk), force_non_removable)
    if reasons:
        raise UserError(
            "refusing to write: " + "; ".join(reasons),
            "check the device: lsblk -o NAME,SIZE,RM,MOUNTPOINTS,MODEL",
        )
    say(f"==> checking {image.name} against its .sha256 and .bmap")
    check_image(image, bmap, expected, runner)
    if not confirm(disk):
        raise UserError("not confirmed; nothing was written", "add --yes to skip the question")
    mapped, unmapped = _size(bmap.mapped_bytes), _size(bmap.image_size - bmap.mapped_bytes)
    say(f"==> writing {mapped} of {image.name} to {device}, and zeros over the other {unmapped}")
    start = time.monotonic()
    try:
        target = os.open(device, os.O_WRONLY | os.O_EXCL)
    except PermissionError:
        raise UserError(
            f"no permission to write {device}", "run it as root: sudo picluster flash ..."
        ) from None
    except OSError as error:
        raise UserError(f"cannot open {device}: {error.strerror}", "unmount it and try again") from None
    try:
        with image_stream(image, runner) as stream:
            write_image(stream, bmap, target, progress_printer(bmap.image_size))
    except OSError as error:
        raise UserError(
            f"writing {device} failed: {error.strerror}", "the card may be failing or gone; try another one"
        ) from None
    finally:
        os.close(target)
    say(f"    written and synced in {time.monotonic() - start:.1f}s")
    say(f"==> reading back the image's {bmap.image_size} bytes")
    differing = read_back(device, bmap, expected)
    if differing:
        raise UserError(
            f"{device} does not hold what was written: {_listed(differing)} differ",
            "the card may be failing or fake; try another one",
        )
    checksum_file, node = _beside(image, ".sha256").name, image.name.split(".")[0]
    say(f"    read back all {bmap.image_size} bytes of {image.name}'s length from {device}: their SHA-256 is")
    say(f"    {checksum_file}'s, so the card holds {image.name} byte for byte; it is ready for {node}")
