"""What a broken Pi cluster gets wrong, checked on each booted node over SSH.

Each test's docstring is the check's name in `picluster verify`'s table; each failure says what
is wrong and, after `fix:`, the command or file that fixes it. The checks taking a module, sysctl
or kernel_arg run once for each the node's own node.json lists (conftest.py).
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import pytest

from builder.spec.model import Cluster, Node


def ip_json(host: Any, *args: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = json.loads(host.check_output("ip -j " + " ".join(args)) or "[]")
    return result


def ipv4(link: dict[str, Any]) -> list[ipaddress.IPv4Interface]:
    return [
        ipaddress.IPv4Interface(f"{a['local']}/{a['prefixlen']}")
        for a in link.get("addr_info", [])
        if a.get("family") == "inet"
    ]


def test_hostname(host: Any, node: Node) -> None:
    """hostname"""
    actual = host.check_output("hostname")
    assert actual == node.name, (
        f"hostname is {actual!r}, not {node.name!r}; fix: rebuild and reflash this card"
    )


ADDRESS_FILES = {
    "debian": "/etc/systemd/network/10-cluster.network, then sudo networkctl reload",
    "raspios": "/etc/NetworkManager/system-connections/picluster-cluster.nmconnection, then sudo nmcli "
    "connection reload",
}
"""Where a card keeps its address: networkd's file on the Debian base, NetworkManager's keyfile on a
Raspberry Pi OS one (base.image)."""


def test_address(host: Any, node: Node, cluster: Cluster) -> None:
    """address on the cluster interface"""
    iface = cluster.flannel.iface
    (link,) = ip_json(host, "addr", "show", "dev", iface)
    held = ipv4(link)
    assert node.address in held, (
        f"{iface} holds {', '.join(map(str, held)) or 'no address'}, not {node.address}; "
        f"fix: check {ADDRESS_FILES[cluster.flavour]}"
    )


def test_default_route(host: Any, cluster: Cluster) -> None:
    """default route"""
    routes = ip_json(host, "-4", "route", "show", "default")
    gateways = [(r.get("gateway"), r.get("dev")) for r in routes]
    wanted = (str(cluster.network.gateway), cluster.flannel.iface)
    assert wanted in gateways, (
        f"default routes are {gateways or 'none'}, expected via {wanted[0]} dev {wanted[1]}"
    )


def test_dns(host: Any, cluster: Cluster) -> None:
    """DNS servers"""
    resolv = host.file("/etc/resolv.conf").content_string
    servers = [line.split()[1] for line in resolv.splitlines() if line.startswith("nameserver")]
    wanted = [str(address) for address in cluster.network.dns]
    assert servers == wanted, f"/etc/resolv.conf names {servers}, expected {wanted} (network.dns)"


def test_ssh_key_login(host: Any, cluster: Cluster) -> None:
    """SSH: key login only"""
    settings = host.check_output("sudo -n sshd -T").lower().splitlines()
    assert "passwordauthentication no" in settings, (
        "sshd accepts passwords; fix: reflash (sshd_config.d/picluster.conf)"
    )
    keys = host.file("/etc/ssh/picluster_authorized_keys").content_string
    missing = [key for key in cluster.access.ssh_authorized_keys if key.split()[1] not in keys]
    assert not missing, f"{len(missing)} key(s) from access.ssh_authorized_keys are not authorised"


def test_time_synchronised(host: Any) -> None:
    """time synchronised"""
    synced = host.check_output("timedatectl show -p NTPSynchronized --value")
    assert synced == "yes", (
        "the clock is not synchronised; a Pi has no RTC and TLS fails with a wrong clock; "
        "fix: make network.ntp reachable, see timedatectl timesync-status"
    )


def test_cgroup_flags(host: Any, kernel_arg: str) -> None:
    """cmdline carries"""
    cmdline = host.file("/proc/cmdline").content_string.split()
    assert kernel_arg in cmdline, (
        f"/proc/cmdline lacks {kernel_arg}; fix: add it to /boot/firmware/cmdline.txt "
        "(and /etc/default/raspi-extra-cmdline), reboot"
    )


def test_memory_cgroup(host: Any) -> None:
    """memory cgroup controller active"""
    controllers = host.file("/sys/fs/cgroup/cgroup.controllers").content_string.split()
    assert "memory" in controllers, (
        f"cgroup controllers are {controllers}; fix: the cgroup flags, then reboot"
    )


def test_swap_off(host: Any) -> None:
    """swap off"""
    swaps = host.file("/proc/swaps").content_string.splitlines()[1:]
    assert not swaps, f"swap in use: {swaps}; fix: sudo swapoff -a && sudo systemctl mask swap.target"


def test_module_loaded(host: Any, module: str) -> None:
    """module loaded"""
    assert host.file(f"/sys/module/{module}").is_directory, (
        f"{module} is not loaded; fix: sudo modprobe {module} (and check /etc/modules-load.d/kubernetes.conf)"
    )


def test_sysctl(host: Any, sysctl: str) -> None:
    """sysctl"""
    key, _, wanted = sysctl.partition("=")
    value = host.file("/proc/sys/" + key.replace(".", "/")).content_string.strip()
    assert value == wanted, (
        f"{key} = {value}; fix: sudo sysctl -w {sysctl} (and check /etc/sysctl.d/90-kubernetes.conf)"
    )


def test_containerd(host: Any) -> None:
    """containerd running, SystemdCgroup"""
    service = host.service("containerd")
    assert service.is_running, "containerd is not running; fix: sudo systemctl restart containerd"
    config = host.check_output("sudo -n containerd config dump")
    assert "SystemdCgroup = true" in config, "containerd does not use the systemd cgroup driver; fix: reflash"


def test_agent_preflight(host: Any, agent_state: dict[str, Any]) -> None:
    """agent: preflight nothing blocking"""
    assert agent_state["preflight"], "the agent has not run its preflight; see journalctl -u picluster-agent"
    blocking = [
        f"{c['name']}: {c['detail']}" for c in agent_state["preflight"] if c.get("blocks_join") == "true"
    ]
    assert not blocking, f"preflight failed: {'; '.join(blocking)}"


def test_agent_status(host: Any, agent_state: dict[str, Any]) -> None:
    """agent: status agrees with the node"""
    phase = agent_state["phase"]
    assert host.service("picluster-agent").is_enabled, "fix: sudo systemctl enable picluster-agent"
    member = host.file("/etc/kubernetes/kubelet.conf").exists
    restart = "fix: sudo systemctl restart picluster-agent (it resets and joins again)"
    if phase == "joined":
        assert member, (
            f"the agent says joined, but /etc/kubernetes/kubelet.conf is gone (a reset?); {restart}"
        )
        return
    assert agent_state["last_error"], f"phase '{phase}' without a reason"
    # short of joined the agent is still at work (it waits, it never exits on a failure)
    assert host.service("picluster-agent").is_running, (
        f"the agent says '{phase}' but is not running, so nothing will move it on; see "
        f"journalctl -u picluster-agent; {restart}"
    )


@pytest.mark.control_plane
def test_certificate_renewal(host: Any) -> None:
    """certs: daily renewal timer on"""
    enable = "fix: sudo systemctl enable --now picluster-certs.timer"
    assert host.service("picluster-certs.timer").is_enabled, (
        f"the timer that renews kubeadm's certificates is off; {enable}"
    )
    active = host.run("systemctl is-active picluster-certs.timer").stdout.strip()
    assert active == "active", (
        f"picluster-certs.timer is {active}, so kubeadm's certificates lapse in a year; {enable}"
    )


@pytest.mark.control_plane
def test_etcd_snapshots(host: Any, agent_state: dict[str, Any]) -> None:
    """etcd: daily snapshot timer on, the last snapshot taken"""
    enable = "fix: sudo systemctl enable --now picluster-etcd-snapshot.timer"
    active = host.run("systemctl is-active picluster-etcd-snapshot.timer").stdout.strip()
    assert active == "active", (
        f"picluster-etcd-snapshot.timer is {active}, so no etcd snapshot is taken to restore from; {enable}"
    )
    failed = agent_state.get("snapshot", {}).get("error")
    assert not failed, f"the last etcd snapshot failed: {failed}; fix: sudo picluster-agent snapshot"


def test_agent_joined(host: Any, agent_state: dict[str, Any], kubernetes: None) -> None:
    """agent: joined, no failed attempt outstanding"""
    assert agent_state["phase"] == "joined", (
        f"agent phase is '{agent_state['phase']}': {agent_state['last_error']}; "
        "see journalctl -u picluster-agent"
    )
    assert agent_state["last_error"] is None, f"last error: {agent_state['last_error']}"


def test_kubelet_node_ip(host: Any, node: Node, kubernetes: None) -> None:
    """kubelet running with --node-ip"""
    assert host.service("kubelet").is_running, "kubelet is not running; see journalctl -u kubelet"
    arguments = host.check_output("pgrep -a -x kubelet").split()
    wanted = f"--node-ip={node.address.ip}"
    assert wanted in arguments, (
        f"kubelet runs without {wanted}; fix: kubeletExtraArgs in /etc/picluster/kubeadm.yaml"
    )


def flannel_lease(host: Any) -> ipaddress.IPv4Network:
    env = host.file("/run/flannel/subnet.env").content_string
    values = dict(line.split("=", 1) for line in env.splitlines() if "=" in line)
    return ipaddress.IPv4Interface(values["FLANNEL_SUBNET"]).network


def vxlan_only(cluster: Cluster) -> None:
    if cluster.flannel.backend != "vxlan":
        pytest.skip(f"flannel.backend is {cluster.flannel.backend}: no flannel.1, no VXLAN on UDP 8472")


def test_flannel_link(host: Any, node: Node, cluster: Cluster, kubernetes: None) -> None:
    """flannel.1: one address, its lease, on the interface"""
    vxlan_only(cluster)
    links = ip_json(host, "-d", "addr", "show", "dev", "flannel.1")
    assert links, "flannel.1 does not exist; see kubectl -n kube-system logs -l app=flannel"
    addresses = ipv4(links[0])
    fix = "fix: sudo ip link delete flannel.1, then delete this node's flannel pod"
    assert len(addresses) == 1, (
        f"flannel.1 has {len(addresses)} addresses (link has incompatible addresses); {fix}"
    )
    (address,) = addresses
    assert address.ip in cluster.cluster.pod_subnet, f"flannel.1's {address} is outside pod_subnet; {fix}"
    lease = flannel_lease(host)
    assert address.ip == lease.network_address, f"flannel.1's {address} is not its lease {lease}; {fix}"
    local = links[0]["linkinfo"]["info_data"].get("local")
    assert local == str(node.address.ip), f"flannel.1's VXLAN local address is {local}; {fix}"


def test_vxlan_port(host: Any, cluster: Cluster, kubernetes: None) -> None:
    """UDP 8472 bound (VXLAN)"""
    vxlan_only(cluster)
    ports = {
        int(line.split()[1].split(":")[1], 16)
        for line in host.file("/proc/net/udp").content_string.splitlines()[1:]
    }
    assert 8472 in ports, (
        "nothing listens on UDP 8472; fix: sudo ip link delete flannel.1; restart flannel's pod"
    )


def test_cni_bridge(host: Any, kubernetes: None) -> None:
    """cni0 inside the node's pod CIDR"""
    links = ip_json(host, "addr", "show", "dev", "cni0") if host.interface("cni0").exists else []
    if not links:
        # containerd gives each pod on the pod network a namespace named cni-...; the bridge
        # plugin makes cni0 for the first of them
        pods = [name for name in host.check_output("ls -1 /run/netns 2>/dev/null || true").split()
                if name.startswith("cni-")]  # fmt: skip
        assert not pods, (
            f"{len(pods)} pods have a network namespace but there is no cni0; fix: check "
            "/etc/cni/net.d/10-flannel.conflist, /run/flannel/subnet.env and journalctl -u containerd"
        )
        pytest.skip("no pod on this node uses the pod network yet (cni0 comes with the first one)")
    lease = flannel_lease(host)
    foreign = [a for a in ipv4(links[0]) if a.ip not in lease]
    assert not foreign, f"cni0 holds {foreign}, outside {lease}; fix: sudo ip link delete cni0"


