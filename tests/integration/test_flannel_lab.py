"""The real flanneld v0.10.0, driven by exactly what picluster renders, in a lab of the bundled
cluster (tests/support/flannel_lab.py): each seed failure reproduced with the real program,
and picluster's fix for it shown to cure it.

- "pod cidr not assigned" (second seed): kubeadm not given the pod network; picluster's
  ClusterConfiguration always carries networking.podSubnet.
- "link has incompatible addresses" (first seed): a rejoined node's flannel.1 holding an earlier
  lease too; picluster's agent runs clean-links before it joins.
- wlan0 chosen over eth0 (first seed): picluster's DaemonSet runs flanneld with --iface.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from itertools import permutations
from pathlib import Path

import pytest

from builder.errors import UserError
from builder.image.context import default_cache
from tests.support.agent import agent_command
from tests.support.api_standin import api_standin
from tests.support.flannel_lab import WIFI_NODE, WLAN0, Lab, LabError, Pod, flannel_lab
from tests.support.project import file_contents, fixed_secrets

pytestmark = pytest.mark.integration

ANNOTATION = "flannel.alpha.coreos.com/"
SEED_INCOMPATIBLE = (
    "Error registering network: failed to configure interface flannel.1: failed to ensure address of "
    "interface flannel.1: link has incompatible addresses. Remove additional addresses and try again."
)
"""The first seed's error, word for word."""
EARLIER_LEASE = "10.244.9.0/32"
"""flannel.1's address from a membership before `kubeadm reset`: a lease this node no longer has."""


@dataclass
class NotStarted:
    reason: str
    told: bool = False


@pytest.fixture(scope="module")
def started(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab | NotStarted]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (make test runs as root)")
    with ExitStack() as stack:
        try:
            made: Lab | NotStarted = stack.enter_context(
                flannel_lab(tmp_path_factory.mktemp("flannel-lab"), default_cache())
            )
        except LabError as error:
            made = NotStarted(str(error))
        except UserError as error:
            made = NotStarted(error.render())
        yield made


@pytest.fixture
def lab(started: Lab | NotStarted) -> Lab:
    return running(started)


def running(started: Lab | NotStarted) -> Lab:
    """The lab; when it could not start, the first test says why in full and the others point to it."""
    if isinstance(started, NotStarted):
        told, started.told = started.told, True
        pytest.fail(
            "the flannel lab did not start (the first error above says why)" if told else started.reason,
            pytrace=False,
        )
    return started


@pytest.fixture(scope="module")
def pods(started: Lab | NotStarted) -> list[Pod]:
    lab = running(started)
    return [lab.add_pod(name) for name in lab.nodes]


def pod_subnet(lab: Lab) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(lab.rendered.cluster_configuration["networking"]["podSubnet"])


def lease(lab: Lab, name: str) -> ipaddress.IPv4Interface:
    """The node's lease as subnet.env states it: the subnet's first address and its prefix."""
    return ipaddress.IPv4Interface(lab.nodes[name].subnet_env()["FLANNEL_SUBNET"])


def addresses(lab: Lab, name: str, link: str) -> list[str]:
    (shown,) = json.loads(lab.ip(name, "-j", "addr", "show", "dev", link))
    return [f"{a['local']}/{a['prefixlen']}" for a in shown["addr_info"] if a["family"] == "inet"]


def agent(lab: Lab, name: str, *args: str) -> subprocess.CompletedProcess[str]:
    """picluster's agent in the node's namespace, on the node's rendered files."""
    done = lab.run_in(name, *agent_command(lab.nodes[name].root, *args))
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def ping(lab: Lab, source: str, target: ipaddress.IPv4Address, count: int = 2) -> None:
    command = ["ping", "-c", str(count), "-i", "0.2", "-W", "2", str(target)]
    pinged = subprocess.run(["ip", "netns", "exec", source, *command], capture_output=True, text=True)
    assert pinged.returncode == 0, f"{source} -> {target}:\n{pinged.stdout}{pinged.stderr}\n{lab.logs()}"


