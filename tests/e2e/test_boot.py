"""A card picluster built, booted: qemu-system-aarch64 -M virt runs the image's own kernel and
initrd with the image as its disk, and the test logs in over SSH with the key from cluster.yaml.

There is no Pi here; QEMU's virt machine stands in for one (a Cortex-A72, as in a Pi 4). The guest
is on QEMU's user network with restrict=on, so it reaches nothing outside QEMU; its address is
the one QEMU's user network hands out (10.0.2.15), set statically by the card as on a real LAN.
The serial console is kept in a log file, and its path printed when the test fails.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from builder.base import ensure_base
from builder.build import build_images
from builder.cli import default_cache
from builder.config_file import load_cluster
from builder.progress import Reporter, silent
from tests.conftest import BUNDLED, fixed_secrets
from tests.integration.conftest import TOOLS, require_tools

pytestmark = pytest.mark.e2e

BOOT_TIMEOUT = 600
KERNEL_ARGS = (
    "console=ttyAMA0 root=LABEL=RASPIROOT rw rootwait net.ifnames=0 cgroup_enable=memory cgroup_memory=1"
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def booted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path, Path]]:
    """(ssh port, private key, console log) of a booted control-plane card."""
    if os.geteuid() != 0:
        pytest.skip("building the Debian base needs root")
    require_tools(*TOOLS, "mmdebstrap", "qemu-system-aarch64", "ssh", "ssh-keygen")
    work = tmp_path_factory.mktemp("e2e")
    key = work / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    data = yaml.safe_load(BUNDLED.read_text())
    data["network"].update(gateway="10.0.2.2", dns=["10.0.2.3"], ntp=[])
    data["nodes"] = [{"name": "cp1", "role": "control-plane", "model": "pi4", "address": "10.0.2.15/24"}]
    data["access"]["ssh_authorized_keys"] = [(work / "id_ed25519.pub").read_text().strip()]
    (work / "cluster.yaml").write_text(yaml.safe_dump(data))
    cluster = load_cluster(work / "cluster.yaml")
    base = ensure_base(cluster, default_cache(), Reporter())
    build_images(cluster, fixed_secrets(), work / "images", default_cache(), silent())
    image = work / "images" / "cp1.img"
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    for name in ("vmlinuz", "initrd.img"):
        subprocess.run(["mcopy", "-i", base.layout.boot_target(image), f"::/{name}", str(work / name)],
                       check=True, env=env)  # fmt: skip
    port = free_port()
    console = work / "console.log"
    qemu = subprocess.Popen(
        ["qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a72", "-smp", "2", "-m", "2048",
         "-nographic", "-no-reboot", "-kernel", str(work / "vmlinuz"), "-initrd", str(work / "initrd.img"),
         "-append", KERNEL_ARGS, "-drive", f"file={image},format=raw,if=virtio",
         "-netdev", f"user,id=lan,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22",
         "-device", "virtio-net-pci,netdev=lan"],
        stdin=subprocess.DEVNULL, stdout=console.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        yield port, key, console
    finally:
        qemu.kill()
        qemu.wait()


def ssh(port: int, key: Path, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ssh", "-i", str(key), "-p", str(port), "-o", "StrictHostKeyChecking=no",
         "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=10", "-o", "BatchMode=yes",
         "pi@127.0.0.1", command],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def wait_for_login(port: int, key: Path, console: Path) -> float:
    start = time.monotonic()
    while time.monotonic() - start < BOOT_TIMEOUT:
        if ssh(port, key, "true").returncode == 0:
            return time.monotonic() - start
        time.sleep(5)
    kept = shutil.copy(console, Path(os.environ.get("TMPDIR", "/tmp")) / "picluster-e2e-console.log")
    pytest.fail(f"no SSH login within {BOOT_TIMEOUT}s; serial console kept in {kept}")


def test_the_card_boots_and_takes_an_ssh_key_login(booted: tuple[int, Path, Path]) -> None:
    port, key, console = booted
    seconds = wait_for_login(port, key, console)
    print(f"SSH login after {seconds:.0f}s")
    assert ssh(port, key, "hostname").stdout.strip() == "cp1"
    addresses = ssh(port, key, "ip -4 -o addr show dev eth0").stdout
    assert "inet 10.0.2.15/24" in addresses
    assert ssh(port, key, "sudo -n true").returncode == 0, "passwordless sudo for the login user"
    cgroups = ssh(port, key, "cat /sys/fs/cgroup/cgroup.controllers").stdout.split()
    assert "memory" in cgroups
    sysctl = ssh(port, key, "cat /proc/sys/net/ipv4/ip_forward /proc/sys/net/bridge/bridge-nf-call-iptables")
    assert sysctl.stdout.split() == ["1", "1"], sysctl.stderr
    modules = {line.split()[0] for line in ssh(port, key, "cat /proc/modules").stdout.splitlines()}
    assert {"overlay", "br_netfilter", "vxlan"} <= modules
    assert ssh(port, key, "cat /etc/machine-id").stdout.strip() not in ("", "uninitialized")
    assert ssh(port, key, "systemctl is-active containerd").stdout.strip() == "active"
    assert ssh(port, key, "findmnt -n -o FSTYPE /boot/firmware").stdout.strip() == "vfat"


def test_the_agent_prepares_the_node_and_waits_for_packages(booted: tuple[int, Path, Path]) -> None:
    """No network beyond QEMU: the agent's preflight passes but for the clock (no NTP server
    answers), clean-links finds nothing, and with `packages: firstboot` it waits for the
    Kubernetes repository, retrying, instead of failing."""
    port, key, console = booted
    wait_for_login(port, key, console)
    deadline = time.monotonic() + 300  # the clock check alone waits 120 s for NTP
    while True:
        status = ssh(port, key, "sudo -n picluster-agent status --json")
        assert status.returncode == 0, status.stderr
        state = json.loads(status.stdout)
        if state["phase"] == "waiting: packages" or time.monotonic() > deadline:
            break
        time.sleep(10)
    assert state["phase"] == "waiting: packages", state
    assert "Release.key" in state["last_error"]
    checks = {check["name"]: check["status"] for check in state["preflight"]}
    assert checks == {"swap": "ok", "modules": "ok", "sysctls": "ok", "cgroups": "ok", "interface": "ok",
                      "clock": "failed", "containerd": "ok"}, state["preflight"]  # fmt: skip
    assert state["links"] == []
    assert ssh(port, key, "systemctl is-active picluster-agent").stdout.strip() == "active"
