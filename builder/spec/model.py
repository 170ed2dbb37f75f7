"""The validated, frozen shape of cluster.yaml.

Field-level rules live on the fields (each field's description doubles as the hint printed when
its value is wrong); rules that span several fields are in `cross_field_problems`, which reports
every violation it finds rather than stopping at the first.
"""

from __future__ import annotations

import difflib
import json
import re
from contextlib import suppress
from datetime import timedelta
from ipaddress import AddressValueError, IPv4Address, IPv4Interface, IPv4Network
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, ValidationInfo

from builder.errors import FieldError, Problem
from builder.spec.boards import boards
from builder.spec.names import TIME_ZONES, WIFI_COUNTRIES, time_zones, wifi_countries
from builder.spec.ssh_key import check_authorized_key

Flavour = Literal["debian", "raspios"]
SUPPORTED_KUBERNETES = (31, 37)
"""Minor versions of Kubernetes 1.x whose kubeadm reads the v1beta4 config this tool renders
(from 1.31) and whose kubelet still runs on trixie's containerd 1.7 (to 1.37): 1.7 lacks the CRI
RuntimeConfig call, and kubelet stops falling back to its own cgroupDriver setting in 1.38."""
CONTROL_PLANE_MEMORY_MB = 1700
"""kubeadm's preflight refuses a control plane with less (ControlPlaneMem,
cmd/kubeadm/app/preflight/checks.go)."""

API_SERVER_PORT = 6443
CONTROL_PLANE_PORTS = {
    22: "SSH server",
    API_SERVER_PORT: "API server",
    2379: "etcd (clients)",
    2380: "etcd (peers)",
    10248: "kubelet (health, on 127.0.0.1)",
    10249: "kube-proxy (metrics, on 127.0.0.1)",
    10250: "kubelet",
    10256: "kube-proxy (health)",
    10257: "kube-controller-manager",
    10259: "kube-scheduler",
}
"""What listens on every control plane (kubernetes.io "Ports and Protocols"; the kubelet's and
kube-proxy's defaults): haproxy's `bind *:PORT` for the virtual IP would collide with any."""
"""Where kubeadm's API server listens on every control plane (localAPIEndpoint.bindPort)."""

FLANNEL_VERSION = "v0.10.0"
NODE_CIDR_PREFIX = 24
"""flannel's kube-subnet-mgr uses the controller manager's default node mask: one /24 per node."""
LAN_PREFIX = 24
"""The prefix suggested for a node address written without one, when no other node shows the LAN's."""
SERVICE_PREFIXES = (12, 28)
"""kubeadm refuses a service subnet larger than a /12 (ValidateServiceSubnetSize) and gives CoreDNS
the subnet's address + 10 (GetDNSIP), which a /29 does not hold."""
SSID_BYTES = 32
"""IEEE 802.11 carries an SSID in at most 32 bytes."""
NOWHERE = (
    (IPv4Network("0.0.0.0/8"), "is in 0.0.0.0/8, which means this host and is never a destination"),
    (IPv4Network("127.0.0.0/8"), "is a loopback address: the node would reach itself"),
    (IPv4Network("224.0.0.0/4"), "is a multicast address"),
    (IPv4Network("255.255.255.255/32"), "is the broadcast address"),
    (IPv4Network("240.0.0.0/4"), "is in 240.0.0.0/4, which is reserved and never routed"),
)
"""Addresses no node can use as its own or as a server's, and why; the first that holds is said."""

# Every pattern is matched whole (fullmatch): `$` would also match before a final newline. Digits
# are [0-9]: `\d` takes any Unicode digit.
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
DNS_LABEL = re.compile(_LABEL)
DNS_NAME = re.compile(rf"(?=.{{1,253}}\Z){_LABEL}(\.{_LABEL})*")
DOTTED = re.compile(r"[0-9.]+")
INTERFACE = re.compile(r"[a-zA-Z0-9_.-]{1,15}")
UNIX_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
DEBIAN_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]+")
KUBERNETES_VERSION = re.compile(r"1\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)")
ENDPOINT = re.compile(r"(?P<host>[^:]+):(?P<port>0|[1-9][0-9]*)")
CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f-\x9f]")
PSK_HEX = re.compile(r"[0-9a-fA-F]{64}")
PSK_PASSPHRASE = re.compile(r"[ -~]{8,63}")
"""IEEE 802.11i: a passphrase is 8 to 63 characters from ASCII 32 to 126."""

