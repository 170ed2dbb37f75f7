"""A lab of the bundled cluster on this machine, where the real flannel v0.10.0 runs as on the cards.

Each node of cluster.yaml is a network namespace whose eth0 (a veth) sits on one bridge in a
"lan" namespace, with its rendered address; cp1, like the first seed's master-pi, also has a
wlan0 that holds its default route. Every node runs the real flanneld with the arguments of the
rendered DaemonSet and the rendered net-conf.json; pods are added with the real libcni (cnitool)
through the rendered conflist, the real `flannel` CNI plugin and Debian's bridge, host-local and
portmap. The one STAND-IN is the Kubernetes API server (tests/support/api_standin.py), served
at the rendered endpoint from cp1's namespace: kube-apiserver cannot run here.

Each node's flanneld and cnitool run in a mount namespace of their own in which the node's
folders (its rendered card root) are bound over the fixed paths flannel uses, so every node has
its own /run/flannel, /etc/kube-flannel and /var/lib/cni, and the agent reads them with --root.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from builder.cluster.kubeconfig import admin_kubeconfig
from builder.spec.load import load_cluster
from builder.spec.model import Cluster
from tests.support import upstream
from tests.support.agent import node_root
from tests.support.api_standin import APIStandin, api_standin
from tests.support.project import BUNDLED, fixed_secrets

REQUIRED = {
    "ip": "iproute2", "unshare": "util-linux", "setpriv": "util-linux", "mount": "mount",
    "ping": "iputils-ping", "iptables": "iptables", "sysctl": "procps", "go": "golang-go",
    "gcc": "gcc",
}  # fmt: skip
"""Each program the lab runs, with the Debian package that has it."""
CNI_PLUGINS = Path("/usr/lib/cni")
"""Debian's containernetworking-plugins, the bridge, host-local and portmap the cards carry."""
PRIVATE_PATHS = ("etc/kube-flannel", "run/flannel", "var/lib/cni")
"""Where flanneld reads its net-conf.json (subnet/kube/kube.go netConfPath) and writes its lease,
and where the flannel plugin and host-local keep their state: each node's own."""
WIFI_NODE = "cp1"
WLAN0 = ipaddress.IPv4Interface("192.168.1.50/24")
WIFI_GATEWAY = "192.168.1.1"
"""The first seed's master-pi: on home Wi-Fi, which held its default route."""
VXLAN_PORT = 8472
"""The Linux kernel's VXLAN port, which flannel keeps when net-conf.json sets no Port."""
WROTE_LEASE = "Wrote subnet file to"
"""flanneld's log line once it holds a lease and wrote subnet.env (main.go)."""
STOP_GRACE = 2
"""Seconds flanneld gets to stop after SIGTERM."""
BIND_AND_EXEC = 'set -e; while [ "$1" != -- ]; do mount --bind "$1" "$2"; shift 2; done; shift; exec "$@"'


class LabError(Exception):
    pass


def missing_requirements() -> list[str]:
    """What this machine lacks for the lab, each named with its Debian package."""
    missing = [
        f"{tool} (Debian package {package})" for tool, package in REQUIRED.items() if not shutil.which(tool)
    ]
    missing += [
        f"{CNI_PLUGINS / plugin} (Debian package containernetworking-plugins)"
        for plugin in ("bridge", "host-local", "portmap", "loopback")
        if not (CNI_PLUGINS / plugin).exists()
    ]
    return missing


@dataclass(frozen=True)
class Rendered:
    """What picluster renders for flannel, read back from the control plane's card."""

    flanneld_args: tuple[str, ...]
    net_conf: str
    cni_conf: str
    cluster_configuration: dict[str, Any]


