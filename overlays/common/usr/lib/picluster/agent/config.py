"""The node's view of the cluster: /etc/picluster/node.json, which picluster render writes."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_CONFIG = Path("/etc/picluster/node.json")


@dataclass(frozen=True)
class Timing:
    """How long the agent waits and how it backs off; node.json's optional "agent" section
    overrides these (the tests shorten them)."""

    retry_initial: float = 5.0
    retry_max: float = 300.0
    clock_timeout: float = 120.0
    address_timeout: float = 60.0
    containerd_timeout: float = 30.0
    ready_poll: float = 10.0


@dataclass(frozen=True)
class KernelNeeds:
    """What Kubernetes and flannel need of the node's kernel, as picluster wrote it on the card
    (builder/render/kernel_needs.py): the same lists its boot applies, which preflight checks."""

    modules: tuple[str, ...]
    sysctls: dict[str, str]
    args: tuple[str, ...]


@dataclass(frozen=True)
class NodeConfig:
    name: str
    role: str
    address: ipaddress.IPv4Interface
    iface: str
    pod_subnet: ipaddress.IPv4Network
    kubernetes_version: str
    api_endpoint: str
    ca_cert: str
    ca_not_before: float
    """When the cluster's newest CA became valid (Unix seconds)."""
    action: str  # init | join-control-plane | join
    kubeadm_config: str
    pki_seed: str | None
    """A control plane's copy of the cluster's CAs, out of `kubeadm reset`'s reach."""
    packages_install: str  # image | firstboot
    apt_repository: str
    manifests: tuple[str, ...]
    images: tuple[str, ...]
    """What the node runs, pulled before kubeadm; empty in a node.json from a picluster that did
    not list them."""
    kernel_needs: KernelNeeds | None
    """None in a node.json from a picluster that did not list them."""
    timing: Timing


def load_config(path: Path) -> NodeConfig:
    raw: dict[str, Any] = json.loads(path.read_text())
    node, cluster, packages = raw["node"], raw["cluster"], raw["packages"]
    return NodeConfig(
        name=node["name"],
        role=node["role"],
        address=ipaddress.IPv4Interface(node["address"]),
        iface=node["iface"],
        pod_subnet=ipaddress.IPv4Network(cluster["pod_subnet"]),
        kubernetes_version=cluster["kubernetes_version"],
        api_endpoint=cluster["api_endpoint"],
        ca_cert=cluster["ca_cert"],
        ca_not_before=float(cluster["ca_not_before"]),
        action=raw["kubeadm"]["action"],
        kubeadm_config=raw["kubeadm"]["config"],
        pki_seed=raw["kubeadm"]["pki_seed"],
        packages_install=packages["install"],
        apt_repository=packages["apt_repository"],
        manifests=tuple(raw["manifests"]),
        images=tuple(raw.get("images", ())),
        kernel_needs=_kernel_needs(raw.get("kernel_needs")),
        timing=Timing(**{key: float(value) for key, value in raw.get("agent", {}).items()}),
    )


def _kernel_needs(raw: dict[str, Any] | None) -> KernelNeeds | None:
    if raw is None:
        return None
    return KernelNeeds(tuple(raw["modules"]), dict(raw["sysctls"]), tuple(raw["args"]))
