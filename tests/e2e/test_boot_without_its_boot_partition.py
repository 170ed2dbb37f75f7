"""A card whose boot partition never appears still boots and waits: nothing needs a keyboard."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from builder.image.base import ensure_base
from builder.spec.load import load_cluster
from tests.support.machines import Booted, Card, agent_state_when, boot, quiet_context

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def booted_without_its_boot_partition(card: Card) -> Iterator[Booted]:
    """The card with its FAT partition relabelled, so /dev/disk/by-label/RASPIFIRM never
    appears: as on a loaded machine where udev names the device too late."""
    cluster = load_cluster(card.cluster_file)
    base = ensure_base(cluster, quiet_context())
    image = card.work / "cp1-no-boot-label.img"
    subprocess.run(["cp", "--sparse=always", str(card.image), str(image)], check=True)
    subprocess.run(["mlabel", "-i", base.layout.boot_target(image), "::NOTFIRM"], check=True,
                   env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})  # fmt: skip
    with boot(card, image, "no-boot-label") as running:
        yield running


def test_a_missing_boot_partition_delays_and_fails_nothing(booted_without_its_boot_partition: Booted) -> None:
    """/boot/firmware is not needed to boot: without it the node still reaches SSH and the
    agent, and nothing waits in an emergency shell for a keyboard."""
    booted = booted_without_its_boot_partition
    assert booted.ssh("findmnt -n /boot/firmware").stdout == ""
    assert booted.ssh("systemctl is-active boot-firmware.mount").stdout.strip() != "active"
    state = agent_state_when(booted, "waiting: packages")
    assert {check["name"]: check["status"] for check in state["preflight"]}["interface"] == "ok"
    running = booted.ssh("systemctl is-system-running").stdout.strip()
    assert running in ("running", "degraded", "starting"), running
