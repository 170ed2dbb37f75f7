"""The validated, frozen shape of cluster.yaml.

Field-level rules live on the fields (each field's description doubles as the hint printed when
its value is wrong); rules that span several fields are in `cross_field_problems`, which reports
every violation it finds rather than stopping at the first.
"""

from __future__ import annotations

import json
import re
import zoneinfo
from contextlib import suppress
from ipaddress import AddressValueError, IPv4Address, IPv4Interface, IPv4Network
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo

from builder.errors import FieldError, Problem
from builder.spec.boards import boards
from builder.spec.ssh_key import check_authorized_key

SUPPORTED_KUBERNETES = (31, 37)
"""Minor versions of Kubernetes 1.x whose kubeadm reads the v1beta4 config this tool renders
(from 1.31) and whose kubelet still runs on trixie's containerd 1.7 (to 1.37): 1.7 lacks the CRI
RuntimeConfig call, and kubelet stops falling back to its own cgroupDriver setting in 1.38."""
CONTROL_PLANE_MEMORY_MB = 1700
"""kubeadm's preflight refuses a control plane with less (ControlPlaneMem,
cmd/kubeadm/app/preflight/checks.go)."""

FLANNEL_VERSION = "v0.10.0"
NODE_CIDR_PREFIX = 24
"""flannel's kube-subnet-mgr uses the controller manager's default node mask: one /24 per node."""
LAN_PREFIX = 24
"""The prefix suggested for a node address written without one, when no other node shows the LAN's."""

_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
DNS_LABEL = re.compile(rf"^{_LABEL}$")
DNS_NAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")
INTERFACE = re.compile(r"^[a-zA-Z0-9_.-]{1,15}$")
UNIX_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
DEBIAN_PACKAGE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
KUBERNETES_VERSION = re.compile(r"^1\.(\d+)\.(\d+)$")
ENDPOINT = re.compile(r"^(?P<host>[a-z0-9.-]+):(?P<port>\d{1,5})$")


def _matches(pattern: re.Pattern[str], what: str) -> AfterValidator:
    def check(value: str) -> str:
        if not pattern.match(value):
            raise ValueError(f"{value!r} is not {what}")
        return value

    return AfterValidator(check)


def _refused(reasons: dict[str, str]) -> BeforeValidator:
    """Values that look reasonable but can never work on a Pi cluster, each with the reason."""

    def check(value: object) -> object:
        if isinstance(value, str) and value in reasons:
            raise ValueError(f"{value!r}: {reasons[value]}")
        return value

    return BeforeValidator(check)


def _check_kubernetes(value: str) -> str:
    low, high = SUPPORTED_KUBERNETES
    match = KUBERNETES_VERSION.match(value)
    if not match:
        raise ValueError(f'{value!r} is not a Kubernetes release like "1.34.2"')
    minor = int(match[1])
    if minor < low:
        raise ValueError(
            f"Kubernetes {value} is outside the supported range 1.{low} to 1.{high}: "
            "its kubeadm cannot read the v1beta4 configuration picluster writes"
        )
    if minor > high:
        raise ValueError(
            f"Kubernetes {value} is outside the supported range 1.{low} to 1.{high}: "
            f"from 1.{high + 1} kubelet needs the CRI RuntimeConfig call, which containerd 1.7 "
            "(Debian trixie's) lacks"
        )
    return value


def _check_flannel(value: str) -> str:
    if value != FLANNEL_VERSION:
        raise ValueError(f"flannel {value} is not bundled; picluster pins {FLANNEL_VERSION}")
    return value


def _check_timezone(value: str) -> str:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{value!r} is not a known time zone") from None
    return value


def _check_psk(value: str) -> str:
    if re.fullmatch(r"[0-9a-fA-F]{64}", value) or 8 <= len(value) <= 63:
        return value
    raise ValueError("a WPA passphrase has 8 to 63 characters (or is 64 hex digits)")


def _require_text(value: object) -> object:
    """pydantic reads a number or a boolean as an IPv4 address (12345 as 0.0.48.57), which is never
    what a cluster.yaml meant."""
    if isinstance(value, int | float):
        raise ValueError(f"{value!r} is not an address: YAML read it as {type(value).__name__}")
    return value


