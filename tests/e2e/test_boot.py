"""Cards picluster built, booted: qemu-system-aarch64 -M virt runs the image's own kernel and
initrd with the image as its disk; the test logs in over SSH with a key from cluster.yaml and
runs the verify suite (`picluster verify`) against the running node.

There is no Pi here; QEMU's virt machine stands in for one (a Cortex-A72, as in a Pi 4). The guest
is on QEMU's user network with restrict=on, so it reaches nothing outside QEMU: no NTP server, no
Kubernetes repository. Its address is the one QEMU's user network hands out (10.0.2.15), set
statically by the card as on a real LAN. The serial console goes to a log file, kept and named
when a test fails.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from builder.cli import default_cache
from builder.image.base import ensure_base
from builder.image.build import build_images, clock_epoch
from builder.image.context import BuildContext
from builder.image.layout import ROOT_OFFSET
from builder.image.stamp import stamp
from builder.progress import Reporter, silent
from builder.render.node import render_node
from builder.render.plan import FileEntry, NodePlan
from builder.run import Runner
from builder.spec.load import load_cluster
from builder.spec.model import ImageSource
from tests.conftest import BUNDLED, fixed_secrets
from tests.integration.conftest import TOOLS, require_tools

pytestmark = pytest.mark.e2e

BOOT_TIMEOUT = 600
AGENT_TIMEOUT = 300  # the agent's clock check alone waits 120 s for an NTP server
CARD_SIZE = 3 * 2**30
DEBIAN_KERNEL = ("vmlinuz", "initrd.img")
RASPIOS_KERNEL = ("kernel8.img", "initramfs8")
"""Where each kind of card keeps its kernel and initramfs on the boot partition."""
"""The plain boot's disk: larger than the image, as every SD card is, so the root must grow."""
VIRT_CONSOLE = "console=ttyAMA0"
"""QEMU virt's serial port; the card's own console= arguments name the Pi's."""
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


@dataclass(frozen=True)
class Card:
    work: Path
    cluster_file: Path
    key: Path
    image: Path


@dataclass(frozen=True)
class Booted:
    card: Card
    port: int
    console: Path
    ssh_config: Path

    def ssh(self, command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ssh", "-F", str(self.ssh_config), "10.0.2.15", command],
            capture_output=True,
            text=True,
            timeout=60,
        )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def quiet_context() -> BuildContext:
    """For the cached base only: its images folder is never written."""
    return BuildContext(default_cache(), default_cache(), silent(), Runner())


def make_card(work: Path, model: str, image: ImageSource | None = None) -> Card:
    """cp1's card, the only node of a cluster on QEMU's user network; on `image` when given."""
    require_tools(*TOOLS, "qemu-system-aarch64", "ssh", "ssh-keygen")
    key = work / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    data = yaml.safe_load(BUNDLED.read_text())
    data["network"].update(gateway="10.0.2.2", dns=["10.0.2.3"], ntp=[])
    data["nodes"] = [{"name": "cp1", "role": "control-plane", "model": model, "address": "10.0.2.15/24"}]
    data["access"]["ssh_authorized_keys"] = [(work / "id_ed25519.pub").read_text().strip()]
    if image is not None:
        data["base"]["image"] = image.model_dump()
    cluster_file = work / "cluster.yaml"
    cluster_file.write_text(yaml.safe_dump(data))
    cluster = load_cluster(cluster_file)
    ensure_base(cluster, BuildContext(work / "images", default_cache(), Reporter(), Runner()))
    build_images(
        cluster, fixed_secrets(), {}, BuildContext(work / "images", default_cache(), silent(), Runner())
    )
    return Card(work, cluster_file, key, work / "images" / "cp1.img")


@pytest.fixture(scope="module")
def card(tmp_path_factory: pytest.TempPathFactory) -> Card:
    if os.geteuid() != 0:
        pytest.skip("building the Debian base needs root")
    require_tools("mmdebstrap")
    return make_card(tmp_path_factory.mktemp("e2e"), "pi4")


@pytest.fixture(scope="module")
def raspios_card(tmp_path_factory: pytest.TempPathFactory, raspios_standin_source: ImageSource) -> Card:
    """A Pi 5's card on the Raspberry Pi OS stand-in (tests/integration/raspios_standin.py)."""
    return make_card(tmp_path_factory.mktemp("e2e-raspios"), "pi5", raspios_standin_source)


def on_a_3_gib_card(card: Card, name: str) -> Path:
    """A copy of the card's image as large as a real card, for the root to grow into."""
    image = card.work / f"cp1-{name}-on-a-3-GiB-card.img"
    subprocess.run(["cp", "--sparse=always", str(card.image), str(image)], check=True)
    os.truncate(image, CARD_SIZE)
    return image