def test_each_lease_is_its_nodes_pod_cidr_and_the_node_carries_flannels_annotations(lab: Lab) -> None:
    for name, node in lab.nodes.items():
        stored = lab.api.node(name)
        annotations = stored["metadata"]["annotations"]
        (flannel_1,) = json.loads(lab.ip(name, "-j", "link", "show", "dev", "flannel.1"))
        assert lease(lab, name).network == ipaddress.IPv4Network(stored["spec"]["podCIDR"]), lab.logs()
        assert node.subnet_env()["FLANNEL_NETWORK"] == str(pod_subnet(lab))
        assert annotations[ANNOTATION + "backend-type"] == "vxlan"
        assert json.loads(annotations[ANNOTATION + "backend-data"]) == {"VtepMAC": flannel_1["address"]}
        assert annotations[ANNOTATION + "public-ip"] == str(node.address.ip)
        assert annotations[ANNOTATION + "kube-subnet-manager"] == "true"
    assert sorted(lab.api.node(name)["spec"]["podCIDR"] for name in lab.nodes) == [
        "10.244.0.0/24", "10.244.1.0/24", "10.244.2.0/24"
    ]  # fmt: skip


def test_without_the_pod_subnet_flanneld_stops_with_pod_cidr_not_assigned(lab: Lab, tmp_path: Path) -> None:
    """The second seed: a ClusterConfiguration without networking.podSubnet, as `kubeadm init`
    without --pod-network-cidr makes, leaves every node without a podCIDR."""
    stripped = copy.deepcopy(lab.rendered.cluster_configuration)
    del stripped["networking"]["podSubnet"]
    control_plane = lab.nodes[lab.cluster.init_node.name]
    with api_standin(fixed_secrets(), tmp_path, control_plane.address.ip, netns=control_plane.netns) as bare:
        bare.register_nodes(lab.nodes, stripped)
        lab.stop_flanneld("w1")
        try:
            lab.start_flanneld("w1", api=bare)
            status, log = lab.wait_for_exit("w1")
        finally:
            lab.start_flanneld("w1")
            lab.wait_for_lease("w1")
    assert status != 0 and 'node "w1" pod cidr not assigned' in log, log


def test_clean_links_clears_a_flannel_1_left_with_two_addresses_and_flanneld_runs_again(lab: Lab) -> None:
    """The first seed: a node reset and rejoined keeps flannel.1 with its earlier lease."""
    name = "w2"
    lab.stop_flanneld(name)
    lab.ip(name, "addr", "add", EARLIER_LEASE, "dev", "flannel.1")
    lab.start_flanneld(name)
    status, log = lab.wait_for_exit(name)
    assert status != 0 and SEED_INCOMPATIBLE in log, log

    cleaned = agent(lab, name, "clean-links")  # before the join, as the agent runs it
    lab.start_flanneld(name)
    subnet = lab.wait_for_lease(name)
    assert re.search(r"flannel\.1 +deleted +left from an earlier membership", cleaned.stdout), cleaned.stdout
    assert ipaddress.IPv4Interface(subnet["FLANNEL_SUBNET"]).network == ipaddress.IPv4Network(
        lab.api.node(name)["spec"]["podCIDR"]
    )
    assert addresses(lab, name, "flannel.1") == [f"{lease(lab, name).network.network_address}/32"]


def test_on_a_healthy_member_clean_links_changes_nothing_and_flanneld_keeps_its_lease(
    lab: Lab, pods: list[Pod]
) -> None:
    name = "w1"
    root = lab.nodes[name].root
    (root / "etc/kubernetes").mkdir(exist_ok=True)
    (root / "etc/kubernetes/kubelet.conf").write_text("# STAND-IN for the kubeconfig kubeadm join writes\n")

    def state() -> tuple[object, ...]:
        return (addresses(lab, name, "flannel.1"), lab.ip(name, "-j", "link", "show", "dev", "flannel.1"),
                addresses(lab, name, "cni0"), file_contents(root / "run/flannel"),
                file_contents(root / "var/lib/cni/networks"))  # fmt: skip

    before = state()
    cleaned = agent(lab, name, "clean-links")
    assert "nothing stale" in cleaned.stdout, cleaned.stdout
    assert state() == before
    held = lease(lab, name)
    lab.restart_flanneld(name)
    assert lease(lab, name) == held, lab.logs()
    assert addresses(lab, name, "flannel.1") == before[0]
    w1_pod, other = (next(p for p in pods if p.node == name), next(p for p in pods if p.node != name))
    ping(lab, w1_pod.netns, other.address.ip)


