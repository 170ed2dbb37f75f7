"""A stand-in for pkgs.k8s.io, which these machines cannot reach: a flat apt repository served on
127.0.0.1 holding real .deb packages (made with dpkg-deb) of kubeadm, kubelet and kubectl in two
releases, indexed with dpkg-scanpackages and signed with a throw-away OpenPGP key, as the real one
is signed. The programs in the packages only say their name and release."""

from __future__ import annotations

import gzip
import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.host import require_tools, serve_folder

RELEASES = {"kubeadm": ["1.34.1-1.1", "1.34.2-1.1"], "kubelet": ["1.34.1-1.1", "1.34.2-1.1"],
            "kubectl": ["1.34.1-1.1", "1.34.2-1.1"], "cri-tools": ["1.34.0-1.1"]}  # fmt: skip


def make_deb(name: str, version: str, out: Path) -> None:
    tree = out / f"{name}_{version}"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "usr/bin").mkdir(parents=True)
    (tree / "DEBIAN/control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: picluster tests\n"
        f"Description: stand-in {name} for tests\n"
    )
    program = tree / "usr/bin" / name
    program.write_text(f"#!/bin/sh\necho stand-in {name} {version}\n")
    program.chmod(0o755)
    if name == "kubelet":  # as the real package, a unit systemd runs it from
        unit = tree / "usr/lib/systemd/system/kubelet.service"
        unit.parent.mkdir(parents=True)
        unit.write_text(
            f"[Unit]\nDescription=stand-in kubelet {version}\n\n[Service]\nExecStart=/usr/bin/kubelet\n"
        )
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(tree), str(out)], check=True,
                   capture_output=True)  # fmt: skip


def make_repository(folder: Path, gnupg: Path) -> None:
    """A flat repository (suite "/") like pkgs.k8s.io's, signed like it."""
    for name, versions in RELEASES.items():
        for version in versions:
            make_deb(name, version, folder)
    packages = subprocess.run(["dpkg-scanpackages", "--multiversion", "."], cwd=folder,
                              capture_output=True, check=True).stdout  # fmt: skip
    (folder / "Packages").write_bytes(packages)
    (folder / "Packages.gz").write_bytes(gzip.compress(packages, mtime=0))
    sums = [
        f" {hashlib.sha256((folder / n).read_bytes()).hexdigest()} {(folder / n).stat().st_size} {n}"
        for n in ("Packages", "Packages.gz")
    ]
    (folder / "Release").write_text(
        "Origin: picluster-test\nLabel: picluster-test\nDate: Thu, 01 Jan 2026 00:00:00 UTC\n"
        "SHA256:\n" + "\n".join(sums) + "\n"
    )
    env = {**os.environ, "GNUPGHOME": str(gnupg)}
    gpg = ["gpg", "--batch", "--yes", "--quiet", "--pinentry-mode", "loopback", "--passphrase", ""]
    subprocess.run([*gpg, "--quick-gen-key", "picluster test repository", "ed25519", "sign", "never"],
                   env=env, check=True, capture_output=True)  # fmt: skip
    subprocess.run([*gpg, "--clearsign", "-o", str(folder / "InRelease"), str(folder / "Release")],
                   env=env, check=True, capture_output=True)  # fmt: skip
    key = subprocess.run([*gpg, "--armor", "--export"], env=env, check=True, capture_output=True).stdout
    (folder / "Release.key").write_bytes(key)


@pytest.fixture
def repository(tmp_path: Path) -> Iterator[str]:
    require_tools("dpkg-deb", "dpkg-scanpackages", "gpg")
    folder = tmp_path / "repo"
    folder.mkdir()
    gnupg = tmp_path / "gnupg"
    gnupg.mkdir(mode=0o700)
    make_repository(folder, gnupg)

    with serve_folder(folder) as url:
        yield url + "/"
