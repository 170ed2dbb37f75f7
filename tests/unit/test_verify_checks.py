"""The verify suite's checks themselves, against a node that answers from files in the test (the
suite's own runs over SSH are in the e2e tier)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from builder.spec.load import load_cluster
from builder.spec.model import Cluster
from tests.conftest import BUNDLED
from tests.verify import test_node

UDP_WITHOUT_VXLAN = (
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
    "   0: 00000000:0044 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1 2\n"
)


@dataclass
class File:
    content_string: str = ""
    exists: bool = True


@dataclass
class Service:
    is_enabled: bool = True
    is_running: bool = True


@dataclass
class Interface:
    exists: bool


@dataclass
class Node:
    """Answers like testinfra's host: by default a node with no flannel.1, no cni0 and nothing
    on UDP 8472 (a healthy host-gw node, or one no pod has run on), its agent running."""

    kubelet_conf: bool = False
    agent_running: bool = True
    pod_namespaces: tuple[str, ...] = ()

    def file(self, path: str) -> File:
        if path == "/etc/kubernetes/kubelet.conf":
            return File(exists=self.kubelet_conf)
        assert path == "/proc/net/udp", path
        return File(UDP_WITHOUT_VXLAN)

    def service(self, name: str) -> Service:
        assert name == "picluster-agent", name
        return Service(is_running=self.agent_running)

    def interface(self, name: str) -> Interface:
        return Interface(exists=False)

    def check_output(self, command: str) -> str:
        if command.startswith("ls -1 /run/netns"):
            return "\n".join(self.pod_namespaces)
        assert command.startswith("ip -j"), command
        return "[]"


def cluster_with_backend(backend: str) -> Cluster:
    cluster = load_cluster(BUNDLED)
    return cluster.model_copy(update={"flannel": cluster.flannel.model_copy(update={"backend": backend})})


@pytest.mark.parametrize("check", [test_node.test_vxlan_port, test_node.test_flannel_link])
def test_a_host_gw_cluster_has_no_vxlan_to_check(check: Any) -> None:
    cluster = cluster_with_backend("host-gw")
    kwargs = {"host": Node(), "cluster": cluster, "kubernetes": None}
    if check is test_node.test_flannel_link:
        kwargs["node"] = cluster.nodes[0]
    with pytest.raises(pytest.skip.Exception, match=r"host-gw: no flannel\.1, no VXLAN on UDP 8472"):
        check(**kwargs)


def test_a_vxlan_node_without_its_port_fails() -> None:
    with pytest.raises(AssertionError, match="nothing listens on UDP 8472"):
        test_node.test_vxlan_port(host=Node(), cluster=cluster_with_backend("vxlan"), kubernetes=None)


def test_flannels_legacy_iptables_modules_are_checked() -> None:
    assert {"ip_tables", "iptable_nat", "iptable_filter"} <= set(test_node.MODULES)
    assert "net.bridge.bridge-nf-call-ip6tables" in test_node.SYSCTLS


def agent(phase: str, last_error: str | None = "waiting for something") -> dict[str, Any]:
    return {"phase": phase, "last_error": last_error, "preflight": []}


def test_the_agents_status_is_checked_against_the_node() -> None:
    test_node.test_agent_status(Node(kubelet_conf=True), agent("joined", None))
    test_node.test_agent_status(Node(), agent("waiting: packages"))
    with pytest.raises(AssertionError, match=r"kubelet\.conf is gone"):
        test_node.test_agent_status(Node(kubelet_conf=False), agent("joined", None))
    with pytest.raises(AssertionError, match="is not running, so nothing will move it on"):
        test_node.test_agent_status(Node(agent_running=False), agent("waiting: api-server"))


def test_no_cni0_is_a_skip_until_a_pod_uses_the_pod_network() -> None:
    with pytest.raises(pytest.skip.Exception, match="no pod on this node uses the pod network yet"):
        test_node.test_cni_bridge(Node(), kubernetes=None)
    with pytest.raises(AssertionError, match="2 pods have a network namespace but there is no cni0"):
        test_node.test_cni_bridge(Node(pod_namespaces=("cni-1a2b", "cni-3c4d")), kubernetes=None)
