"""What a build needs besides the cluster: where it writes, what it shows, how it starts programs."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from builder.progress import Reporter
from builder.run import Runner

Compression = Literal["zst", "xz"]


def default_cache() -> Path:
    """Where picluster caches what is costly to make or fetch (base images, downloads, stand-ins):
    PICLUSTER_CACHE, else the XDG cache folder's picluster/."""
    configured = os.environ.get("PICLUSTER_CACHE")
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "picluster"


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