def read_rendered(control_plane_root: Path) -> Rendered:
    manifest = list(yaml.safe_load_all((control_plane_root / "etc/picluster/kube-flannel.yml").read_text()))
    daemonset = next(doc for doc in manifest if doc["kind"] == "DaemonSet")
    container = next(
        c for c in daemonset["spec"]["template"]["spec"]["containers"] if c["name"] == "kube-flannel"
    )
    config_map = next(doc for doc in manifest if doc["kind"] == "ConfigMap")
    kubeadm = yaml.safe_load_all((control_plane_root / "etc/picluster/kubeadm.yaml").read_text())
    return Rendered(
        flanneld_args=tuple(container["args"]),
        net_conf=config_map["data"]["net-conf.json"],
        cni_conf=config_map["data"]["cni-conf.json"],
        cluster_configuration=next(doc for doc in kubeadm if doc["kind"] == "ClusterConfiguration"),
    )


@dataclass
class LabNode:
    name: str
    netns: str
    root: Path
    """The node's rendered card root; flanneld's /run/flannel is its run/flannel."""
    address: ipaddress.IPv4Interface
    logs: Path
    flanneld: subprocess.Popen[bytes] | None = None
    runs: int = 0
    started: float = 0.0
    """When the latest run started (time.monotonic)."""

    @property
    def log(self) -> Path:
        """The log of flanneld's latest run on this node."""
        return self.logs / f"flanneld-{self.name}-{self.runs}.log"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else "(no flanneld log)"

    def subnet_env(self) -> dict[str, str]:
        text = (self.root / "run/flannel/subnet.env").read_text()
        return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


@dataclass(frozen=True)
class Pod:
    node: str
    netns: str
    address: ipaddress.IPv4Interface
    gateway: ipaddress.IPv4Address


