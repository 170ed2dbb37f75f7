"""What one node's card carries beyond the shared base: files with partition, path, mode and bytes.

Rendering produces a `NodePlan`; writers (the render tree, the image stamper) only carry it out.
Every file is owned by root; directories that do not exist yet are created 0755.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Literal

Partition = Literal["boot", "root"]
CARD_DISK_ID = "5049434c"  # "PICL"
"""The MBR disk id of every card, so a partition's PARTUUID is known before any image exists.

picluster's own layout is written with it (builder.image.layout), and adopting a downloaded
Raspberry Pi OS base pins the image's disk id to it (builder.image.raspios.adopt). Raspberry Pi OS
names its root partition on the kernel command line as `root=PARTUUID=<disk id>-02`, which the
kernel resolves without an initramfs; with the id pinned, render writes that line as it will be
on the card, and the golden cases and `picluster render` show the real bytes. The alternative, a
placeholder that stamping replaces with the id read from each base, would make the rendered
cmdline.txt differ from the card's, and the node's digest blind to it. Nothing else on the card
names the old id: picluster's fstab mounts by label."""


@dataclass(frozen=True)
class FileEntry:
    partition: Partition
    path: PurePosixPath
    """Relative to the partition's top, e.g. etc/hostname or cmdline.txt."""
    data: bytes = b""
    mode: int = 0o644
    link: str | None = None
    """A symlink's target; data and mode are then unused."""
    source: Path | None = None
    """A file whose bytes the card carries as they are, never read into memory (a container image
    archive, named by its digest); data is then unused."""
    mtime: int | None = None
    """Its modification time when that time means something (the clock seed); None: the
    build's time stamp, like every other file."""

    def time_stamp(self, epoch: int) -> int:
        """The modification time to give it in a build stamped `epoch`."""
        return epoch if self.mtime is None else self.mtime


@dataclass(frozen=True)
class NodePlan:
    node: str
    files: tuple[FileEntry, ...]

    def with_files(self, extra: tuple[FileEntry, ...]) -> NodePlan:
        return replace(self, files=self.files + extra)

    def with_mtime(self, path: PurePosixPath, mtime: int) -> NodePlan:
        """The same plan with one root file's modification time set."""
        return replace(
            self,
            files=tuple(
                replace(entry, mtime=mtime) if (entry.partition, entry.path) == ("root", path) else entry
                for entry in self.files
            ),
        )

    def digest(self) -> str:
        """A hash of everything the plan would write, to tell whether a node's card changed."""
        hasher = hashlib.sha256()
        for entry in self.files:
            hasher.update(f"{entry.partition}\0{entry.path}\0{entry.mode:o}\0{entry.link}\0".encode())
            hasher.update(
                hashlib.sha256(entry.data).digest() if entry.source is None else entry.source.name.encode()
            )
        return hasher.hexdigest()

    def file_digests(self) -> dict[str, str]:
        """Each file's own short hash, so a changed card can say which files changed."""
        return {
            f"{entry.partition}/{entry.path}": hashlib.sha256(
                f"{entry.mode:o}\0{entry.link}\0{entry.source and entry.source.name}\0".encode() + entry.data
            ).hexdigest()[:16]
            for entry in self.files
        }