def kubectl_json(host: Any, *args: str) -> dict[str, Any]:
    output = host.check_output(
        "sudo -n kubectl --kubeconfig /etc/kubernetes/admin.conf -o json " + " ".join(args)
    )
    result: dict[str, Any] = json.loads(output)
    return result


@pytest.mark.control_plane
def test_every_node_ready(host: Any, cluster: Cluster, kubernetes: None) -> None:
    """cluster: every node Ready"""
    items = kubectl_json(host, "get", "nodes")["items"]
    ready = {
        item["metadata"]["name"]
        for item in items
        for condition in item["status"]["conditions"]
        if condition["type"] == "Ready" and condition["status"] == "True"
    }
    missing = sorted({n.name for n in cluster.nodes} - ready)
    assert not missing, f"not Ready: {', '.join(missing)}; on each, see picluster-agent status"


@pytest.mark.control_plane
def test_flannel_daemonset(host: Any, cluster: Cluster, kubernetes: None) -> None:
    """cluster: flannel --iface and pinned image"""
    sets = kubectl_json(host, "-n", "kube-system", "get", "daemonsets", "-l", "app=flannel")["items"]
    assert sets, (
        "no flannel DaemonSet; fix: sudo kubectl --kubeconfig /etc/kubernetes/admin.conf "
        "apply -f /etc/picluster/kube-flannel.yml"
    )
    for daemonset in sets:
        (flanneld,) = [
            c for c in daemonset["spec"]["template"]["spec"]["containers"] if c["name"] == "kube-flannel"
        ]
        assert f"--iface={cluster.flannel.iface}" in flanneld["args"], (
            f"{daemonset['metadata']['name']}: no --iface"
        )
        assert flanneld["image"].startswith("localhost/picluster/flannel:v0.10.0-arm64@sha256:"), flanneld[
            "image"
        ]
