"""A card picluster built boots to an SSH key login as its node, its root grows to fill the
card, the agent prepares the node and waits, and `picluster verify` passes what runs without
Kubernetes."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from builder.image.layout import ROOT_OFFSET
from tests.e2e.machines import (
    CARD_SIZE,
    Booted,
    Card,
    agent_state_when,
    boot,
    keep_console,
    picluster_verify,
    stamp_with_test_unit,
)

pytestmark = pytest.mark.e2e


EGRESS_UNIT = """[Unit]
Description=picluster test: count what containerd sends off the test network (10.0.2.0/24)
After=containerd.service
Before=picluster-agent.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/sbin/iptables -w -A OUTPUT ! -o lo ! -d 10.0.2.0/24 \\
    -m cgroup --path system.slice/containerd.service -m comment --comment picluster-test-egress

[Install]
WantedBy=multi-user.target
"""
"""containerd's cgroup exists only once it runs, so the rule comes after it and before the agent
(which imports, or pulls through containerd); the base's iptables is the nf_tables one."""


@pytest.fixture(scope="module")
def booted(card: Card) -> Iterator[Booted]:
    """The card as picluster builds it, with one test unit more: a counter of containerd's packets
    to anywhere but the test network."""
    image = card.work / "cp1-plain.img"
    stamp_with_test_unit(
        card.cluster_file,
        "cp1",
        "picluster-test-egress.service",
        EGRESS_UNIT,
        image,
        card.flannel_digest,
        *card.carried_files,
    )
    os.truncate(image, CARD_SIZE)
    with boot(card, image, "plain") as running:
        yield running


def test_the_card_boots_to_an_ssh_key_login_as_itself(booted: Booted) -> None:
    assert booted.ssh("hostname").stdout.strip() == "cp1"
    assert "inet 10.0.2.15/24" in booted.ssh("ip -4 -o addr show dev eth0").stdout
    assert booted.ssh("sudo -n true").returncode == 0, "passwordless sudo for the login user"
    assert booted.ssh("cat /etc/machine-id").stdout.strip() not in ("", "uninitialized")
    assert booted.ssh("findmnt -n -o FSTYPE /boot/firmware").stdout.strip() == "vfat"
    # the base build leaves udev's hardware database to the first boot (systemd-hwdb-update)
    assert booted.ssh("test -s /etc/udev/hwdb.bin && echo built").stdout.strip() == "built"


def test_the_root_filesystem_grows_to_fill_the_card(booted: Booted, card: Card) -> None:
    deadline = time.monotonic() + 120
    while booted.ssh("test -e /var/lib/picluster/root-grown").returncode != 0:
        assert time.monotonic() < deadline, f"root not grown; console: {keep_console(booted)}"
        time.sleep(5)
    root_bytes = int(booted.ssh("findmnt -n -b -o SIZE /").stdout)
    image_root = card.image.stat().st_size - ROOT_OFFSET
    assert root_bytes > image_root + 1.5 * 2**30, (root_bytes, image_root)
    partition_sectors = int(booted.ssh("cat /sys/class/block/vda2/size").stdout)
    assert partition_sectors * 512 > CARD_SIZE - ROOT_OFFSET - 2**20, "the partition reaches the card's end"


def test_the_agent_prepares_the_node_and_waits_for_packages(booted: Booted) -> None:
    """preflight passes but for the clock (nothing to synchronise with), nothing is stale, and
    with `packages: firstboot` the agent waits for the Kubernetes repository, retrying."""
    state = agent_state_when(booted, "waiting: packages")
    assert "Release.key" in state["last_error"]
    checks = {check["name"]: check["status"] for check in state["preflight"]}
    assert checks == {"swap": "ok", "modules": "ok", "sysctls": "ok", "cgroups": "ok", "interface": "ok",
                      "clock": "failed", "containerd": "ok"}, state["preflight"]  # fmt: skip
    assert state["links"] == []
    assert booted.ssh("systemctl is-active picluster-agent").stdout.strip() == "active"


def test_picluster_verify_passes_what_runs_without_kubernetes(booted: Booted) -> None:
    agent_state_when(booted, "waiting: packages")
    status, report = picluster_verify(booted)
    assert status == 0, report
    assert "0 failed" in report
    for check in (
        "hostname",
        "address on the cluster interface",
        "memory cgroup controller active",
        "module loaded vxlan",
        "containerd running, SystemdCgroup",
        "agent: status agrees with the node",
    ):
        assert f"\n{check} " in report and _cell(report, check) == "ok", check  # fmt: skip
    assert _cell(report, "kubelet running with --node-ip") == "skip"
    assert "Kubernetes is not installed on this node (agent phase 'waiting: packages'" in report
    assert "skipped on request (--skip time_synchronised)" in report


def _cell(report: str, check: str) -> str:
    (row,) = [line for line in report.splitlines() if line.startswith(check + " ")]
    return row.split()[-1]


def test_the_agent_imports_the_cards_images_into_the_cards_containerd_and_nothing_leaves(
    booted: Booted, card: Card
) -> None:
    """images: card: the real containerd (Debian's, arm64) holds each image under its reference with
    the digest the registry served at build time, though the node never reached a registry."""
    state = agent_state_when(booted, "waiting: packages")
    assert {entry["image"]: (entry["status"], entry["digest"]) for entry in state["images"]} == {
        reference: ("imported", digest) for reference, digest in card.carried.items()
    }
    listed = booted.ssh("sudo -n ctr --namespace k8s.io images ls").stdout.splitlines()[1:]
    held = {row.split()[0]: row.split()[2] for row in listed}  # with the CRI plugin's own names
    assert {reference: held.get(reference) for reference in card.carried} == card.carried
    assert _egress(booted) == 0, "containerd sent nothing off the test network"
    # the counter counts: a process in containerd's cgroup dials an address off the test network
    booted.ssh(
        "sudo -n sh -c 'echo $$ > /sys/fs/cgroup/system.slice/containerd.service/cgroup.procs && exec "
        'python3 -c "import socket; socket.create_connection((\\"192.0.2.1\\", 5000), 3)"\''
    )
    assert _egress(booted) > 0


def _egress(booted: Booted) -> int:
    rules = booted.ssh("sudo -n iptables -w -L OUTPUT -v -x -n").stdout.splitlines()
    (counted,) = [line for line in rules if "picluster-test-egress" in line]
    return int(counted.split()[0])
