"""A pi3 worker's card, booted by QEMU's raspi3b from its own FAT partition as a Pi 3's firmware
boots it."""

from __future__ import annotations

import os
import time
from pathlib import Path, PurePosixPath

import pytest
import yaml

from builder.image.layout import ROOT_OFFSET
from builder.render.plan import FileEntry
from tests.support.host import require_tools
from tests.support.machines import (
    EMERGENCY,
    Card,
    boot_files,
    card_cmdline,
    keep_log,
    stamp_with_test_unit,
    vm,
)

pytestmark = pytest.mark.e2e

REPORT_SCRIPT = r"""#!/bin/sh
# TEST ONLY: once the agent says what it waits for, print on the serial console what the raspi3b
# test checks (QEMU's raspi3b has no network to ask over).
for i in $(seq 180); do
    picluster-agent status --json | grep -q '"phase": "waiting: preflight"' && break
    sleep 5
done
echo "PICLUSTER-REPORT hostname=$(hostname) root_bytes=$(findmnt -n -b -o SIZE /)" \
    "firmware=$(findmnt -n -o FSTYPE /boot/firmware) agent=$(systemctl is-active picluster-agent)" \
    "restarts=$(systemctl show -p NRestarts --value picluster-agent)"
picluster-agent status | sed 's/^/PICLUSTER-STATUS /'
"""
REPORT_UNIT = """[Unit]
Description=TEST ONLY: report on the serial console for the raspi3b test

[Service]
Type=simple
StandardOutput=journal+console
ExecStart=/usr/local/sbin/picluster-test-report

[Install]
WantedBy=multi-user.target
"""
RASPI3B_TIMEOUT = 1200
"""Login at about 155 s on a quiet machine; then the root grows and the agent's preflight waits
out the clock (120 s, no NTP) before it reports what it waits for."""


@pytest.fixture(scope="module")
def pi3_console(card: Card) -> Path:
    """A pi3 worker's card booted as a Pi 3's firmware boots it, with nothing but what is on the
    card: QEMU's raspi3b runs the card's vmlinuz, initrd.img, bcm2837-rpi-3-b.dtb and
    cmdline.txt (console and all: the mini UART, ttyS1, is QEMU's second serial port), with the
    card as its SD card, grown by at least 1 GiB to a power of two as QEMU requires. Returns the
    console log."""
    require_tools("qemu-system-aarch64")
    data = yaml.safe_load(card.cluster_file.read_text())
    data["nodes"].append({"name": "w2", "role": "worker", "model": "pi3", "address": "10.0.2.16/24"})
    cluster_file = card.work / "pi3-cluster.yaml"
    cluster_file.write_text(yaml.safe_dump(data))
    image = card.work / "w2-raspi3b.img"
    script = FileEntry(
        "root", PurePosixPath("usr/local/sbin/picluster-test-report"), REPORT_SCRIPT.encode(), 0o755
    )
    stamp_with_test_unit(
        cluster_file, "w2", "picluster-test-report.service", REPORT_UNIT, image, card.flannel_digest, script
    )
    os.truncate(image, 1 << (image.stat().st_size + 2**30 - 1).bit_length())  # with room to grow into
    files = boot_files(card, image, "vmlinuz", "initrd.img", "bcm2837-rpi-3-b.dtb", "cmdline.txt")
    console = card.work / "console-raspi3b.log"
    qemu = ["qemu-system-aarch64", "-M", "raspi3b", "-kernel", str(files["vmlinuz"]),
            "-initrd", str(files["initrd.img"]), "-dtb", str(files["bcm2837-rpi-3-b.dtb"]),
            "-append", card_cmdline(files["cmdline.txt"]), "-sd", str(image), "-display", "none",
            "-no-reboot", "-serial", "null", "-serial", f"file:{console}", "-monitor", "none"]  # fmt: skip
    with vm(qemu, None) as running:
        start = time.monotonic()
        while b"PICLUSTER-STATUS" not in (console.read_bytes() if console.exists() else b""):
            shown = console.read_bytes() if console.exists() else b""
            stranded = [marker.decode() for marker in EMERGENCY if marker in shown]
            if stranded:
                pytest.fail(f"the pi3 card ended in a shell ({stranded[0]!r}); console: {keep_log(console)}")
            if running.poll() is not None or time.monotonic() - start > RASPI3B_TIMEOUT:
                pytest.fail(
                    f"no report from the pi3 card within {RASPI3B_TIMEOUT}s; console: {keep_log(console)}"
                )
            time.sleep(5)
        time.sleep(5)  # the rest of the status lines
        print(f"raspi3b report after {time.monotonic() - start:.0f}s")
    return console


def test_a_pi3_card_boots_as_the_pi_firmware_boots_it(pi3_console: Path, card: Card) -> None:
    text = pi3_console.read_text(errors="replace")
    assert "w2 login:" in text, f"no login prompt for w2; console: {keep_log(pi3_console)}"
    (report,) = [line for line in text.splitlines() if "PICLUSTER-REPORT" in line]
    facts = dict(word.split("=", 1) for word in report.split("PICLUSTER-REPORT", 1)[1].split())
    assert facts["hostname"] == "w2"
    assert facts["firmware"] == "vfat", "/boot/firmware mounted"
    image_root = card.image.stat().st_size - ROOT_OFFSET
    assert int(facts["root_bytes"]) > image_root + 2**29, "the root grew to the SD card's size"
    assert (facts["agent"], facts["restarts"]) == ("active", "0"), "the agent waits; it does not crash-loop"
    status = [
        line.split("PICLUSTER-STATUS", 1)[1] for line in text.splitlines() if "PICLUSTER-STATUS" in line
    ]
    assert any("phase:       waiting: preflight" in line for line in status), status
    assert any("eth0 does not exist" in line for line in status), "it says what it waits for"