@pytest.fixture(scope="module")
def booted(card: Card) -> Iterator[Booted]:
    with boot(card, on_a_3_gib_card(card, "plain"), "plain") as running:
        yield running


def stamp_with_test_unit(
    cluster_file: Path, node: str, name: str, unit_text: str, image: Path, *extra: FileEntry
) -> None:
    """A node's card as picluster builds it, plus a test-only unit enabled on it (and `extra`)."""
    cluster = load_cluster(cluster_file)
    base = ensure_base(cluster, quiet_context())
    plan = render_node(cluster, next(n for n in cluster.nodes if n.name == node), fixed_secrets())
    unit = PurePosixPath(f"etc/systemd/system/{name}")
    test_files = (
        FileEntry("root", unit, unit_text.encode(), 0o644),
        FileEntry("root", "etc/systemd/system/multi-user.target.wants" / PurePosixPath(unit.name),
                  mode=0o777, link=f"/{unit}"),
        *extra,
    )  # fmt: skip
    stamp(base, NodePlan(plan.node, plan.files + test_files), image, clock_epoch(base), Runner())


@pytest.fixture(scope="module")
def booted_with_stale_links(card: Card) -> Iterator[Booted]:
    """The same card with a test-only unit that leaves a stale flannel.1 (two addresses) and a
    cni0 with a foreign address before the agent starts, booted with a second NIC (eth1)."""
    image = card.work / "cp1-stale-links.img"
    stamp_with_test_unit(
        card.cluster_file, "cp1", "picluster-test-stale-links.service", STALE_LINKS_UNIT, image
    )
    second_nic = ["-netdev", "user,id=other,restrict=on", "-device", "virtio-net-pci,netdev=other"]
    with boot(card, image, "stale-links", second_nic) as running:
        yield running


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


def boot_files(card: Card, image: Path, *names: str) -> dict[str, Path]:
    """Copy files out of a card's FAT partition, as the Pi's firmware reads them."""
    base = ensure_base(load_cluster(card.cluster_file), quiet_context())
    copies = {}
    for name in names:
        copies[name] = card.work / f"{image.stem}-{name}"
        subprocess.run(["mcopy", "-o", "-i", base.layout.boot_target(image), f"::/{name}", str(copies[name])],
                       check=True, env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})  # fmt: skip
    return copies


def card_cmdline(cmdline: Path, console: str | None = None) -> str:
    """The card's own kernel command line; only its console= arguments may give way to QEMU's."""
    words = cmdline.read_text().split()
    if console is None:
        return " ".join(words)
    return " ".join([*(word for word in words if not word.startswith("console=")), console])


