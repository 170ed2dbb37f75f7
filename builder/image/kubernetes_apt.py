"""kubeadm, kubelet, kubectl and cri-tools from the Kubernetes apt repository, pinned.

pkgs.k8s.io has one flat repository per minor release, signed by the key at `<repo>/Release.key`.
The source entry carries that key inline (deb822 Signed-By), so apt trusts it for this repository
only; an apt preference pins the three tools to the cluster's exact release, and they are held
so an upgrade of the node never moves them.
"""

from __future__ import annotations

from builder.spec.model import Cluster

PACKAGES = ("kubeadm", "kubelet", "kubectl", "cri-tools")
PINNED = ("kubeadm", "kubelet", "kubectl")


def key_url(cluster: Cluster) -> str:
    return cluster.kubernetes_repository + "Release.key"


def sources_entry(cluster: Cluster, key: str) -> str:
    """A deb822 source for the repository with its key inline."""
    key_lines = [f" {line}" if line.strip() else " ." for line in key.strip().splitlines()]
    return "\n".join(
        [
            "Types: deb",
            f"URIs: {cluster.kubernetes_repository}",
            "Suites: /",
            "Signed-By:",
            *key_lines,
            "",
        ]
    )


def preferences(cluster: Cluster) -> str:
    """apt pins: exactly the cluster's release of the tools kubeadm checks versions of."""
    return f"Package: {' '.join(PINNED)}\nPin: version {cluster.cluster.kubernetes}-*\nPin-Priority: 1001\n"