_Host = TypeVar("_Host", bound=str | IPv4Address)


def _matches(pattern: re.Pattern[str], what: str) -> AfterValidator:
    def check(value: str) -> str:
        if not pattern.fullmatch(value):
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
    match = KUBERNETES_VERSION.fullmatch(value)
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
        raise ValueError(f"flannel {value!r} is not bundled; picluster pins {FLANNEL_VERSION}")
    return value


def _check_timezone(value: str) -> str:
    """The card links /etc/localtime to /usr/share/zoneinfo/<timezone>: with a name it lacks, the
    link points nowhere and the node keeps UTC."""
    if value in time_zones():
        return value
    close = difflib.get_close_matches(value, sorted(time_zones()), n=1, cutoff=0.8)
    raise FieldError(
        f"{value!r} is not a time zone on the card, which has those of Debian trixie's tzdata "
        "(older names such as US/Eastern and right/* are in tzdata-legacy, which it lacks)",
        f"did you mean {close[0]!r}?"
        if close
        else f"use a tz database name such as Europe/Berlin; {TIME_ZONES.name} in builder/spec lists them",
    )


def _check_country(value: str) -> str:
    if value in wifi_countries():
        return value
    hint = f"write it in capitals: {value.upper()}" if value.upper() in wifi_countries() else ""
    raise FieldError(
        f"{value!r} is not a country the Wi-Fi regulatory database on the card knows; "
        "the kernel would keep the world regulatory domain",
        hint
        or f"use the ISO 3166-1 code of the country the Pis are in, e.g. DE; {WIFI_COUNTRIES.name} "
        "in builder/spec lists them",
    )


def _check_ssid(value: str) -> str:
    if CONTROL_CHARACTER.search(value):
        raise ValueError(f"{value!r} contains a control character such as a line break")
    size = len(value.encode())
    if size > SSID_BYTES:
        raise ValueError(f"{value!r} is {size} bytes in UTF-8; an SSID has at most {SSID_BYTES}")
    return value


def _check_psk(value: SecretStr) -> SecretStr:
    # never quote the value: the message is printed
    text = value.get_secret_value()
    if PSK_HEX.fullmatch(text) or PSK_PASSPHRASE.fullmatch(text):
        return value
    raise ValueError("a WPA passphrase has 8 to 63 printable ASCII characters (or is 64 hex digits)")


def _address_of(host: str | IPv4Address) -> IPv4Address | None:
    """The address a host is, or None for a DNS name; a name of digits and dots must be an address."""
    if isinstance(host, IPv4Address):
        return host
    if not DOTTED.fullmatch(host):
        return None
    try:
        return IPv4Address(host)
    except AddressValueError:
        raise ValueError(f"{host} is not an IPv4 address") from None


def _check_usable(value: _Host) -> _Host:
    """An address a node uses, its own or a server's, must be one it can send to."""
    address = value.ip if isinstance(value, IPv4Interface) else _address_of(value)
    why = next((why for network, why in NOWHERE if address and address in network), None)
    if why:
        raise ValueError(f"{address} {why}")
    return value


_USABLE = AfterValidator(_check_usable)


def _check_endpoint(value: str) -> str:
    match = ENDPOINT.fullmatch(value)
    if not match or not DNS_NAME.fullmatch(match["host"]):
        raise ValueError(f"{value!r} is not host:port (an address or DNS name and a port)")
    port = int(match["port"])
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is outside 1 to 65535")
    _check_usable(match["host"])
    return value


def _check_service_subnet(value: IPv4Network) -> IPv4Network:
    largest, smallest = SERVICE_PREFIXES
    if value.prefixlen < largest:
        raise ValueError(f"{value}: kubeadm refuses a service subnet larger than /{largest}")
    if value.prefixlen > smallest:
        count = f"{value.num_addresses} address{'es' if value.num_addresses > 1 else ''}"
        raise ValueError(
            f"{value} holds {count}; kubeadm gives CoreDNS the 10th after {value.network_address}, "
            f"so a service subnet is at least a /{smallest}"
        )
    return value


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