def test_on_the_wifi_node_flanneld_registers_eth0_and_vxlan_leaves_through_it(lab: Lab) -> None:
    node = lab.nodes[WIFI_NODE]
    assert lab.run_in(WIFI_NODE, "ip", "route", "show", "default").stdout.split()[4] == "wlan0"
    public_ip = lab.api.node(WIFI_NODE)["metadata"]["annotations"][ANNOTATION + "public-ip"]
    assert public_ip == str(node.address.ip), lab.logs()
    assert f"Using interface with name eth0 and address {node.address.ip}" in node.log_text()
    sent = {link: lab.udp_packets_out(WIFI_NODE, link) for link in ("eth0", "wlan0")}
    for other in lab.nodes:
        if other != WIFI_NODE:
            ping(lab, node.netns, lease(lab, other).network.network_address)  # its flannel.1
    assert lab.udp_packets_out(WIFI_NODE, "eth0") >= sent["eth0"] + 4
    assert lab.udp_packets_out(WIFI_NODE, "wlan0") == sent["wlan0"]


def test_without_iface_flanneld_on_the_wifi_node_registers_wlan0(lab: Lab) -> None:
    """What picluster's --iface prevents: flannel picks the default route's interface."""
    without_iface = tuple(arg for arg in lab.rendered.flanneld_args if not arg.startswith("--iface"))
    assert without_iface != lab.rendered.flanneld_args
    try:
        lab.restart_flanneld(WIFI_NODE, without_iface)
        public_ip = lab.api.node(WIFI_NODE)["metadata"]["annotations"][ANNOTATION + "public-ip"]
        log = lab.nodes[WIFI_NODE].log_text()
    finally:
        lab.restart_flanneld(WIFI_NODE)
    assert public_ip == str(WLAN0.ip), log
    assert f"Using interface with name wlan0 and address {WLAN0.ip}" in log


def test_pods_get_an_address_in_their_nodes_lease_with_cni0_as_gateway(lab: Lab, pods: list[Pod]) -> None:
    for pod in pods:
        held = lease(lab, pod.node)
        assert pod.address.ip in held.network and pod.address.network == held.network
        assert pod.gateway == held.ip
        assert str(held) in addresses(lab, pod.node, "cni0")


def test_pods_on_different_nodes_ping_each_other_over_vxlan_on_the_cluster_interface(
    lab: Lab, pods: list[Pod]
) -> None:
    iface = lab.cluster.flannel.iface
    sent = {name: lab.udp_packets_out(name, iface) for name in lab.nodes}
    for source, target in permutations(pods, 2):
        ping(lab, source.netns, target.address.ip)
    for name in lab.nodes:
        # each node's pod pinged two others (2 requests each) and answered two (2 replies each)
        assert lab.udp_packets_out(name, iface) >= sent[name] + 8, name


def test_ip_masq_rules_for_the_pod_subnet(lab: Lab) -> None:
    """network/iptables.go MasqRules (with --ip-masq) and ForwardRules (always)."""
    network = pod_subnet(lab)
    for name in lab.nodes:
        subnet = lease(lab, name).network
        wanted = {
            ("nat", f"-A POSTROUTING -s {network} -d {network} -j RETURN"),
            ("nat", f"-A POSTROUTING -s {network} ! -d 224.0.0.0/4 -j MASQUERADE"),
            ("nat", f"-A POSTROUTING ! -s {network} -d {subnet} -j RETURN"),
            ("nat", f"-A POSTROUTING ! -s {network} -d {network} -j MASQUERADE"),
            ("filter", f"-A FORWARD -s {network} -j ACCEPT"),
            ("filter", f"-A FORWARD -d {network} -j ACCEPT"),
        }
        deadline = time.monotonic() + 10  # flanneld writes them from a goroutine of their own
        while True:
            rules = {
                (table, line)
                for table in ("nat", "filter")
                for line in lab.iptables(name, "-t", table, "-S").splitlines()
            }
            if wanted <= rules or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert wanted <= rules, f"{name} lacks {sorted(wanted - rules)}:\n{lab.logs()}"
