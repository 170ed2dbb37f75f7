"""cluster.yaml's model + the cluster's secrets -> one NodePlan per node. Pure: reads templates only.

A node's files come from overlay layers (common, its role, its base's flavour, and that flavour's
Wi-Fi layer when Wi-Fi is configured; a later layer wins on the same path), the firmware templates
for its boot partition, and a few generated files (the PKI, the agent's config, the time zone
link).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterator, Sequence
from dataclasses import replace
from functools import cache
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import jinja2
import yaml

from builder.errors import UserError
from builder.render import images, kernel_needs
from builder.render.plan import CARD_DISK_ID, FileEntry, NodePlan
from builder.resources import FIRMWARE_DIR, OVERLAYS_DIR, agent_module
from builder.secrets.pki import ClusterSecrets
from builder.secrets.tokens import Tokens, first_build, init_node_name
from builder.spec.boards import boards
from builder.spec.model import API_SERVER_PORT, Cluster, Node

# node.json's keys are declared once, in the agent that reads them (its docstring says why)
if TYPE_CHECKING:
    from agent import config as contract
else:
    contract = agent_module("config")

VIRTUAL_IP_LAYER = "virtual-ip"
"""The overlay layer, after the role's name, of a cluster whose control_plane_endpoint is in the nodes'
LAN: keepalived and haproxy serve it on the control planes and are turned off on the workers."""
VRRP_BASE_PRIORITY = 100
VRRP_PASSWORD_LENGTH = 8
"""keepalived uses the first 8 characters of auth_pass (VRRPv2's authentication data)."""

AGENT_CONFIG = PurePosixPath("etc/picluster/node.json")
CLUSTER_CA = PurePosixPath("etc/picluster/cluster-ca.crt")
PKI_SEED = PurePosixPath("etc/picluster/pki")
"""Where a control plane's card carries the cluster's CAs. Not /etc/kubernetes/pki: `kubeadm
reset -f` empties that folder (cmd/kubeadm/app/cmd/phases/reset/cleanupnode.go), and the agent
resets after every failed attempt, so a retried `kubeadm init` would make a new CA that no
worker card pins. The agent copies the seed into /etc/kubernetes/pki before each init or
control-plane join."""
CLOCK_FILE = PurePosixPath("var/lib/systemd/timesync/clock")
ETCD_SNAPSHOT = PurePosixPath("var/lib/picluster/restore/etcd-snapshot.db")
"""Where the card that replaces the only control plane carries the etcd snapshot it restores."""
TEMPLATES = OVERLAYS_DIR.parent
"""The folder holding both overlays/ and firmware/ (the package, or the checkout's top): template
names, as errors show them, are relative to it."""


def render_cluster(
    cluster: Cluster,
    secrets: ClusterSecrets,
    tokens: Tokens | None = None,
    flannel_digest: str | None = None,
    etcd_snapshot: bytes | None = None,
) -> list[NodePlan]:
    """`tokens`: the bootstrap token each node's card carries (builder.secrets.tokens); the first
    build's when not given. `flannel_digest`: that of the flannel image the cards carry
    (builder.image.flannel_image), which the manifest pins; unknown until it is built.
    `etcd_snapshot`: what the card running `kubeadm init` restores etcd from (the only control
    plane died, builder.secrets.snapshot)."""
    carried = tokens or first_build(cluster, secrets)
    return [
        render_node(
            cluster,
            node,
            replace(secrets, bootstrap_token=carried.nodes[node.name]),
            carried.at_init,
            carried.first_joins,
            flannel_digest,
            etcd_snapshot,
        )
        for node in cluster.nodes
    ]


def render_node(
    cluster: Cluster,
    node: Node,
    secrets: ClusterSecrets,
    at_init: Sequence[str] = (),
    first_joins: bool = False,
    flannel_digest: str | None = None,
    etcd_snapshot: bytes | None = None,
) -> NodePlan:
    """`at_init`: the bootstrap tokens the first control plane's `kubeadm init` makes;
    `first_joins`: its card was replaced, and joins the running cluster instead."""
    runs_init = node.name == init_node_name(cluster, first_joins)
    context = {
        **_context(cluster, node, secrets),
        "init_tokens": at_init,
        "runs_init": runs_init,
        "flannel_image": images.flannel_image(cluster, flannel_digest),
    }
    files: dict[tuple[str, PurePosixPath], FileEntry] = {}
    for entry in [
        *_firmware_files(context),
        *_overlay_files(overlay_layers(cluster, node), context),
        *_generated_files(cluster, node, secrets, runs_init, etcd_snapshot if runs_init else None),
    ]:
        files[entry.partition, entry.path] = entry
    return NodePlan(node.name, tuple(files[key] for key in sorted(files, key=str)))


def overlay_layers(cluster: Cluster, node: Node) -> list[str]:
    """The node's overlay layers, in order. The flavour's layers hold what the base's network stack
    and conventions need: systemd-networkd and wpa_supplicant on Debian, NetworkManager keyfiles
    and Raspberry Pi OS's first-boot services turned off on Raspberry Pi OS."""
    flavour = cluster.flavour
    layers = ["common", node.role, flavour]
    if cluster.network.wifi:
        layers.append(f"{flavour}-wifi")
    if cluster.virtual_ip:
        layers.append(f"{node.role}-{VIRTUAL_IP_LAYER}")
    return layers


def _context(cluster: Cluster, node: Node, secrets: ClusterSecrets) -> dict[str, Any]:
    minor = cluster.kubernetes_minor
    wifi = cluster.network.wifi
    return {
        "cluster": cluster,
        "node": node,
        "board": boards()[node.model],
        "kernel_args": kernel_needs.KERNEL_ARGS,
        "kernel_modules": kernel_needs.MODULES,
        "kernel_sysctls": kernel_needs.SYSCTLS,
        "kube_minor": f"1.{minor}",
        "pause_image": images.pause_image(cluster),
        "flannel_cni_plugin_image": images.FLANNEL_CNI_PLUGIN_IMAGE,
        "bootstrap_token": secrets.bootstrap_token,
        "join_window_hours": int(cluster.join_window.total_seconds() // 3600),
        "ca_cert_hash": secrets.ca_cert_hash,
        "root_partuuid": f"{CARD_DISK_ID}-02",
        "virtual_ip": _virtual_ip(cluster, node, secrets),
        "wifi": {
            "ssid_hex": wifi.ssid.encode().hex(),
            "ssid_bytes": list(wifi.ssid.encode()),
            "psk_hex": _wpa_psk(wifi.ssid, wifi.psk.get_secret_value()),
        }
        if wifi
        else None,
    }


def _virtual_ip(cluster: Cluster, node: Node, secrets: ClusterSecrets) -> dict[str, Any] | None:
    """What keepalived and haproxy need on a control plane to serve the endpoint's virtual IP."""
    vip = cluster.virtual_ip
    planes = cluster.control_planes
    if vip is None or node not in planes:
        return None
    # VRRP's router id tells clusters on one LAN apart; the password keeps a stray keepalived out.
    # Both are the same on every control plane and every build, and the password, derived from the
    # CA's key, cannot be guessed from cluster.yaml.
    router_id = int.from_bytes(hashlib.sha256(cluster.cluster.name.encode()).digest()[:4]) % 255 + 1
    auth_pass = hmac.new(secrets.ca.key_pem, b"picluster keepalived auth_pass", "sha256").hexdigest()
    return {
        "address": str(vip),
        "prefix": node.address.network.prefixlen,
        "port": cluster.endpoint_port,
        "api_port": API_SERVER_PORT,
        "router_id": router_id,
        "auth_pass": auth_pass[:VRRP_PASSWORD_LENGTH],
        # a failed check (weight) drops a control plane below every healthy one
        "priority": VRRP_BASE_PRIORITY + len(planes) - planes.index(node),
        "weight": len(planes),
        "backends": [(plane.name, str(plane.address.ip)) for plane in planes],
    }


def _wpa_psk(ssid: str, passphrase: str) -> str:
    """The 256-bit key wpa_passphrase derives, so the passphrase itself is not on the card."""
    if len(passphrase) == 64:
        return passphrase.lower()
    return hashlib.pbkdf2_hmac("sha1", passphrase.encode(), ssid.encode(), 4096, 32).hex()


def _firmware_files(context: dict[str, Any]) -> Iterator[FileEntry]:
    flavour = context["cluster"].flavour
    for name in ("config.txt", "cmdline.txt"):
        text = _render_template(FIRMWARE_DIR / flavour / f"{name}.j2", context)
        yield FileEntry("boot", PurePosixPath(name), text.encode())


def _overlay_files(layers: list[str], context: dict[str, Any]) -> Iterator[FileEntry]:
    modes = _permissions()
    for layer in layers:
        top = OVERLAYS_DIR / layer
        for source in sorted(_walk(top)):
            relative = PurePosixPath(source.relative_to(top).as_posix())
            if source.suffix == ".j2":
                relative = relative.with_suffix("")
                data = _render_template(source, context).encode()
            else:
                data = source.read_bytes()
            default = 0o755 if os.access(source, os.X_OK) else 0o644
            yield FileEntry("root", relative, data, modes.get(str(relative), default))
        for path, target in _links().get(layer, {}).items():
            yield FileEntry("root", PurePosixPath(path), mode=0o777, link=target)


def _walk(top: Path) -> Iterator[Path]:
    for folder, folders, names in os.walk(top):
        # Python's caches appear beside the agent's modules whenever tests import them
        folders[:] = [name for name in folders if name != "__pycache__"]
        for name in names:
            yield Path(folder) / name


def _generated_files(
    cluster: Cluster, node: Node, secrets: ClusterSecrets, runs_init: bool, etcd_snapshot: bytes | None
) -> Iterator[FileEntry]:
    restores = etcd_snapshot is not None
    yield FileEntry("root", AGENT_CONFIG, agent_config(cluster, node, secrets, runs_init, restores))
    if etcd_snapshot is not None:  # every Secret of the cluster, in clear
        yield FileEntry("root", ETCD_SNAPSHOT, etcd_snapshot, 0o600)
    yield FileEntry("root", CLUSTER_CA, secrets.ca.public_pem)
    yield FileEntry(
        "root",
        PurePosixPath("etc/localtime"),
        mode=0o777,
        link=f"/usr/share/zoneinfo/{cluster.timezone}",
    )
    # A Pi has no real-time clock: systemd-timesyncd starts from this file's mtime, which the
    # build sets (build.clock_seed), so the first boot begins inside the CAs' validity, not in 1970.
    yield FileEntry("root", CLOCK_FILE, b"")
    if node.role == "control-plane":
        for name, data in secrets.pki_files().items():
            mode = 0o600 if name.endswith(".key") else 0o644
            yield FileEntry("root", PKI_SEED / name, data, mode)


def agent_config(
    cluster: Cluster, node: Node, secrets: ClusterSecrets, runs_init: bool, restores: bool = False
) -> bytes:
    """What the first-boot agent needs to know about its node and cluster, as JSON."""
    if node.role == "worker":
        action = "join"
    elif runs_init:
        action = "init"
    else:
        action = "join-control-plane"
    config = contract.NodeConfig(
        name=node.name,
        role=node.role,
        address=node.address,
        iface=cluster.flannel.iface,
        pod_subnet=cluster.cluster.pod_subnet,
        kubernetes_version=cluster.cluster.kubernetes,
        api_endpoint=cluster.api_endpoint,
        ca_cert=f"/{CLUSTER_CA}",
        ca_not_before=int(secrets.ca_not_before.timestamp()),
        action=action,
        kubeadm_config="/etc/picluster/kubeadm.yaml",
        pki_seed=f"/{PKI_SEED}" if node.role == "control-plane" else None,
        etcd_restore=f"/{ETCD_SNAPSHOT}" if restores else None,
        packages_install=cluster.cluster.packages,
        apt_repository=cluster.kubernetes_repository,
        manifests=("/etc/picluster/kube-flannel.yml",) if action == "init" else (),
        # pulled one by one before kubeadm, each retried, so a slow link never times kubeadm out
        images=images.node_images(cluster, node).references,
        # what the agent's preflight and the verify suite check, as the card's boot applies it
        kernel_needs=contract.KernelNeeds(
            modules=tuple(name for group in kernel_needs.MODULES for name in group.names),
            sysctls={key: value for group in kernel_needs.SYSCTLS for key, value in group.values.items()},
            args=tuple(kernel_needs.KERNEL_ARGS),
        ),
        timing=contract.Timing(),
    )
    return contract.node_json(config)


@cache
def _permissions() -> dict[str, int]:
    raw = yaml.safe_load((OVERLAYS_DIR / "permissions.yaml").read_text())
    return {path: int(mode, 8) for path, mode in raw.items()}


@cache
def _links() -> dict[str, dict[str, str]]:
    links: dict[str, dict[str, str]] = yaml.safe_load((OVERLAYS_DIR / "links.yaml").read_text())
    return links


@cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )


def _render_template(path: Path, context: dict[str, Any]) -> str:
    name = path.relative_to(TEMPLATES).as_posix()
    try:
        return _environment().get_template(name).render(context)
    except jinja2.TemplateSyntaxError as error:
        raise UserError(f"{name}:{error.lineno}: {error.message}", "fix the template") from None
    except jinja2.TemplateError as error:
        line = _template_line(error, str(path))
        where = f"{name}:{line}" if line else name
        raise UserError(f"{where}: {error.message}", "fix the template") from None


def _template_line(error: Exception, filename: str) -> int | None:
    """Jinja compiles templates to Python; the traceback's frames in the template carry its lines."""
    line = None
    trace = error.__traceback__
    while trace is not None:
        if trace.tb_frame.f_code.co_filename == filename:
            line = trace.tb_lineno
        trace = trace.tb_next
    return line
