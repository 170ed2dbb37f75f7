"""clean-links and the interface check on real netlink, in a network namespace per test.

This kernel has no `dummy` link type, so eth0 and wlan0 are each one end of a veth pair; to the
agent they are links with addresses, like a Pi's. flannel.1 is a real VXLAN link (VNI 1, port
8472) and cni0 a real bridge.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.agent import agent_command, node_root, state
from tests.support.project import AGENT_LIB

pytestmark = pytest.mark.integration

ETH0 = "192.168.50.10/24"  # cp1's address in the bundled cluster.yaml
WLAN0 = "192.168.1.50/24"


def ip(namespace: str, *args: str) -> str:
    return subprocess.run(["ip", "-n", namespace, *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def namespace() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (make test runs as root)")
    name = f"picluster-test-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot create a network namespace here: {made.stderr.strip()}")
    try:
        ip(name, "link", "set", "lo", "up")
        for link, address in (("eth0", ETH0), ("wlan0", WLAN0)):
            ip(name, "link", "add", link, "type", "veth", "peer", "name", f"{link}-peer")
            ip(name, "addr", "add", address, "dev", link)
            ip(name, "link", "set", link, "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=True)


def add_flannel(namespace: str, *addresses: str, local: str = "192.168.50.10") -> None:
    ip(namespace, "link", "add", "flannel.1", "type", "vxlan", "id", "1", "dstport", "8472",
       "local", local, "dev", "eth0", "nolearning")  # fmt: skip
    for address in addresses:
        ip(namespace, "addr", "add", address, "dev", "flannel.1")


def add_bridge(namespace: str, name: str, address: str) -> None:
    ip(namespace, "link", "add", name, "type", "bridge")
    ip(namespace, "addr", "add", address, "dev", name)


def links(namespace: str) -> dict[str, list[str]]:
    """Each link's IPv4 addresses, read back through netlink."""
    return {
        link["ifname"]: [f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"] if a["family"] == "inet"]
        for link in json.loads(ip(namespace, "-j", "addr", "show"))
    }


def agent(namespace: str, root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["ip", "netns", "exec", namespace, *agent_command(root, *args)], capture_output=True, text=True
    )
    assert done.returncode in (0, 1), done.stderr
    return done


def make_member(root: Path, lease: str) -> None:
    """What a joined node has: kubelet.conf, and the lease flanneld wrote."""
    (root / "etc/kubernetes").mkdir(parents=True)
    (root / "etc/kubernetes/kubelet.conf").write_text("kubelet.conf\n")
    (root / "run/flannel").mkdir(parents=True)
    subnet = ipaddress.IPv4Network(lease)
    (root / "run/flannel/subnet.env").write_text(
        f"FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET={subnet[1]}/{subnet.prefixlen}\n"
        "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
    )


def test_links_of_an_earlier_membership_go_and_nothing_else_moves(namespace: str, tmp_path: Path) -> None:
    root = node_root(tmp_path, "cp1")
    add_flannel(namespace, "10.244.1.0/32", "10.244.3.0/32")  # "link has incompatible addresses"
    add_bridge(namespace, "cni0", "10.99.0.1/24")
    add_bridge(namespace, "docker0", "172.17.0.1/16")  # unrelated: not ours to judge
    (root / "run/flannel").mkdir(parents=True)
    (root / "run/flannel/subnet.env").write_text(
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\n"
    )
    (root / "var/lib/cni/networks/cbr0").mkdir(parents=True)
    (root / "var/lib/cni/networks/cbr0/10.244.3.7").write_text("container id\n")
    before = links(namespace)

    done = agent(namespace, root, "clean-links")

    after = links(namespace)
    assert "flannel.1" not in after and "cni0" not in after
    untouched = {name: before[name] for name in ("lo", "eth0", "wlan0", "eth0-peer", "wlan0-peer", "docker0")}
    assert {name: after[name] for name in untouched} == untouched
    assert after["eth0"] == [ETH0] and after["wlan0"] == [WLAN0]
    assert not (root / "run/flannel/subnet.env").exists()
    assert not (root / "var/lib/cni/networks/cbr0").exists()
    assert "flannel.1" in done.stdout and "earlier membership" in done.stdout
    assert {record["target"] for record in state(root)["links"]} == {
        "flannel.1", "cni0", "/run/flannel/subnet.env", "/var/lib/cni/networks/cbr0"
    }  # fmt: skip

    again = agent(namespace, root, "clean-links")
    assert again.stdout.strip() == "clean-links: nothing stale"
    assert links(namespace) == after


def test_a_member_keeps_links_that_match_its_lease(namespace: str, tmp_path: Path) -> None:
    root = node_root(tmp_path, "cp1")
    make_member(root, "10.244.1.0/24")
    add_flannel(namespace, "10.244.1.0/32")
    add_bridge(namespace, "cni0", "10.244.1.1/24")
    (root / "var/lib/cni/networks/cbr0").mkdir(parents=True)
    (root / "var/lib/cni/networks/cbr0/10.244.1.5").write_text("container id\n")
    before = links(namespace)

    done = agent(namespace, root, "clean-links")

    assert done.stdout.strip() == "clean-links: nothing stale"
    assert links(namespace) == before
    assert (root / "run/flannel/subnet.env").exists() and (root / "var/lib/cni/networks/cbr0").exists()


def test_a_member_loses_links_that_disagree_with_its_lease(namespace: str, tmp_path: Path) -> None:
    root = node_root(tmp_path, "cp1")
    make_member(root, "10.244.1.0/24")
    add_flannel(namespace, "10.244.1.0/32", local="192.168.1.50")  # VXLAN bound to wlan0's address
    add_bridge(namespace, "cni0", "10.244.7.1/24")  # the gateway of an old pod CIDR
    (root / "var/lib/cni/networks/cbr0").mkdir(parents=True)
    (root / "var/lib/cni/networks/cbr0/10.244.7.9").write_text("container id\n")

    done = agent(namespace, root, "clean-links")

    assert "flannel.1" not in links(namespace) and "cni0" not in links(namespace)
    assert "VXLAN local address 192.168.1.50 is not eth0's 192.168.50.10" in done.stdout
    assert "address 10.244.7.1/24 is outside this node's pod CIDR 10.244.1.0/24" in done.stdout
    assert not (root / "var/lib/cni/networks/cbr0").exists()
    assert (root / "run/flannel/subnet.env").exists()  # the current lease stays


def test_dry_run_deletes_nothing(namespace: str, tmp_path: Path) -> None:
    root = node_root(tmp_path, "cp1")
    add_flannel(namespace, "10.244.1.0/32", "10.244.3.0/32")
    before = links(namespace)
    done = agent(namespace, root, "--dry-run", "clean-links")
    assert "would run ip link delete dev flannel.1" in done.stdout
    assert links(namespace) == before


CHECK_INTERFACE = """
import json, sys
from pathlib import Path
from agent.config import load_config
from agent.host import Host
from agent.preflight import check_interface
root = Path(sys.argv[1])
result = check_interface(Host(root), load_config(root / "etc/picluster/node.json"))
print(json.dumps([result.status, result.detail]))
"""


def check_interface_in(namespace: str, root: Path) -> list[str]:
    command = ["ip", "netns", "exec", namespace, sys.executable, "-c", CHECK_INTERFACE, str(root)]
    environment = {**os.environ, "PYTHONPATH": str(AGENT_LIB)}
    done = subprocess.run(command, capture_output=True, text=True, env=environment)
    assert done.returncode == 0, done.stderr
    result: list[str] = json.loads(done.stdout.splitlines()[-1])
    return result


def test_interface_check_raises_a_down_link_and_finds_its_address(namespace: str, tmp_path: Path) -> None:
    root = node_root(tmp_path, "cp1")
    ip(namespace, "link", "set", "eth0", "down")
    assert check_interface_in(namespace, root) == ["fixed", f"brought eth0 up; it holds {ETH0}"]
    assert check_interface_in(namespace, root) == ["ok", f"eth0 is up and holds {ETH0}"]
    ip(namespace, "addr", "flush", "dev", "eth0")
    status, detail = check_interface_in(namespace, root)
    assert status == "failed" and f"eth0 holds no IPv4 address, not {ETH0}" in detail
