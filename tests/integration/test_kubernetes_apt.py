"""`packages: image`: the Kubernetes tools come from their apt repository, pinned and held.

pkgs.k8s.io cannot be reached from these machines, so the test serves a stand-in repository on
127.0.0.1: real .deb packages (made with dpkg-deb, in two releases so the pin has to choose),
indexed with dpkg-scanpackages and signed with a throw-away OpenPGP key. The base build's own
options then install from it with mmdebstrap, for this machine's architecture (no emulation).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from builder.errors import UserError
from builder.image import debian
from builder.spec.load import load_cluster
from tests.conftest import BUNDLED
from tests.integration.conftest import require_tools, serve_folder

pytestmark = pytest.mark.integration

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


def test_pinned_release_is_installed_and_held(repository: str, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mmdebstrap --mode=root needs root")
    require_tools("mmdebstrap")
    data = yaml.safe_load(BUNDLED.read_text())
    data["cluster"].update(packages="image", kubernetes_repository=repository)
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(data))
    cluster = load_cluster(path)

    folder = debian.write_kubernetes_sources(cluster, tmp_path / "kubernetes")
    sources = (folder / "kubernetes.sources").read_text()
    assert f"URIs: {repository}" in sources and "BEGIN PGP PUBLIC KEY BLOCK" in sources
    options, source = debian.kubernetes_options(folder)
    root = tmp_path / "root"
    suite = "trixie"
    subprocess.run(
        ["mmdebstrap", "--mode=root", "--variant=apt", "--include=kubeadm,kubelet,kubectl,cri-tools",
         *options, suite, str(root), *debian.apt_sources(suite), source],
        check=True, capture_output=True,
    )  # fmt: skip
    status = _dpkg_status(root)
    for name in ("kubeadm", "kubelet", "kubectl"):
        assert status[name]["Version"] == "1.34.2-1.1", f"{name}: pinned to the cluster's release"
        assert status[name]["Status"] == "hold ok installed", f"{name}: held"
    assert status["cri-tools"]["Version"] == "1.34.0-1.1"
    assert (root / "usr/bin/kubeadm").read_text().strip().endswith("kubeadm 1.34.2-1.1")
    assert (root / "etc/apt/preferences.d/kubernetes").read_text() == (
        "Package: kubeadm kubelet kubectl\nPin: version 1.34.2-*\nPin-Priority: 1001\n"
    )


def test_a_repository_without_a_key_is_a_clear_error(repository: str, tmp_path: Path) -> None:
    data = yaml.safe_load(BUNDLED.read_text())
    data["cluster"].update(packages="image", kubernetes_repository=repository + "missing/")
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError, match=r"cannot download .*Release\.key"):
        debian.write_kubernetes_sources(load_cluster(path), tmp_path / "kubernetes")


def _dpkg_status(root: Path) -> dict[str, dict[str, str]]:
    packages = {}
    for block in (root / "var/lib/dpkg/status").read_text().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and line[0] != " ")
        if "Package" in fields:
            packages[fields["Package"]] = fields
    return packages
