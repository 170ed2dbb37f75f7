"""The real upstream programs the cards run, built from the upstream source archives named in
upstream.toml beside this file.

Each archive is an upstream tag with its dependencies vendored (see shared/upstream/README.md), so
Debian's golang-go builds it with no download. An archive is taken from a local folder when it is
there, otherwise downloaded once into the cache, and its tree checked before every use. A build is
cached under the project's cache folder by that tree's hash, and published by renaming a finished
temporary folder, so an interrupted build never leaves a half-written binary behind.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tarfile
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

from builder.download import fetch_checked
from builder.errors import UserError
from tests.conftest import REPO

MANIFEST = Path(__file__).with_name("upstream.toml")
LOCAL = "PICLUSTER_UPSTREAM"
SHARED = REPO.parent / "shared/upstream"
"""In CI a copy of shared/ may sit beside the clone, as it does beside the worktrees here."""


@dataclass(frozen=True)
class Source:
    name: str
    url: str
    tree_sha256: str


def sources() -> dict[str, Source]:
    manifest = tomllib.loads(MANIFEST.read_text())
    return {name: Source(name, entry["url"], entry["tree_sha256"]) for name, entry in manifest.items()}


def local_folder() -> Path:
    configured = os.environ.get(LOCAL)
    return Path(configured) if configured else SHARED


def fetch_source(source: Source, local: Path, cache: Path) -> Path:
    """The source archive, from the local folder, the cache or its URL; always checked."""
    found = sorted(local.glob(f"{source.name}.tar.*"))
    cached = cache / "upstream" / "archives" / f"{source.name}.tar.gz"
    archive = found[0] if found else cached
    if archive.exists():
        _check(source, archive)
        return archive
    try:
        return fetch_checked(source.url, cached, lambda part: _check(source, part))
    except UserError as error:
        raise BuildError(
            f"upstream source {source.name} is not in {local} and cannot be downloaded: {error.message}\n"
            f"  it is {source.url}, tree sha256 {source.tree_sha256} ({MANIFEST.relative_to(REPO)})\n"
            f"  fix: put {source.name}.tar.xz (git archive of the tag) or upstream's tarball in a folder "
            f"named by {LOCAL}, or give this machine network access"
        ) from None


def _check(source: Source, archive: Path) -> None:
    actual = tree_sha256(archive)
    if actual != source.tree_sha256:
        raise BuildError(
            f"{archive} holds a tree with sha256 {actual}, not {source.tree_sha256}: not the "
            f"{source.name} named in {MANIFEST.name} ({source.url})"
        )


def tree_sha256(archive: Path) -> str:
    """The hash over an archive's files that upstream.toml describes, whatever packed them."""
    lines = []
    try:
        with tarfile.open(archive) as tar:
            for member in tar:
                path = member.name.partition("/")[2]
                if member.isdir():
                    continue
                if member.issym():
                    kind, digest = "link", hashlib.sha256(member.linkname.encode())
                elif member.isfile() and (contents := tar.extractfile(member)):
                    kind = "exec" if member.mode & 0o111 else "file"
                    digest = hashlib.file_digest(contents, "sha256")
                else:
                    raise BuildError(f"{archive}: {member.name} is neither a file nor a link")
                lines.append(f"{kind} {path}\0{digest.hexdigest()}\n")
    except (tarfile.TarError, EOFError, OSError) as error:
        raise BuildError(f"{archive} is not a whole tar archive: {error}") from None
    return hashlib.sha256("".join(sorted(lines)).encode()).hexdigest()


@dataclass(frozen=True)
class Program:
    binary: str
    source: str
    """Its source archive's name in upstream.toml."""
    gopath_package: str
    """Where GOPATH mode expects the source (its import path), or "" for a module build."""
    build_args: tuple[str, ...]


FLANNELD = Program(
    "flanneld", "flannel-v0.10.0", "github.com/coreos/flannel",
    # the version string flanneld logs and reports, as its Makefile's dist/flanneld target sets it
    ("-ldflags", "-X github.com/coreos/flannel/version.Version=v0.10.0", "."),
)  # fmt: skip
FLANNEL_CNI = Program(
    "flannel", "cni-plugins-v0.9.1", "",
    ("-mod=vendor", "./plugins/meta/flannel"),
)  # fmt: skip
CNITOOL = Program("cnitool", "cni-v1.1.2", "github.com/containernetworking/cni", ("./cnitool",))


def ensure_built(program: Program, cache: Path) -> Path:
    """The program's binary, built once per source tree; raises BuildError with what went wrong."""
    source = sources()[program.source]
    folder = cache / "upstream" / source.tree_sha256[:16]
    binary = folder / "bin" / program.binary
    if binary.exists():
        return binary
    archive = fetch_source(source, local_folder(), cache)
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
    unpacked = work / "source"
    with tarfile.open(archive) as tar:
        tar.extractall(unpacked, filter="data")
    (source,) = unpacked.iterdir()  # the top folder, whatever its name (the tree hash ignores it)
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
