"""The agent clears stale flannel.1 and cni0 links on a booted node, leaving other NICs alone."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.support.machines import (
    Booted,
    Card,
    agent_state_when,
    boot,
    picluster_verify,
    stamp_with_test_unit,
)

pytestmark = pytest.mark.e2e

STALE_LINKS_UNIT = """\
[Unit]
Description=TEST ONLY: leave flannel.1 and cni0 as an earlier cluster membership would
Wants=sys-subsystem-net-devices-eth0.device
After=sys-subsystem-net-devices-eth0.device
Before=picluster-agent.service

[Service]
Type=oneshot
ExecStart=ip link add flannel.1 type vxlan id 1 dstport 8472 local 10.0.2.15 dev eth0 nolearning
ExecStart=ip addr add 10.244.1.0/32 dev flannel.1
ExecStart=ip addr add 10.244.9.0/32 dev flannel.1
ExecStart=ip link add cni0 type bridge
ExecStart=ip addr add 10.99.0.1/24 dev cni0

[Install]
WantedBy=multi-user.target
"""


@pytest.fixture(scope="module")
def booted_with_stale_links(card: Card) -> Iterator[Booted]:
    """The same card with a test-only unit that leaves a stale flannel.1 (two addresses) and a
    cni0 with a foreign address before the agent starts, booted with a second NIC (eth1)."""
    image = card.work / "cp1-stale-links.img"
    stamp_with_test_unit(
        card.cluster_file,
        "cp1",
        "picluster-test-stale-links.service",
        STALE_LINKS_UNIT,
        image,
        card.flannel_digest,
    )
    second_nic = ["-netdev", "user,id=other,restrict=on", "-device", "virtio-net-pci,netdev=other"]
    with boot(card, image, "stale-links", second_nic) as running:
        yield running


def test_the_agent_clears_stale_links_on_a_booted_node(booted_with_stale_links: Booted) -> None:
    booted = booted_with_stale_links
    state = agent_state_when(booted, "waiting: packages")
    links = {record["target"]: record for record in state["links"]}
    assert set(links) == {"flannel.1", "cni0"}, state["links"]
    assert all(record["action"] == "deleted" for record in links.values())
    shown = json.loads(booted.ssh("ip -j addr show").stdout)
    names = {link["ifname"] for link in shown}
    assert "flannel.1" not in names and "cni0" not in names
    assert {"lo", "eth0", "eth1"} <= names  # the second NIC is untouched
    status, report = picluster_verify(booted)
    assert status == 0, report
