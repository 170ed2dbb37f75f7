"""SD card images: the disk layout, assembling the base image, and stamping a node onto a copy.

Neither step mounts anything or needs a loop device: filesystems are made straight inside the
image file at their partition's offset (mkfs.vfat --offset, mke2fs -E offset), and a node's files
are written into them in place (mtools for the FAT boot partition, debugfs for the ext4 root).

Layout, as Debian's raspi images but with a smaller boot partition: an MBR; the FAT32 boot
partition RASPIFIRM from 4 MiB to 260 MiB (twice what a kernel update needs), mounted at
/boot/firmware; the ext4 root RASPIROOT after it, sized to its content plus headroom and grown
to fill the card on first boot. A small image is quicker to copy, hash and flash.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator, Set
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from builder.plan import FileEntry, NodePlan
from builder.run import run

MIB = 1024 * 1024
SECTOR = 512
BOOT_OFFSET = 4 * MIB
ROOT_OFFSET = 260 * MIB
BOOT_LABEL = "RASPIFIRM"
ROOT_LABEL = "RASPIROOT"
DISK_ID = "0x5049434c"  # "PICL"
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


def layout_for(root_content_bytes: int) -> Layout:
    """picluster's own layout, with a root partition that holds the content plus headroom."""
    wanted = int(root_content_bytes * 1.15) + ROOT_HEADROOM
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


# --- the base image --------------------------------------------------------------------------


def assemble(root_dir: Path, boot_dir: Path, image: Path, epoch: int) -> Layout:
    """Make a partitioned image from a root tree and a separate boot tree (already moved out)."""
    layout = layout_for(tree_size(root_dir))
    env = tool_env(epoch)
    pin_mtimes(boot_dir, epoch)
    pin_mtimes(root_dir, epoch)
    with image.open("wb") as handle:
        handle.truncate(layout.image_size)
    run(["sfdisk", "--quiet", str(image)], input=layout.sfdisk_script().encode())
    boot_kib = (layout.root_offset - layout.boot_offset) // 1024
    run(
        ["mkfs.vfat", "-F", "32", "-s", "2", "-n", BOOT_LABEL, "-i", BOOT_VOLUME_ID,
         "--offset", str(layout.boot_offset // SECTOR), str(image), str(boot_kib)],
        env=env,
    )  # fmt: skip
    sources = sorted(str(path) for path in boot_dir.iterdir())
    run(["mcopy", "-s", "-m", "-i", layout.boot_target(image), *sources, "::/"], env=env)
    run(
        [
            "mke2fs", "-q", "-t", "ext4", "-b", "4096", "-L", ROOT_LABEL, "-U", ROOT_UUID, "-J", "size=32",
            "-E", f"offset={layout.root_offset},root_owner=0:0,hash_seed={ROOT_HASH_SEED}",
            "-d", str(root_dir), str(image), f"{(layout.image_size - layout.root_offset) // 1024}k",
        ],
        env=env,
    )  # fmt: skip
    return layout


def tree_size(top: Path) -> int:
    total = 0
    for folder, _, names in os.walk(top):
        for name in names:
            total += os.lstat(os.path.join(folder, name)).st_size
    return total


def pin_mtimes(top: Path, epoch: int) -> None:
    for folder, dirs, names in os.walk(top):
        for name in dirs + names:
            os.utime(os.path.join(folder, name), (epoch, epoch), follow_symlinks=False)


def list_tree(top: Path) -> tuple[list[str], list[str]]:
    """The directories and the other entries of a tree, as sorted paths relative to it."""
    dirs, others = [], []
    for folder, subdirs, names in os.walk(top):
        relative = Path(folder).relative_to(top)
        for name in subdirs:
            if os.path.islink(os.path.join(folder, name)):
                others.append((relative / name).as_posix())
            else:
                dirs.append((relative / name).as_posix())
        others.extend((relative / name).as_posix() for name in names)
    return sorted(dirs), sorted(others)


# --- stamping a node -------------------------------------------------------------------------


def stamp(base: BaseImage, plan: NodePlan, image: Path, epoch: int) -> None:
    """Copy the base image to `image` and write the node's files into it."""
    run(["cp", "--reflink=auto", "--sparse=always", str(base.image), str(image)])
    env = tool_env(epoch)
    with tempfile.TemporaryDirectory(prefix="picluster-stamp-") as scratch:
        staged = stage_files(plan.files, Path(scratch), epoch)
        boot = [staged[entry] for entry in plan.files if entry.partition == "boot"]
        if boot:
            run(["mcopy", "-o", "-m", "-i", base.layout.boot_target(image), *map(str, boot), "::/"], env=env)
        root_entries = [entry for entry in plan.files if entry.partition == "root"]
        script = Path(scratch) / "debugfs.cmds"
        script.write_text(debugfs_script(root_entries, staged, base.dirs, base.others, epoch))
        # debugfs fsyncs the image when it closes it, which forces the whole fresh copy out to
        # disk (0.7 s a node here); eatmydata drops that fsync. The image is no less durable
        # than any copy: the build records a node only after its image is complete, and its
        # SHA-256 is checked before it is flashed.
        output = run(
            ["eatmydata", "debugfs", "-w", "-f", str(script), base.layout.root_target(image)],
            env=env,
            merge_stderr=True,
        )
    complaints = debugfs_errors(output)
    if complaints:
        raise RuntimeError(f"debugfs could not write {plan.node}'s files: {complaints}")


def stage_files(entries: Iterable[FileEntry], folder: Path, epoch: int) -> dict[FileEntry, Path]:
    """Put each file's bytes in a scratch file for the tools to copy from."""
    staged = {}
    for index, entry in enumerate(entries):
        if entry.link is not None:
            continue
        name = entry.path.name if entry.partition == "boot" else str(index)
        path = folder / entry.partition / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(entry.data)
        os.utime(path, (entry.time_stamp(epoch),) * 2)
        staged[entry] = path
    return staged


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
