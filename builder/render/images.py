"""The container images a node's card needs: kubeadm's own list for the cluster's exact release,
for the node's role, and flannel's. Pure.

kubeadm lists, in this order (cmd/kubeadm/app/images/images.go GetControlPlaneImages, v1beta4):
kube-apiserver, kube-controller-manager, kube-scheduler and kube-proxy at the release's tag, then
coredns/coredns, pause (constants.PauseVersion) and etcd (constants.SupportedEtcdVersion; local
etcd only), all from registry.k8s.io. The last three tags change between minors, and etcd's
within one (1.33.4 and 1.33.6 differ: builder.spec.releases keeps etcd's): the tables are what
each released kubeadm's `kubeadm config images list` prints, as minikube records it by running them
(kubernetes/minikube pkg/minikube/constants/constants_kubeadm_images.go at eb25dbc, through
1.36.3, and its update branch minikube-bot/minikube at 9736e2f8, through 1.37.1; ../shared/reference
day2-facts.md §E and §F), checked against kubeadm's constants.go where a copy could be read.

A worker runs kube-proxy (a DaemonSet) in pods whose sandbox is pause, and may run CoreDNS (a
Deployment the scheduler puts anywhere); every node runs flannel's DaemonSet, whose init
container brings the flannel CNI plugin.
"""

from __future__ import annotations

from dataclasses import dataclass

from builder.spec.model import Cluster, Node
from builder.spec.releases import KNOWN_TO, Release

REGISTRY = "registry.k8s.io"
FLANNEL_IMAGE = "localhost/picluster/flannel:{version}-arm64"
"""flannel's arm64 image of the pinned release as picluster makes it from flannel's source
(builder.image.flannel_image) and every card carries: upstream's quay.io/coreos/flannel image is
a Docker schema 1 manifest, which containerd 2.1 cannot pull. A name no registry serves, so a
node never pulls it from anywhere."""
FLANNEL_CNI_PLUGIN_IMAGE = "ghcr.io/flannel-io/flannel-cni-plugin:v1.7.1-flannel1"
"""Multi-arch image carrying the `flannel` CNI binary that flannel v0.10.0 expects on the host."""

COREDNS = {
    31: "v1.11.3",
    32: "v1.11.3",
    33: "v1.12.0",
    34: "v1.12.1",
    35: "v1.13.1",
    36: "v1.14.2",
    37: "v1.14.6",
}
COREDNS_BY_RELEASE = {(31, 0): "v1.11.1"}
PAUSE = {31: "3.10", 32: "3.10", 33: "3.10", 34: "3.10.1", 35: "3.10.1", 36: "3.10.2", 37: "3.10.2"}


@dataclass(frozen=True)
class NodeImages:
    references: tuple[str, ...]
    unknown: str | None
    """Why the list may differ from kubeadm's for this release; None when it is kubeadm's."""


def node_images(cluster: Cluster, node: Node) -> NodeImages:
    """Every image the node runs, in kubeadm's order, then flannel's."""
    version = cluster.cluster.kubernetes
    minor, patch = (int(part) for part in version.split(".")[1:])
    kube = [f"{REGISTRY}/{name}:v{version}" for name in
            ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy")]  # fmt: skip
    coredns = f"{REGISTRY}/coredns/coredns:{COREDNS_BY_RELEASE.get((minor, patch), COREDNS[minor])}"
    etcd = f"{REGISTRY}/etcd:{Release(minor, patch).etcd}"
    if node.role == "control-plane":
        kubeadm = [*kube, coredns, pause_image(cluster), etcd]
    else:
        kubeadm = [kube[3], coredns, pause_image(cluster)]
    flannel = [FLANNEL_CNI_PLUGIN_IMAGE, FLANNEL_IMAGE.format(version=cluster.flannel.version)]
    known = KNOWN_TO[minor]
    unknown = None
    if patch > known:
        last = f"1.{minor}.{known}"
        unknown = (
            f"kubeadm's images for Kubernetes {version} are not known to picluster (known to {last}): "
            f"the coredns, pause and etcd tags listed are {last}'s; kubeadm pulls what its release needs "
            f"where they differ (`kubeadm config images list --kubernetes-version v{version}` shows them)"
        )
    return NodeImages((*kubeadm, *flannel), unknown)


def flannel_image(cluster: Cluster, digest: str | None) -> str:
    """flannel's image as the manifest names it: pinned by the digest of the one the cards carry,
    once it is built."""
    reference = FLANNEL_IMAGE.format(version=cluster.flannel.version)
    return reference if digest is None else f"{reference}@{digest}"


def pause_image(cluster: Cluster) -> str:
    """kubeadm's pause for the release, which containerd's sandbox_image must match (else kubeadm
    warns: "detected that the sandbox image ... is inconsistent", preflight/checks.go)."""
    return f"{REGISTRY}/pause:{PAUSE[cluster.kubernetes_minor]}"