@dataclass
class Lab:
    cluster: Cluster
    rendered: Rendered
    nodes: dict[str, LabNode]
    api: APIStandin
    binaries: dict[str, Path]
    folder: Path
    prefix: str
    namespaces: list[str]
    """Every network namespace the lab made, deleted with it."""
    pods: list[Pod] = field(default_factory=list)
    lease_seconds: dict[str, float] = field(default_factory=dict)
    """Seconds from each node's first flanneld start to its lease."""

    def kubeconfig(self, api: APIStandin | None = None) -> Path:
        """An admin kubeconfig (builder.cluster.kubeconfig) for the rendered endpoint, or for `api`."""
        server = api or self.api
        config = yaml.safe_load(admin_kubeconfig(self.cluster, fixed_secrets(), datetime.now(UTC)))
        config["clusters"][0]["cluster"]["server"] = f"https://{server.endpoint}"
        path = self.folder / f"kubeconfig-{server.port}"
        path.write_text(yaml.safe_dump(config))
        return path

    def in_node(self, node: LabNode, *command: str) -> list[str]:
        """`command` in the node's network namespace and a private mount namespace holding the
        node's own folders; it dies with the test (setpriv --pdeathsig, as builder/run.py)."""
        binds = [str(part) for path in PRIVATE_PATHS for part in (node.root / path, f"/{path}")]
        return ["setpriv", "--pdeathsig", "KILL", "--", "ip", "netns", "exec", node.netns,
                "unshare", "--mount", "--propagation", "private",
                "sh", "-c", BIND_AND_EXEC, "sh", *binds, "--", *command]  # fmt: skip

    def start_flanneld(
        self, name: str, args: tuple[str, ...] | None = None, api: APIStandin | None = None
    ) -> None:
        """flanneld with the rendered DaemonSet's arguments (or `args`) and a kubeconfig; NODE_NAME
        names its node, which kube.go reads before the DaemonSet's POD_NAME/POD_NAMESPACE."""
        node = self.nodes[name]
        assert node.flanneld is None, f"flanneld already runs on {name}"
        node.runs += 1
        node.started = time.monotonic()
        command = [str(self.binaries["flanneld"]), *(self.rendered.flanneld_args if args is None else args),
                   f"--kubeconfig-file={self.kubeconfig(api)}"]  # fmt: skip
        with node.log.open("wb") as log:
            node.flanneld = subprocess.Popen(
                self.in_node(node, *command), stdout=log, stderr=subprocess.STDOUT,
                env={"PATH": os.environ["PATH"], "NODE_NAME": name},
            )  # fmt: skip

    def stop_flanneld(self, *names: str) -> None:
        """SIGTERM, then SIGKILL after STOP_GRACE: v0.10.0 logs "shutdownHandler sent cancel
        signal..." and then waits on goroutines that never end; kubelet kills it once the pod's
        grace period is over, and so does the lab. Several nodes' at once."""
        running = [self.nodes[name] for name in names if self.nodes[name].flanneld is not None]
        for node in running:
            assert node.flanneld is not None
            node.flanneld.terminate()
        deadline = time.monotonic() + STOP_GRACE
        for node in running:
            assert node.flanneld is not None
            try:
                node.flanneld.wait(timeout=max(0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.flanneld.kill()
                node.flanneld.wait()
            node.flanneld = None

    def restart_flanneld(self, name: str, args: tuple[str, ...] | None = None) -> dict[str, str]:
        self.stop_flanneld(name)
        self.start_flanneld(name, args)
        return self.wait_for_lease(name)

    def wait_for_lease(self, name: str) -> dict[str, str]:
        """subnet.env once this run of flanneld wrote it; LabError with its log if it stops first."""
        self.wait_for_leases([name])
        return self.nodes[name].subnet_env()

    def wait_for_leases(self, names: Iterable[str], timeout: float = 60) -> dict[str, float]:
        """Seconds from each flanneld's start to its lease, watching all of them at once."""
        waiting = {name: self.nodes[name] for name in names}
        leased: dict[str, float] = {}
        while waiting:
            for name, node in list(waiting.items()):
                if WROTE_LEASE in node.log_text():
                    leased[name] = time.monotonic() - node.started
                    del waiting[name]
                elif node.flanneld is None or node.flanneld.poll() is not None:
                    raise LabError(f"flanneld on {name} stopped before a lease:\n{node.log_text()}")
                elif time.monotonic() - node.started > timeout:
                    raise LabError(f"flanneld on {name}: no lease after {timeout} s:\n{node.log_text()}")
            time.sleep(0.05)
        return leased

    def wait_for_exit(self, name: str, timeout: float = 60) -> tuple[int, str]:
        """flanneld's exit status and log, for a run that must fail."""
        node = self.nodes[name]
        assert node.flanneld is not None
        try:
            status = node.flanneld.wait(timeout=timeout)
        except subprocess.TimeoutExpired as timed_out:
            raise LabError(
                f"flanneld on {name} still runs after {timeout} s:\n{node.log_text()}"
            ) from timed_out
        node.flanneld = None
        return status, node.log_text()

    def logs(self) -> str:
        """Every node's latest flanneld log, for assertion messages."""
        return "\n".join(f"--- flanneld on {node.name}:\n{node.log_text()}" for node in self.nodes.values())

    def ip(self, name: str, *args: str) -> str:
        return run(["ip", "-n", self.nodes[name].netns, *args]).stdout

    def run_in(self, name: str, *command: str) -> subprocess.CompletedProcess[str]:
        """`command` in the node's network namespace, its status left to the caller."""
        return subprocess.run(["ip", "netns", "exec", self.nodes[name].netns, *command],
                              capture_output=True, text=True)  # fmt: skip

    def add_pod(self, name: str) -> Pod:
        """A pod's network namespace set up as the container runtime does: libcni (cnitool) runs
        the node's rendered conflist with the flannel plugin and Debian's plugins."""
        node = self.nodes[name]
        netns = f"{self.prefix}-pod-{name}-{len(self.pods)}"
        run(["ip", "netns", "add", netns])
        self.namespaces.append(netns)
        env = {
            "PATH": os.environ["PATH"],
            "CNI_PATH": f"{self.binaries['flannel'].parent}:{CNI_PLUGINS}",
            "NETCONFPATH": str(node.root / "etc/cni/net.d"),
        }
        network = json.loads(self.rendered.cni_conf)["name"]
        command = self.in_node(node, str(self.binaries["cnitool"]), "add", network, f"/run/netns/{netns}")
        added = subprocess.run(command, env=env, capture_output=True, text=True)
        if added.returncode != 0:
            raise LabError(f"cnitool add on {name} failed:\n{added.stdout}{added.stderr}")
        result = json.loads(added.stdout)
        if "ips" not in result:  # results before CNI 0.3.0 have ip4 instead
            raise LabError(f"cnitool add on {name}: a CNI {result.get('cniVersion')} result:\n{added.stdout}")
        (address,) = result["ips"]
        pod = Pod(
            name,
            netns,
            ipaddress.IPv4Interface(address["address"]),
            ipaddress.IPv4Address(address["gateway"]),
        )
        self.pods.append(pod)
        return pod

    def iptables(self, name: str, *args: str) -> str:
        """iptables in the node's namespace, in the flavour flanneld used: it runs `iptables` from
        PATH (github.com/coreos/go-iptables), legacy or nf_tables as this machine chose."""
        return run(["ip", "netns", "exec", self.nodes[name].netns, iptables_flavour(), "-w", *args]).stdout

    def udp_packets_out(self, name: str, interface: str, port: int = VXLAN_PORT) -> int:
        """UDP packets to `port` sent out of `interface` so far, counted by a rule of the lab's."""
        rule = ["OUTPUT", "-o", interface, "-p", "udp", "-m", "udp", "--dport", str(port)]
        if f"-A {' '.join(rule)}" not in self.iptables(name, "-S", "OUTPUT"):
            self.iptables(name, "-A", *rule)
        counted = re.search(
            rf"-A {re.escape(' '.join(rule))} -c (\d+) \d+", self.iptables(name, "-v", "-S", "OUTPUT")
        )
        assert counted, self.iptables(name, "-v", "-S", "OUTPUT")
        return int(counted[1])


def run(command: list[str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise LabError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr}")
    return done


def iptables_flavour() -> str:
    version = run(["iptables", "--version"]).stdout
    return "iptables-nft" if "nf_tables" in version else "iptables-legacy"


@contextmanager
def flannel_lab(folder: Path, cache: Path) -> Iterator[Lab]:
    """The bundled cluster's three nodes, flanneld started on each and holding its lease."""
    missing = missing_requirements()
    if missing:
        raise LabError("the flannel lab needs: " + "; ".join(missing))
    binaries = {program.binary: upstream.ensure_built(program, cache) for program in upstream.LAB_PROGRAMS}
    cluster = load_cluster(BUNDLED)
    prefix = f"pcl{os.getpid()}"
    logs = folder / "logs"
    logs.mkdir(parents=True)
    roots = {node.name: node_root(folder / node.name, node.name) for node in cluster.nodes}
    rendered = read_rendered(roots[cluster.init_node.name])
    for root in roots.values():
        _install_flannel_config(root, rendered)
    nodes = {
        node.name: LabNode(node.name, f"{prefix}-{node.name}", roots[node.name], node.address, logs)
        for node in cluster.nodes
    }
    namespaces: list[str] = []
    with ExitStack() as stack:
        stack.callback(_delete_namespaces, namespaces)
        _make_network(f"{prefix}-lan", list(nodes.values()), str(cluster.network.gateway), namespaces)
        stack.enter_context(_host_mount_points())
        endpoint = cluster.init_node.address.ip
        api = stack.enter_context(
            api_standin(fixed_secrets(), folder, endpoint, int(cluster.api_endpoint.rsplit(":", 1)[1]),
                        nodes[cluster.init_node.name].netns)
        )  # fmt: skip
        api.register_nodes(nodes, rendered.cluster_configuration)
        lab = Lab(cluster, rendered, nodes, api, binaries, folder, prefix, namespaces)
        stack.callback(lab.stop_flanneld, *nodes)
        for name in nodes:
            lab.start_flanneld(name)
        lab.lease_seconds = lab.wait_for_leases(nodes)
        yield lab


def _install_flannel_config(root: Path, rendered: Rendered) -> None:
    """What the DaemonSet puts on a node: the ConfigMap mounted at /etc/kube-flannel, and the
    conflist its install-cni container copies into /etc/cni/net.d."""
    for path in PRIVATE_PATHS:
        (root / path).mkdir(parents=True, exist_ok=True)
    (root / "etc/kube-flannel/net-conf.json").write_text(rendered.net_conf)
    (root / "etc/kube-flannel/cni-conf.json").write_text(rendered.cni_conf)
    (root / "etc/cni/net.d").mkdir(parents=True)
    (root / "etc/cni/net.d/10-flannel.conflist").write_text(rendered.cni_conf)


def _make_network(lan: str, nodes: list[LabNode], gateway: str, namespaces: list[str]) -> None:
    """The nodes' eth0 on one bridge that holds the rendered gateway's address, their default
    route as on the cards; the Wi-Fi node's default route is instead its wlan0's, through an
    access point. Nothing leaves the lab: every address is one of its namespaces'."""
    lan_ip = ["ip", "-n", lan]
    run(["ip", "netns", "add", lan])
    namespaces.append(lan)
    run([*lan_ip, "link", "add", "br0", "type", "bridge"])
    run([*lan_ip, "addr", "add", f"{gateway}/{nodes[0].address.network.prefixlen}", "dev", "br0"])
    run([*lan_ip, "link", "set", "br0", "up"])
    for node in nodes:
        run(["ip", "netns", "add", node.netns])
        namespaces.append(node.netns)
        ns = ["ip", "-n", node.netns]
        run([*ns, "link", "set", "lo", "up"])
        run([*ns, "link", "add", "eth0", "type", "veth", "peer", "name", node.name, "netns", lan])
        run([*ns, "addr", "add", str(node.address), "dev", "eth0"])
        run([*ns, "link", "set", "eth0", "up"])
        run([*lan_ip, "link", "set", node.name, "master", "br0", "up"])
        if node.name == WIFI_NODE:
            run([*ns, "link", "add", "wlan0", "type", "veth", "peer", "name", "wifi-ap", "netns", lan])
            run([*ns, "addr", "add", str(WLAN0), "dev", "wlan0"])
            run([*ns, "link", "set", "wlan0", "up"])
            run([*lan_ip, "addr", "add", f"{WIFI_GATEWAY}/{WLAN0.network.prefixlen}", "dev", "wifi-ap"])
            run([*lan_ip, "link", "set", "wifi-ap", "up"])
            run([*ns, "route", "add", "default", "via", WIFI_GATEWAY, "dev", "wlan0"])
        else:
            run([*ns, "route", "add", "default", "via", gateway, "dev", "eth0"])
        _apply_sysctls(node)


def _apply_sysctls(node: LabNode) -> None:
    """The card's net.* sysctls (its rendered sysctl.d), which belong to the namespace; the others
    would change this machine. Keys this kernel lacks (net.bridge.* without br_netfilter, which
    the cards load) are left out."""
    for conf in sorted((node.root / "etc/sysctl.d").glob("*.conf")):
        for line in conf.read_text().splitlines():
            key, _, value = (part.strip() for part in line.partition("="))
            if key.startswith("net.") and value and Path("/proc/sys", *key.split(".")).exists():
                run(["ip", "netns", "exec", node.netns, "sysctl", "-q", "-w", f"{key}={value}"])


@contextmanager
def _host_mount_points() -> Iterator[None]:
    """The fixed paths each node's folders are bound over must exist on this machine; any the
    lab makes (empty) it removes again."""
    made = []
    try:
        for path in PRIVATE_PATHS:
            target = Path("/") / path
            missing = [p for p in (target, *target.parents) if not p.exists()]
            target.mkdir(parents=True, exist_ok=True)
            made += missing
        yield
    finally:
        for target in sorted(made, key=lambda p: len(p.parts), reverse=True):
            target.rmdir()


def _delete_namespaces(names: list[str]) -> None:
    for name in reversed(names):
        subprocess.run(["ip", "netns", "delete", name], capture_output=True)
