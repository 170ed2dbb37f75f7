"""What `picluster images NODE` lists: kubeadm's own list for the exact release, by role, then
flannel's; the card's containerd sandbox image is kubeadm's pause of that release."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from builder.cli import main
from builder.render.images import node_images
from builder.render.node import render_node
from builder.spec.load import load_cluster
from builder.spec.model import Cluster
from tests.support.project import fixed_secrets


def cluster_at(version: str, data: dict[str, Any], tmp_path: Path) -> Cluster:
    data["cluster"]["kubernetes"] = version
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_cluster(path)


def listed(version: str, node: str, data: dict[str, Any], tmp_path: Path) -> list[str]:
    cluster = cluster_at(version, data, tmp_path)
    return list(node_images(cluster, next(n for n in cluster.nodes if n.name == node)).references)


def test_a_control_plane_gets_kubeadms_seven_in_its_order_then_flannels(
    bundled_data: dict[str, Any], tmp_path: Path
) -> None:
    """`kubeadm config images list --kubernetes-version v1.34.2` (day2-facts §E, §F)."""
    assert listed("1.34.2", "cp1", bundled_data, tmp_path) == [
        "registry.k8s.io/kube-apiserver:v1.34.2",
        "registry.k8s.io/kube-controller-manager:v1.34.2",
        "registry.k8s.io/kube-scheduler:v1.34.2",
        "registry.k8s.io/kube-proxy:v1.34.2",
        "registry.k8s.io/coredns/coredns:v1.12.1",
        "registry.k8s.io/pause:3.10.1",
        "registry.k8s.io/etcd:3.6.5-0",
        "ghcr.io/flannel-io/flannel-cni-plugin:v1.7.1-flannel1",
        "localhost/picluster/flannel:v0.10.0-arm64",
    ]


def test_a_worker_gets_no_control_plane_image(bundled_data: dict[str, Any], tmp_path: Path) -> None:
    assert listed("1.34.2", "w1", bundled_data, tmp_path) == [
        "registry.k8s.io/kube-proxy:v1.34.2",
        "registry.k8s.io/coredns/coredns:v1.12.1",  # a Deployment: it may land on any node
        "registry.k8s.io/pause:3.10.1",
        "ghcr.io/flannel-io/flannel-cni-plugin:v1.7.1-flannel1",
        "localhost/picluster/flannel:v0.10.0-arm64",
    ]


@pytest.mark.parametrize(
    ("version", "coredns", "pause", "etcd"),
    [
        ("1.31.0", "v1.11.1", "3.10", "3.5.15-0"),
        ("1.31.13", "v1.11.3", "3.10", "3.5.15-0"),
        ("1.31.14", "v1.11.3", "3.10", "3.5.24-0"),
        ("1.32.9", "v1.11.3", "3.10", "3.5.16-0"),
        ("1.32.10", "v1.11.3", "3.10", "3.5.24-0"),
        ("1.33.4", "v1.12.0", "3.10", "3.5.21-0"),
        ("1.33.6", "v1.12.0", "3.10", "3.5.24-0"),
        ("1.34.1", "v1.12.1", "3.10.1", "3.6.4-0"),
        ("1.35.0", "v1.13.1", "3.10.1", "3.6.6-0"),
        ("1.36.5", "v1.14.2", "3.10.2", "3.6.8-0"),
        ("1.37.1", "v1.14.6", "3.10.2", "3.7.0-0"),
    ],
)
def test_coredns_pause_and_etcd_follow_the_exact_release(
    bundled_data: dict[str, Any], tmp_path: Path, version: str, coredns: str, pause: str, etcd: str
) -> None:
    images = listed(version, "cp1", bundled_data, tmp_path)
    assert images[4:7] == [
        f"registry.k8s.io/coredns/coredns:{coredns}",
        f"registry.k8s.io/pause:{pause}",
        f"registry.k8s.io/etcd:{etcd}",
    ]
    cluster = cluster_at(version, bundled_data, tmp_path)
    plan = render_node(cluster, cluster.nodes[0], fixed_secrets())
    (config,) = [e.data.decode() for e in plan.files if str(e.path) == "etc/containerd/config.toml"]
    assert f'sandbox_image = "registry.k8s.io/pause:{pause}"' in config, "kubeadm would warn"


def test_the_cli_lists_one_reference_a_line_and_says_when_a_release_is_not_known(
    bundled_data: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster_at("1.36.6", bundled_data, tmp_path)
    assert main(["images", "-f", str(tmp_path / "cluster.yaml"), "w1"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[0] == "registry.k8s.io/kube-proxy:v1.36.6" and len(out.splitlines()) == 5
    assert "Kubernetes 1.36.6 are not known to picluster (known to 1.36.5)" in err
    assert "kubeadm config images list --kubernetes-version v1.36.6" in err
    assert main(["images", "-f", str(tmp_path / "cluster.yaml"), "w9"]) == 2
    assert "w9 is not a node of" in capsys.readouterr().err


def test_the_cli_reads_only_cluster_yaml(bundled_data: dict[str, Any], tmp_path: Path) -> None:
    cluster_at("1.34.2", bundled_data, tmp_path)
    assert main(["images", "-f", str(tmp_path / "cluster.yaml"), "cp1"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cluster.yaml"], "no state folder made"


def test_the_cli_pins_what_the_built_card_carries_by_digest(
    bundled_data: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster_at("1.34.2", bundled_data, tmp_path)
    flannel = "localhost/picluster/flannel:v0.10.0-arm64"
    digest = "sha256:" + "ab" * 32
    (tmp_path / "images").mkdir()
    (tmp_path / "images/w1.img.json").write_text(json.dumps({"node": "w1", "images": {flannel: digest}}))
    assert main(["images", "-f", str(tmp_path / "cluster.yaml"), "-i", str(tmp_path / "images"), "w1"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[-1] == f"{flannel}@{digest}"
    assert listed[0] == "registry.k8s.io/kube-proxy:v1.34.2", "pulled by the node: its tag"
