"""A Pi 5's card on Raspberry Pi OS (the stand-in base) comes up through its own network stack,
with containerd, without swap, and passes `picluster verify`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.machines import Booted, Card, agent_state_when, boot, on_a_4_gib_card, picluster_verify

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def booted_raspios(raspios_card: Card) -> Iterator[Booted]:
    with boot(raspios_card, on_a_4_gib_card(raspios_card, "pi5"), "raspios") as running:
        yield running


def test_a_pi5_on_raspberry_pi_os_comes_up_through_its_own_network_stack(booted_raspios: Booted) -> None:
    ssh = booted_raspios.ssh
    assert ssh("hostname").stdout.strip() == "cp1"
    assert "inet 10.0.2.15/24" in ssh("ip -4 -o addr show dev eth0").stdout
    assert ssh("systemctl is-active NetworkManager").stdout.strip() == "active"
    assert ssh("systemctl is-active systemd-networkd").stdout.strip() != "active"
    connection = ssh("nmcli -t -f GENERAL.CONNECTION device show eth0").stdout
    assert "picluster" in connection, connection


def test_a_pi5_on_raspberry_pi_os_has_containerd_and_no_swap_and_passes_preflight(
    booted_raspios: Booted,
) -> None:
    ssh = booted_raspios.ssh
    assert ssh("systemctl is-active containerd").stdout.strip() == "active"
    assert "SystemdCgroup = true" in ssh("sudo -n containerd config dump").stdout
    assert ssh("cat /proc/swaps").stdout.strip().splitlines()[1:] == [], "swap is on"
    state = agent_state_when(booted_raspios, "waiting: packages")
    checks = {check["name"]: check["status"] for check in state["preflight"]}
    assert checks == {"swap": "ok", "modules": "ok", "sysctls": "ok", "cgroups": "ok", "interface": "ok",
                      "clock": "failed", "containerd": "ok"}, state["preflight"]  # fmt: skip


def test_picluster_verify_passes_on_a_pi5_on_raspberry_pi_os(booted_raspios: Booted) -> None:
    agent_state_when(booted_raspios, "waiting: packages")
    status, report = picluster_verify(booted_raspios)
    assert status == 0, report
    assert "0 failed" in report and "containerd running, SystemdCgroup" in report
