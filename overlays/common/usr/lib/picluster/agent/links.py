"""Stale flannel and CNI state that breaks a (re)join, found through netlink and removed.

flannel v0.10.0 stops with "link has incompatible addresses" when flannel.1 carries more than
one address (it keeps the lease of an earlier membership), and the bridge plugin refuses a cni0
that still holds the gateway of an earlier pod CIDR. `kubeadm reset` removes neither.

Membership: a node is a member while /etc/kubernetes/kubelet.conf exists. A non-member has no
flannel or CNI state worth keeping, so all of it is from an earlier membership. A member keeps
what agrees with its lease in /run/flannel/subnet.env (or, without one, with the pod subnet).
Only links named flannel.<VNI> (VXLAN) and cni0 (bridge) are ever candidates.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.config import NodeConfig
from agent.host import Host

SUBNET_ENV = "/run/flannel/subnet.env"
CNI_NETWORKS = "/var/lib/cni/networks"
KUBELET_CONF = "/etc/kubernetes/kubelet.conf"
INCOMPATIBLE = "flannel v0.10.0 stops with 'link has incompatible addresses'"


@dataclass(frozen=True)
class Action:
    target: str
    action: str  # deleted | removed | kept
    reason: str

    @property
    def line(self) -> str:
        return f"{self.target:<24} {self.action:<8} {self.reason}"

    def record(self) -> dict[str, str]:
        return {"target": self.target, "action": self.action, "reason": self.reason}


def is_member(host: Host) -> bool:
    return host.path(KUBELET_CONF).exists()


def clean_links(host: Host, config: NodeConfig) -> list[Action]:
    member = is_member(host)
    actions: list[Action] = []
    lease, stale_env = _lease(host, config, member)
    if stale_env:
        actions.append(_remove(host, SUBNET_ENV, stale_env))
    for link in _links(host):
        reason = _stale_reason(link, config, lease, member)
        if reason is None:
            continue
        host.run(["ip", "link", "delete", "dev", link["ifname"]])
        actions.append(Action(link["ifname"], "deleted", reason))
    actions += _clean_ipam(host, lease, member)
    return actions


def _lease(host: Host, config: NodeConfig, member: bool) -> tuple[ipaddress.IPv4Network | None, str]:
    """This node's flannel lease, and why subnet.env is stale when it is."""
    path = host.path(SUBNET_ENV)
    if not path.exists():
        return None, ""
    if not member:
        return None, "left from an earlier membership (the node has not joined)"
    values = dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    network = values.get("FLANNEL_NETWORK", "")
    subnet = ipaddress.IPv4Interface(values.get("FLANNEL_SUBNET", "0.0.0.0/32")).network
    if network != str(config.pod_subnet) or not subnet.subnet_of(config.pod_subnet):
        return None, f"lease {subnet} in {network or '?'} is not in the pod subnet {config.pod_subnet}"
    return subnet, ""


def _links(host: Host) -> list[dict[str, Any]]:
    links: list[dict[str, Any]] = json.loads(host.run(["ip", "-j", "-d", "addr", "show"], changes=False))
    return links


def ipv4(link: dict[str, Any]) -> list[ipaddress.IPv4Interface]:
    """A link's IPv4 addresses with their prefixes, from `ip -j addr` output."""
    return [
        ipaddress.IPv4Interface(f"{a['local']}/{a['prefixlen']}")
        for a in link.get("addr_info", [])
        if a.get("family") == "inet"
    ]


def _stale_reason(
    link: dict[str, Any], config: NodeConfig, lease: ipaddress.IPv4Network | None, member: bool
) -> str | None:
    name = link.get("ifname", "")
    kind = link.get("linkinfo", {}).get("info_kind")
    if name == config.iface:
        return None
    addresses = ipv4(link)
    listed = ", ".join(map(str, addresses)) or "none"
    if name.startswith("flannel.") and kind == "vxlan":
        if not member:
            return f"left from an earlier membership (addresses: {listed})"
        if len(addresses) != 1:
            return f"carries {len(addresses)} IPv4 addresses ({listed}); {INCOMPATIBLE}"
        address = addresses[0].ip
        if address not in config.pod_subnet:
            return f"address {address} is outside the pod subnet {config.pod_subnet}"
        if lease is not None and address not in lease:
            return f"address {address} is not this node's lease {lease}"
        local = link.get("linkinfo", {}).get("info_data", {}).get("local")
        if local != str(config.address.ip):
            return f"VXLAN local address {local} is not {config.iface}'s {config.address.ip}"
        return None
    if name == "cni0" and kind == "bridge":
        if not member and addresses:
            return f"left from an earlier membership (addresses: {listed})"
        allowed = lease or config.pod_subnet
        foreign = [a for a in addresses if a.ip not in allowed]
        if foreign:
            what = "this node's pod CIDR" if lease else "the pod subnet"
            return f"address {', '.join(map(str, foreign))} is outside {what} {allowed}"
    return None


def _remove(host: Host, node_path: str, reason: str) -> Action:
    path = host.path(node_path)
    if not host.dry_run:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    return Action(node_path, "removed", reason)


def _clean_ipam(host: Host, lease: ipaddress.IPv4Network | None, member: bool) -> list[Action]:
    """host-local IPAM's leases: one folder per CNI network, one file per address handed out."""
    top = host.path(CNI_NETWORKS)
    if not top.is_dir():
        return []
    actions = []
    for network in sorted(top.iterdir()):
        node_path = f"{CNI_NETWORKS}/{network.name}"
        if not member:
            actions.append(_remove(host, node_path, "left from an earlier membership"))
            continue
        if lease is None:
            continue
        outside = sorted(name for name in _leased(network) if ipaddress.IPv4Address(name) not in lease)
        if outside:
            reason = f"holds {', '.join(outside)}, outside this node's pod CIDR {lease}"
            actions.append(_remove(host, node_path, reason))
    return actions


def _leased(folder: Path) -> list[str]:
    """The addresses host-local handed out: the files named by an address."""
    addresses = []
    for entry in folder.iterdir():
        try:
            addresses.append(str(ipaddress.IPv4Address(entry.name)))
        except ValueError:
            continue  # host-local's lock and last_reserved_ip files
    return addresses
