"""The real upstream programs the lab runs on this machine, built from the upstream source archives
(builder.upstream) for this machine's architecture, as flannel's Makefile builds amd64: with cgo.

The tests take the archives from shared/upstream/ beside the clone when PICLUSTER_UPSTREAM is not
set (tests/conftest.py). A build is cached under the project's cache folder by its
tree's hash, and published by renaming a finished temporary folder, so an interrupted build never
leaves a half-written binary behind.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from builder.image.flannel_image import FLANNELD
from builder.run import Runner
from builder.upstream import GoProgram, fetch_source, go_build, local_folder, sources
from tests.support.project import REPO

SHARED = REPO.parent / "shared/upstream"
"""In CI a copy of shared/ may sit beside the clone, as it does beside the worktrees here."""

FLANNEL_CNI = GoProgram(
    "flannel", "cni-plugins-v0.9.1", "",
    ("-mod=vendor", "./plugins/meta/flannel"),
)  # fmt: skip
CNITOOL = GoProgram("cnitool", "cni-v1.1.2", "github.com/containernetworking/cni", ("./cnitool",))
LAB_PROGRAMS = (FLANNELD, FLANNEL_CNI, CNITOOL)


def ensure_built(program: GoProgram, cache: Path) -> Path:
    """The program's binary, built once per source tree; raises UserError with what went wrong."""
    source = sources()[program.source]
    folder = cache / "upstream" / source.tree_sha256[:16]
    binary = folder / "bin" / program.binary
    if binary.exists():
        return binary
    archive = fetch_source(source, local_folder(), cache)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".build-") as work:
        output = Path(work) / "out"
        # flannel's Makefile builds amd64 with cgo (its udp backend is C there): this machine's
        # default, CGO_ENABLED=1
        go_build(program, archive, Path(work), output / "bin" / program.binary, Runner(), {})
        try:
            output.rename(folder)
        except OSError:
            if not binary.exists():  # not a concurrent build that got there first
                raise
    return binary
