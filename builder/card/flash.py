"""`picluster flash`: write a node's image to an SD card, only to a card, and check it landed.

Refuses anything that is not a whole, removable, unused block device at least as large as the
image; checks the image against its .sha256 first; writes only the block map's ranges; fsyncs;
drops the cached pages and reads every range back from the card against its SHA-256.
"""

from __future__ import annotations

import hashlib
import os
import stat
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TextIO

from builder.card.bmap_reader import BlockMap, parse_bmap
from builder.errors import UserError
from builder.image.build import IMAGE_SUFFIXES
from builder.run import Runner

CHUNK = 4 * 1024 * 1024
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
            return candidate
    raise UserError(f"no image for {node} in {images}", "build it first: make images")


@contextmanager
def image_stream(image: Path, runner: Runner) -> Iterator[IO[bytes]]:
    """The raw image's bytes, read in order; a compressed image is decompressed on the way."""
    command = DECOMPRESSORS.get(image.suffix)
    if command is None:
        with image.open("rb") as raw:
            yield raw
        return
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


def check_checksum(image: Path, runner: Runner) -> None:
    """Refuse an image whose bytes do not match its .sha256 (a bad download, a full disk)."""
    checksum_file = _beside(image, ".sha256")
    if not checksum_file.exists():
        raise UserError(f"{checksum_file} is missing", "rebuild the image: make images")
    expected = checksum_file.read_text().split()[0]
    digest = hashlib.sha256()
    with image_stream(image, runner) as stream:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
    if digest.hexdigest() != expected:
        raise UserError(
            f"{image} does not match {checksum_file.name} (damaged or changed since it was built)",
            "rebuild it: make images",
        )


def load_bmap(image: Path) -> BlockMap:
    bmap_file = _beside(image, ".bmap")
    if not bmap_file.exists():
        raise UserError(f"{bmap_file} is missing", "rebuild the image: make images")
    return parse_bmap(bmap_file.read_text(), str(bmap_file))


Progress = Callable[[int], None]


def write_mapped(stream: IO[bytes], bmap: BlockMap, target: int, progress: Progress) -> None:
    """Copy the mapped ranges from the image stream to the target file descriptor, then fsync."""
    position = 0
    done = 0
    for mapped in bmap.ranges:
        _skip(stream, mapped.start - position)
        offset = mapped.start
        while offset < mapped.end:
            chunk = stream.read(min(CHUNK, mapped.end - offset))
            if not chunk:
                raise UserError("the image ended before its block map did", "rebuild it: make images")
            os.pwrite(target, chunk, offset)
            offset += len(chunk)
            done += len(chunk)
            progress(done)
        position = mapped.end
    os.fsync(target)


def _skip(stream: IO[bytes], count: int) -> None:
    if stream.seekable():
        stream.seek(count, os.SEEK_CUR)
        return
    while count > 0:
        count -= len(stream.read(min(CHUNK, count)) or b"\0" * count)


def read_back(target: Path, bmap: BlockMap) -> list[str]:
    """Ranges whose bytes on the target differ from the block map's checksums. The page cache
    is dropped first, so the bytes come from the card, not from what was just written."""
    bad = []
    handle = os.open(target, os.O_RDONLY)
    try:
        os.posix_fadvise(handle, 0, 0, os.POSIX_FADV_DONTNEED)
        for mapped in bmap.ranges:
            digest = hashlib.sha256()
            offset = mapped.start
            while offset < mapped.end:
                chunk = os.pread(handle, min(CHUNK, mapped.end - offset), offset)
                if not chunk:
                    break
                digest.update(chunk)
                offset += len(chunk)
            if digest.hexdigest() != mapped.sha256:
                bad.append(f"bytes {mapped.start}-{mapped.end}")
    finally:
        os.close(handle)
    return bad


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
                f"\r    [{'#' * step:<40}] {fraction:4.0%} {rate:6.1f} MiB/s", end=end, file=out, flush=True
            )
        else:
            print(f"    {fraction:4.0%} written, {rate:.1f} MiB/s", file=out, flush=True)

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
    bmap = load_bmap(image)
    disk = inspect_disk(device)
    reasons = refusals(disk, bmap.image_size, uses(disk), force_non_removable)
    if reasons:
        raise UserError(
            "refusing to write: " + "; ".join(reasons),
            "check the device: lsblk -o NAME,SIZE,RM,MOUNTPOINTS,MODEL",
        )
    say(f"==> checking {image.name} against its .sha256")
    check_checksum(image, runner)
    if not confirm(disk):
        raise UserError("not confirmed; nothing was written", "add --yes to skip the question")
    say(f"==> writing {_size(bmap.mapped_bytes)} of {image.name} to {device} (the mapped blocks only)")
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
            write_mapped(stream, bmap, target, progress_printer(bmap.mapped_bytes))
    finally:
        os.close(target)
    say(f"    written and synced in {time.monotonic() - start:.1f}s")
    say("==> reading it back")
    bad = read_back(device, bmap)
    if bad:
        raise UserError(
            f"{device} does not hold what was written ({len(bad)} ranges differ: {bad[0]}, ...)",
            "the card may be failing or fake; try another one",
        )
    say(f"    {device} holds {image.name} exactly; it is ready for {image.name.split('.')[0]}")