@contextmanager
def boot(card: Card, image: Path, name: str, extra_qemu: list[str] | None = None) -> Iterator[Booted]:
    kernel, initrd = RASPIOS_KERNEL if load_cluster(card.cluster_file).base.image else DEBIAN_KERNEL
    files = boot_files(card, image, kernel, initrd, "cmdline.txt")
    port = free_port()
    console = card.work / f"console-{name}.log"
    ssh_config = card.work / f"ssh_config-{name}"
    ssh_config.write_text(
        f"Host 10.0.2.15\n  HostName 127.0.0.1\n  Port {port}\n  User pi\n  IdentityFile {card.key}\n"
        "  IdentitiesOnly yes\n  BatchMode yes\n  ConnectTimeout 10\n"
        "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n"
    )
    qemu = subprocess.Popen(
        ["qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a72", "-smp", "2", "-m", "2048",
         "-nographic", "-no-reboot", "-kernel", str(files[kernel]),
         "-initrd", str(files[initrd]), "-append", card_cmdline(files["cmdline.txt"], VIRT_CONSOLE),
         "-drive", f"file={image},format=raw,if=virtio",
         "-netdev", f"user,id=lan,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22",
         "-device", "virtio-net-pci,netdev=lan", *(extra_qemu or [])],
        stdin=subprocess.DEVNULL, stdout=console.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    running = Booted(card, port, console, ssh_config)
    try:
        wait_for_login(running)
        yield running
    finally:
        qemu.kill()
        qemu.wait()


def keep_console(booted: Booted) -> Path:
    return keep_log(booted.console)


def keep_log(console: Path) -> Path:
    """A copy of a serial console's log that outlives the test's folders, named in its failure."""
    return Path(
        shutil.copy(console, Path(os.environ.get("TMPDIR", "/tmp")) / f"picluster-e2e-{console.name}")
    )


EMERGENCY = (b"You are in emergency mode", b"Entering emergency mode", b"root account is locked",
             b"Give root password for maintenance", b"(initramfs) ")  # fmt: skip
"""What systemd and the initramfs print when a boot ends in a shell that needs a keyboard."""


def wait_for_login(booted: Booted) -> None:
    start = time.monotonic()
    while time.monotonic() - start < BOOT_TIMEOUT:
        if booted.ssh("true").returncode == 0:
            print(f"SSH login after {time.monotonic() - start:.0f}s")
            return
        shown = booted.console.read_bytes()
        stranded = [marker.decode() for marker in EMERGENCY if marker in shown]
        if stranded:
            pytest.fail(f"the boot ended in a shell ({stranded[0]!r}); console: {keep_console(booted)}")
        time.sleep(5)
    pytest.fail(f"no SSH login within {BOOT_TIMEOUT}s; serial console kept in {keep_console(booted)}")


def agent_state_when(booted: Booted, phase: str) -> dict[str, Any]:
    """The agent's state once it reaches `phase` (it gets there after preflight and clean-links)."""
    deadline = time.monotonic() + AGENT_TIMEOUT
    while True:
        status = booted.ssh("sudo -n picluster-agent status --json")
        assert status.returncode == 0, status.stderr
        state: dict[str, Any] = json.loads(status.stdout)
        if state["phase"] == phase:
            return state
        if time.monotonic() > deadline:
            pytest.fail(
                f"agent still '{state['phase']}' after {AGENT_TIMEOUT}s; console: {keep_console(booted)}"
            )
        time.sleep(10)


def picluster_verify(booted: Booted) -> tuple[int, str]:
    """`picluster verify` as a user runs it, reaching the node through an ssh_config. No NTP
    server answers inside QEMU's restricted network, so the time check is skipped, by name."""
    done = subprocess.run(
        [sys.executable, "-m", "builder", "verify", "-f", str(booted.card.cluster_file),
         "--ssh-config", str(booted.ssh_config), "--skip", "time_synchronised"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    print(done.stdout)
    return done.returncode, done.stdout + done.stderr


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


@pytest.fixture(scope="module")
def pi3_console(card: Card) -> Path:
    """A pi3 worker's card booted as a Pi 3's firmware boots it, with nothing but what is on the
    card: QEMU's raspi3b runs the card's vmlinuz, initrd.img, bcm2837-rpi-3-b.dtb and
    cmdline.txt (console and all: the mini UART, ttyS1, is QEMU's second serial port), with the
    card as its SD card, grown to a power of two as QEMU requires. Returns the console log."""
    require_tools("qemu-system-aarch64")
    data = yaml.safe_load(card.cluster_file.read_text())
    data["nodes"].append({"name": "w2", "role": "worker", "model": "pi3", "address": "10.0.2.16/24"})
    cluster_file = card.work / "pi3-cluster.yaml"
    cluster_file.write_text(yaml.safe_dump(data))
    image = card.work / "w2-raspi3b.img"
    script = FileEntry(
        "root", PurePosixPath("usr/local/sbin/picluster-test-report"), REPORT_SCRIPT.encode(), 0o755
    )
    stamp_with_test_unit(cluster_file, "w2", "picluster-test-report.service", REPORT_UNIT, image, script)
    os.truncate(image, 1 << (image.stat().st_size - 1).bit_length())
    files = boot_files(card, image, "vmlinuz", "initrd.img", "bcm2837-rpi-3-b.dtb", "cmdline.txt")
    console = card.work / "console-raspi3b.log"
    qemu = subprocess.Popen(
        ["qemu-system-aarch64", "-M", "raspi3b", "-kernel", str(files["vmlinuz"]),
         "-initrd", str(files["initrd.img"]), "-dtb", str(files["bcm2837-rpi-3-b.dtb"]),
         "-append", card_cmdline(files["cmdline.txt"]), "-sd", str(image), "-display", "none",
         "-no-reboot", "-serial", "null", "-serial", f"file:{console}", "-monitor", "none"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        start = time.monotonic()
        while b"PICLUSTER-STATUS" not in (console.read_bytes() if console.exists() else b""):
            shown = console.read_bytes() if console.exists() else b""
            stranded = [marker.decode() for marker in EMERGENCY if marker in shown]
            if stranded:
                pytest.fail(f"the pi3 card ended in a shell ({stranded[0]!r}); console: {keep_log(console)}")
            if qemu.poll() is not None or time.monotonic() - start > RASPI3B_TIMEOUT:
                pytest.fail(
                    f"no report from the pi3 card within {RASPI3B_TIMEOUT}s; console: {keep_log(console)}"
                )
            time.sleep(5)
        time.sleep(5)  # the rest of the status lines
        print(f"raspi3b report after {time.monotonic() - start:.0f}s")
    finally:
        qemu.kill()
        qemu.wait()
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


@pytest.fixture(scope="module")
def booted_raspios(raspios_card: Card) -> Iterator[Booted]:
    with boot(raspios_card, on_a_3_gib_card(raspios_card, "pi5"), "raspios") as running:
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