JOIN_WINDOW_DAYS = 90
"""A season: long enough for a card built with the others to wait in a drawer for its Pi, short
enough that a lost card stops being a way into the cluster on its own. Removing the node from
cluster.yaml revokes its token sooner (at the next build)."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ClusterSettings(Strict):
    name: Hostname = Field(description="a short lower-case name, e.g. homelab")
    kubernetes: Annotated[str, AfterValidator(_check_kubernetes)] = Field(
        description=f"a Kubernetes release from 1.{SUPPORTED_KUBERNETES[0]}.0 to "
        f'1.{SUPPORTED_KUBERNETES[1]}.x, quoted, e.g. "1.34.2"'
    )
    pod_subnet: Annotated[IPv4Network, _TEXT] = Field(description="an IPv4 network such as 10.244.0.0/16")
    service_subnet: Annotated[IPv4Network, _TEXT, AfterValidator(_check_service_subnet)] = Field(
        IPv4Network("10.96.0.0/12"),
        description=f"an IPv4 network from /{SERVICE_PREFIXES[0]} to /{SERVICE_PREFIXES[1]}, "
        "such as 10.96.0.0/12",
    )
    domain: DnsName = Field("cluster.local", description="the cluster DNS domain")
    packages: Literal["firstboot", "image"] = Field(
        "firstboot",
        description="firstboot (the node installs kubeadm, kubelet and kubectl) or image "
        "(they are baked into the image)",
    )
    images: Literal["pull", "card"] = Field(
        "pull",
        description="pull (each node pulls its container images on first boot, before kubeadm) or card "
        "(picluster build fetches them for arm64 and writes them onto each card: with packages: image "
        "too, a first boot needs nothing from outside the LAN)",
    )
    image_mirror: (
        Annotated[
            str, _matches(re.compile(r"https?://[!-~]+"), "an http(s) URL such as http://192.168.50.2:5000")
        ]
        | None
    ) = Field(
        None,
        description="with images: card, a registry picluster build fetches every image from instead of "
        "registry.k8s.io and ghcr.io, the same paths under it (http:// for one without TLS)",
    )
    kubernetes_repository: (
        Annotated[str, _matches(re.compile(r"https?://[!-~]+/"), "an http(s) URL ending in /")] | None
    ) = Field(
        None,
        description="a mirror of the Kubernetes apt repository for this minor release, with "
        "its Release.key (default: https://pkgs.k8s.io/core:/stable:/v1.<minor>/deb/)",
    )
    join_window_days: int = Field(
        JOIN_WINDOW_DAYS,
        ge=1,
        le=365,
        strict=True,  # else pydantic reads `true` as 1
        description="how long a card may wait between its build and its first boot and still join: "
        f"the life of each node's own bootstrap token, in days (1 to 365; default {JOIN_WINDOW_DAYS})",
    )
    token_ttl_hours: int | None = Field(
        None,
        ge=1,
        le=8760,
        strict=True,
        description="deprecated: the join window in hours (1 to 8760); use join_window_days",
    )
    control_plane_endpoint: Annotated[str, AfterValidator(_check_endpoint)] | None = Field(
        None,
        description="host:port the control planes are reached at: a free address of the nodes' LAN "
        "(a virtual IP the control planes serve, port 8443) or a load balancer you run; required "
        "with more than one control plane, and set from the start if you may add control planes",
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
    ssid: Annotated[str, AfterValidator(_check_ssid)] = Field(
        min_length=1, description=f"the network name (1 to {SSID_BYTES} bytes)"
    )
    psk: Annotated[SecretStr, AfterValidator(_check_psk)] = Field(
        description="the WPA passphrase, 8 to 63 printable ASCII characters"
    )
    country: Annotated[str, AfterValidator(_check_country)] = Field(
        description="the regulatory country, its ISO 3166-1 code in capitals, e.g. DE"
    )


class Network(Strict):
    gateway: Annotated[IPv4Address, _TEXT, _USABLE] = Field(
        description="the LAN router's address, e.g. 192.168.50.1"
    )
    dns: list[Annotated[IPv4Address, _TEXT, _USABLE]] = Field(
        min_length=1, description="one or more DNS server addresses"
    )
    ntp: list[Annotated[DnsName | IPv4Address, _TEXT, _USABLE]] = Field(
        [], description="NTP servers (names or addresses); empty uses Debian's pool"
    )
    wifi: Wifi | None = Field(None, description="optional Wi-Fi uplink; never used for cluster traffic")


class ImageSource(Strict):
    url: Annotated[str, _matches(re.compile(r"https?://[!-~]+"), "an http(s) URL")] = Field(
        description="where to download the .img or .img.xz"
    )
    sha256: Annotated[str, _matches(re.compile(r"[0-9a-f]{64}"), "64 lower-case hex digits")] = Field(
        description="the SHA-256 of the file at url, 64 lower-case hex digits"
    )


class Base(Strict):
    suite: Annotated[
        Literal["trixie"],
        _refused(
            {
                "bookworm": "its containerd is 1.6.20, below what containerd recommends for every "
                "Kubernetes picluster supports (1.6.34 and later for 1.31, RELEASES.md; 1.6 itself "
                "ended in July 2025), and its etcd 3.4 has no etcdutl, which the control planes' "
                "snapshots and a restore need; use trixie (Debian 13)"
            }
        ),
    ] = Field("trixie", description="trixie (Debian 13); bookworm is refused, with the reason")
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
    trim: bool = Field(
        True,
        description="leave out of a Debian base what no Pi node uses: other boards' device trees, "
        "Wi-Fi firmware and kernel modules (cameras, other GPUs, Wi-Fi and Ethernet chips, sound "
        "cards), the CNI plugins flannel does not run, containerd's legacy shims, the GPU "
        "firmware's camera and debug builds; every module Kubernetes and cluster storage load "
        "stays; false keeps every file",
    )
    pi5_page_size: Literal[4, 16] = Field(
        4,
        description="the memory page size in KiB of a Pi 5's kernel on a Raspberry Pi OS base: 4 "
        "(kernel8.img), on which every container image runs, or 16 (kernel_2712.img, Raspberry Pi "
        "OS's own default, a little faster), on which images built with jemalloc or tcmalloc abort "
        "(raspberrypi/bookworm-feedback#107)",
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
    address: Annotated[IPv4Interface, BeforeValidator(_require_prefix), _TEXT, _USABLE] = Field(
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
    def flavour(self) -> Flavour:
        """Which base every card starts from, and so whose conventions it follows: Debian, built
        here (the default), or Raspberry Pi OS, downloaded (base.image). Named the same as its
        overlays/<flavour>/ and firmware/<flavour>/ folders and its builder.image module."""
        return "raspios" if self.base.image is not None else "debian"

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
        return f"{self.init_node.address.ip}:{API_SERVER_PORT}"

    @property
    def virtual_ip(self) -> IPv4Address | None:
        """The control_plane_endpoint's address when it is in the nodes' LAN: the control planes
        then serve it (keepalived moves it between them, haproxy passes it on to their API servers).
        A DNS name or an address elsewhere is a load balancer the user runs."""
        endpoint = self.cluster.control_plane_endpoint
        address = _address_of(endpoint.rpartition(":")[0]) if endpoint else None
        return address if address and address in self.nodes[0].address.network else None

    @property
    def endpoint_port(self) -> int:
        return int(self.api_endpoint.rpartition(":")[2])

    @property
    def join_window(self) -> timedelta:
        """How long each node's bootstrap token lives: token_ttl_hours, from before the window had
        days, still means what it meant."""
        hours = self.cluster.token_ttl_hours
        return timedelta(hours=hours) if hours is not None else timedelta(days=self.cluster.join_window_days)

    def deprecations(self) -> list[str]:
        """What cluster.yaml still says the old way, each with the new way to say it."""
        hours = self.cluster.token_ttl_hours
        if hours is None:
            return []
        days = -(-hours // 24)
        exact = "" if hours % 24 == 0 else f" ({hours} h rounded up to whole days)"
        return [
            f"cluster.token_ttl_hours is deprecated: write cluster.join_window_days: {days} instead{exact}"
        ]

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
        *_server_address_problems(cluster),
        *_subnet_problems(cluster),
        *_role_problems(cluster),
        *_join_window_problems(cluster),
        *_image_problems(cluster),
        *_virtual_ip_problems(cluster),
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
        for special, what in (*_ends(network), (gateway, "the gateway's address")):
            if ip == special:
                found.append(Problem(path, f"{ip} is {what} of {network}", "pick a free host address"))
    return found


def _ends(network: IPv4Network) -> tuple[tuple[IPv4Address, str], ...]:
    """The addresses of a subnet no host has: packets to them go to every host or none."""
    return (
        (network.network_address, "the network address"),
        (network.broadcast_address, "the broadcast address"),
    )


def _server_address_problems(cluster: Cluster) -> list[Problem]:
    """The addresses of the router and servers a node sends to: not the LAN's own or broadcast."""
    lan = cluster.nodes[0].address.network
    network = cluster.network
    endpoint = cluster.cluster.control_plane_endpoint
    servers = [
        ("network.gateway", network.gateway),
        *((f"network.dns[{i}]", address) for i, address in enumerate(network.dns)),
        *((f"network.ntp[{i}]", _address_of(server)) for i, server in enumerate(network.ntp)),
        ("cluster.control_plane_endpoint", _address_of(endpoint.rpartition(":")[0]) if endpoint else None),
    ]
    return [
        Problem(path, f"{ip} is {what} of {lan}", "use the address the router or server itself has")
        for path, ip in servers
        for special, what in _ends(lan)
        if ip == special
    ]


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


