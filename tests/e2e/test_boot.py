"""A card picluster built boots to an SSH key login as its node, its root grows to fill the
card, the agent prepares the node and waits, and `picluster verify` passes what runs without
Kubernetes."""

from __future__ import annotations

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
    on_a_3_gib_card,
    picluster_verify,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def booted(card: Card) -> Iterator[Booted]:
    with boot(card, on_a_3_gib_card(card, "plain"), "plain") as running:
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
