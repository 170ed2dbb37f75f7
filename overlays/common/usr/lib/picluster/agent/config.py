"""The node's view of the cluster: /etc/picluster/node.json, and the one declaration of its keys.

picluster's builder writes node.json with `node_json` from a NodeConfig it fills in, and this
agent reads it back with `load_config`, so the keys are declared here once, beside their only
reader, rather than in a builder dict and an agent parser that can drift apart (or in a JSON
Schema, a third copy both would have to be tested against). The builder loads this file by its
path in the overlay (builder/resources.py), in a checkout and in an installed wheel alike,
because on the node the agent is the top-level package `agent`, not a part of the builder;
hence this module imports nothing but the standard library, not even the rest of the agent.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

DEFAULT_CONFIG = Path("/etc/picluster/node.json")
CARD_IMAGES = Path("/var/lib/picluster/images")
"""On a card built with `images: card`: one OCI archive per container image, and index.json
naming them. picluster build writes both (they depend on what the registry served, which
node.json, rendered before anything is fetched, cannot know); the agent imports them."""
CARD_IMAGES_INDEX = "index.json"


@dataclass(frozen=True)
class CardImage:
    reference: str
    """The name the node knows it by, as kubeadm and the manifests name it."""
    digest: str
    """Its image manifest's digest, which containerd lists once it is imported."""
    archive: str
    """The OCI archive's file name under CARD_IMAGES."""


def card_images_json(images: tuple[CardImage, ...]) -> bytes:
    """index.json's bytes, which load_card_images reads back."""
    raw = {"images": [asdict(image) for image in images]}
    return (json.dumps(raw, indent=2, sort_keys=True) + "\n").encode()


def load_card_images(folder: Path) -> tuple[CardImage, ...]:
    """The images the card carries; none on a card built with `images: pull`."""
    index = folder / CARD_IMAGES_INDEX
    if not index.exists():
        return ()
    return tuple(CardImage(**entry) for entry in json.loads(index.read_text())["images"])


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
    static_pod_pause: float = 20.0
    """How long a static pod's manifest stays out of the kubelet's folder for it to stop the pod:
    the kubelet's fileCheckFrequency (agent.certs)."""


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
    """When the cluster's newest CA became valid (Unix seconds; whole ones from the builder)."""
    action: str  # init | join-control-plane | join
    kubeadm_config: str
    pki_seed: str | None
    """A control plane's copy of the cluster's CAs, out of `kubeadm reset`'s reach."""
    etcd_restore: str | None
    """An etcd snapshot the card's `kubeadm init` starts from: the card replaces the cluster's
    only control plane (agent.snapshot.restore)."""
    packages_install: str  # image | firstboot
    apt_repository: str
    manifests: tuple[str, ...]
    images: tuple[str, ...]
    """What the node runs, pulled before kubeadm; empty in a node.json from a picluster that did
    not list them."""
    kernel_needs: KernelNeeds | None
    """None in a node.json from a picluster that did not list them."""
    timing: Timing


def node_json(config: NodeConfig) -> bytes:
    """node.json's bytes, which load_config reads back to `config`; sorted, so every build of a
    card writes the same bytes. The "agent" section is left out while the timings are the
    defaults."""
    raw: dict[str, Any] = {
        "node": {
            "name": config.name,
            "role": config.role,
            "address": str(config.address),
            "iface": config.iface,
        },
        "cluster": {
            "kubernetes_version": config.kubernetes_version,
            "pod_subnet": str(config.pod_subnet),
            "api_endpoint": config.api_endpoint,
            "ca_cert": config.ca_cert,
            # kubeadm must not run before the CA is valid: TLS would fail as if the network did
            "ca_not_before": config.ca_not_before,
        },
        "kubeadm": {
            "action": config.action,
            "config": config.kubeadm_config,
            "pki_seed": config.pki_seed,
        },
        "packages": {
            "install": config.packages_install,
            "apt_repository": config.apt_repository,
        },
        "manifests": config.manifests,
        "images": config.images,
    }
    if config.etcd_restore is not None:
        raw["kubeadm"]["etcd_restore"] = config.etcd_restore
    if config.kernel_needs is not None:
        raw["kernel_needs"] = asdict(config.kernel_needs)
    if config.timing != Timing():
        raw["agent"] = asdict(config.timing)
    return (json.dumps(raw, indent=2, sort_keys=True) + "\n").encode()


def load_config(path: Path) -> NodeConfig:
    return parse_config(json.loads(path.read_text()))


def parse_config(raw: dict[str, Any]) -> NodeConfig:
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
        ca_not_before=cluster["ca_not_before"],
        action=raw["kubeadm"]["action"],
        kubeadm_config=raw["kubeadm"]["config"],
        pki_seed=raw["kubeadm"]["pki_seed"],
        etcd_restore=raw["kubeadm"].get("etcd_restore"),
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