def _join_window_problems(cluster: Cluster) -> list[Problem]:
    settings = cluster.cluster
    if settings.token_ttl_hours is None or "join_window_days" not in settings.model_fields_set:
        return []
    return [
        Problem(
            "cluster.token_ttl_hours",
            "is set beside cluster.join_window_days, which replaces it",
            "remove cluster.token_ttl_hours and keep cluster.join_window_days",
        )
    ]


def _image_problems(cluster: Cluster) -> list[Problem]:
    settings = cluster.cluster
    if settings.image_mirror is None or settings.images == "card":
        return []
    return [
        Problem(
            "cluster.image_mirror",
            "is where picluster build fetches the images it writes onto the cards, and with "
            "images: pull the nodes pull from the registries themselves",
            "set cluster.images: card, or remove cluster.image_mirror",
        )
    ]


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
    found = []
    if count % 2 == 0:
        # etcd's FAQ: a quorum is a majority, (n/2)+1 members, so n and n-1 members tolerate the
        # same number of failures, and an even cluster split in two halves has no majority side
        found.append(
            Problem(
                "nodes",
                f"{count} control-plane nodes: their etcd needs {count // 2 + 1} of them up, so it survives "
                f"no more lost nodes than {count - 1} would, and a Pi more to fail",
                f"make it {count - 1} or {count + 1} control planes (an odd number)",
            )
        )
    if count > 1 and cluster.cluster.control_plane_endpoint is None:
        lan = cluster.nodes[0].address.network
        found.append(
            Problem(
                "cluster.control_plane_endpoint",
                f"{count} control-plane nodes but no control_plane_endpoint",
                f"set it to a free address of {lan} with port 8443, which the control planes then "
                "share, or keep one control plane; a cluster already made without one cannot gain "
                "control planes (kubeadm fixes the endpoint at init): that takes a new cluster",
            )
        )
    return found


def _virtual_ip_problems(cluster: Cluster) -> list[Problem]:
    """A virtual IP must be free for keepalived to claim, and its port free on every control plane."""
    vip = cluster.virtual_ip
    if vip is None:
        return []
    path = "cluster.control_plane_endpoint"
    hint = f"use an address of {cluster.nodes[0].address.network} that nothing else has"
    taken = [
        *((node.address.ip, f"the address of {node.name}") for node in cluster.nodes),
        (cluster.network.gateway, "the gateway's address"),
        *((address, "a DNS server's address") for address in cluster.network.dns),
    ]
    found = [
        Problem(path, f"{vip} is {what}; a virtual IP must be free", hint) for ip, what in taken if ip == vip
    ]
    taken_port = CONTROL_PLANE_PORTS.get(cluster.endpoint_port)
    if taken_port:
        found.append(
            Problem(
                path,
                f"port {cluster.endpoint_port}: each control plane's {taken_port} listens there, so "
                "haproxy cannot serve the virtual IP on it",
                f"use another port, e.g. {vip}:8443",
            )
        )
    return found


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
    if cluster.flavour == "raspios":
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
