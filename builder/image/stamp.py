"""Writing SD card images: assembling the base image from a tree, and stamping a node onto a copy.

Neither step mounts anything or needs a loop device: filesystems are made straight inside the
image file at their partition's offset (mkfs.vfat --offset, mke2fs -E offset), and a node's files
are written into them in place (mtools for the FAT boot partition, debugfs for the ext4 root).
The layout and the debugfs commands are builder.image.layout's.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from builder.image.layout import (
    BOOT_LABEL,
    BOOT_VOLUME_ID,
    ROOT_HASH_SEED,
    ROOT_LABEL,
    ROOT_UUID,
    SECTOR,
    BaseImage,
    Layout,
    debugfs_errors,
    debugfs_script,
    layout_for,
    tool_env,
)
from builder.render.plan import FileEntry, NodePlan
from builder.run import Runner


def assemble(root_dir: Path, boot_dir: Path, image: Path, epoch: int, runner: Runner, room: int) -> Layout:
    """Make a partitioned image from a root tree and a separate boot tree (already moved out),
    its root filesystem with `room` bytes free besides the usual headroom."""
    layout = layout_for(tree_size(root_dir), room)
    env = tool_env(epoch)
    pin_mtimes(boot_dir, epoch)
    pin_mtimes(root_dir, epoch)
    with image.open("wb") as handle:
        handle.truncate(layout.image_size)
    runner.run(["sfdisk", "--quiet", str(image)], input=layout.sfdisk_script().encode())
    boot_kib = (layout.root_offset - layout.boot_offset) // 1024
    runner.run(
        ["mkfs.vfat", "-F", "32", "-s", "2", "-n", BOOT_LABEL, "-i", BOOT_VOLUME_ID,
         "--offset", str(layout.boot_offset // SECTOR), str(image), str(boot_kib)],
        env=env,
    )  # fmt: skip
    sources = sorted(str(path) for path in boot_dir.iterdir())
    runner.run(["mcopy", "-s", "-m", "-i", layout.boot_target(image), *sources, "::/"], env=env)
    runner.run(
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


STAGED = ".stamp-"
"""In a staging folder's name (.<node>.stamp-XXXXXXXX, 0700, beside the node's image)."""
OLD_STAGING = "picluster-stamp-*"
OLD_STAGING_FILES = {"boot", "root", "debugfs.cmds"}
OLD_STAGING_AGE_S = 3600


def remove_staged(images: Path) -> None:
    """What killed builds left staged: in the images folder (a build holds its lock, so none of
    these is in use), and in /tmp, where earlier versions staged, once an hour old (such a
    version may still run) and only as they made them."""
    for leftover in images.glob(f".*{STAGED}*"):
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
    for folder in Path(tempfile.gettempdir()).glob(OLD_STAGING):
        if folder.is_symlink() or not folder.is_dir():
            continue
        about = folder.lstat()
        if about.st_uid != os.getuid() or time.time() - about.st_mtime < OLD_STAGING_AGE_S:
            continue
        if {path.name for path in folder.iterdir()} <= OLD_STAGING_FILES:
            shutil.rmtree(folder, ignore_errors=True)


def stamp(base: BaseImage, plan: NodePlan, image: Path, epoch: int, runner: Runner) -> None:
    """Copy the base image to `image` and write the node's files into it."""
    # cp makes a new file twice as fast as it fills an existing empty one (0.18 against 0.38 s
    # for the base here), such as the build's reserved scratch name
    image.unlink(missing_ok=True)
    runner.run(["cp", "--reflink=auto", "--sparse=always", str(base.image), str(image)])
    env = tool_env(epoch)
    # staged beside the image, not in /tmp: a control plane's files include the cluster's CA keys,
    # and a build killed here leaves them where the next build clears them (STAGED)
    with tempfile.TemporaryDirectory(dir=image.parent, prefix=f".{plan.node}{STAGED}") as scratch:
        staged = stage_files(plan.files, Path(scratch), epoch)
        boot = [staged[entry] for entry in plan.files if entry.partition == "boot"]
        if boot:
            runner.run(
                ["mcopy", "-o", "-m", "-i", base.layout.boot_target(image), *map(str, boot), "::/"], env=env
            )
        root_entries = [entry for entry in plan.files if entry.partition == "root"]
        script = Path(scratch) / "debugfs.cmds"
        script.write_text(debugfs_script(root_entries, staged, base.dirs, base.others, epoch))
        # debugfs fsyncs the image when it closes it, which forces the whole fresh copy out to
        # disk (0.7 s a node here); eatmydata drops that fsync. The image is no less durable
        # than any copy: the build records a node only after its image is complete, and its
        # SHA-256 is checked before it is flashed.
        output = runner.run(
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
        if entry.source is not None:
            staged[entry] = entry.source
            continue
        name = entry.path.name if entry.partition == "boot" else str(index)
        path = folder / entry.partition / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(entry.data)
        os.utime(path, (entry.time_stamp(epoch),) * 2)
        staged[entry] = path
    return staged
