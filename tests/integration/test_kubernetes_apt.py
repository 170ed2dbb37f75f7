"""`packages: image`: the Kubernetes tools come from their apt repository, pinned and held.

pkgs.k8s.io cannot be reached from these machines, so the test serves a stand-in repository on
127.0.0.1: real .deb packages (made with dpkg-deb, in two releases so the pin has to choose),
indexed with dpkg-scanpackages and signed with a throw-away OpenPGP key. The base build's own
options then install from it with mmdebstrap, for this machine's architecture (no emulation).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from builder.errors import UserError
from builder.image import debian
from builder.spec.load import load_cluster
from tests.support.apt_repository import repository
from tests.support.host import require_tools
from tests.support.project import BUNDLED

pytestmark = pytest.mark.integration

__all__ = ["repository"]


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
