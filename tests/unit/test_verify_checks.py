"""The verify suite's checks themselves, against a node that answers from files in the test (the
suite's own runs over SSH are in the e2e tier)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from builder.cluster.verify_suite import conftest, test_node
from builder.spec.load import load_cluster
from builder.spec.model import Cluster
from tests.support.project import BUNDLED

UDP_WITHOUT_VXLAN = (
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
    "   0: 00000000:0044 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1 2\n"
)


@dataclass
class File:
    content_string: str = ""
    exists: bool = True
    is_directory: bool = False


@dataclass
class Service:
    is_enabled: bool = True
    is_running: bool = True


@dataclass
class Answer:
    stdout: str


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
    node_json: dict[str, Any] = field(default_factory=dict)
    modules: tuple[str, ...] = ()
    """Loaded, as /sys/module shows them."""
    proc: dict[str, str] = field(default_factory=dict)
    """/proc files, /proc/cmdline and /proc/sys/... among them."""
    links: str = "[]"
    """What `ip -j addr show` answers."""
    certs_timer: str = "active"
    """What `systemctl is-active picluster-certs.timer` answers; "disabled" when it is off."""
    snapshot_timer: str = "active"
    """What `systemctl is-active picluster-etcd-snapshot.timer` answers."""

    def file(self, path: str) -> File:
        if path == "/etc/kubernetes/kubelet.conf":
            return File(exists=self.kubelet_conf)
        if path == "/etc/picluster/node.json":
            return File(json.dumps(self.node_json))
        if path.startswith("/sys/module/"):
            return File(is_directory=path.removeprefix("/sys/module/") in self.modules)
        if path in self.proc:
            return File(self.proc[path])
        assert path == "/proc/net/udp", path
        return File(UDP_WITHOUT_VXLAN)

    def service(self, name: str) -> Service:
        if name == "picluster-certs.timer":
            return Service(is_enabled=self.certs_timer != "disabled")
        assert name == "picluster-agent", name
        return Service(is_running=self.agent_running)

    def run(self, command: str) -> Answer:
        timers = {
            "picluster-certs.timer": self.certs_timer,
            "picluster-etcd-snapshot.timer": self.snapshot_timer,
        }
        return Answer(f"{timers[command.removeprefix('systemctl is-active ')]}\n")

    def interface(self, name: str) -> Interface:
        return Interface(exists=False)

    def check_output(self, command: str) -> str:
        if command.startswith("ls -1 /run/netns"):
            return "\n".join(self.pod_namespaces)
        assert command.startswith("ip -j"), command
        return self.links if command.startswith("ip -j addr") else "[]"


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


@pytest.mark.parametrize(
    ("image", "fix"),
    [(None, "10-cluster.network, then sudo networkctl reload"),
     ({"url": "http://127.0.0.1/raspios.img.xz", "sha256": "a" * 64}, "picluster-cluster.nmconnection")],
)  # fmt: skip
def test_a_missing_address_names_the_file_the_cards_base_keeps_it_in(image: Any, fix: str) -> None:
    cluster = load_cluster(BUNDLED)
    if image is not None:
        cluster = cluster.model_copy(update={"base": cluster.base.model_copy(update={"image": image})})
    host = Node(links='[{"ifname": "eth0", "addr_info": []}]')
    with pytest.raises(AssertionError, match=f"eth0 holds no address, not .*; fix: check .*{fix}"):
        test_node.test_address(host=host, node=cluster.nodes[0], cluster=cluster)


def test_a_vxlan_node_without_its_port_fails() -> None:
    with pytest.raises(AssertionError, match="nothing listens on UDP 8472"):
        test_node.test_vxlan_port(host=Node(), cluster=cluster_with_backend("vxlan"), kubernetes=None)


def outcomes(host: Node, argument: str, check: Any) -> dict[str, str]:
    """Each case the suite collects for `argument` on one node, checked on `host`: ok, or the
    failure's first words."""
    node = load_cluster(BUNDLED).nodes[0]
    results = {}
    for case in conftest.kernel_needs_cases(argument, [node], lambda _: host):
        entry = case.values[1]
        try:
            check(host=host, **{argument: entry})
            results[entry] = "ok"
        except AssertionError as error:
            results[entry] = str(error).split(";")[0]
    return results


def test_the_kernels_needs_come_from_the_nodes_own_node_json() -> None:
    """What the node's card lists, not this checkout: one case for each, one more listed is one
    more checked."""
    needs = {
        "modules": ["overlay", "nf_conntrack"],
        "sysctls": {"net.ipv4.ip_forward": "1", "net.ipv4.conf.all.rp_filter": "2"},
        "args": ["cgroup_memory=1", "cgroup_enable=hugetlb"],
    }
    host = Node(
        node_json={"kernel_needs": needs},
        modules=("overlay",),
        proc={
            "/proc/sys/net/ipv4/ip_forward": "1\n",
            "/proc/sys/net/ipv4/conf/all/rp_filter": "1\n",
            "/proc/cmdline": "console=tty0 cgroup_memory=1\n",
        },
    )
    assert outcomes(host, "module", test_node.test_module_loaded) == {
        "overlay": "ok",
        "nf_conntrack": "nf_conntrack is not loaded",
    }
    assert outcomes(host, "sysctl", test_node.test_sysctl) == {
        "net.ipv4.ip_forward=1": "ok",
        "net.ipv4.conf.all.rp_filter=2": "net.ipv4.conf.all.rp_filter = 1",
    }
    assert outcomes(host, "kernel_arg", test_node.test_cgroup_flags) == {
        "cgroup_memory=1": "ok",
        "cgroup_enable=hugetlb": "/proc/cmdline lacks cgroup_enable=hugetlb",
    }


def test_a_card_whose_node_json_lists_no_kernel_needs_is_skipped_saying_reflash() -> None:
    node = load_cluster(BUNDLED).nodes[0]
    (case,) = conftest.kernel_needs_cases("module", [node], lambda _: Node(node_json={"node": {}}))
    (mark,) = case.marks
    assert mark.name == "skip" and "a card from an older picluster); reflash it" in mark.kwargs["reason"]


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


def test_a_control_plane_without_etcd_snapshots_fails_with_the_fix() -> None:
    test_node.test_etcd_snapshots(Node(), {"snapshot": {"file": "etcd-20261203T000000Z.db"}})
    with pytest.raises(AssertionError, match=r"systemctl enable --now picluster-etcd-snapshot\.timer"):
        test_node.test_etcd_snapshots(Node(snapshot_timer="inactive"), {})
    with pytest.raises(AssertionError, match="the last etcd snapshot failed: etcdctl exited with 1"):
        test_node.test_etcd_snapshots(Node(), {"snapshot": {"error": "etcdctl exited with 1"}})


def test_a_control_plane_whose_renewal_timer_is_off_fails_with_the_fix() -> None:
    test_node.test_certificate_renewal(Node())
    for state in ("disabled", "inactive"):
        with pytest.raises(AssertionError, match=r"systemctl enable --now picluster-certs\.timer"):
            test_node.test_certificate_renewal(Node(certs_timer=state))