_TEXT = BeforeValidator(_require_text)


def _require_prefix(value: object, info: ValidationInfo) -> object:
    """A bare address would be read as a /32, a LAN of one, and fail three rules that hide the cause."""
    if isinstance(value, str) and "/" not in value:
        with suppress(AddressValueError):
            IPv4Address(value)
            prefix = (info.context or {}).get("lan_prefix", LAN_PREFIX)
            raise FieldError(f"{value} has no prefix length", f"add the prefix length, e.g. {value}/{prefix}")
    return value


def validation_context(data: dict[str, Any]) -> dict[str, int]:
    """What field validators learn from the rest of the raw data: the LAN's prefix length, taken
    from the nodes written with one, first those whose network holds the gateway."""
    network, nodes = data.get("network"), data.get("nodes")
    interfaces = []
    for node in nodes if isinstance(nodes, list) else []:
        address = node.get("address") if isinstance(node, dict) else None
        if isinstance(address, str) and "/" in address:
            with suppress(ValueError):
                interfaces.append(IPv4Interface(address))
    with suppress(ValueError):
        gateway = IPv4Address(str(network.get("gateway") if isinstance(network, dict) else None))
        interfaces = [i for i in interfaces if gateway in i.network] or interfaces
    return {"lan_prefix": interfaces[0].network.prefixlen} if interfaces else {}


def _check_board(value: str) -> str:
    if value not in boards():
        raise ValueError(f"{value!r} is not a supported model ({', '.join(boards())})")
    return value


