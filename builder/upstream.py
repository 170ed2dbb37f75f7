"""Upstream source archives picluster builds programs from, named in upstream.toml beside this file,
and the Go build that makes a program of one.

Each archive is an upstream tag with its dependencies vendored, so Debian's golang-go builds it
with no download. An archive is taken from the folder named by PICLUSTER_UPSTREAM when it is there,
otherwise downloaded once into the cache, and its tree checked before every use.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from builder.download import fetch_checked
from builder.errors import UserError
from builder.run import Runner

MANIFEST = Path(__file__).with_name("upstream.toml")
LOCAL = "PICLUSTER_UPSTREAM"


@dataclass(frozen=True)
class Source:
    name: str
    url: str
    tree_sha256: str


def sources() -> dict[str, Source]:
    manifest = tomllib.loads(MANIFEST.read_text())
    return {name: Source(name, entry["url"], entry["tree_sha256"]) for name, entry in manifest.items()}


def local_folder() -> Path | None:
    configured = os.environ.get(LOCAL)
    return Path(configured) if configured else None


def fetch_source(source: Source, local: Path | None, cache: Path) -> Path:
    """The source archive, from the local folder, the cache or its URL; always checked."""
    found = sorted(local.glob(f"{source.name}.tar.*")) if local else []
    cached = cache / "upstream" / "archives" / f"{source.name}.tar.gz"
    archive = found[0] if found else cached
    if archive.exists():
        _check(source, archive)
        return archive
    try:
        return fetch_checked(source.url, cached, lambda part: _check(source, part))
    except UserError as error:
        where = f"is not in {local} and " if local else f"is not in a folder named by {LOCAL} and "
        raise UserError(
            f"upstream source {source.name} {where}cannot be downloaded: {error.message}\n"
            f"  it is {source.url}, tree sha256 {source.tree_sha256} ({MANIFEST.name})",
            f"put {source.name}.tar.xz (git archive of the tag) or upstream's tarball in a folder "
            f"named by {LOCAL}, or give this machine network access",
        ) from None


def _check(source: Source, archive: Path) -> None:
    actual = tree_sha256(archive)
    if actual != source.tree_sha256:
        raise UserError(
            f"{archive} holds a tree with sha256 {actual}, not {source.tree_sha256}: not the "
            f"{source.name} named in {MANIFEST.name} ({source.url})",
            f"replace {archive} with {source.name} from {source.url}",
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
                    digest = hashlib.sha256(contents.read())
                else:
                    raise UserError(f"{archive}: {member.name} is neither a file nor a link",
                                    f"replace {archive} with the upstream tag's archive")  # fmt: skip
                lines.append(f"{kind} {path}\0{digest.hexdigest()}\n")
    except (tarfile.TarError, EOFError, OSError) as error:
        raise UserError(f"{archive} is not a whole tar archive: {error}",
                        f"replace {archive} with the upstream tag's archive") from None  # fmt: skip
    return hashlib.sha256("".join(sorted(lines)).encode()).hexdigest()


@dataclass(frozen=True)
class GoProgram:
    binary: str
    source: str
    """Its source archive's name in upstream.toml."""
    gopath_package: str
    """Where GOPATH mode expects the source (its import path), or "" for a module build."""
    build_args: tuple[str, ...]


def go_build(
    program: GoProgram, archive: Path, work: Path, binary: Path, runner: Runner, env: Mapping[str, str]
) -> None:
    """Build program from its unpacked archive in the scratch folder work, into binary.

    env adds to the Go settings here (GOOS, GOARCH, CGO_ENABLED for a cross build).
    """
    gopath = work / "gopath"
    settings = {
        "GOPATH": str(gopath),
        "GOCACHE": str(work / "gocache"),
        "GOPROXY": "off",  # everything is vendored; a download would mean a wrong archive
        "GOFLAGS": "",
        "GO111MODULE": "off" if program.gopath_package else "on",
        **env,
    }
    unpacked = work / "source"
    with tarfile.open(archive) as tar:
        tar.extractall(unpacked, filter="data")
    (source,) = unpacked.iterdir()  # the top folder, whatever its name (the tree hash ignores it)
    if program.gopath_package:
        moved = gopath / "src" / program.gopath_package
        moved.parent.mkdir(parents=True)
        source = source.rename(moved)
    runner.run(
        ["go", "build", "-o", binary, *program.build_args], cwd=source, env=settings, merge_stderr=True,
        hint=f"{archive.name} is checked, so this Go cannot build it: check `go version`",
    )  # fmt: skip
