"""An SD card image's layout, and the debugfs commands that write a node's files into one. Pure.

Layout, as Debian's raspi images but with a smaller boot partition: an MBR; the FAT32 boot
partition RASPIFIRM from 4 MiB to 260 MiB (twice what a kernel update needs), mounted at
/boot/firmware; the ext4 root RASPIROOT after it, sized to its content plus headroom and grown
to fill the card on first boot. A small image is quicker to copy, hash and flash.
"""

from __future__ import annotations

from collections.abc import Iterator, Set
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from builder.render.plan import CARD_DISK_ID, FileEntry

MIB = 1024 * 1024
SECTOR = 512
BOOT_OFFSET = 4 * MIB
ROOT_OFFSET = 260 * MIB
BOOT_LABEL = "RASPIFIRM"
ROOT_LABEL = "RASPIROOT"
DISK_ID = f"0x{CARD_DISK_ID}"
BOOT_VOLUME_ID = "5049434c"
ROOT_UUID = "3d0f5c2a-8f1e-4b7c-9a61-706963727374"
ROOT_HASH_SEED = "7a1c52e4-2b9d-4f08-8e3a-706963686173"
ROOT_HEADROOM = 256 * MIB
"""Free space on the root filesystem before first boot grows it to the card's size."""


@dataclass(frozen=True)
class Layout:
    """Where the two partitions of an image start, and how long the image is."""

    boot_offset: int
    root_offset: int
    image_size: int

    def sfdisk_script(self) -> str:
        boot_sectors = (self.root_offset - self.boot_offset) // SECTOR
        root_sectors = (self.image_size - self.root_offset) // SECTOR
        boot = f"start={self.boot_offset // SECTOR}, size={boot_sectors}, type=c"
        root = f"start={self.root_offset // SECTOR}, size={root_sectors}, type=83"
        return f"label: dos\nlabel-id: {DISK_ID}\nunit: sectors\n\n{boot}\n{root}\n"

    def boot_target(self, image: Path) -> str:
        """The mtools name of the boot partition inside an image file."""
        return f"{image}@@{self.boot_offset}"

    def root_target(self, image: Path) -> str:
        """The e2fsprogs name of the root partition inside an image file."""
        return f"{image}?offset={self.root_offset}"


@dataclass(frozen=True)
class BaseImage:
    """A cached base image, its layout, and what its root filesystem already holds."""

    image: Path
    key: str
    built_at: int
    layout: Layout
    dirs: frozenset[str]
    others: frozenset[str]


def layout_for(root_content_bytes: int, room: int = 0) -> Layout:
    """picluster's own layout, with a root partition that holds the content plus headroom, and
    `room` bytes more for what every card adds (container images)."""
    wanted = int(root_content_bytes * 1.15) + ROOT_HEADROOM + room
    root_size = -(-wanted // (4 * MIB)) * 4 * MIB
    return Layout(BOOT_OFFSET, ROOT_OFFSET, ROOT_OFFSET + root_size)


def tool_env(epoch: int) -> dict[str, str]:
    """Pinned clocks for the filesystem tools, so the same inputs give the same bytes."""
    return {
        "E2FSPROGS_FAKE_TIME": str(epoch),
        "SOURCE_DATE_EPOCH": str(epoch),
        "TZ": "UTC",
        "MTOOLS_SKIP_CHECK": "1",
    }


def debugfs_script(entries: list[FileEntry], staged: dict[FileEntry, Path], base_dirs: Set[str],
                   base_others: Set[str], epoch: int) -> str:  # fmt: skip
    """debugfs commands that make the root filesystem hold exactly these entries.

    Every command is one that must succeed given what the base holds (no `rm` of a missing file,
    no `mkdir` of an existing folder), so any complaint from debugfs is a real error.
    """
    lines = []
    made: set[str] = set()
    for entry in entries:
        path = entry.path.as_posix()
        _check_path(path)
        for parent in _parents(entry.path):
            if parent not in base_dirs and parent not in made:
                lines += [f"mkdir /{parent}", *_attributes(parent, 0o40755, epoch)]
                made.add(parent)
        if path in base_others:
            lines.append(f"rm /{path}")
        if entry.link is not None:
            lines += [f"symlink /{path} {entry.link}", *_times(path, epoch)]
        else:
            lines += [
                f"write {staged[entry]} /{path}",
                *_attributes(path, 0o100000 | entry.mode, entry.time_stamp(epoch)),
            ]
    return "\n".join(lines) + "\n"


def debugfs_errors(output: str) -> list[str]:
    """debugfs reports problems as lines that are not its echo of a command or inode notes."""
    return [
        line
        for line in output.splitlines()
        if line.strip() and not line.startswith(("debugfs ", "debugfs: ", "Allocated inode:"))
    ]


def _parents(path: PurePosixPath) -> Iterator[str]:
    for parent in reversed(path.parents):
        if str(parent) != ".":
            yield parent.as_posix()


def _attributes(path: str, mode: int, epoch: int) -> list[str]:
    return [f"sif /{path} mode 0{mode:o}", f"sif /{path} uid 0", f"sif /{path} gid 0", *_times(path, epoch)]


def _times(path: str, epoch: int) -> list[str]:
    # "@" makes debugfs read seconds; a bare number that happens to parse as YYYYMMDD... is a date
    return [f"sif /{path} {field} @{epoch}" for field in ("atime", "mtime", "ctime", "crtime")]


def _check_path(path: str) -> None:
    if any(character.isspace() or character in "\"'\\" for character in path):
        raise ValueError(f"{path!r}: debugfs scripts cannot carry spaces or quotes in paths")
