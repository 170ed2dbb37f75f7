"""What a build needs besides the cluster: where it writes, what it shows, how it starts programs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from builder.progress import Reporter
from builder.run import Runner

Compression = Literal["zst", "xz"]


@dataclass(frozen=True)
class BuildContext:
    images: Path
    """Where the node images go."""
    cache: Path
    """Where base images (and downloads) are cached, by the hash of their inputs."""
    reporter: Reporter
    runner: Runner
    compress: Compression | None = None
    rebuild_base: bool = False