Hostname = Annotated[str, _matches(DNS_LABEL, "a lower-case RFC 1123 host name")]
DnsName = Annotated[str, _matches(DNS_NAME, "a lower-case DNS name")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ClusterSettings(Strict):
    name: Hostname = Field(description="a short lower-case name, e.g. homelab")
    kubernetes: Annotated[str, AfterValidator(_check_kubernetes)] = Field(
        description=f"a Kubernetes release from 1.{SUPPORTED_KUBERNETES[0]}.0 to "
        f'1.{SUPPORTED_KUBERNETES[1]}.x, quoted, e.g. "1.34.2"'
    )
    pod_subnet: Annotated[IPv4Network, _TEXT] = Field(description="an IPv4 network such as 10.244.0.0/16")
    service_subnet: Annotated[IPv4Network, _TEXT] = Field(
        IPv4Network("10.96.0.0/12"), description="an IPv4 network such as 10.96.0.0/12"
    )
    domain: DnsName = Field("cluster.local", description="the cluster DNS domain")
    packages: Literal["firstboot", "image"] = Field(
        "firstboot",
        description="firstboot (the node installs kubeadm, kubelet and kubectl) or image "
        "(they are baked into the image)",
    )
    kubernetes_repository: (
        Annotated[str, _matches(re.compile(r"^https?://\S+/$"), "an http(s) URL ending in /")] | None
    ) = Field(
        None,
        description="a mirror of the Kubernetes apt repository for this minor release, with "
        "its Release.key (default: https://pkgs.k8s.io/core:/stable:/v1.<minor>/deb/)",
    )
    token_ttl_hours: int = Field(
        24,
        ge=1,
        le=8760,
        description="how long a bootstrap token lets new nodes join, in hours (1 to 8760; default 24)",
    )
    control_plane_endpoint: (
        Annotated[str, _matches(ENDPOINT, "host:port (an address or DNS name and a port)")] | None
    ) = Field(
        None,
        description="host:port of a load balancer or virtual IP in front of the control planes; "
        "required with more than one control-plane node",
    )


class Flannel(Strict):
    version: Annotated[str, AfterValidator(_check_flannel)] = Field(
        FLANNEL_VERSION, description=f"{FLANNEL_VERSION} (the only version bundled)"
    )
    backend: Annotated[
        Literal["vxlan", "host-gw"],
        _refused(
            {
                "udp": "flannel v0.10.0 builds its UDP backend for amd64 only; on a Pi flanneld "
                "exits with 'UDP backend is not supported on this architecture' (backend/udp/udp.go)"
            }
        ),
    ] = Field("vxlan", description="vxlan (the default) or host-gw (all nodes on one LAN)")
    iface: Annotated[str, _matches(INTERFACE, "a network interface name")] = Field(
        "eth0", description="the wired interface that carries cluster traffic, e.g. eth0"
    )


class Wifi(Strict):
    ssid: str = Field(min_length=1, max_length=32, description="the network name (1 to 32 characters)")
    psk: Annotated[str, AfterValidator(_check_psk)] = Field(
        description="the WPA passphrase, 8 to 63 characters"
    )
    country: Annotated[str, _matches(re.compile(r"^[A-Z]{2}$"), "a two-letter country code")] = Field(
        description="the regulatory country, two capital letters, e.g. DE"
    )


class Network(Strict):
    gateway: Annotated[IPv4Address, _TEXT] = Field(description="the LAN router's address, e.g. 192.168.50.1")
    dns: list[Annotated[IPv4Address, _TEXT]] = Field(
        min_length=1, description="one or more DNS server addresses"
    )
    ntp: list[Annotated[DnsName | IPv4Address, _TEXT]] = Field(
        [], description="NTP servers (names or addresses); empty uses Debian's pool"
    )
    wifi: Wifi | None = Field(None, description="optional Wi-Fi uplink; never used for cluster traffic")


class ImageSource(Strict):
    url: Annotated[str, _matches(re.compile(r"^https?://\S+$"), "an http(s) URL")] = Field(
        description="where to download the .img or .img.xz"
    )
    sha256: Annotated[str, _matches(re.compile(r"^[0-9a-f]{64}$"), "64 lower-case hex digits")] = Field(
        description="the SHA-256 of the file at url, 64 lower-case hex digits"
    )


class Base(Strict):
    suite: Literal["bookworm", "trixie"] = Field("trixie", description="bookworm or trixie")
    arch: Annotated[
        Literal["arm64"],
        _refused(
            {
                "armhf": "Kubernetes has published no 32-bit ARM kubeadm or kubelet packages or "
                "control-plane images since 1.27, so no supported release runs on armhf"
            }
        ),
    ] = Field(
        "arm64",
        description="arm64, which every Pi 3, 4 and 5 runs and the only Raspberry Pi OS Lite images "
        "base.image takes (or leave base.arch out)",
    )
    packages: list[Annotated[str, _matches(DEBIAN_PACKAGE, "a Debian package name")]] = Field(
        [], description="extra Debian packages to install"
    )
    image: ImageSource | None = Field(
        None, description="start from a downloaded image instead of building Debian"
    )


class Access(Strict):
    user: Annotated[
        str,
        _refused(
            {"root": "sshd on the card refuses root logins (PermitRootLogin no), so nobody could log in"}
        ),
        _matches(UNIX_USER, "a Unix user name"),
    ] = Field("pi", description="the login user, a lower-case Unix name other than root, e.g. pi")
    ssh_authorized_keys: list[Annotated[str, AfterValidator(check_authorized_key)]] = Field(
        min_length=1,
        description="at least one SSH public key, the line from ~/.ssh/id_ed25519.pub; "
        "password login is disabled, so without a key nobody can log in",
    )


class Node(Strict):
    name: Hostname = Field(description="the node's host name, lower-case letters, digits and '-'")
    role: Literal["control-plane", "worker"] = Field(description="control-plane or worker")
    model: Annotated[str, AfterValidator(_check_board)] = Field(
        description=f"the Raspberry Pi model: {', '.join(boards())}"
    )
    address: Annotated[IPv4Interface, BeforeValidator(_require_prefix), _TEXT] = Field(
        description="the static address with prefix, e.g. 192.168.50.10/24"
    )


class Cluster(Strict):
    cluster: ClusterSettings = Field(
        description="the cluster's name, Kubernetes release, subnets and DNS domain"
    )
    flannel: Flannel = Field(
        Flannel(), description="the pod network: flannel's version, backend and interface"
    )
    network: Network = Field(
        description="the LAN the nodes are on: its gateway and DNS servers, optionally NTP servers and Wi-Fi"
    )
    base: Base = Field(
        Base(), description="what every card starts from: a Debian suite built here, or a downloaded image"
    )
    access: Access = Field(description="who logs in over SSH: the user and their public keys")
    timezone: Annotated[str, AfterValidator(_check_timezone)] = Field(
        "Etc/UTC", description="a tz database name such as Europe/Berlin"
    )
    nodes: list[Node] = Field(min_length=1, description="the Raspberry Pis, at least one")

    @property
    def control_planes(self) -> list[Node]:
        return [node for node in self.nodes if node.role == "control-plane"]

    @property
    def init_node(self) -> Node:
        """The control plane that runs `kubeadm init`; the others join it."""
        return self.control_planes[0]

    @property
    def api_endpoint(self) -> str:
        if self.cluster.control_plane_endpoint:
            return self.cluster.control_plane_endpoint
        return f"{self.init_node.address.ip}:6443"

    @property
    def kubernetes_minor(self) -> int:
        return int(self.cluster.kubernetes.split(".")[1])

    @property
    def kubernetes_repository(self) -> str:
        """The apt repository kubeadm, kubelet and kubectl come from (a flat repository)."""
        default = f"https://pkgs.k8s.io/core:/stable:/v1.{self.kubernetes_minor}/deb/"
        return self.cluster.kubernetes_repository or default


SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
"""The JSON Schema draft pydantic writes."""


def json_schema() -> str:
    """cluster.yaml's JSON Schema, for editors to complete keys and describe them. Sorted, so the
    copy kept in builder/spec/cluster.schema.json changes only when the model does."""
    schema = {
        **Cluster.model_json_schema(),
        "$schema": SCHEMA_DIALECT,
        "title": "picluster cluster.yaml",
        "description": "One file describes a whole Raspberry Pi Kubernetes cluster; picluster builds an "
        "SD card image per node from it. This schema gives the keys and their types; `picluster "
        "validate` checks every rule, such as addresses in the gateway's subnet, and says how to fix it.",
    }
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def cross_field_problems(cluster: Cluster) -> list[Problem]:
    """Rules that relate several fields; every violation is returned."""
    return [
        *_node_identity_problems(cluster),
        *_address_problems(cluster),
        *_subnet_problems(cluster),
        *_role_problems(cluster),
        *_memory_problems(cluster),
        *_interface_problems(cluster),
        *_kernel_problems(cluster),
    ]


def _node_identity_problems(cluster: Cluster) -> list[Problem]:
    found = []
    seen_names: dict[str, int] = {}
    seen_addresses: dict[IPv4Address, int] = {}
    for i, node in enumerate(cluster.nodes):
        if node.name in seen_names:
            found.append(
                Problem(
                    f"nodes[{i}].name",
                    f"{node.name} is already the name of nodes[{seen_names[node.name]}]",
                    "give every node its own name",
                )
            )
        seen_names.setdefault(node.name, i)
        ip = node.address.ip
        if ip in seen_addresses:
            found.append(
                Problem(
                    f"nodes[{i}].address",
                    f"{ip} is already the address of nodes[{seen_addresses[ip]}]",
                    "give every node its own address",
                )
            )
        seen_addresses.setdefault(ip, i)
    return found


def _address_problems(cluster: Cluster) -> list[Problem]:
    found = []
    gateway = cluster.network.gateway
    lan = cluster.nodes[0].address.network
    for i, node in enumerate(cluster.nodes):
        path, ip, network = f"nodes[{i}].address", node.address.ip, node.address.network
        if gateway not in network:
            gateway_lan = IPv4Interface(f"{gateway}/{network.prefixlen}").network
            found.append(
                Problem(
                    path,
                    f"{ip} is outside {gateway_lan} (gateway {gateway})",
                    f"use an address in {gateway_lan} or correct network.gateway",
                )
            )
        elif network != lan:
            found.append(
                Problem(
                    path,
                    f"{node.address} is in {network}, nodes[0] is in {lan}",
                    f"use the same prefix for every node, /{lan.prefixlen}",
                )
            )
        for special, what in (
            (network.network_address, "the network address"),
            (network.broadcast_address, "the broadcast address"),
            (gateway, "the gateway's address"),
        ):
            if ip == special:
                found.append(Problem(path, f"{ip} is {what} of {network}", "pick a free host address"))
    return found


def _subnet_problems(cluster: Cluster) -> list[Problem]:
    found = []
    pods, services = cluster.cluster.pod_subnet, cluster.cluster.service_subnet
    lan = cluster.nodes[0].address.network
    if pods.overlaps(services):
        found.append(
            Problem(
                "cluster.service_subnet",
                f"{services} overlaps pod_subnet {pods}",
                "use separate ranges, e.g. pod_subnet 10.244.0.0/16 and service_subnet 10.96.0.0/12",
            )
        )
    for field, subnet in (("pod_subnet", pods), ("service_subnet", services)):
        if subnet.overlaps(lan):
            found.append(
                Problem(
                    f"cluster.{field}",
                    f"{subnet} overlaps the node LAN {lan}",
                    "pick a range the LAN does not use",
                )
            )
    node_ranges = 2 ** max(0, NODE_CIDR_PREFIX - pods.prefixlen) if pods.prefixlen <= 24 else 0
    if node_ranges < len(cluster.nodes):
        fits = pods.supernet(new_prefix=NODE_CIDR_PREFIX - (len(cluster.nodes) - 1).bit_length())
        found.append(
            Problem(
                "cluster.pod_subnet",
                f"{pods} holds {node_ranges} node /{NODE_CIDR_PREFIX} ranges "
                f"but the cluster has {len(cluster.nodes)} nodes",
                f"use a pod subnet with a /{NODE_CIDR_PREFIX} for every node, e.g. {fits}",
            )
        )
    return found


def _role_problems(cluster: Cluster) -> list[Problem]:
    count = len(cluster.control_planes)
    if count == 0:
        return [
            Problem(
                "nodes",
                "no node has role control-plane",
                "make one node `role: control-plane`",
            )
        ]
    if count > 1 and cluster.cluster.control_plane_endpoint is None:
        return [
            Problem(
                "cluster.control_plane_endpoint",
                f"{count} control-plane nodes but no control_plane_endpoint",
                "set cluster.control_plane_endpoint to a load balancer or virtual IP "
                "(host:6443), or keep one control plane",
            )
        ]
    return []


def _memory_problems(cluster: Cluster) -> list[Problem]:
    found = []
    for i, node in enumerate(cluster.nodes):
        most = boards()[node.model].memory_mb
        if node.role == "control-plane" and most < CONTROL_PLANE_MEMORY_MB:
            found.append(
                Problem(
                    f"nodes[{i}].role",
                    f"{node.name} is a {node.model}, which has at most {most} MB of memory; kubeadm "
                    f"refuses a control plane with less than {CONTROL_PLANE_MEMORY_MB} MB",
                    f"make a Pi 4 or Pi 5 with at least 2 GB the control plane and {node.name} a worker",
                )
            )
    return found


def _interface_problems(cluster: Cluster) -> list[Problem]:
    iface = cluster.flannel.iface
    if iface in ("lo", "wlan0"):
        return [
            Problem(
                "flannel.iface",
                f"{iface} cannot carry cluster traffic",
                "use the wired interface, eth0",
            )
        ]
    return []


def _kernel_problems(cluster: Cluster) -> list[Problem]:
    """A board Debian's kernel cannot run needs the kernel of a downloaded Raspberry Pi OS base."""
    if cluster.base.image is not None:
        return []
    return [
        Problem(
            f"nodes[{i}].model",
            f"{node.model}: Debian's kernel does not run this model; the card would not boot",
            "set base.image to a Raspberry Pi OS Lite arm64 image (its url and sha256)",
        )
        for i, node in enumerate(cluster.nodes)
        if not boards()[node.model].debian_kernel
    ]
