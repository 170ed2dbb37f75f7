"""The real upstream programs the cards run, built from the source archives in shared/upstream/.

Each archive is `git archive` of an upstream tag with its dependencies vendored (see
shared/upstream/README.md), so Debian's golang-go builds it with no download. A build is cached
under the project's cache folder by the archive's sha256, and published by renaming a finished
temporary folder, so an interrupted build never leaves a half-written binary behind.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import REPO

UPSTREAM = REPO.parent / "shared/upstream"
"""In CI a copy of shared/ sits beside the clone, as it does beside the worktrees here."""


@dataclass(frozen=True)
class Program:
    binary: str
    archive: str
    top: str
    """The archive's top folder."""
    gopath_package: str
    """Where GOPATH mode expects the source (its import path), or "" for a module build."""
    build_args: tuple[str, ...]


FLANNELD = Program(
    "flanneld", "flannel-v0.10.0.tar.xz", "flannel-0.10.0", "github.com/coreos/flannel",
    # the version string flanneld logs and reports, as its Makefile's dist/flanneld target sets it
    ("-ldflags", "-X github.com/coreos/flannel/version.Version=v0.10.0", "."),
)  # fmt: skip
FLANNEL_CNI = Program(
    "flannel", "cni-plugins-v0.9.1.tar.xz", "plugins-0.9.1", "",
    ("-mod=vendor", "./plugins/meta/flannel"),
)  # fmt: skip
CNITOOL = Program(
    "cnitool", "cni-v1.1.2.tar.xz", "cni-1.1.2", "github.com/containernetworking/cni", ("./cnitool",)
)


def ensure_built(program: Program, cache: Path) -> Path:
    """The program's binary, built once per archive content; raises BuildError with go's output."""
    archive = UPSTREAM / program.archive
    if not archive.is_file():
        raise BuildError(f"{archive} is missing: shared/upstream/ must sit beside the clone")
    with archive.open("rb") as file:
        folder = cache / "upstream" / hashlib.file_digest(file, "sha256").hexdigest()[:16]
    binary = folder / "bin" / program.binary
    if binary.exists():
        return binary
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".build-") as work:
        output = Path(work) / "out"
        _build(program, archive, Path(work), output / "bin" / program.binary)
        try:
            output.rename(folder)
        except OSError:
            if not binary.exists():  # not a concurrent build that got there first
                raise
    return binary


class BuildError(Exception):
    pass


def _build(program: Program, archive: Path, work: Path, binary: Path) -> None:
    gopath = work / "gopath"
    env = {
        **os.environ,
        "GOPATH": str(gopath),
        "GOCACHE": str(work / "gocache"),
        "GOPROXY": "off",  # everything is vendored; a download would mean a wrong archive
        "GOFLAGS": "",
        # flannel's Makefile builds amd64 with cgo (its udp backend is C there) and arm64, the
        # cards' flanneld, without: the default here, CGO_ENABLED=1, is the one that builds.
        "GO111MODULE": "off" if program.gopath_package else "on",
    }
    with tarfile.open(archive) as tar:
        tar.extractall(work, filter="data")
    source = work / program.top
    if program.gopath_package:
        moved = gopath / "src" / program.gopath_package
        moved.parent.mkdir(parents=True)
        source = source.rename(moved)
    built = subprocess.run(
        ["go", "build", "-o", str(binary), *program.build_args],
        cwd=source, env=env, capture_output=True, text=True,
    )  # fmt: skip
    if built.returncode != 0:
        raise BuildError(f"go build of {program.binary} from {archive.name} failed:\n{built.stderr}")
